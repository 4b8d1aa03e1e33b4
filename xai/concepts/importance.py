r"""Concept importance: attribution methods applied in concept space.

For an image with per-position coefficients :math:`u \in \mathbb{R}^{h \times w \times K}`,
the concept-space model is :math:`F(m) = h\big((u \odot m) W\big)_{\text{target}}`, where the
mask :math:`m \in \mathbb{R}^K` scales concept ``k`` at every position (CRAFT's
re-parameterization). ``m = 1`` is the image, ``m_k = 0`` removes concept ``k``. Methods:

- ``"sobol"`` (CRAFT): total Sobol indices of :math:`F` for ``m`` uniform in :math:`[0, 1]^K`,
  with the generic machinery of :func:`xai.attributions.sobol.sobol_indices` (default
  ``n_designs=32``, Jansen estimator, scrambled Sobol sequence; the CRAFT reference uses an
  unscrambled Halton sequence: pass ``sampler="halton", scramble=False``);
- ``"gradient_input"`` (the holistic paper's default): :math:`\partial F / \partial m` at
  ``m = 1``, i.e. :math:`\sum_{\text{positions}} u_k \, \partial F / \partial u_k`;
- ``"integrated_gradients"``: :math:`\int_0^1 \partial F / \partial m(\alpha \mathbf{1})
  d\alpha` (midpoint rule, ``n_steps=32``), baseline ``m = 0``;
- ``"occlusion"``: :math:`F(\mathbf{1}) - F(\mathbf{1} - e_k)`.

For a linear ``h`` (concepts at the penultimate layer),
:math:`F(m) = \sum_k m_k c_k + b`, and gradient x input, integrated gradients and occlusion all
equal :math:`c_k`, the exact additive contribution; they are then optimal for C-Deletion and
C-Insertion (Fel et al., NeurIPS 2023, theorem 4.2). Sobol gives
:math:`c_k^2 / \sum_j c_j^2`: the same ranking of magnitudes, but the sign is lost.

References:
    Fel et al., CRAFT, CVPR 2023; Fel et al., "A Holistic Approach to Unifying Automatic
    Concept Extraction and Concept Importance Estimation", NeurIPS 2023.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from xai._checks import check_positive_int
from xai.adapter import as_target, score_rows

__all__ = [
    "IMPORTANCE_METHODS",
    "ConceptScore",
    "StrategicClusters",
    "concept_importance",
    "masked_scores",
    "strategic_clusters",
]

IMPORTANCE_METHODS = ("sobol", "gradient_input", "integrated_gradients", "occlusion")

ConceptScore = Callable[[Tensor], Tensor]
"""``score(coefficients) -> scores``: the explained target score :math:`h(uW)` of ``(n, h, w, K)``
(masked) concept coefficients, ``(n,)``, differentiable w.r.t. the coefficients; e.g.
:meth:`ConceptExtractor.concept_score <xai.concepts.ConceptExtractor.concept_score>`. Model
state is the caller's: run the importance functions inside :func:`xai.adapter.preserved`."""


