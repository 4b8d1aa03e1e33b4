"""Metric figures: curves() and bars() build Figures from the evaluate() table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai.metrics import MetricResult
from xai.visualize.curves import bars, curves


def _table():
    rows = {
        "method": [],
        "metric": [],
        "sample": [],
        "score": [],
        "higher_is_better": [],
        "category": [],
        "curve": [],
        "steps": [],
    }
    steps = [0.0, 0.5, 1.0]
    data = {
        ("a", "deletion"): [[3, 1, 0], [5, 1, 0]],
        ("b", "deletion"): [[3, 2, 0], [5, 4, 0]],
        ("a", "sparseness"): None,
        ("b", "sparseness"): None,
    }
    for (method, metric), curves_ in data.items():
        for i in range(2):
            rows["method"].append(method)
            rows["metric"].append(metric)
            rows["sample"].append(i)
            if curves_ is None:
                rows["score"].append(0.2 + 0.1 * i + (0.3 if method == "b" else 0))
                rows["curve"].append(None)
                rows["steps"].append(None)
            else:
                c = curves_[i]
                rows["score"].append(float(np.trapezoid(c, steps)))
                rows["curve"].append([float(v) for v in c])
                rows["steps"].append(steps)
            rows["higher_is_better"].append(metric == "sparseness")
            rows["category"].append("faithfulness" if metric == "deletion" else "complexity")
    return rows


def test_curves_plot_mean_curve_with_auc_in_legend():
    import matplotlib.pyplot as plt

    fig = curves(_table())
    (ax,) = [a for a in fig.axes if a.get_visible()]
    lines = ax.get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_ydata(), [4, 1, 0])
    np.testing.assert_allclose(lines[0].get_xdata(), [0, 0.5, 1])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["a (1.500)", "b (2.500)"]  # mean trapezoid AUC over the two samples
    assert plt.get_fignums() == []  # nothing went through pyplot


def test_curves_from_results_on_given_axes():
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    res = MetricResult(
        torch.tensor([0.1, 0.3]), torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([0.0, 1.0])
    )
    out = curves({"m": res}, ax=ax, metric="deletion")
    assert out is fig and ax.get_title() == "deletion"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [2.0, 0.0])


def test_bars_show_mean_scores_per_method_and_metric():
    fig = bars(_table())
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == [
        "deletion (lower is better)",
        "sparseness (higher is better)",
    ]
    heights = [p.get_height() for p in axes[1].patches]
    np.testing.assert_allclose(heights, [0.25, 0.55])
    grouped = bars(_table(), ax=__import__("matplotlib.figure").figure.Figure().add_subplot())
    assert len(grouped.axes[0].patches) == 4


def test_errors():
    table = _table()
    with pytest.raises(ValueError, match="no curves"):
        curves(table, metric="sparseness")
    with pytest.raises(ValueError, match="lacks the columns"):
        bars({"method": []})
    with pytest.raises(ValueError, match="not in the table"):
        bars(table, metrics=["nope"])
