"""Conversions at the visualization boundary: tensors/arrays in, float HxW(x3) arrays out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xai._typing import ArrayLike


def _to_numpy(x: object) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return np.asarray(x)


def to_image(
    image: ArrayLike,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Return an ``(H, W, 3)`` float image in [0, 1] from a tensor or array.

    Accepts CHW or HWC, a leading batch axis of 1, grayscale (1 channel or 2-D), uint8 (0-255)
    or float images. ``mean``/``std`` undo a normalization (``x * std + mean``), e.g.
    ``xai.data.IMAGENET_MEAN``/``IMAGENET_STD``; float images outside [0, 1] without them are
    min-max rescaled for display.

    Raises:
        ValueError: the shape is not an image.
    """
    arr = _to_numpy(image)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(
            f"image must be (C, H, W) or (H, W, C) (optionally with a batch of 1), got shape "
            f"{arr.shape}"
        )
    if arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.transpose(arr, (1, 2, 0))
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    if mean is not None or std is not None:
        s = np.asarray(std if std is not None else (1.0,) * arr.shape[-1], dtype=np.float32)
        m = np.asarray(mean if mean is not None else (0.0,) * arr.shape[-1], dtype=np.float32)
        arr = arr * s + m
    elif arr.min() < 0.0 or arr.max() > 1.0:
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr, 0.0, 1.0)


def to_map(attribution: ArrayLike) -> np.ndarray:
    """Return a 2-D float array from a ``(H, W)``, ``(1, H, W)`` or ``(C, H, W)`` map."""
    arr = _to_numpy(attribution).astype(np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        raise ValueError(
            f"attribution must be one (H, W) map, got shape {arr.shape}; reduce channels first "
            "(e.g. .sum(0)) or pass maps[i] for one sample"
        )
    if arr.ndim != 2:
        raise ValueError(f"attribution must be a 2-D (H, W) map, got shape {arr.shape}")
    return arr


def normalize(
    attribution: ArrayLike,
    *,
    signed: bool | None = None,
    percentile: float = 100.0,
    scale: float | None = None,
) -> np.ndarray:
    """Scale a map for display, NaN-safe.

    Unsigned maps go to [0, 1] (divided by their ``percentile``-th percentile of the values,
    clipped); signed maps (``signed=True``, or any negative value when ``signed=None``) go to
    [-1, 1] around 0 (divided by the percentile of the absolute values). A constant or empty map
    becomes zeros. ``scale`` forces the divisor (share one scale across several maps).
    """
    arr = to_map(attribution)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    is_signed = bool((arr < 0).any()) if signed is None else signed
    if not is_signed:
        arr = np.clip(arr, 0.0, None)
    if scale is None:
        ref = np.abs(arr)
        scale = float(np.percentile(ref, percentile)) if ref.size else 0.0
    if scale <= 0:
        return np.zeros_like(arr)
    return np.clip(arr / scale, -1.0 if is_signed else 0.0, 1.0)


def resize_map(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``(H, W)`` with OpenCV (note cv2's (W, H) order)."""
    if arr.shape == tuple(shape):
        return arr
    import cv2

    return cv2.resize(
        arr.astype(np.float32), (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR
    ).astype(arr.dtype)
