"""Turn a layer output into a spatial grid ``(B, C, h, w)``."""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor, nn

from xai._typing import ReshapeLike


def _prefix_tokens(n_tokens: int, declared: int | None) -> tuple[int, int, int]:
    """Return (prefix, h, w) for ``n_tokens`` tokens with a square patch grid."""
    candidates = [declared] if declared is not None else range(0, 9)
    for prefix in candidates:
        side = math.isqrt(n_tokens - prefix)
        if side > 0 and side * side == n_tokens - prefix:
            return prefix, side, side
    raise ValueError(
        f"cannot infer a square patch grid from {n_tokens} tokens"
        + (f" with {declared} prefix tokens" if declared is not None else "")
        + "; pass reshape=callable mapping (B, N, C) -> (B, C, h, w)"
    )


def vit_reshape(tokens: Tensor, num_prefix_tokens: int | None = None) -> Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, h, w)``, dropping class/distillation/register tokens.

    The number of prefix tokens is ``num_prefix_tokens`` when given (timm models expose it),
    otherwise the smallest count that leaves a square number of patch tokens. Non-square grids
    need a callable ``reshape``.
    """
    if tokens.dim() != 3:
        raise ValueError(
            f"reshape='vit' expects token outputs of shape (B, N, C), got {tuple(tokens.shape)}"
        )
    b, n, c = tokens.shape
    prefix, h, w = _prefix_tokens(n, num_prefix_tokens)
    return tokens[:, prefix:, :].reshape(b, h, w, c).permute(0, 3, 1, 2)


def swin_reshape(features: Tensor) -> Tensor:
    """Channels-last ``(B, h, w, C)`` -> ``(B, C, h, w)`` (torchvision/timm Swin stages)."""
    if features.dim() != 4:
        raise ValueError(
            f"reshape='swin' expects (B, h, w, C) outputs, got {tuple(features.shape)}"
        )
    return features.permute(0, 3, 1, 2)


def make_reshape(reshape: ReshapeLike, model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """Normalize a ``reshape`` option into a callable (or ``None`` for spatial layers)."""
    if reshape is None:
        return None
    if reshape == "vit":
        declared = getattr(model, "num_prefix_tokens", None)
        return lambda t: vit_reshape(t, declared)
    if reshape == "swin":
        return swin_reshape
    if callable(reshape):
        return reshape
    raise ValueError(f"reshape must be None, 'vit', 'swin' or a callable, got {reshape!r}")
