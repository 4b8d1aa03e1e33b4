"""The concept step of an audit: what the flagged classes' evidence is made of (CRAFT).

Per class, :class:`xai.concepts.ConceptExtractor` factorizes the activations of the first
``concept_images`` images of the class (NMF at every position, Sobol importance; Fel et al.
2023); each concept is reported with its importance, the share of its map inside the object
mask (:class:`~xai.metrics.localization.RelevanceMassAccuracy`) and where its mean map peaks.

References:
    Fel et al., "CRAFT: Concept Recursive Activation FacTorization for Explainability",
    CVPR 2023.
"""

from __future__ import annotations

import torch
from torch import nn

from xai.audit.config import AuditConfig
from xai.audit.flags import cell_box
from xai.audit.result import AuditResult
from xai.audit.state import AuditState
from xai.metrics.localization import RelevanceMassAccuracy

__all__ = ["class_concepts"]


def _chosen_classes(config: AuditConfig, state: AuditState, result: AuditResult) -> list[int]:
    which = config.concept_classes
    if which == "flagged":
        return result.flagged_classes
    if which == "all":
        return sorted(state.concept_inputs)
    return [int(c) for c in which]


def class_concepts(
    model: nn.Module, state: AuditState, result: AuditResult, config: AuditConfig
) -> dict[int, list[dict]]:
    """Per class: the ``config.concepts`` CRAFT concepts, most important first.

    Returns:
        class -> dicts ``concept`` (index), ``importance``, ``mass_inside`` (NaN without
        masks), ``peak_cell`` and ``box`` (where the concept's mean map peaks).
    """
    from xai.concepts import ConceptExtractor

    grid, layer = config.grid_size, config.factorized_layer
    assert layer is not None  # AuditConfig refuses concepts without a layer
    h, w = state.image_size  # type: ignore[misc]
    mass = RelevanceMassAccuracy("positive")
    out: dict[int, list[dict]] = {}
    for c in _chosen_classes(config, state, result):
        if c not in state.concept_inputs:
            continue
        x = torch.cat(state.concept_inputs[c])
        extractor = ConceptExtractor(
            model, layer, n_concepts=config.concepts, patches="positions",
            seed=config.seed, progress=config.progress,
        ).fit(x, c)  # fmt: skip
        importance = extractor.importance().double()
        maps = extractor.concept_maps(x).double().clamp_min(0)  # (B, K, H, W)
        n, k = maps.shape[:2]
        inside = torch.full((k,), float("nan"), dtype=torch.float64)
        if c in state.concept_masks:
            masks = torch.cat(state.concept_masks[c])[:, None].expand(n, k, h, w)
            share = mass._score(maps.reshape(n * k, h, w), masks.reshape(n * k, h, w))
            inside = share.view(n, k).nanmean(0)  # maps without relevance are left out
        peaks = maps.mean(0).flatten(1).argmax(1)
        rows = []
        for j in torch.argsort(importance, descending=True).tolist():
            flat = int(peaks[j])
            r, q = (flat // w) * grid // h, (flat % w) * grid // w
            rows.append(
                {
                    "concept": j,
                    "importance": float(importance[j]),
                    "mass_inside": float(inside[j]),
                    "peak_cell": (r, q),
                    "box": cell_box(r, q, grid, h, w),
                }
            )
        out[c] = rows
    return out
