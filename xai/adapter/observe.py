"""Observe the model's output on one exact input while something else runs the model.

A dataset audit needs each image's prediction and the explanation of it. Most explainers run
the model on the clean batch anyway (Grad-CAM, saliency, the argmax of a ``None`` target), so
a second forward pass only for the predictions doubles the model cost of cheap explainers.
:func:`observe_outputs` records the output of the first forward pass whose input is
bit-for-bit the given batch (same shape, same values): the same function of the same input,
hence the same output, whatever the explainer does around it. When no such pass happens (an
explainer that only ever runs perturbed or rescaled inputs), nothing is recorded and the
caller runs the forward itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from xai.adapter.hooks import hooks
from xai.adapter.targets import unwrap_output

__all__ = ["ObservedOutputs", "observe_outputs"]


class ObservedOutputs:
    """Filled inside :func:`observe_outputs`: ``outputs`` (detached) or ``None``."""

    def __init__(self) -> None:
        self.outputs: Tensor | None = None


@contextlib.contextmanager
def observe_outputs(model: nn.Module, inputs: Tensor) -> Iterator[ObservedOutputs]:
    """Record the (unwrapped, detached) output of the first ``model(inputs)`` call in the block.

    Args:
        model: the module the explainer calls (its root forward is observed).
        inputs: the exact batch to watch for.

    Yields:
        An :class:`ObservedOutputs`; the hook is removed on exit, also after an exception.
    """
    seen = ObservedOutputs()
    reference = inputs.detach()

    def hook(_module: nn.Module, args: tuple, output: Any) -> None:
        if seen.outputs is not None or not args or not isinstance(args[0], Tensor):
            return
        x = args[0]
        if (
            x.shape == reference.shape
            and x.dtype == reference.dtype
            and x.device == reference.device
            and torch.equal(x.detach(), reference)
        ):
            out = unwrap_output(output)
            if isinstance(out, Tensor):
                seen.outputs = out.detach()

    with hooks(forward={model: hook}):
        yield seen
