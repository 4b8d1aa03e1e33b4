"""Faithfulness: does removing what the map calls relevant change the model's output?

Curves (:class:`Deletion`, :class:`Insertion`, :class:`PixelFlipping`,
:class:`RegionPerturbation`, :class:`ROAD`) perturb features in the order of the map and record
the target score; correlations (:class:`MuFidelity`, :class:`FaithfulnessCorrelation`) compare
the relevance of random subsets with the drop they cause.

Shared conventions (see :mod:`xai.metrics._perturb`): features are pixels or patches whose
channels are perturbed together; the ranking is a stable sort by descending relevance (ties go to
the lower row-major index); scores are the target's output (the **logit** for class targets; pass
``target=xai.adapter.ProbabilityTarget(...)`` for softmax probabilities); an argmax target
(``None``) is fixed on the clean input. Perturbed inputs are scored in chunks of ``batch_size``
across samples and steps, under ``torch.no_grad()``; the default ``"auto"`` times chunk sizes
and keeps the fastest, remembered per model and input kind (:func:`xai.adapter.score_rows`).

Modules: :mod:`~xai.metrics.faithfulness.curves` (the curve metrics),
:mod:`~xai.metrics.faithfulness.road` (:class:`ROAD`),
:mod:`~xai.metrics.faithfulness.correlation` (:class:`MuFidelity`,
:class:`FaithfulnessCorrelation`) and :mod:`~xai.metrics.faithfulness.infidelity`
(:class:`Infidelity`).
"""

from __future__ import annotations

from xai.metrics.faithfulness.correlation import FaithfulnessCorrelation, MuFidelity
from xai.metrics.faithfulness.curves import Deletion, Insertion, PixelFlipping, RegionPerturbation
from xai.metrics.faithfulness.infidelity import Infidelity
from xai.metrics.faithfulness.road import ROAD

__all__ = [
    "ROAD",
    "Deletion",
    "FaithfulnessCorrelation",
    "Infidelity",
    "Insertion",
    "MuFidelity",
    "PixelFlipping",
    "RegionPerturbation",
]
