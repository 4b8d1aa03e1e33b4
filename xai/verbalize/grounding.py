"""Named areas to ground sentences in: object and group masks, concepts, any ``{name: mask}``.

A verbalizer names a region with the first named area its peak lies on ("peaking on the planted
patch") and, for areas marked as objects, says when it lies outside ("outside the shirt"). The
areas are plain ``{name: mask}`` mappings, so any source plugs in: the ground truth of
:mod:`xai.data.shortcuts` (:func:`ground_truth_labels`), CRAFT concept maps
(:func:`concept_labels`), Net2Vec / Network-Dissection masks of labelled filters, or a
segmentation model's masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from xai.data.shortcuts import GroundTruthSet

__all__ = ["PATCH_NAME", "concept_labels", "ground_truth_labels"]

PATCH_NAME = "planted patch"


def ground_truth_labels(
    data: GroundTruthSet, index: Tensor | Sequence[int] | slice | None = None
) -> list[dict[str, Tensor]]:
    """One ``{name: (H, W) mask}`` per image of a ground-truth set.

    Each image gets its object mask under its class name (``"shirt"``, ``"birds"``); the
    planted-shortcut set adds the patch (``"planted patch"``) on the images that carry it; the
    background-swap set adds the background under its texture name (``"grass"``), the
    complement of the object. Pass ``objects=data.class_names`` to the verbalizer to hear
    "outside the shirt".

    Args:
        data: a :class:`~xai.data.shortcuts.GroundTruthSet`.
        index: the images to take (default all), as for :meth:`GroundTruthSet.subset`.

    Returns:
        A list of dicts, one per image, in dict order: the shortcut/patch first (so a region
        peaking on it is named by it), then the object, then the background.
    """
    sub = data if index is None else data.subset(index)
    out = []
    for i in range(len(sub)):
        labels: dict[str, Tensor] = {}
        if sub.shortcut_masks is not None and bool(sub.shortcut_masks[i].any()):
            labels[PATCH_NAME] = sub.shortcut_masks[i].bool()
        labels[sub.class_names[int(sub.labels[i])]] = sub.masks[i].bool()
        if sub.shortcut_masks is None:
            labels[sub.group_names[int(sub.groups[i])]] = ~sub.masks[i].bool()
        out.append(labels)
    return out


def concept_labels(
    maps: Tensor,
    names: Sequence[str] | None = None,
    *,
    percentile: float = 90.0,
    concepts: Sequence[int] | None = None,
) -> list[dict[str, Tensor]]:
    """Concept maps as named masks: where each concept is strong in each image.

    A concept's mask is where its map is positive and at or above the map's ``percentile``
    (CRAFT's display filter, :func:`xai.concepts.maps.filter_maps`).

    Args:
        maps: ``(B, K, H, W)`` concept maps (:meth:`xai.concepts.ConceptExtractor.concept_maps`,
            or Net2Vec filter-group maps).
        names: one name per concept (default ``"concept 0"``, ...), e.g. labels a human gave
            them or Network-Dissection labels.
        percentile: in ``[0, 100]`` (default 90, CRAFT's notebook).
        concepts: the concepts to keep, in this order (default all; e.g. the most important
            first, :func:`xai.concepts.top_concepts`).

    Returns:
        One ``{name: (H, W) bool mask}`` per image.
    """
    from xai.concepts.maps import filter_maps

    if not isinstance(maps, Tensor) or maps.dim() != 4:
        raise ValueError(
            f"maps must be a (B, K, H, W) tensor of concept maps, got "
            f"{tuple(getattr(maps, 'shape', ())) or type(maps).__name__}"
        )
    k = maps.shape[1]
    names = [f"concept {i}" for i in range(k)] if names is None else [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"got {len(names)} names for {k} concepts")
    order = list(range(k)) if concepts is None else [int(c) for c in concepts]
    if any(not 0 <= c < k for c in order):
        raise ValueError(f"concepts must be indices in [0, {k}), got {list(concepts or [])}")
    filtered = filter_maps(maps.detach().double(), percentile=percentile)
    strong = (filtered > 0).cpu()
    return [{names[c]: strong[b, c] for c in order} for b in range(maps.shape[0])]
