"""Layer-wise relevance propagation and the Salient Relevance map, zennit-style.

Swappable parts: :mod:`~.rules` (how one layer redistributes relevance), :mod:`~.composites`
(which rule each layer gets), :mod:`~.canonizers` (batch-norm merging, residual sums), the
attribution :class:`LRP` (with :meth:`LRP.account`, the per-layer relevance balance of
:mod:`~.account`) and its post-step :class:`SalientRelevance`.
"""

from xai.attributions.lrp.account import AccountRow, RelevanceAccount
from xai.attributions.lrp.canonizers import (
    Canonizer,
    MergeBatchNorm,
    MobileNetV2Canonizer,
    ResidualCanonizer,
    ResNetCanonizer,
)
from xai.attributions.lrp.composites import (
    Composite,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    Li2019,
    UniformEpsilon,
)
from xai.attributions.lrp.lrp import LRP
from xai.attributions.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Pass,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
)
from xai.attributions.lrp.salient_relevance import SalientRelevance, context_aware_saliency
from xai.attributions.lrp.transformer import CPLRP, AttnLRP, TransformerComposite

# Only the attribution classes are re-exported into ``xai.attributions``; rules, composites and
# canonizers are imported from here (``from xai.attributions.lrp import EpsilonGammaBox``).
__all__ = ["LRP", "SalientRelevance", "context_aware_saliency"]

_PARTS = (
    AccountRow,
    RelevanceAccount,
    AlphaBeta,
    Canonizer,
    Composite,
    Epsilon,
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    Flat,
    Gamma,
    Gradient,
    Li2019,
    MergeBatchNorm,
    MobileNetV2Canonizer,
    Norm,
    Pass,
    ResNetCanonizer,
    ResidualCanonizer,
    Rule,
    UniformEpsilon,
    WSquare,
    ZBox,
    ZPlus,
    AttnLRP,
    CPLRP,
    TransformerComposite,
)