def masked_scores(
    score: ConceptScore, coefficients: Tensor, masks: Tensor, *, batch_size: int = 64
) -> Tensor:
    """``F(m)`` for every mask and image: ``(n_masks, B)``, no gradient.

    Args:
        score: the concept-space model's score, see :data:`ConceptScore`.
        coefficients: ``(B, h, w, K)`` per-position coefficients
            (:meth:`~xai.concepts.ConceptExtractor.encode`).
        masks: ``(n_masks, K)``.
        batch_size: most masked copies scored in one call (default 64, the extractor's
            default).
    """
    if masks.dim() != 2 or masks.shape[1] != coefficients.shape[-1]:
        raise ValueError(
            f"masks must be (n_masks, K={coefficients.shape[-1]}), got {tuple(masks.shape)}"
        )
    check_positive_int(batch_size, "batch_size")
    masks = masks.to(coefficients)
    n_masks, batch = masks.shape[0], coefficients.shape[0]

    def masked(rows: Tensor) -> Tensor:  # row r = (image r // n_masks, mask r % n_masks)
        m = masks[rows % n_masks]
        return coefficients[rows // n_masks] * m[:, None, None, :]

    scores = score_rows(
        score,
        as_target(lambda values: values),  # score() already returns the target's scores
        batch * n_masks,
        masked,
        torch.arange(batch).repeat_interleave(n_masks),
        batch_size=batch_size,
        desc="concept masks",
        dtype=torch.float64,
    )
    return scores.view(batch, n_masks).T.contiguous().cpu()


def _mask_gradients(
    score: ConceptScore, coefficients: Tensor, level: float, batch_size: int
) -> Tensor:
    """``dF/dm`` at ``m = level * 1`` for every image, ``(B, K)``."""
    grads = []
    with torch.enable_grad():
        for s in range(0, coefficients.shape[0], batch_size):
            u = coefficients[s : s + batch_size]
            m = torch.full((u.shape[0], u.shape[-1]), level, dtype=u.dtype, requires_grad=True)
            value = score(u * m[:, None, None, :])
            (grad,) = torch.autograd.grad(value.sum(), m)
            grads.append(grad)
    return torch.cat(grads)


def concept_importance(
    score: ConceptScore,
    coefficients: Tensor,
    *,
    method: str = "sobol",
    batch_size: int = 64,
    seed: int | None = 0,
    n_designs: int = 32,
    sampler: str = "sobol",
    scramble: bool = True,
    estimator: str = "jansen",
    variance: str = "pooled",
    n_steps: int = 32,
    reference: bool = False,
) -> Tensor:
    """Per-image importance of each concept for the score ``score`` explains, ``(B, K)`` float64.

    :meth:`ConceptExtractor.local_importance <xai.concepts.ConceptExtractor.local_importance>`
    calls this with its :meth:`~xai.concepts.ConceptExtractor.concept_score`, batch size and
    seed, with the model preserved.

    Args:
        score: the concept-space model's score, see :data:`ConceptScore`.
        coefficients: ``(B, h, w, K)`` per-position coefficients.
        method: one of :data:`IMPORTANCE_METHODS` (default ``"sobol"``, CRAFT).
        batch_size: most coefficient tensors scored in one call of ``score`` (default 64).
        seed: seed of the Sobol design (default 0; ``None``: random).
        n_designs: Sobol ``N`` (default 32, CRAFT); the cost is ``N (K + 2)`` evaluations of
            ``h`` per image.
        sampler: Sobol design sampler (default ``"sobol"``).
        scramble: scramble the Sobol/Halton sequence (default ``True``).
        estimator: Sobol estimator (default ``"jansen"``, CRAFT).
        variance: the Sobol estimators' output variance: ``"pooled"`` (default, blocks ``A``
            and ``B``) or ``"a"`` (block ``A`` alone, ddof 1, as the reference codes).
        n_steps: integrated-gradients steps (default 32).
        reference: ``True`` reproduces the CRAFT reference code's Sobol importance exactly:
            unscrambled Halton design (``sampler="halton", scramble=False``), Jansen, the
            variance of block ``A`` and ``n_designs=32``, overriding those four arguments.

    Raises:
        ValueError: an unknown method, a ``batch_size`` that is not a positive int.
    """
    from xai.attributions.sobol import sobol_indices

    check_positive_int(batch_size, "batch_size")
    if reference:
        sampler, scramble, estimator, variance, n_designs = "halton", False, "jansen", "a", 32
    if method == "sobol":
        k = coefficients.shape[-1]
        indices = sobol_indices(
            lambda m: masked_scores(score, coefficients, m, batch_size=batch_size),
            k,
            n_designs,
            sampler=sampler,
            scramble=scramble,
            estimator=estimator,
            variance=variance,
            seed=seed,
            dtype=torch.float64,
        )
        return indices.total  # (B, K)
    if method == "gradient_input":
        return _mask_gradients(score, coefficients, 1.0, batch_size).double()
    if method == "integrated_gradients":
        levels = [(i + 0.5) / n_steps for i in range(n_steps)]
        grads = torch.zeros(coefficients.shape[0], coefficients.shape[-1], dtype=torch.float64)
        for a in levels:
            grads = grads + _mask_gradients(score, coefficients, a, batch_size).double()
        return grads / n_steps
    if method == "occlusion":
        k = coefficients.shape[-1]
        masks = torch.cat([torch.ones(1, k), 1 - torch.eye(k)]).double()
        scores = masked_scores(score, coefficients, masks, batch_size=batch_size)  # (K + 1, B)
        return (scores[:1] - scores[1:]).T.contiguous()
    raise ValueError(
        f"unknown importance method {method!r}; valid: {', '.join(map(repr, IMPORTANCE_METHODS))}"
    )


@dataclass(frozen=True)
class StrategicClusters:
    """Images of a class grouped by the concept that drives their prediction.

    Attributes:
        coords: ``(N, 2)`` 2-D embedding of the importance vectors.
        labels: ``(N,)`` the dominant concept of each image, ``-1`` where that concept
            dominates fewer than ``min_count`` images.
        shares: ``(K,)`` global importance shares (mean positive importance, summing to 1).
    """

    coords: Tensor
    labels: Tensor
    shares: Tensor


def strategic_clusters(
    importances: Tensor,
    *,
    min_count: int = 10,
    embedding: str = "pca",
    seed: int | None = 0,
) -> StrategicClusters:
    """The strategic cluster graph of the holistic paper (section 5) as data.

    Each image's local importance vector (its "strategy") is embedded in 2-D (``"pca"``,
    default, deterministic; ``"tsne"``; ``"umap"`` when umap-learn is installed; the paper uses
    UMAP), labelled by its most important concept, kept only when that concept is the top one
    for at least ``min_count`` images (default 10, the paper's), and concept shares are the
    mean positive importances normalized to sum to 1.

    Args:
        importances: ``(N, K)`` per-image importances (e.g. gradient x input).
        min_count: fewest images a concept must dominate to keep its label (default 10).
        embedding: ``"pca"`` (default), ``"tsne"`` or ``"umap"``.
        seed: random state of the embedding (default 0; ``None`` is taken as 0).

    Raises:
        ValueError: fewer than 2 images or an unknown embedding.
    """
    imp = torch.as_tensor(importances, dtype=torch.float64)
    if imp.dim() != 2 or imp.shape[0] < 2:
        raise ValueError(f"importances must be (N >= 2, K), got {tuple(imp.shape)}")
    x = imp.numpy()
    rs = 0 if seed is None else int(seed)
    if embedding == "pca":
        from sklearn.decomposition import PCA

        n_comp = min(2, *x.shape)
        coords = PCA(n_components=n_comp, random_state=rs).fit_transform(x)
    elif embedding == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(1, x.shape[0] - 1) / 3))
        coords = TSNE(2, perplexity=perplexity, random_state=rs, init="pca").fit_transform(x)
    elif embedding == "umap":
        import umap

        coords = umap.UMAP(random_state=rs).fit_transform(x)
    else:
        raise ValueError(f"embedding must be 'pca', 'tsne' or 'umap', got {embedding!r}")
    coords_t = torch.as_tensor(coords, dtype=torch.float64)
    if coords_t.shape[1] < 2:
        coords_t = torch.cat([coords_t, torch.zeros(len(coords_t), 2 - coords_t.shape[1])], 1)
    top = imp.argmax(1)
    counts = torch.bincount(top, minlength=imp.shape[1])
    labels = torch.where(counts[top] >= min_count, top, -1)
    pos = imp.clamp(min=0).mean(0)
    shares = pos / pos.sum() if float(pos.sum()) > 0 else torch.zeros_like(pos)
    return StrategicClusters(coords=coords_t, labels=labels, shares=shares)
