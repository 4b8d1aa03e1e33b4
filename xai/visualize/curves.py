"""Metric figures: mean perturbation curves per method and bar charts of mean scores.

Both take the tidy table of :func:`xai.metrics.evaluate` (a dict of lists); :func:`curves` also
takes ``{method: MetricResult}``. Matplotlib is imported lazily and figures are built without
pyplot, so nothing is shown and no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["bars", "curves"]


def _rows(table: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    required = ("method", "metric", "sample", "score")
    missing = [key for key in required if key not in table]
    if missing:
        raise ValueError(
            f"the table lacks the columns {missing}; pass the output of xai.metrics.evaluate"
        )
    keys = list(table)
    return [
        dict(zip(keys, values, strict=True))
        for values in zip(*(table[k] for k in keys), strict=True)
    ]


def _curve_groups(
    data: Any, metric: str | None
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    """Metric -> method -> (steps (T,), mean curve (T,), mean score)."""
    from xai.metrics.base import MetricResult

    groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]] = {}
    if (
        isinstance(data, Mapping)
        and data
        and all(isinstance(v, MetricResult) for v in data.values())
    ):
        for method, result in data.items():
            if result.curve is None or result.steps is None:
                raise ValueError(f"the result of {method!r} has no curve")
            key = metric or "metric"
            groups.setdefault(key, {})[method] = (
                result.steps.detach().cpu().double().numpy(),
                result.curve.detach().cpu().double().numpy().mean(0),
                result.mean(),
            )
        return groups
    if not isinstance(data, Mapping):
        raise TypeError(
            "curves() takes the table of xai.metrics.evaluate or {method: MetricResult}, got "
            f"{type(data).__name__}"
        )
    collected: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in _rows(data):
        if row.get("curve") is None or (metric is not None and row["metric"] != metric):
            continue
        collected.setdefault(row["metric"], {}).setdefault(row["method"], []).append(row)
    for name, by_method in collected.items():
        for method, rows in by_method.items():
            lengths = {len(r["curve"]) for r in rows}
            if len(lengths) != 1:
                raise ValueError(f"curves of {method!r} / {name!r} have different lengths")
            steps = np.asarray(rows[0]["steps"], dtype=float)
            mean_curve = np.mean([np.asarray(r["curve"], dtype=float) for r in rows], 0)
            scores = np.asarray([r["score"] for r in rows], dtype=float)
            groups.setdefault(name, {})[method] = (steps, mean_curve, float(np.nanmean(scores)))
    if not groups:
        raise ValueError(
            "no curves to plot: include a curve metric (Deletion, Insertion, PixelFlipping ...)"
            + (f" named {metric!r}" if metric else "")
        )
    return groups


def curves(
    table_or_results: Any,
    ax: Any = None,
    *,
    metric: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Mean perturbation curves (deletion, insertion ...) per method, the AUC in the legend.

    Args:
        table_or_results: the table of :func:`xai.metrics.evaluate` or ``{method:
            MetricResult}`` (results with curves, of one metric).
        ax: draw on this Axes (one metric only); by default a new Figure with one panel per
            curve metric.
        metric: plot only this metric (its ``name``, e.g. ``"deletion"``).
        xlabel: x-axis label (default: fraction of features perturbed; layers randomized for
            the randomization test).
        ylabel: y-axis label (default: target score; similarity for the randomization test).
        figsize: figure size (default 4 x 3.2 inches per panel).

    Returns:
        The matplotlib ``Figure``.

    Raises:
        ValueError: no curve to plot, or several metrics with a single ``ax``.
    """
    groups = _curve_groups(table_or_results, metric)
    if ax is not None:
        if len(groups) != 1:
            raise ValueError(
                f"{len(groups)} curve metrics ({', '.join(groups)}) for one ax; pass metric="
            )
        axes = [ax]
        fig = ax.figure
    else:
        from matplotlib.figure import Figure

        n = len(groups)
        cols = min(n, 3)
        rows = math.ceil(n / cols)
        fig = Figure(figsize=figsize or (4.0 * cols, 3.2 * rows), constrained_layout=True)
        axes = list(np.asarray(fig.subplots(rows, cols, squeeze=False)).flat)
        for extra in axes[n:]:
            extra.set_visible(False)
        axes = axes[:n]
    for panel, (name, by_method) in zip(axes, groups.items(), strict=True):
        for method, (steps, curve, auc) in by_method.items():
            panel.plot(steps, curve, marker="o", markersize=3, label=f"{method} ({auc:.3f})")
        panel.set_title(name)
        randomization = name == "model_parameter_randomization"
        panel.set_xlabel(
            xlabel or ("layers randomized" if randomization else "fraction of features perturbed")
        )
        panel.set_ylabel(ylabel or ("similarity to the original" if randomization else "score"))
        panel.legend(title="method (mean score)", fontsize="small")
        panel.grid(alpha=0.3)
    return fig


