"""Record and restore everything an explanation could change on a user's model."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def preserved(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run a block with the model in eval mode and gradients enabled, then restore it exactly.

    Records each submodule's ``training`` flag and each parameter's ``requires_grad``; on exit
    (also after an exception) restores both. Inside, gradients are enabled even when the caller
    is under ``torch.no_grad()``, and (with ``eval_mode``) the model is in eval mode so that
    batch-norm running statistics are never updated and dropout does not randomize the map.

    Parameters' ``.grad`` are never touched: methods use ``torch.autograd.grad``.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "called under torch.inference_mode(): gradients are impossible there; "
            "use torch.no_grad() (which xai overrides locally) or no context at all"
        )
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if eval_mode and any(training for _, training in modes):
            model.eval()
        with torch.enable_grad():
            yield model
    finally:
        for module, training in modes:
            if module.training != training:  # Module.__setattr__ is slow: only what changed
                module.training = training
        for param, requires_grad in flags:
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
