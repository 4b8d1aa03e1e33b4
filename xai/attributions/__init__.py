"""Attribution methods. Every method: ``Method(model, ...)(inputs, target=None) -> (B, H, W)``.

Every public module (or subpackage) of this package is imported here, explicitly, and its
``__all__`` re-exported; importing a module runs its ``@register`` decorators, which fill the
registry (:func:`available`, :func:`get`) that drives the contract test, the CLI and the demo.
A new method is its own file with ``@register`` plus one import line here
(``tests/test_architecture.py`` checks that no public module is left out).
"""

from xai.attributions.attention import AttentionRollout, CheferRelevance
from xai.attributions.base import (
    Attribution,
    LayerAttribution,
    LayerView,
    available,
    get,
    normalize_per_sample,
    register,
    upsample,
)
from xai.attributions.cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from xai.attributions.eva import EVA
from xai.attributions.gradients import IntegratedGradients, Occlusion, Saliency, SmoothGrad
from xai.attributions.lrp import LRP, SalientRelevance, context_aware_saliency
from xai.attributions.meta_saliency import MetaSaliency
from xai.attributions.normgrad import (
    LAYER_SETS,
    PRESETS,
    NormGrad,
    SelectiveNormGrad,
    SpatialContribution,
    spatial_contribution,
)
from xai.attributions.similarity import (
    SearchResult,
    SimilarityExplanation,
    SimilarityMaps,
    region_weights,
)
from xai.attributions.sobol import SobolAttribution, SobolIndices, sobol_indices
from xai.attributions.wrappers import WrappedAttribution

__all__ = [
    # the contract and the registry
    "Attribution",
    "LayerAttribution",
    "LayerView",
    "WrappedAttribution",
    "available",
    "get",
    "normalize_per_sample",
    "register",
    "upsample",
    # attention
    "AttentionRollout",
    "CheferRelevance",
    # cam
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
    # eva
    "EVA",
    # gradients
    "IntegratedGradients",
    "Occlusion",
    "Saliency",
    "SmoothGrad",
    # lrp
    "LRP",
    "SalientRelevance",
    "context_aware_saliency",
    # meta_saliency
    "MetaSaliency",
    # normgrad
    "LAYER_SETS",
    "PRESETS",
    "NormGrad",
    "SelectiveNormGrad",
    "SpatialContribution",
    "spatial_contribution",
    # similarity
    "SearchResult",
    "SimilarityExplanation",
    "SimilarityMaps",
    "region_weights",
    # sobol
    "SobolAttribution",
    "SobolIndices",
    "sobol_indices",
]
