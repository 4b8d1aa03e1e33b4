"""Salient regions of one attribution map and where they lie, in numbers (no words yet).

A map ``S`` (``H x W``) becomes regions in the way Feldhus et al. (2023) turn token attributions
into salient spans, adapted to images (spec ``verbalization.md`` section 4):

1. ``P = max(S, 0)`` (or ``max(-S, 0)`` for negative evidence), ``a = P / max P``;
2. a threshold ``theta`` on ``a`` (``"mean"``: the mean of the top ``floor(0.4 HW)`` values, SMV's
   default; ``"std"``; ``"fraction_of_max"``; ``"top_share"``: the smallest set of pixels that
   holds ``value`` of the relevance, i.e. the top-k share);
3. regions are the 8-connected components of ``a >= theta`` (``scipy.ndimage.label``), optionally
   bridged by a binary closing of radius ``merge_radius``; components smaller than
   ``min_area * HW`` pixels are dropped;
4. per region: share of the relevance, area, relevance-weighted centroid, peak, bounding box,
   and the thirds of the image the centroid falls in (half-open bins, computed without
   division so that a centroid on a boundary is classified exactly).

Everything is NumPy/SciPy on float64 copies; no model, no randomness.

References:
    Feldhus, Hennig, Nasert, Ebert, Schwarzenberg, Möller, "Saliency Map Verbalization: Comparing
    Feature Importance Representations from Model-free and Instruction-based Methods",
    NLRSE workshop at ACL 2023 (arXiv 2210.07222).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = [
    "THRESHOLDS", "Region", "as_maps", "find_regions", "grid_shares", "label_masks", "position"
]  # fmt: skip

THRESHOLDS = ("mean", "std", "fraction_of_max", "top_share")
Threshold = Literal["mean", "std", "fraction_of_max", "top_share"]
_ROWS = ("upper", "middle", "lower")
_COLS = ("left", "center", "right")
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True, eq=False)
class Region:
    """One salient region of a map.

    Attributes:
        mask: ``(H, W)`` bool tensor of the region's pixels.
        share: the region's share of the map's positive (or, for ``sign="negative"``, negative)
            relevance, in ``[0, 1]``.
        area: the region's share of the image's pixels.
        centroid: relevance-weighted centre ``(y, x)`` in pixels.
        peak: ``(y, x)`` of the first maximum inside the region (row-major order).
        bbox: ``(y0, x0, y1, x1)``, exclusive ends.
        row: ``"upper"``, ``"middle"`` or ``"lower"`` third of the centroid.
        col: ``"left"``, ``"center"`` or ``"right"`` third of the centroid.
        size: ``"small"`` (area < 5%), ``"medium"`` (< 20%) or ``"large"``.
        label: the named area the region is on (see ``naming`` of the verbalizer), or ``None``.
        outside: the object the region lies outside of (``objects=``), or ``None``.
        sign: ``"positive"`` (evidence for the target) or ``"negative"`` (against it).
    """

    mask: Tensor = field(repr=False)
    share: float
    area: float
    centroid: tuple[float, float]
    peak: tuple[int, int]
    bbox: tuple[int, int, int, int]
    row: str
    col: str
    size: str
    label: str | None = None
    outside: str | None = None
    sign: str = "positive"


def as_maps(attributions: object, name: str = "attributions") -> np.ndarray:
    """``(B, H, W)`` float64 NumPy copy of a tensor or array of shape ``(B, H, W)`` or ``(H, W)``.

    Raises:
        TypeError: not a tensor/array, or not real numbers.
        ValueError: wrong rank, empty, or non-finite values (NaN maps are an upstream bug).
    """
    if isinstance(attributions, Tensor):
        if attributions.is_complex():
            raise TypeError(f"{name} must be real, got dtype {attributions.dtype}")
        arr = attributions.detach().to("cpu", torch.float64).numpy()
    elif isinstance(attributions, np.ndarray):
        if not (np.issubdtype(attributions.dtype, np.number) or attributions.dtype == bool):
            raise TypeError(f"{name} must hold numbers, got dtype {attributions.dtype}")
        if np.iscomplexobj(attributions):
            raise TypeError(f"{name} must be real, got dtype {attributions.dtype}")
        arr = attributions.astype(np.float64)
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy array of shape (B, H, W), got "
            f"{type(attributions).__name__}"
        )
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        hint = " (per-channel maps? reduce the channel axis first, e.g. .sum(1))" * (arr.ndim == 4)
        raise ValueError(f"{name} must have shape (B, H, W) or (H, W), got {arr.shape}{hint}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    bad = ~np.isfinite(arr)
    if bad.any():
        samples = sorted(set(np.nonzero(bad)[0].tolist()))
        raise ValueError(
            f"{name} contain {int(bad.sum())} NaN/inf values (samples {samples[:5]}): a map "
            "with NaN cannot be described; check the model and inputs for NaN, or the method "
            "for a division by zero"
        )
    return np.ascontiguousarray(arr)


def position(y: float, x: float, height: int, width: int) -> tuple[str, str]:
    """The ``(row, col)`` third of a point, half-open bins: ``3 (x + 0.5) < W`` is left,
    ``< 2W`` centre, else right (the same for rows), compared without division.
    """
    row = 0 if 3 * (y + 0.5) < height else 1 if 3 * (y + 0.5) < 2 * height else 2
    col = 0 if 3 * (x + 0.5) < width else 1 if 3 * (x + 0.5) < 2 * width else 2
    return _ROWS[row], _COLS[col]


def grid_shares(positive: np.ndarray) -> np.ndarray:
    """``(3, 3)`` share of the positive relevance in each third of rows and columns (zeros when
    there is none), pixels binned like :func:`position`.
    """
    h, w = positive.shape
    rows = np.searchsorted([h, 2 * h], 3 * (np.arange(h) + 0.5), side="right")
    cols = np.searchsorted([w, 2 * w], 3 * (np.arange(w) + 0.5), side="right")
    out = np.zeros((3, 3))
    np.add.at(out, (rows[:, None], cols[None, :]), positive)
    total = positive.sum()
    return out / total if total > 0 else out


def _size(area: float) -> str:
    return "small" if area < 0.05 else "medium" if area < 0.20 else "large"


def _salient(a: np.ndarray, threshold: str, value: float) -> np.ndarray:
    """Pixels of the normalized map ``a`` (max 1) at or above the threshold, and above 0.

    ``>=`` rather than the SMV code's ``>``: with ``>`` a flat block covering more than
    ``value`` of the image (its top-k mean is then 1) would vanish.
    """
    flat = a.ravel()
    if threshold == "mean":
        k = max(1, int(np.floor(value * flat.size)))
        theta = np.partition(flat, flat.size - k)[flat.size - k :].mean()
    elif threshold == "std":
        theta = value * flat.std()
    elif threshold == "fraction_of_max":
        theta = value
    else:  # top_share: the fewest pixels holding `value` of the relevance
        ordered = np.sort(flat)[::-1]
        cum = np.cumsum(ordered)
        k = min(int(np.searchsorted(cum, value * cum[-1] * (1 - 1e-12))), flat.size - 1)
        theta = ordered[k]
    return (a >= theta) & (a > 0)


def _close(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    # pad so that the erosion of the closing does not eat regions touching the border
    padded = np.pad(mask, radius)
    closed = ndimage.binary_closing(padded, structure=np.ones((2 * radius + 1,) * 2, bool))
    return closed[radius:-radius, radius:-radius] | mask


def find_regions(
    values: np.ndarray,
    *,
    threshold: str = "mean",
    value: float = 0.4,
    min_area: float = 0.01,
    merge_radius: int = 0,
) -> list[Region]:
    """All regions of one map's non-negative relevance ``values`` (``(H, W)``), by share.

    Args:
        values: ``(H, W)`` non-negative float64 array (``max(S, 0)`` or ``max(-S, 0)``).
        threshold: how salient pixels are chosen (``"mean"``, default; ``"std"``,
            ``"fraction_of_max"`` or ``"top_share"``), see :class:`~xai.verbalize.Verbalizer`.
        value: the threshold's parameter (default 0.4).
        min_area: regions smaller than this share of the image are dropped (default 0.01).
        merge_radius: bridge gaps up to ``2 * merge_radius`` pixels with a binary closing
            before the components are labelled (default 0).

    Returns:
        Regions ordered by share (descending), then position (row, column); empty when
        ``values`` sums to zero.
    """
    total = values.sum()
    if total <= 0:
        return []
    h, w = values.shape
    salient = _close(_salient(values / values.max(), threshold, value), merge_radius)
    labels, n = ndimage.label(salient, structure=_EIGHT)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    sums = ndimage.sum_labels(values, labels, index)
    ys, xs = np.mgrid[0:h, 0:w]
    cy = ndimage.sum_labels(values * ys, labels, index)
    cx = ndimage.sum_labels(values * xs, labels, index)
    slices = ndimage.find_objects(labels)
    regions = []
    for i in range(n):
        if counts[i] < min_area * h * w or sums[i] <= 0:
            continue
        mask = labels == i + 1
        inside = np.where(mask, values, -np.inf)
        py, px = divmod(int(np.argmax(inside)), w)
        centroid = (float(cy[i] / sums[i]), float(cx[i] / sums[i]))
        row, col = position(*centroid, h, w)
        sy, sx = slices[i]
        regions.append(
            Region(
                mask=torch.from_numpy(mask),
                share=float(sums[i] / total),
                area=float(counts[i] / (h * w)),
                centroid=centroid,
                peak=(py, px),
                bbox=(sy.start, sx.start, sy.stop, sx.stop),
                row=row,
                col=col,
                size=_size(float(counts[i] / (h * w))),
            )
        )
    regions.sort(key=lambda r: (-r.share, _ROWS.index(r.row), _COLS.index(r.col)))
    return regions


def label_masks(
    labels: Mapping[str, object] | Sequence[Mapping[str, object]] | None,
    batch: int,
    shape: tuple[int, int],
) -> list[dict[str, np.ndarray]]:
    """Per sample, ``name -> (H, W)`` bool mask from ``{name: (H, W) or (B, H, W) mask}`` or a
    list of ``B`` such mappings (non-zero = inside).
    """
    if labels is None:
        return [{} for _ in range(batch)]
    if isinstance(labels, Mapping):
        per_sample: Sequence[Mapping[str, object]] = [labels] * batch
        shared = True
    elif isinstance(labels, Sequence) and not isinstance(labels, str):
        if len(labels) != batch:
            raise ValueError(f"got {len(labels)} label mappings for {batch} maps: give one each")
        per_sample, shared = labels, False
    else:
        raise TypeError(
            "labels must be a mapping {name: mask} with (H, W) or (B, H, W) masks, or a list "
            f"of one such mapping per map; got {type(labels).__name__}"
        )
    out = []
    for b, mapping in enumerate(per_sample):
        if not isinstance(mapping, Mapping):
            raise TypeError(f"labels[{b}] must be a mapping {{name: mask}}")
        masks = {}
        for name, mask in mapping.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"label names must be non-empty strings, got {name!r}")
            arr = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
            if shared and arr.ndim == 3:
                if arr.shape[0] != batch:
                    raise ValueError(f"mask {name!r} has {arr.shape[0]} samples for {batch} maps")
                arr = arr[b]
            if arr.shape != shape:
                raise ValueError(
                    f"mask {name!r} has shape {arr.shape}, the maps are {shape}: resize masks "
                    "to the map size (e.g. torch.nn.functional.interpolate(..., mode='nearest'))"
                )
            masks[name] = arr != 0
        out.append(masks)
    return out
