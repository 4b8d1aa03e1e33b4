"""Inputs with two or three spatial axes: images and videos / volumes.

An image batch is ``(B, C, H, W)`` and its maps ``(B, H, W)``; a video (or volume, e.g. a CT
scan) batch is ``(B, C, T, H, W)`` and its maps ``(B, T, H, W)``: the axes after the channel
axis are the *spatial* axes, kept by every map. Methods and metrics declare the input ranks
they support (``input_ranks``) and refuse the others with :func:`rank_error`'s message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["INPUT_SHAPES", "interpolation", "rank_error", "resize"]

INPUT_SHAPES = {4: "(B, C, H, W)", 5: "(B, C, T, H, W)"}
"""Input rank -> its axes."""

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def interpolation(mode: str, n_axes: int) -> str:
    """The ``F.interpolate`` mode for ``n_axes`` spatial axes: ``"bilinear"`` and
    ``"bicubic"`` become ``"trilinear"`` on 3 axes (PyTorch has no tricubic); ``"nearest"`` and
    the area modes are kept.
    """
    if mode in ("linear", "bilinear", "trilinear") or (mode == "bicubic" and n_axes == 3):
        return _LINEAR[n_axes]
    return mode


def resize(
    maps: Tensor, size: Sequence[int], mode: str = "bilinear", align_corners: bool | None = False
) -> Tensor:
    """Resize maps ``(B, *s)`` or ``(B, K, *s)`` to ``size`` (``len(size)`` trailing axes).

    Bilinear on 2 axes and trilinear on 3 by default (``align_corners=False``); maps already
    at ``size`` are returned as they are.
    """
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[-len(size) :]) == size:
        return maps
    squeeze = maps.dim() == len(size) + 1
    m = maps[:, None] if squeeze else maps
    mode = interpolation(mode, len(size))
    corners = align_corners if mode in ("linear", "bilinear", "bicubic", "trilinear") else None
    out = F.interpolate(m, size=size, mode=mode, align_corners=corners)
    return out[:, 0] if squeeze else out


def rank_error(inputs: Tensor, ranks: Sequence[int], name: str, refusal: str = "") -> str:
    """The message of the ``ValueError`` for ``inputs`` whose rank is not in ``ranks``.

    Args:
        inputs: the refused tensor.
        ranks: the ranks the caller supports (4: images, 5: videos and volumes).
        name: the argument's name (``"inputs"``).
        refusal: why the caller cannot take a rank another method takes, e.g. ``"lrp explains
            images only (its rules are written for 2-D layers)"``; used when ``inputs`` has
            such a rank.
    """
    shape, rank = tuple(inputs.shape), inputs.dim()
    expected = " or ".join(INPUT_SHAPES[r] for r in ranks)
    if rank == min(ranks) - 1:
        hint = f"a single sample? use {name}.unsqueeze(0)"
        return f"{name} must have shape {expected}, got {shape} ({hint})"
    message = f"{name} must have shape {expected}, got {shape}"
    if rank in INPUT_SHAPES and refusal:
        message = f"{refusal}: {message}"
    return message
