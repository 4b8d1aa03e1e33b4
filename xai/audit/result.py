"""What :func:`xai.audit.audit` returns: per-class and per-group tables, flags and examples."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["AuditResult"]


@dataclass
class AuditResult:
    """What :func:`audit` found. Tables are lists of dicts (``pandas.DataFrame(rows)`` works).

    Attributes:
        classes: one row per class: ``class``, ``name``, ``n``, ``accuracy``, ``mass_inside``
            (mean share of positive relevance inside the mask, NaN without masks),
            ``mass_inside_ci`` (95% bootstrap interval), ``area_inside`` (mean mask area share:
            what a uniform map would score), ``pointing`` (hit rate), ``hotspots`` (the top
            cells: ``{"cell": (row, col), "box": (y0, x0, y1, x1), "share": s,
            "outside": s_out}``), ``flags`` (list of flag kinds).
        groups: one row per group: ``group``, ``name``, ``n``, ``accuracy``, ``mass_inside``,
            ``pointing``.
        class_groups: one row per (class, group) with the same columns.
        flags: one dict per flag: ``class``, ``name``, ``kind``, ``message`` and the numbers.
        samples: per-sample columns (lists): ``index``, ``label``, ``prediction``, ``group``,
            ``mass_inside``, ``hit``, ``peak_row``, ``peak_col``.
        mean_maps: ``(K, H, W)`` mean of the per-sample max-normalized positive maps per class
            (rows of classes never seen are zero).
        hotspot_counts: ``(K, grid_size, grid_size)`` counts of each map's peak cell.
        worst: class -> list of the ``n_worst`` examples with the least mass inside the mask
            (or the lowest target score without masks): dicts with ``index``, ``image``
            ``(C, H, W)``, ``map`` ``(H, W)``, ``mask`` ``(H, W)`` or None, ``label``,
            ``prediction``, ``mass_inside``.
        config: the audit's settings.
        concepts: class -> the class's concepts (``audit(..., concepts=K)``), most important
            first: ``concept`` (index), ``importance`` (Sobol total index, CRAFT),
            ``mass_inside`` (share of the concept's map inside the object mask), ``peak_cell``
            and ``box`` (where its mean map peaks).
    """

    classes: list[dict]
    groups: list[dict]
    class_groups: list[dict]
    flags: list[dict]
    samples: dict[str, list]
    mean_maps: Tensor
    hotspot_counts: Tensor
    worst: dict[int, list[dict]]
    config: dict = field(default_factory=dict)
    concepts: dict[int, list[dict]] = field(default_factory=dict)

    @property
    def flagged_classes(self) -> list[int]:
        """Classes with at least one flag, sorted."""
        return sorted({f["class"] for f in self.flags})

    def to_dict(self) -> dict:
        """A JSON-serializable summary (no images): tables, flags, per-sample columns,
        hot-spot counts and the settings.
        """
        return _jsonable({
            "config": self.config,
            "classes": self.classes,
            "groups": self.groups,
            "class_groups": self.class_groups,
            "flags": self.flags,
            "samples": self.samples,
            "hotspot_counts": self.hotspot_counts.tolist(),
            "concepts": self.concepts,
            "worst": {
                str(k): [{kk: vv for kk, vv in w.items() if kk not in ("image", "map", "mask")}
                         for w in v]
                for k, v in self.worst.items()
            },
        })  # fmt: skip


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.generic,)):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
