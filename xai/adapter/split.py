"""Split a model at a layer: ``g`` (input -> the layer's output) and ``h`` (that output -> model
output), for any ``nn.Module``, with forward hooks only (the model is never rebuilt or edited).

- :func:`layer_output` runs the model until ``layer`` has produced its output and stops there
  (the rest of the forward pass is skipped): ``g(x)``.
- :func:`replace_output` is a context manager inside which every forward pass of the model
  sees ``tensor`` as the output of ``layer``: running the model then computes ``h(tensor)``.
  The computation before the layer still runs (on whatever input is given), so callers pass
  a cheap probe input; what reaches the output through ``layer`` is exactly ``h(tensor)`` as
  long as nothing after the layer reads the input through another path (a skip connection
  around the layer).

Used by concept extraction (CRAFT, Fel et al., CVPR 2023), where ``A = g(x)`` is factorized and
``h`` is evaluated on reconstructed activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from xai._typing import LayerLike
from xai.adapter.hooks import hooks
from xai.adapter.layers import _unwrap, resolve_layer
from xai.adapter.state import preserved
from xai.adapter.targets import unwrap_output

__all__ = ["head", "layer_output", "replace_output"]


class _Stop(Exception):
    """Raised from a forward hook to end the forward pass once the layer has run."""


def _check_tensor(name: str, output: object) -> Tensor:
    if not isinstance(output, Tensor):
        raise TypeError(
            f"layer {name!r} returns {type(output).__name__}, not a tensor; pick a submodule "
            "that returns a single tensor"
        )
    return output


def layer_output(
    model: nn.Module, layer: LayerLike, inputs: Tensor, *, differentiable: bool = False
) -> Tensor:
    """``g(inputs)``: the output of ``layer`` (detached), without running the rest of the model.

    The model runs in eval mode under ``torch.no_grad()``; its state is restored on exit.
    With ``differentiable=True`` gradients are enabled instead and the output keeps its
    autograd graph back to ``inputs`` (a clone, so gradients w.r.t. the pixels of a function
    of ``g`` can be taken, e.g. concept attribution maps).

    Args:
        model: any ``nn.Module``.
        layer: dotted name or module (see :func:`xai.adapter.resolve_layer`).
        inputs: the model's input batch.

    Returns:
        The layer's output for ``inputs``, detached (a clone: in-place operations after the
        layer cannot change it).

    Raises:
        RuntimeError: the layer was not called during the forward pass.
        TypeError: the layer does not return a tensor.
    """
    module = _unwrap(model)
    name, target = resolve_layer(module, layer)
    found: list[Tensor] = []

    def hook(_module: nn.Module, _args: tuple, output: object) -> None:
        out = _check_tensor(name, output)
        found.append(out.clone() if differentiable else out.detach().clone())
        raise _Stop

    grad_mode = torch.enable_grad() if differentiable else torch.no_grad()
    with preserved(module), grad_mode, hooks(forward={target: hook}):
        try:
            module(inputs)  # the unwrapped module: a compiled wrapper would skip the hook
        except _Stop:
            pass
    if not found:
        raise RuntimeError(
            f"layer {name!r} was not called in the forward pass: is it used by the model?"
        )
    return found[0]


@contextlib.contextmanager
def replace_output(model: nn.Module, layer: LayerLike, tensor: Tensor) -> Iterator[None]:
    """Within the block, ``layer`` returns ``tensor`` instead of its own output.

    Running the model inside the block evaluates ``h(tensor)``, the part of the model after
    the layer; gradients flow to ``tensor`` when it requires them. The hook is removed on exit,
    also after an exception; the model's flags are not touched here (wrap the block in
    :func:`xai.adapter.preserved` for eval mode).

    Args:
        model: any ``nn.Module``.
        layer: dotted name or module.
        tensor: the replacement output; its batch size must match the input's batch size
            wherever the model mixes the two.

    Raises:
        RuntimeError: (on exit) the layer was not called in the block, or was called more
            than once.

    Example:
        >>> with replace_output(model, "features.18", acts):
        ...     logits = model(torch.zeros(len(acts), 3, 32, 32))  # h(acts)
    """
    module = _unwrap(model)
    name, target = resolve_layer(module, layer)
    calls = [0]

    def hook(_module: nn.Module, _args: tuple, output: object) -> Tensor:
        _check_tensor(name, output)
        calls[0] += 1
        return tensor

    with hooks(forward={target: hook}):
        yield
    if calls[0] == 0:
        raise RuntimeError(
            f"layer {name!r} was not called in the forward pass: is it used by the model?"
        )
    if calls[0] > 1:
        raise RuntimeError(
            f"layer {name!r} was called {calls[0]} times in one block; its output is "
            "ambiguous: choose a layer the model uses once"
        )


def head(model: nn.Module, layer: LayerLike, activations: Tensor, probe: Tensor) -> Tensor:
    """``h(activations)``: the (unwrapped) model output when ``layer`` outputs ``activations``.

    Args:
        model: any ``nn.Module``.
        layer: dotted name or module.
        activations: replacement output of the layer, ``(n, ...)``.
        probe: the input run through the model (only its part before the layer is computed on
            it); a small input keeps that part cheap.

    Raises:
        RuntimeError: the layer was not called in the forward pass.
    """
    with replace_output(model, layer, activations):
        out = unwrap_output(_unwrap(model)(probe))
    return out
