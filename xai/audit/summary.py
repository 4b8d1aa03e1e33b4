"""From an audit's accumulated state to its tables: per class, per group, per (class, group).

Each row holds the accuracy, the mean share of positive relevance inside the mask (with a 95%
percentile bootstrap interval per class), the mean mask area and the pointing hit rate; class
rows also hold their hot spots and flags (:mod:`xai.audit.flags`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from xai.audit.flags import class_flags, hotspots
from xai.audit.result import AuditResult
from xai.audit.state import AuditState

__all__ = ["summarize"]


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _bootstrap(values: Sequence[float], n_boot: int, rng: np.random.Generator) -> list[float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2 or n_boot < 1:
        return [float("nan"), float("nan")]
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def _samples(cols: dict[str, torch.Tensor]) -> dict[str, list]:
    """The per-sample columns as lists (``group`` ``None`` where the data has none)."""
    out = {k: v.tolist() for k, v in cols.items() if k != "badness"}
    out["group"] = [None if v < 0 else v for v in out["group"]]
    return out


def _name(names: Sequence[str] | None, index: Any, default: str) -> str:
    if index is None:
        return default
    return str(names[index]) if names is not None and index < len(names) else str(index)


def summarize(
    state: AuditState,
    config: dict,
    class_names: Sequence[str] | None,
    group_names: Sequence[str] | None,
) -> AuditResult:
    """The :class:`AuditResult` of ``state``; ``config`` (the settings of
    :meth:`AuditConfig.summary <xai.audit.config.AuditConfig.summary>`) gets ``has_masks``.
    """
    cols = state.columns()
    samples = _samples(cols)
    label = cols["label"].numpy()
    correct = (cols["prediction"].numpy() == label).astype(np.float64)
    mass = cols["mass_inside"].numpy()
    hit = cols["hit"].numpy()
    area = cols["area_inside"].numpy()
    peak_r, peak_c = cols["peak_row"].numpy(), cols["peak_col"].numpy()
    has_masks = bool(np.isfinite(area).any())
    config["has_masks"] = has_masks
    assert state.image_size is not None  # set by the first batch
    grid, (h, w) = config["grid_size"], state.image_size
    rng = np.random.default_rng(config["seed"])
    counts = state.counts
    n_classes = max(max(counts) + 1, len(class_names or ()))

    def stats(sel: np.ndarray) -> dict:
        return {
            "n": int(sel.sum()),
            "accuracy": float(correct[sel].mean()) if sel.any() else float("nan"),
            "mass_inside": _nanmean(mass[sel]),
            "area_inside": _nanmean(area[sel]),
            "pointing": _nanmean(hit[sel]),
        }

    classes, flags = [], []
    for c in sorted(counts):
        sel = label == c
        row = {"class": c, "name": _name(class_names, c, "all"), **stats(sel)}
        row["mass_inside_ci"] = _bootstrap(mass[sel], config["n_bootstrap"], rng)
        row["hotspots"] = hotspots(
            state.class_hotspots[c], counts[c], peak_r[sel], peak_c[sel], hit[sel], (h, w),
            has_masks,
        )  # fmt: skip
        found = class_flags(row, config)
        row["flags"] = [f["kind"] for f in found]
        flags += found
        classes.append(row)
    groups, class_groups = [], []
    gid = cols["group"].numpy()
    if bool((gid >= 0).any()):
        for gv in sorted(set(gid.tolist())):
            sel = gid == gv
            gname = _name(group_names, gv if gv >= 0 else None, "all")
            groups.append({"group": gv, "name": gname, **stats(sel)})
            for c in sorted(counts):
                both = sel & (label == c)
                if both.any():
                    class_groups.append(
                        {
                            "class": c,
                            "name": _name(class_names, c, "all"),
                            "group": gv,
                            "group_name": gname,
                            **stats(both),
                        }
                    )
    mean_maps = torch.zeros(n_classes, h, w, dtype=torch.float64)
    hot = torch.zeros(n_classes, grid, grid, dtype=torch.long)
    rows = state.class_counts.shape[0]
    seen = state.class_counts > 0
    mean_maps[:rows][seen] = state.class_map_sums[seen] / state.class_counts[seen, None, None]
    hot[:rows][seen] = state.class_hotspots[seen]
    worst = {
        c: [{k: v for k, v in d.items() if k != "badness"} for d in lst]
        for c, lst in state.worst.items()
    }
    return AuditResult(classes, groups, class_groups, flags, samples, mean_maps, hot, worst, config)
