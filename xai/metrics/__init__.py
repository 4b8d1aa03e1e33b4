"""Metrics that score explanations, grouped as in Quantus: faithfulness, localization,
randomization, robustness, complexity.

Every metric is a configuration object; calling it returns a :class:`MetricResult`::

    from xai.metrics import Deletion, evaluate
    result = Deletion(n_steps=10)(model, inputs, maps, target=None)
    result.scores      # (B,) per-sample AUC
    result.curve       # (B, T) target score after each step
    result.mean()
    table = evaluate(model, inputs, {"grad_cam": GradCAM(model, "layer4")}, [Deletion()])

Explanation metrics take ``(model, inputs, attributions, target)``; explainer metrics
(randomization, robustness, class sensitivity) take ``(model, inputs, explainer, target)``.
"""

from xai.metrics.base import (
    ExplainerMetric,
    ExplanationMetric,
    Metric,
    MetricResult,
)
from xai.metrics.complexity import Complexity, Sparseness
from xai.metrics.evaluation import evaluate
from xai.metrics.faithfulness import (
    ROAD,
    Deletion,
    FaithfulnessCorrelation,
    Infidelity,
    Insertion,
    MuFidelity,
    PixelFlipping,
    RegionPerturbation,
)
from xai.metrics.localization import (
    EnergyPointingGame,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
)
from xai.metrics.randomization import ClassSensitivity, ModelParameterRandomization, ssim
from xai.metrics.robustness import AvgSensitivity, MaxSensitivity

__all__ = [
    "ROAD",
    "AvgSensitivity",
    "ClassSensitivity",
    "Complexity",
    "Deletion",
    "EnergyPointingGame",
    "ExplainerMetric",
    "ExplanationMetric",
    "FaithfulnessCorrelation",
    "Infidelity",
    "Insertion",
    "MaxSensitivity",
    "Metric",
    "MetricResult",
    "ModelParameterRandomization",
    "MuFidelity",
    "PixelFlipping",
    "PointingGame",
    "RegionPerturbation",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "Sparseness",
    "evaluate",
    "ssim",
]
