"""Concept attribution maps: where each concept is in an image, as CRAFT displays them."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = ["filter_maps", "top_concepts"]


class _LocalImportance(Protocol):
    """What :func:`top_concepts` uses of a fitted :class:`~xai.concepts.ConceptExtractor`."""

    def local_importance(
        self, inputs: Tensor | None = None, *, method: str = "sobol", **kwargs: object
    ) -> Tensor: ...


def filter_maps(maps: Tensor, *, percentile: float = 90.0) -> Tensor:
    """Keep, in each ``(H, W)`` map, the values above its ``percentile`` (others set to 0).

    CRAFT's display filter (its notebook keeps values above the 90th percentile; the holistic
    paper's plots use 80).

    Args:
        maps: ``(B, K, H, W)`` concept maps (:meth:`ConceptExtractor.concept_maps`).
        percentile: in ``[0, 100]``.

    Returns:
        ``(B, K, H, W)``, same dtype.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if maps.dim() != 4:
        raise ValueError(f"maps must be (B, K, H, W), got {tuple(maps.shape)}")
    flat = maps.flatten(2)
    cut = torch.quantile(flat.double(), percentile / 100.0, dim=-1, keepdim=True).to(maps.dtype)
    return torch.where(flat >= cut, flat, torch.zeros_like(flat)).reshape(maps.shape)


def top_concepts(
    extractor: _LocalImportance,
    inputs: Tensor,
    *,
    n: int = 3,
    method: str = "gradient_input",
) -> tuple[Tensor, Tensor]:
    """The ``n`` most important concepts of each image's prediction of ``extractor.target_``.

    Args:
        extractor: a fitted :class:`~xai.concepts.ConceptExtractor`.
        inputs: ``(B, C, H, W)``.
        n: how many concepts (at most ``K``).
        method: local importance method (default ``"gradient_input"``: exact contributions
            for a linear head, one backward pass).

    Returns:
        ``(indices, importances)``, both ``(B, n)``, in decreasing importance.
    """
    imp = extractor.local_importance(inputs, method=method)
    values, idx = imp.topk(min(n, imp.shape[1]), dim=1)
    return idx, values
