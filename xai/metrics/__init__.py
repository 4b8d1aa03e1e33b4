"""Metrics that score explanations: faithfulness, localization, randomization, robustness,
complexity.

Every metric is a configuration object; calling it returns a :class:`MetricResult`::

    result = Deletion(n_steps=10)(model, inputs, maps, target=None)
    result.scores  # (B,)   result.curve  # (B, T)   result.mean()
"""

from xai.metrics.base import ExplainerMetric, ExplanationMetric, Metric, MetricResult
from xai.metrics.randomization import ClassSensitivity, ModelParameterRandomization, ssim

__all__ = [
    "ClassSensitivity",
    "ExplainerMetric",
    "ExplanationMetric",
    "Metric",
    "MetricResult",
    "ModelParameterRandomization",
    "ssim",
]