def bars(
    table: Mapping[str, Sequence[Any]],
    ax: Any = None,
    *,
    metrics: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Bar chart of mean scores (± standard error over samples) per method and metric.

    One group of bars per metric, one bar per method; each metric's title says whether higher
    or lower is better when the table has ``higher_is_better``.

    Args:
        table: the table of :func:`xai.metrics.evaluate`.
        ax: draw every metric on this Axes (grouped bars); by default one panel per metric
            (scores of different metrics have different scales).
        metrics: the metrics to show, in order (default: all, in table order).
        figsize: figure size.

    Returns:
        The matplotlib ``Figure``.
    """
    rows = _rows(table)
    names = list(dict.fromkeys(r["metric"] for r in rows)) if metrics is None else list(metrics)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if not names or not methods:
        raise ValueError("the table is empty")
    stats: dict[str, dict[str, tuple[float, float]]] = {}
    better: dict[str, bool | None] = {}
    for name in names:
        sel = [r for r in rows if r["metric"] == name]
        if not sel:
            raise ValueError(f"metric {name!r} is not in the table")
        better[name] = sel[0].get("higher_is_better")
        for method in methods:
            vals = np.asarray([r["score"] for r in sel if r["method"] == method], dtype=float)
            vals = vals[~np.isnan(vals)]
            if vals.size:
                err = float(vals.std(ddof=1) / np.sqrt(vals.size)) if vals.size > 1 else 0.0
                stats.setdefault(name, {})[method] = (float(vals.mean()), err)

    def title(name: str) -> str:
        hib = better[name]
        return name if hib is None else f"{name} ({'higher' if hib else 'lower'} is better)"

    colors = [f"C{i % 10}" for i in range(len(methods))]
    if ax is not None:
        fig = ax.figure
        width = 0.8 / len(methods)
        xs = np.arange(len(names))
        for j, method in enumerate(methods):
            means = [stats.get(n, {}).get(method, (np.nan, 0.0))[0] for n in names]
            errs = [stats.get(n, {}).get(method, (np.nan, 0.0))[1] for n in names]
            ax.bar(
                xs + (j - (len(methods) - 1) / 2) * width,
                means,
                width,
                yerr=errs,
                label=method,
                color=colors[j],
                capsize=2,
            )
        ax.set_xticks(xs, [title(n) for n in names], rotation=20, ha="right")
        ax.legend(fontsize="small")
        ax.axhline(0, color="0.3", lw=0.8)
        return fig
    from matplotlib.figure import Figure

    n = len(names)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=figsize or (3.2 * cols, 3.0 * nrows), constrained_layout=True)
    axes = list(np.asarray(fig.subplots(nrows, cols, squeeze=False)).flat)
    for extra in axes[n:]:
        extra.set_visible(False)
    for panel, name in zip(axes[:n], names, strict=True):
        means = [stats.get(name, {}).get(m, (np.nan, 0.0))[0] for m in methods]
        errs = [stats.get(name, {}).get(m, (np.nan, 0.0))[1] for m in methods]
        panel.bar(range(len(methods)), means, yerr=errs, color=colors, capsize=2)
        panel.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        panel.set_title(title(name), fontsize="medium")
        panel.axhline(0, color="0.3", lw=0.8)
    return fig
