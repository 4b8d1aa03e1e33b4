"""Rule hooks: change how gradients flow backward through chosen modules, without touching them.

A forward hook routes a module's output through an ``autograd.Function`` that is the identity in
the forward pass and applies a rule in the backward pass (the zennit pattern). Because the
function returns a new tensor, in-place operations after the module cannot corrupt it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from xai.adapter.hooks import hooks

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward keeps only the positive part of the incoming gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.clamp(min=0)


def _guide(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
    return _PositiveGradient.apply(output)


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Guided backpropagation (Springenberg et al. 2015) for every ``nn.ReLU``/``nn.ReLU6``.

    The backward pass through each activation becomes ``1[x > 0] * max(grad, 0)``.

    Raises:
        ValueError: the model has no ReLU modules (functional ``F.relu`` cannot be hooked, and
            guided backprop would silently degrade to the plain gradient).
    """
    modules = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no nn.ReLU/nn.ReLU6 modules; guided backpropagation "
            "needs activation modules (functional F.relu calls cannot be hooked). Use "
            "nn.ReLU modules or a non-guided method"
        )
    with hooks(forward={m: _guide for m in modules}):
        yield
