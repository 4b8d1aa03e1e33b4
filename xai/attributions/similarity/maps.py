"""The two-sided similarity maps of a pair of images: :class:`SimilarityMaps`.

See :mod:`xai.attributions.similarity` for the formulas and what is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xai._checks import check_inputs, map_dtype
from xai.adapter import SimilarityTarget, preserved
from xai.attributions.similarity.embedder import Embedder, against, out_dtype
from xai.attributions.similarity.search import RegionLike, SearchResult, search

__all__ = ["SimilarityExplanation", "SimilarityMaps"]


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


class SimilarityMaps(Embedder):
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
                r_maps.append(against(r_terms, q_emb[0], norm))
                scores.append((r_emb @ q_emb[0]) / norm)
        dtype = out_dtype(q, refs)
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
        return search(self, query, region, gallery, top_k)

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

    def _explain_gradient(self, q: Tensor, refs: Tensor) -> SimilarityExplanation:
        e_q = self._outputs(q)
        e_r = torch.cat([self._outputs(refs[c]) for c in self._chunks(refs.shape[0])])
        scores = self._score(e_q, e_r)
        n = refs.shape[0]
        q_maps = self._grad_cam(q.expand(n, -1, -1, -1), SimilarityTarget(e_r, self.metric))
        r_maps = self._grad_cam(refs, SimilarityTarget(e_q[0], self.metric))
        dtype = out_dtype(q, refs)
        return SimilarityExplanation(
            q_maps.to(dtype=dtype, device=q.device),
            r_maps.to(dtype=dtype, device=q.device),
            scores.to(dtype=dtype, device=q.device),
        )
