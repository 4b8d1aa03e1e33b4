r"""Similarity maps for embedding networks (Stylianou, Souvenir & Pless, WACV 2019).

An embedding network maps an image to a vector :math:`e = \mathrm{head}(\mathrm{pool}(A))`, where
:math:`A \in \mathbb{R}^{C \times h \times w}` is the output of its last convolutional layer
(locations :math:`u = 1..N`, :math:`N = hw`) and ``head`` is nothing or one ``nn.Linear``.
For the pooling operators of retrieval networks, the embedding is a sum of per-location terms,

.. math:: e = \sum_u \psi_u, \qquad \psi_u = W (\omega_u \odot A_u) + b / N,

with pooling weights :math:`\omega_u \in \mathbb{R}^C`. The similarity of two images is then a
sum over the locations of either image, which gives one heatmap per image:

.. math::
    s = \frac{e_a \cdot e_b}{Z} = \sum_u H_a(u) = \sum_v H_b(v), \qquad
    H_a(u) = \frac{\psi^a_u \cdot e_b}{Z}, \quad H_b(v) = \frac{\psi^b_v \cdot e_a}{Z},

:math:`Z = 1` for the dot product and :math:`Z = \lVert e_a\rVert \lVert e_b\rVert` for the cosine.
The full table :math:`P(u, v) = \psi^a_u \cdot \psi^b_v / Z` (:meth:`SimilarityMaps.pair_table`)
shows which location of ``a`` matches which location of ``b``; its row sums are :math:`H_a` and its
column sums :math:`H_b`.

What decomposes, and how (``pooling=``):

* ``"avg"`` (global average pooling), :math:`\omega_u = 1/N`: **exact and linear**. Each term
  is the bilinear expansion of the dot product, as in the paper and its reference code
  (``compute_spatial_similarity``, which builds the :math:`N \times N` table; here the maps
  cost :math:`O(NC)`).
* ``"sum"`` (SPoC), :math:`\omega_u = 1`: exact, as ``"avg"``.
* ``"max"`` (MAC), :math:`\omega_u[c] = 1[u = \arg\max_{u'} A_{u'c}]`: the paper's max-pooling
  rule. Each channel's term :math:`e_a[c] e_b[c] / Z` lands at that channel's arg-max location
  (ties split evenly, e.g. ReLU6 saturation). The maps sum exactly to ``s``; they are sparse
  (at most ``C`` non-zero locations).
* ``"gem"`` (generalized mean, Radenović et al. 2018, ``p=3`` and ``eps=1e-6`` as in their
  code), :math:`f_c = (\frac{1}{N}\sum_u \tilde A_{uc}^p)^{1/p}` with
  :math:`\tilde A = \max(A, \epsilon)`: channel ``c``'s pooled value is credited to the
  locations in proportion to :math:`\tilde A_{uc}^p`, i.e.
  :math:`\omega_u[c] A_{uc} = f_c \tilde A_{uc}^p / \sum_{u'} \tilde A_{u'c}^p`. The maps still
  sum exactly to ``s`` (completeness), but GeM is not linear in the locations, so this split is
  an **approximation** of each location's role (removing a location does not lower ``s`` by
  its credit). ``p = 1`` gives ``"avg"`` (for non-negative features) and ``p -> inf`` tends to
  ``"max"``.
* ``"grad_cam"``: no assumption on the pooling or the head (attention pooling, MLP heads,
  ViTs ...). The maps are Grad-CAM (:class:`~xai.attributions.cam.GradCAM`) of the similarity to
  the other image's embedding (:class:`xai.adapter.SimilarityTarget`); they do **not** sum to
  ``s``. With average pooling, no head and ``metric="dot"`` they equal ``ReLU(H)``.

For the decomposable poolings the class checks, on every forward, that the model's output is
the embedding it decomposes (``head(pool(A))``; for ``"cosine"``, up to a positive scale, so an
L2-normalizing model is fine) and raises a ``ValueError`` otherwise, so a wrong ``pooling`` or
``head`` cannot give silently wrong maps.

References:
    Stylianou, Souvenir & Pless, "Visualizing Deep Similarity Networks", WACV 2019
    (arXiv 1901.00536). Radenović, Tolias & Chum, "Fine-tuning CNN Image Retrieval with No
    Human Annotation", TPAMI 2018 (GeM).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_inputs, check_positive_int, map_dtype
from xai._typing import LayerLike, ReshapeLike
from xai.adapter import ModelAdapter, SimilarityTarget, chunks, preserved
from xai.adapter.scoring import tracked

__all__ = ["SearchResult", "SimilarityExplanation", "SimilarityMaps", "region_weights"]

Pooling = Literal["avg", "sum", "max", "gem", "grad_cam"]
Metric = Literal["cosine", "dot"]
Box = Sequence[float]
RegionLike = Box | Tensor

_POOLINGS = ("avg", "sum", "max", "gem", "grad_cam")
_METRICS = ("cosine", "dot")
_CHECK_RTOL = 1e-3


@dataclass(frozen=True)
class SimilarityExplanation:
    """One query explained against ``R`` references.

    Attributes:
        query_maps: ``(R, H_q, W_q)``, the query's map against each reference.
        reference_maps: ``(R, H_r, W_r)``, each reference's map against the query.
        scores: ``(R,)``, the similarity of each pair (what the decomposable maps sum to).
    """

    query_maps: Tensor
    reference_maps: Tensor
    scores: Tensor


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


class SimilarityMaps:
    r"""Two-sided similarity heatmaps for an embedding network (Stylianou et al., WACV 2019).

    ``SimilarityMaps(model, layer)(query, references)`` returns, for one query and ``R``
    references, the query's heatmap against each reference and each reference's heatmap
    against the query. For the decomposable poolings each heatmap sums to the pair's
    similarity (see the module docstring for the formulas and what is exact).

    This is not a single-input attribution (it explains pairs), so it is not in the
    attribution registry and has its own API: :meth:`__call__` / :meth:`explain` for pairs,
    :meth:`pair_table` for location-to-location matches, :meth:`search` for sub-region
    retrieval, :meth:`embed` / :meth:`similarity` for the embeddings it explains.

    Args:
        model: the embedding network, ``(B, C, H, W) -> (B, D)``; never modified (it runs in
            eval mode inside the call, its state is restored afterwards).
        layer: its last convolutional layer before the pooling (name or module), e.g.
            ``"features.18"`` for a MobileNetV2 backbone; the output must be ``(B, C, h, w)``
            (or tokens with ``reshape``).
        pooling: how the model pools ``layer`` into the embedding: ``"avg"`` (default, the
            paper's main case), ``"sum"``, ``"max"``, ``"gem"`` or ``"grad_cam"`` (any model;
            gradient-based, not a decomposition).
        metric: ``"cosine"`` (default, as in the paper's L2-normalized networks) or ``"dot"``.
        p: GeM exponent (default 3.0, Radenović et al.); used by ``pooling="gem"`` only.
        eps: GeM clamp (default 1e-6, Radenović et al.).
        head: ``None`` (the embedding is the pooled feature) or the model's ``nn.Linear`` that
            maps the pooled feature to the embedding; its bias is split evenly over locations.
        reshape: token-to-grid conversion for transformer layers (``"vit"``, ``"swin"``).
        upsample: return maps at the input resolution (default). Each layer cell's credit is
            spread over its pixels (bilinear, scaled by ``hw/(HW)``, plus a uniform correction
            of the interpolation's edge error, which is zero when ``H/h`` is an integer), so
            the sum is still the score. ``False`` returns the ``(h, w)`` layer grid.
        batch_size: most references (or gallery images) in one forward pass (``None``: all).
        progress: show a ``tqdm`` bar over reference chunks.

    Raises:
        ValueError: unknown ``pooling``/``metric``, an unknown layer, ``p <= 0``.
        TypeError: ``head`` is not an ``nn.Linear``.

    References:
        Stylianou, Souvenir & Pless, "Visualizing Deep Similarity Networks", WACV 2019.

    Example:
        >>> sim = SimilarityMaps(embedder, "features.18", pooling="avg", metric="cosine")
        >>> q_maps, r_maps = sim(query, references)          # (R, H, W) each
        >>> q_maps.flatten(1).sum(1)                          # == sim.similarity(query, refs)
        >>> hits = sim.search(query, (40, 60, 120, 160), gallery, top_k=5)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike,
        *,
        pooling: Pooling = "avg",
        metric: Metric = "cosine",
        p: float = 3.0,
        eps: float = 1e-6,
        head: nn.Linear | None = None,
        reshape: ReshapeLike = None,
        upsample: bool = True,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if pooling not in _POOLINGS:
            raise ValueError(
                f"pooling must be one of {', '.join(map(repr, _POOLINGS))}, got {pooling!r}; "
                "use 'grad_cam' when the model's pooling is none of these"
            )
        if metric not in _METRICS:
            raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
        if not (isinstance(p, (int, float)) and p > 0 and math.isfinite(p)):
            raise ValueError(f"the GeM exponent p must be a positive finite number, got {p!r}")
        if head is not None and not isinstance(head, nn.Linear):
            raise TypeError(
                f"head must be None or an nn.Linear (an affine map decomposes), got "
                f"{type(head).__name__}; for a non-linear head use pooling='grad_cam'"
            )
        check_positive_int(batch_size, "batch_size", allow_none=True)
        self.model = model
        self.adapter = ModelAdapter(model, reshape=reshape)
        self.layer = self.adapter.resolve(layer)[0]
        self.pooling = pooling
        self.metric = metric
        self.p = float(p)
        self.eps = float(eps)
        self.head = head
        self.upsample = upsample
        self.batch_size = batch_size
        self.progress = progress

    @property
    def decomposable(self) -> bool:
        """Whether the maps are an additive decomposition of the score (all but ``grad_cam``)."""
        return self.pooling != "grad_cam"

    def __repr__(self) -> str:
        return (
            f"SimilarityMaps({type(self.model).__name__}, {self.layer!r}, "
            f"pooling={self.pooling!r}, metric={self.metric!r})"
        )

    # public API ---------------------------------------------------------------------------
    def __call__(self, query: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
        """Heatmaps of one query against ``R`` references.

        Args:
            query: ``(1, C, H_q, W_q)`` floating tensor.
            references: ``(R, C, H_r, W_r)`` floating tensor.

        Returns:
            ``(query_maps, reference_maps)``: ``(R, H_q, W_q)`` and ``(R, H_r, W_r)``
            (layer resolution with ``upsample=False``), in the inputs' dtype promoted to at
            least float32. Row ``r`` of both sums to the similarity of the pair
            ``(query, references[r])`` for a decomposable pooling.
        """
        result = self.explain(query, references)
        return result.query_maps, result.reference_maps

    def explain(self, query: Tensor, references: Tensor) -> SimilarityExplanation:
        """Like :meth:`__call__`, also returning the scores ``(R,)``."""
        q, refs = self._check_pair(query, references)
        with preserved(self.adapter.module):
            if not self.decomposable:
                return self._explain_gradient(q, refs)
            q_terms, q_emb = self._terms(q)
            q_maps, r_maps, scores = [], [], []
            for chunk in self._chunks(refs.shape[0]):
                r_terms, r_emb = self._terms(refs[chunk])
                norm = self._norm(q_emb, r_emb)  # (b,)
                # H_q(u) = psi^q_u . e_r / Z  and  H_r(v) = psi^r_v . e_q / Z
                q_maps.append(torch.einsum("dhw,bd->bhw", q_terms[0], r_emb) / norm[:, None, None])
                r_maps.append(_against(r_terms, q_emb[0], norm))
                scores.append((r_emb @ q_emb[0]) / norm)
        dtype = _out_dtype(q, refs)
        return SimilarityExplanation(
            query_maps=self._finish(torch.cat(q_maps), q).to(dtype=dtype, device=q.device),
            reference_maps=self._finish(torch.cat(r_maps), refs).to(dtype=dtype, device=q.device),
            scores=torch.cat(scores).to(dtype=dtype, device=q.device),
        )

    def pair_table(self, query: Tensor, reference: Tensor) -> Tensor:
        r"""Location-to-location table :math:`P(u, v) = \psi^a_u \cdot \psi^b_v / Z`.

        Args:
            query: ``(1, C, H_a, W_a)``.
            reference: ``(1, C, H_b, W_b)``.

        Returns:
            ``(h_a, w_a, h_b, w_b)`` at layer resolution: ``P.sum((2, 3))`` is the query's grid
            map, ``P.sum((0, 1))`` the reference's, ``P.sum()`` the score. Costs
            ``O(N_a N_b D)`` (the paper's reference code); the maps alone need ``O(N D)``.

        Raises:
            ValueError: ``pooling="grad_cam"`` (no decomposition), or a batch of more than one.
        """
        if not self.decomposable:
            raise ValueError("pair_table needs a decomposable pooling, not 'grad_cam'")
        a, b = self._check_pair(query, reference)
        if b.shape[0] != 1:
            raise ValueError(f"pair_table takes one reference, got {b.shape[0]}")
        with preserved(self.adapter.module):
            ta, ea = self._terms(a)
            tb, eb = self._terms(b)
        table = torch.einsum("dij,dkl->ijkl", ta[0], tb[0]) / self._norm(ea, eb)[0]
        return table.to(map_dtype(a))

    def embed(self, inputs: Tensor) -> Tensor:
        """The embeddings ``(B, D)`` that the maps explain, ``batch_size`` images at a time.

        For a decomposable pooling this is ``head(pool(A))`` rebuilt from the layer (checked
        against the model's output); for ``"grad_cam"`` the model's output.
        """
        x = check_inputs(inputs)
        out = []
        with preserved(self.adapter.module):
            for chunk in self._chunks(x.shape[0]):
                if self.decomposable:
                    out.append(self._terms(x[chunk])[1])
                else:
                    out.append(self._outputs(x[chunk]))
        return torch.cat(out).to(map_dtype(x))

    def similarity(self, query: Tensor, references: Tensor) -> Tensor:
        """Similarity ``(R,)`` of one query to each reference (what the maps sum to)."""
        q, refs = self._check_pair(query, references)
        e_q, e_r = self.embed(q), self.embed(refs)
        return self._score(e_q, e_r)

    def matrix(self, inputs: Tensor) -> Tensor:
        """Pairwise similarities ``(B, B)`` of a small gallery (e.g. for a similarity graph)."""
        emb = self.embed(inputs)
        if self.metric == "cosine":
            emb = F.normalize(emb, dim=1)
        return emb @ emb.T

    def search(
        self,
        query: Tensor,
        region: RegionLike,
        gallery: Tensor,
        top_k: int = 5,
    ) -> SearchResult:
        r"""Rank a gallery by similarity to a region of the query, with a heatmap per hit.

        The region embedding pools only the query locations inside the region, each weighted
        by the fraction of its cell that the box or mask covers (:func:`region_weights`):
        :math:`\sum_u m_u A_u / \sum_u m_u` for ``"avg"``, :math:`\sum_u m_u A_u` for ``"sum"``,
        the max over cells touched by the region for ``"max"``, the weighted generalized mean
        for ``"gem"``, followed by ``head``. Each gallery image is scored by ``metric`` against
        it and its heatmap (against the region embedding) sums to that score. With
        ``pooling="grad_cam"`` the region is cropped from the query (mask: its bounding box,
        pixels outside the mask set to 0), resized to the query size and embedded by the model;
        hits get Grad-CAM maps.

        Args:
            query: ``(1, C, H, W)``.
            region: a box ``(x0, y0, x1, y1)`` in query pixels (``x`` along the width, end
                exclusive) or a mask ``(H, W)`` (bool or non-negative weights).
            gallery: ``(G, C, H_g, W_g)`` images to rank.
            top_k: number of hits returned (at most ``G``).

        Returns:
            A :class:`SearchResult` (``indices``, ``scores``, ``maps``, ``region``,
            ``all_scores``).

        Raises:
            ValueError: a box outside the image or empty, a mask of the wrong size or empty.
        """
        q = check_inputs(query, name="query")
        if q.shape[0] != 1:
            raise ValueError(
                f"query must hold one image, got a batch of {q.shape[0]}; use query[i:i + 1]"
            )
        g = check_inputs(gallery, name="gallery")
        check_positive_int(top_k, "top_k")
        k = min(top_k, g.shape[0])
        pixel_mask = _region_mask(region, tuple(q.shape[-2:]), q.device)
        dtype = _out_dtype(q, g)
        with preserved(self.adapter.module):
            if self.decomposable:
                acts = self._activations(q)
                weights = F.adaptive_avg_pool2d(pixel_mask[None, None], acts.shape[-2:])[0, 0]
                if not bool((weights > 0).any()):
                    raise ValueError("the region covers no feature cell of the query")
                e_region = self._region_embedding(acts[0], weights)[None]
                grid_maps, scores = [], []
                for chunk in self._chunks(g.shape[0]):
                    terms, emb = self._terms(g[chunk])
                    norm = self._norm(e_region, emb)
                    grid_maps.append(_against(terms, e_region[0], norm))
                    scores.append((emb @ e_region[0]) / norm)
                all_scores = torch.cat(scores)
                top = all_scores.topk(k).indices
                maps = self._finish(torch.cat(grid_maps)[top], g)
            else:
                weights = F.adaptive_avg_pool2d(
                    pixel_mask[None, None], self._activations(q).shape[-2:]
                )[0, 0]
                crop = _crop_region(q, pixel_mask)
                e_region = self._outputs(crop)
                all_scores = torch.cat(
                    [self._score(e_region, self._outputs(g[c])) for c in self._chunks(g.shape[0])]
                )
                top = all_scores.topk(k).indices
                maps = self._grad_cam(g[top], SimilarityTarget(e_region[0], self.metric))
        return SearchResult(
            indices=top.to(q.device),
            scores=all_scores[top].to(dtype=dtype, device=q.device),
            maps=maps.to(dtype=dtype, device=q.device),
            region=weights.to(dtype=dtype, device=q.device),
            all_scores=all_scores.to(dtype=dtype, device=q.device),
        )

    # internals ----------------------------------------------------------------------------
    def _check_pair(self, query: Tensor, references: Tensor) -> tuple[Tensor, Tensor]:
        q = check_inputs(query, name="query")
        refs = check_inputs(references, name="references")
        if q.shape[0] != 1:
            raise ValueError(
                f"query must hold one image, got a batch of {q.shape[0]}; explain one query "
                "at a time (query[i:i + 1]) against a batch of references"
            )
        if q.shape[1] != refs.shape[1]:
            raise ValueError(f"query has {q.shape[1]} channels but references have {refs.shape[1]}")
        return q.detach(), refs.detach().to(q.device)

    def _chunks(self, total: int) -> Iterable[slice]:
        parts = chunks(total, self.batch_size)
        return tracked(parts, self.progress and len(parts) > 1, "similarity")

    def _forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """One forward pass without gradients: ``(activations (B, C, h, w), outputs (B, D))``."""
        with self.adapter.capture([self.layer]) as cap, torch.no_grad():
            outputs = self.adapter.forward(inputs, cap)
            acts = cap.activations.get(self.layer)
        if acts is None:
            raise RuntimeError(
                f"layer {self.layer!r} was not called in the forward pass: is it used by the model?"
            )
        if acts.dim() != 4:
            raise ValueError(
                f"layer {self.layer!r} has output shape {tuple(acts.shape)}, not (B, C, h, w); "
                "choose the last convolutional layer before the pooling, or pass "
                "reshape='vit' / 'swin' for token layers"
            )
        return acts, self._check_outputs(outputs)

    def _check_outputs(self, outputs: Tensor) -> Tensor:
        if outputs.dim() != 2:
            raise ValueError(
                f"an embedding model must return (B, D) vectors, got shape "
                f"{tuple(outputs.shape)}; pool and flatten the features in the model (e.g. "
                "nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten()))"
            )
        return outputs.detach()

    def _activations(self, inputs: Tensor) -> Tensor:
        return self._forward(inputs)[0]

    def _outputs(self, inputs: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.adapter.forward(inputs)
        return self._check_outputs(out).to(map_dtype(inputs))

    def _terms(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Per-location terms ``psi`` ``(B, D, h, w)`` and the embedding ``(B, D)`` they sum to."""
        acts, outputs = self._forward(inputs)
        acts = acts.to(map_dtype(acts))  # half-precision models: reduce in float32
        h, w = acts.shape[-2:]
        if self.pooling == "avg":
            terms = acts / (h * w)
        elif self.pooling == "sum":
            terms = acts
        elif self.pooling == "max":
            flat = acts.flatten(2)
            ties = flat == flat.amax(2, keepdim=True)
            share = ties / ties.sum(2, keepdim=True)
            terms = (flat * share).view_as(acts)
        else:  # gem: f_c = (mean_u a_uc^p)^(1/p), credit in proportion to a_uc^p
            flat = acts.flatten(2).clamp_min(self.eps)
            pooled = flat.pow(self.p).mean(2).pow(1.0 / self.p)
            share = torch.softmax(self.p * flat.log(), dim=2)
            terms = (pooled[..., None] * share).view_as(acts)
        if self.head is not None:
            weight = self.head.weight.detach().to(terms)
            terms = torch.einsum("kc,bchw->bkhw", weight, terms)
            if self.head.bias is not None:
                terms = terms + self.head.bias.detach().to(terms)[:, None, None] / (h * w)
        embedding = terms.sum((2, 3))
        self._check_embedding(embedding, outputs)
        return terms, embedding

    def _check_embedding(self, embedding: Tensor, outputs: Tensor) -> None:
        """Raise unless the model's output is the embedding being decomposed."""
        out = outputs.to(embedding)
        if out.shape != embedding.shape:
            raise ValueError(
                f"the model returns {out.shape[1]}-d embeddings but pooling {self.layer!r} "
                f"gives {embedding.shape[1]}-d ones: the layer is not followed by pooling alone; "
                "pass head= (an nn.Linear after the pooling) or use pooling='grad_cam'"
            )
        if self.metric == "cosine":  # a positive rescaling (L2 normalization) is allowed
            out = F.normalize(out, dim=1)
            embedding = F.normalize(embedding, dim=1)
        err = (out - embedding).norm(dim=1)
        tol = _CHECK_RTOL * out.norm(dim=1) + 1e-6
        if bool((err > tol).any()):
            hint = (
                " (for metric='dot' the output must equal it exactly; an L2-normalizing model "
                "is fine with metric='cosine')"
                if self.metric == "dot"
                else ""
            )
            raise ValueError(
                f"the model's output is not {self._describe()} of layer {self.layer!r}{hint}: "
                "check pooling= (and p= for GeM) and head=, or use pooling='grad_cam' for a "
                "pooling that does not decompose"
            )

    def _describe(self) -> str:
        pooled = {"avg": "the average", "sum": "the sum", "max": "the max", "gem": "the GeM"}[
            self.pooling
        ]
        return pooled + (" pooling (then head)" if self.head is not None else " pooling")

    def _norm(self, e_a: Tensor, e_b: Tensor) -> Tensor:
        """``Z`` per pair: ``1`` (dot) or ``||e_a|| ||e_b||`` (cosine); ``e_a`` is ``(1, D)``."""
        if self.metric == "dot":
            return torch.ones(e_b.shape[0], dtype=e_b.dtype, device=e_b.device)
        tiny = torch.finfo(e_b.dtype).tiny
        return (e_a.norm(dim=1) * e_b.norm(dim=1)).clamp_min(tiny)

    def _score(self, e_a: Tensor, e_b: Tensor) -> Tensor:
        return (e_b @ e_a[0]) / self._norm(e_a, e_b)

    def _region_embedding(self, acts: Tensor, weights: Tensor) -> Tensor:
        """Embedding ``(D,)`` of the query locations weighted by ``weights`` ``(h, w)``."""
        acts = acts.to(map_dtype(acts))
        weights = weights.to(acts)
        h, w = acts.shape[-2:]
        if self.pooling == "avg":
            pooled = (acts * weights).sum((1, 2)) / weights.sum()
        elif self.pooling == "sum":
            pooled = (acts * weights).sum((1, 2))
        elif self.pooling == "max":
            pooled = acts[:, weights > 0].amax(1)
        else:
            a = acts.clamp_min(self.eps).pow(self.p)
            pooled = ((a * weights).sum((1, 2)) / weights.sum()).pow(1.0 / self.p)
        if self.head is None:
            return pooled
        bias = self.head.bias
        weight = self.head.weight.detach().to(pooled)
        out = weight @ pooled
        if bias is not None:
            out = out + bias.detach().to(pooled)
        return out

    def _finish(self, maps: Tensor, inputs: Tensor) -> Tensor:
        """Upsample grid maps ``(B, h, w)`` to the input size, preserving each map's sum."""
        if not self.upsample:
            return maps
        size = tuple(inputs.shape[-2:])
        if not self.decomposable or tuple(maps.shape[-2:]) == size:
            return maps
        h, w = maps.shape[-2:]
        up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        up = up * (h * w / (size[0] * size[1]))
        # bilinear resizing preserves the sum exactly for integer factors; fix the rest evenly
        residual = maps.sum((1, 2)) - up.sum((1, 2))
        return up + residual[:, None, None] / (size[0] * size[1])

    def _grad_cam(self, inputs: Tensor, target: SimilarityTarget) -> Tensor:
        from xai.attributions.cam import GradCAM

        cam = GradCAM(self.model, self.layer, reshape=self.adapter.reshape, upsample=self.upsample)
        out = []
        for chunk in self._chunks(inputs.shape[0]):
            tgt = target.select(torch.arange(chunk.start, chunk.stop))
            out.append(cam(inputs[chunk], tgt))
        return torch.cat(out)

    def _explain_gradient(self, q: Tensor, refs: Tensor) -> SimilarityExplanation:
        e_q = self._outputs(q)
        e_r = torch.cat([self._outputs(refs[c]) for c in self._chunks(refs.shape[0])])
        scores = self._score(e_q, e_r)
        n = refs.shape[0]
        q_maps = self._grad_cam(q.expand(n, -1, -1, -1), SimilarityTarget(e_r, self.metric))
        r_maps = self._grad_cam(refs, SimilarityTarget(e_q[0], self.metric))
        dtype = _out_dtype(q, refs)
        return SimilarityExplanation(
            q_maps.to(dtype=dtype, device=q.device),
            r_maps.to(dtype=dtype, device=q.device),
            scores.to(dtype=dtype, device=q.device),
        )


def _out_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)


def _against(terms: Tensor, other: Tensor, norm: Tensor) -> Tensor:
    """Maps ``(B, h, w)``: per-location terms ``(B, D, h, w)`` dotted with ``other`` ``(D,)``."""
    return torch.einsum("bdhw,d->bhw", terms, other) / norm[:, None, None]


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
