r"""Sub-region retrieval: rank a gallery by similarity to a box or mask of the query.

The region embedding pools only the query locations inside the region, each weighted by the
fraction of its cell that the box or mask covers (:func:`region_weights`), with the pooling's
own rule (:meth:`~xai.attributions.similarity.pooling.DecomposablePooling.region_embedding`).
Each gallery image is scored by the metric against it and its heatmap (against the region
embedding) sums to that score. With ``pooling="grad_cam"`` the region is cropped from the query
(mask: its bounding box, pixels outside the mask set to 0), resized to the query size and
embedded by the model; hits get Grad-CAM maps. Entry point:
:meth:`SimilarityMaps.search <xai.attributions.similarity.SimilarityMaps.search>`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xai._checks import check_inputs, check_positive_int
from xai.adapter import SimilarityTarget, preserved
from xai.attributions.similarity.embedder import Embedder, against, out_dtype
from xai.attributions.similarity.pooling import DecomposablePooling

__all__ = ["RegionLike", "SearchResult", "region_weights", "search"]

Box = Sequence[float]
RegionLike = Box | Tensor


@dataclass(frozen=True)
class SearchResult:
    """The ``k`` best gallery matches of a query region.

    Attributes:
        indices: ``(k,)`` long, gallery rows sorted by decreasing score.
        scores: ``(k,)``, similarity of each hit to the region embedding.
        maps: ``(k, H, W)``, where each hit matches the region (sums to its score for a
            decomposable pooling).
        region: ``(h, w)`` the region's weight on the query's feature grid (fraction of each
            cell covered by the box or mask).
        all_scores: ``(G,)``, the score of every gallery image.
    """

    indices: Tensor
    scores: Tensor
    maps: Tensor
    region: Tensor
    all_scores: Tensor


def search(
    embedder: Embedder, query: Tensor, region: RegionLike, gallery: Tensor, top_k: int = 5
) -> SearchResult:
    """:meth:`SimilarityMaps.search <xai.attributions.similarity.SimilarityMaps.search>`.

    ``embedder`` is the network, its layer, pooling and metric (the ``SimilarityMaps``);
    ``query``, ``region``, ``gallery``, ``top_k``, the result and the errors are documented there.
    """
    q = check_inputs(query, name="query")
    if q.shape[0] != 1:
        raise ValueError(
            f"query must hold one image, got a batch of {q.shape[0]}; use query[i:i + 1]"
        )
    g = check_inputs(gallery, name="gallery")
    check_positive_int(top_k, "top_k")
    k = min(top_k, g.shape[0])
    pixel_mask = _region_mask(region, (q.shape[-2], q.shape[-1]), q.device)
    dtype = out_dtype(q, g)
    with preserved(embedder.adapter.module):
        acts = embedder._activations(q)
        grid = (acts.shape[-2], acts.shape[-1])
        weights = F.adaptive_avg_pool2d(pixel_mask[None, None], grid)[0, 0]
        if isinstance(embedder.strategy, DecomposablePooling):
            top, all_scores, maps = _search_terms(embedder, embedder.strategy, acts, weights, g, k)
        else:
            top, all_scores, maps = _search_gradient(embedder, q, pixel_mask, g, k)
    return SearchResult(
        indices=top.to(q.device),
        scores=all_scores[top].to(dtype=dtype, device=q.device),
        maps=maps.to(dtype=dtype, device=q.device),
        region=weights.to(dtype=dtype, device=q.device),
        all_scores=all_scores.to(dtype=dtype, device=q.device),
    )


def _search_terms(
    embedder: Embedder,
    pooling: DecomposablePooling,
    acts: Tensor,
    weights: Tensor,
    gallery: Tensor,
    k: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(top, all_scores, maps)`` of a decomposable pooling: maps sum to the scores."""
    if not bool((weights > 0).any()):
        raise ValueError("the region covers no feature cell of the query")
    e_region = pooling.region_embedding(acts[0], weights)[None]
    grid_maps, scores = [], []
    for chunk in embedder._chunks(gallery.shape[0]):
        terms, emb = embedder._terms(gallery[chunk])
        norm = embedder._norm(e_region, emb)
        grid_maps.append(against(terms, e_region[0], norm))
        scores.append((emb @ e_region[0]) / norm)
    all_scores = torch.cat(scores)
    top = all_scores.topk(k).indices
    return top, all_scores, embedder._finish(torch.cat(grid_maps)[top], gallery)


def _search_gradient(
    embedder: Embedder, query: Tensor, pixel_mask: Tensor, gallery: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(top, all_scores, maps)`` of ``pooling="grad_cam"``: the cropped region, embedded."""
    e_region = embedder._outputs(_crop_region(query, pixel_mask))
    all_scores = torch.cat(
        [
            embedder._score(e_region, embedder._outputs(gallery[c]))
            for c in embedder._chunks(gallery.shape[0])
        ]
    )
    top = all_scores.topk(k).indices
    maps = embedder._grad_cam(gallery[top], SimilarityTarget(e_region[0], embedder.metric))
    return top, all_scores, maps


def region_weights(
    region: RegionLike, image_size: tuple[int, int], grid_size: tuple[int, int]
) -> Tensor:
    """Fraction of each feature cell covered by a box or mask, ``(h, w)`` in ``[0, 1]``.

    Args:
        region: a box ``(x0, y0, x1, y1)`` in pixels (end exclusive) or a mask ``(H, W)``.
        image_size: ``(H, W)`` of the image the region is drawn on.
        grid_size: ``(h, w)`` of the feature grid.

    Raises:
        ValueError: a box outside the image or empty, a mask of the wrong size, negative or
            empty.
    """
    mask = _region_mask(region, image_size, torch.device("cpu"))
    return F.adaptive_avg_pool2d(mask[None, None], grid_size)[0, 0]


def _region_mask(region: RegionLike, size: tuple[int, int], device: torch.device) -> Tensor:
    """The region as a float64 pixel mask ``(H, W)``."""
    height, width = size
    if isinstance(region, Tensor):
        mask = region.detach().to(device=device, dtype=torch.float64)
        if mask.shape != (height, width):
            raise ValueError(
                f"a region mask must have the query's size {(height, width)}, got "
                f"{tuple(region.shape)}"
            )
        if bool((mask < 0).any()) or not bool((mask > 0).any()):
            raise ValueError("a region mask must be non-negative and select at least one pixel")
        return mask
    try:
        x0, y0, x1, y1 = (float(v) for v in region)
    except (TypeError, ValueError):
        raise TypeError(
            f"region must be a box (x0, y0, x1, y1) or an (H, W) mask tensor, got {region!r}"
        ) from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"box {(x0, y0, x1, y1)} is empty or outside the {width}x{height} (W x H) query: "
            f"need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} (x along the width)"
        )
    mask = torch.zeros(height, width, dtype=torch.float64, device=device)
    mask[int(math.floor(y0)) : int(math.ceil(y1)), int(math.floor(x0)) : int(math.ceil(x1))] = 1
    return mask


def _crop_region(query: Tensor, mask: Tensor) -> Tensor:
    """Bounding box of the mask, pixels outside it zeroed, resized to the query size."""
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = query[..., r0:r1, c0:c1] * (mask[r0:r1, c0:c1] > 0).to(query.dtype)
    return F.interpolate(crop, size=tuple(query.shape[-2:]), mode="bilinear", align_corners=False)
