"""Concept extraction and concept importance (CRAFT, CVPR 2023; holistic framework, NeurIPS
2023): :class:`ConceptExtractor`, factorizers, importance methods, maps and metrics. Concept
probing against labelled masks: :class:`NetworkDissection` (Bau et al., CVPR 2017) and
:class:`Net2Vec` (Fong & Vedaldi, CVPR 2018).
"""

from xai.concepts.attribution import concept_attribution_maps, differentiable_encode
from xai.concepts.dissection import (
    LayerDissection,
    NetworkDissection,
    exact_thresholds,
    filter_masks,
)
from xai.concepts.extractor import ConceptExtractor
from xai.concepts.factorizers import (
    FACTORIZERS,
    DictionaryFactorizer,
    Factorizer,
    ICAFactorizer,
    KMeansFactorizer,
    NMFFactorizer,
    PCAFactorizer,
)
from xai.concepts.importance import (
    IMPORTANCE_METHODS,
    StrategicClusters,
    concept_importance,
    strategic_clusters,
)
from xai.concepts.maps import filter_maps, top_concepts
from xai.concepts.metrics import (
    c_deletion,
    c_insertion,
    c_mufidelity,
    fid,
    match_concepts,
    ood_score,
    relative_reconstruction_error,
    sparsity,
    stability,
)
from xai.concepts.net2vec import FiltersNeeded, Net2Vec

__all__ = [
    "FACTORIZERS",
    "IMPORTANCE_METHODS",
    "ConceptExtractor",
    "DictionaryFactorizer",
    "Factorizer",
    "FiltersNeeded",
    "ICAFactorizer",
    "KMeansFactorizer",
    "LayerDissection",
    "NMFFactorizer",
    "Net2Vec",
    "NetworkDissection",
    "PCAFactorizer",
    "StrategicClusters",
    "c_deletion",
    "c_insertion",
    "c_mufidelity",
    "concept_attribution_maps",
    "concept_importance",
    "differentiable_encode",
    "fid",
    "exact_thresholds",
    "filter_maps",
    "filter_masks",
    "match_concepts",
    "ood_score",
    "relative_reconstruction_error",
    "sparsity",
    "stability",
    "strategic_clusters",
    "top_concepts",
]
