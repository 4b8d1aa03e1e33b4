"""Many methods x many metrics: :func:`evaluate`, a tidy table of per-sample scores.

The table is built from the metrics' declared metadata only (``name``, ``higher_is_better``,
``category``, ``needs_masks`` and whether a metric re-explains), so a new metric needs no
change here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from xai._checks import check_inputs
from xai._typing import TargetLike
from xai.adapter import Target
from xai.metrics.base import ExplainerMetric, Metric, as_maps

__all__ = ["evaluate"]

_COLUMNS = (
    "method",
    "metric",
    "sample",
    "score",
    "higher_is_better",
    "category",
    "curve",
    "steps",
)


def evaluate(
    model: nn.Module,
    inputs: Tensor,
    methods: Mapping[str, Any],
    metrics: Sequence[Metric],
    target: TargetLike | Target = None,
    *,
    masks: Any = None,
    additional_inputs: Any = None,
) -> dict[str, list]:
    """Score several methods with several metrics; returns a tidy, pandas-free table.

    Each method is an :class:`~xai.attributions.base.Attribution` (explained once, maps reused
    by every explanation metric, and re-explained by explainer metrics) or precomputed
    ``(B, H, W)`` maps (explainer metrics are then skipped with a warning). Metrics that declare
    :attr:`~xai.metrics.base.Metric.needs_masks` (localization) need ``masks``.

    Args:
        model: the explained model.
        inputs: ``(B, C, H, W)`` batch.
        methods: name -> Attribution or maps.
        metrics: metric objects.
        target: as for any metric (``None``: each sample's argmax on the clean input).
        masks: ground truth for localization metrics (``(B, H, W)`` masks or ``(B, 4)`` boxes).
        additional_inputs: extra forward arguments of the model, passed to every method and
            to every metric that runs the model (see
            :meth:`~xai.attributions.base.Attribution.__call__`).

    Returns:
        A dict of equal-length lists with one row per (method, metric, sample): ``method``,
        ``metric`` (its ``name``), ``sample`` (index in the batch), ``score`` (float),
        ``higher_is_better``, ``category``, ``curve`` (list of floats or ``None``) and
        ``steps`` (list of floats or ``None``). ``pandas.DataFrame(table)`` works directly.

    Raises:
        ValueError: a metric that needs masks without ``masks``.
    """
    table: dict[str, list] = {key: [] for key in _COLUMNS}
    x = check_inputs(inputs, ranks=(4, 5))  # each metric checks its own input_ranks
    for metric in metrics:
        if metric.needs_masks and masks is None:
            raise ValueError(f"{type(metric).__name__} needs masks: evaluate(..., masks=...)")
    given = {} if additional_inputs is None else {"additional_inputs": additional_inputs}
    for method_name, method in methods.items():
        is_explainer = callable(method) and not isinstance(method, (Tensor, np.ndarray))
        maps = None
        for metric in metrics:
            if isinstance(metric, ExplainerMetric):
                if not is_explainer:
                    warnings.warn(
                        f"{type(metric).__name__} re-explains the model; method {method_name!r} "
                        "is given as precomputed maps, skipped (pass the Attribution instead)",
                        stacklevel=2,
                    )
                    continue
                result = metric(model, x, method, target, **given)
            else:
                if maps is None:
                    maps = as_maps(method(x, target=target, **given) if is_explainer else method, x)
                extra = {"masks": masks} if metric.needs_masks else {}
                if getattr(metric, "needs_model", False):
                    extra.update(given)
                result = metric(model, x, maps, target, **extra)  # type: ignore[operator]
            steps = None if result.steps is None else result.steps.tolist()
            for i, score in enumerate(result.scores.tolist()):
                table["method"].append(method_name)
                table["metric"].append(metric.name)
                table["sample"].append(i)
                table["score"].append(float(score))
                table["higher_is_better"].append(bool(metric.higher_is_better))
                table["category"].append(metric.category)
                table["curve"].append(None if result.curve is None else result.curve[i].tolist())
                table["steps"].append(steps)
    return table
