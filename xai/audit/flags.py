"""The flag rules of an audit: which classes look at the wrong place.

* ``"outside_object"``: a class's mean share of positive relevance inside the mask is below
  ``mass_threshold`` and below the mean mask area (what a uniform map scores).
* ``"fixed_location"``: at least ``hotspot_threshold`` of a class's maps peak in one grid cell
  and, with masks, most of those peaks lie outside the object: the signature of a shortcut such
  as a watermark or a ruler (Geirhos et al. 2020).

References:
    Geirhos et al., "Shortcut learning in deep neural networks", Nat. Mach. Intell. 2020.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["cell_box", "class_flags", "hotspots"]

_FLAG_TEXT = {
    "outside_object": "attribution mostly outside the object: {mass:.0%} of the positive "
    "relevance lies inside the mask (threshold {thr:.0%})",
    "fixed_location": "hot spot at a fixed location: {share:.0%} of the maps peak in the cell "
    "rows {y0}-{y1}, cols {x0}-{x1} (threshold {thr:.0%}){where}",
}


def cell_box(r: int, q: int, grid: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Pixel box ``(y0, x0, y1, x1)`` (exclusive ends) of cell ``(r, q)`` of a ``grid`` grid."""
    return (
        math.ceil(r * h / grid),
        math.ceil(q * w / grid),
        math.ceil((r + 1) * h / grid),
        math.ceil((q + 1) * w / grid),
    )


def hotspots(
    counts: Tensor,
    n: int,
    peak_rows: np.ndarray,
    peak_cols: np.ndarray,
    hits: np.ndarray,
    image_size: tuple[int, int],
    has_masks: bool,
    top: int = 3,
) -> list[dict]:
    """The ``top`` most frequent peak cells of one class.

    Args:
        counts: ``(grid, grid)`` peak counts of the class.
        n: the class's number of samples.
        peak_rows: each sample's peak row (``-1``: no hot spot).
        peak_cols: each sample's peak column (``-1``: no hot spot).
        hits: each sample's pointing hit (1: the peak is on the object; NaN without masks).
        image_size: ``(H, W)``.
        has_masks: whether the audit had masks (else ``outside`` is NaN).
        top: the number of cells (default 3).

    Returns:
        Dicts ``cell`` ``(row, col)``, ``box`` (pixels), ``share`` of the class's maps and
        ``outside`` (share of those peaks off the object), most frequent first.
    """
    grid = counts.shape[0]
    h, w = image_size
    flat_counts = counts.flatten()
    order = torch.argsort(flat_counts, descending=True, stable=True)[:top]
    out = []
    for flat in order.tolist():
        cnt = int(flat_counts[flat])
        if cnt == 0:
            break
        r, q = divmod(flat, grid)
        in_cell = (peak_rows * grid // h == r) & (peak_cols * grid // w == q)
        outside = float(1.0 - np.nanmean(hits[in_cell])) if has_masks else float("nan")
        out.append(
            {
                "cell": (r, q),
                "box": cell_box(r, q, grid, h, w),
                "share": cnt / n,
                "outside": outside,
            }
        )
    return out


def class_flags(row: dict, config: dict) -> list[dict]:
    """The flags of one class row (``name``, ``n``, ``mass_inside``, ``area_inside``,
    ``hotspots``), with the audit's ``min_samples``, ``mass_threshold``,
    ``hotspot_threshold`` and ``has_masks`` in ``config``.
    """
    if row["n"] < config["min_samples"]:
        return []
    has_masks = config["has_masks"]
    flags = []
    if has_masks and row["mass_inside"] < min(config["mass_threshold"], row["area_inside"]):
        flags.append(
            {
                "class": row["class"],
                "name": row["name"],
                "kind": "outside_object",
                "mass_inside": row["mass_inside"],
                "message": _FLAG_TEXT["outside_object"].format(
                    mass=row["mass_inside"], thr=config["mass_threshold"]
                ),
            }
        )
    top = row["hotspots"][0] if row["hotspots"] else None
    if (
        top is not None
        and top["share"] >= config["hotspot_threshold"]
        and (not has_masks or top["outside"] > 0.5)
    ):
        y0, x0, y1, x1 = top["box"]
        where = f"; {top['outside']:.0%} of those peaks are outside the object" if has_masks else ""
        flags.append(
            {
                "class": row["class"],
                "name": row["name"],
                "kind": "fixed_location",
                "box": top["box"],
                "share": top["share"],
                "message": _FLAG_TEXT["fixed_location"].format(
                    share=top["share"], y0=y0, y1=y1 - 1, x0=x0, x1=x1 - 1,
                    thr=config["hotspot_threshold"], where=where,
                ),
            }
        )  # fmt: skip
    return flags
