r"""Evaluation of concept extraction and concept importance (Fel et al., NeurIPS 2023, sec. 3).

Extraction: :func:`relative_reconstruction_error`, :func:`sparsity`, :func:`stability`,
:func:`fid` and :func:`ood_score` (the reconstructions compared with the real activations, in
the model's own feature space: no Inception network is involved).
Importance (concept-space versions of the pixel metrics; removing a concept sets its
coefficient to 0 at every position): :func:`c_deletion`, :func:`c_insertion`,
:func:`c_mufidelity`. Each importance metric returns a :class:`xai.metrics.MetricResult` with
one score per image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from xai.metrics.base import MetricResult

if TYPE_CHECKING:
    from xai.concepts.extractor import ConceptExtractor

__all__ = [
    "c_deletion",
    "c_insertion",
    "c_mufidelity",
    "fid",
    "match_concepts",
    "ood_score",
    "relative_reconstruction_error",
    "sparsity",
    "stability",
]


def relative_reconstruction_error(
    activations: Tensor, coefficients: Tensor, bank: Tensor, mean: Tensor | None = None
) -> float:
    r""":math:`\|A - U W\|_F / \|A\|_F` (0 is a perfect reconstruction).

    Args:
        activations: ``(n, C)`` rows ``A``.
        coefficients: ``(n, K)`` codes ``U``.
        bank: ``(K, C)`` concept bank ``W``.
        mean: ``(C,)`` offset added to ``U W`` (PCA/ICA), default none.
    """
    a = activations.double()
    rec = coefficients.double() @ bank.double()
    if mean is not None:
        rec = rec + mean.double()
    return float(torch.linalg.norm(a - rec) / torch.linalg.norm(a).clamp_min(1e-12))


def sparsity(coefficients: Tensor, *, tol: float = 1e-6) -> float:
    """Fraction of coefficients whose magnitude is at most ``tol`` times the largest one."""
    u = coefficients.double().abs()
    return float((u <= tol * u.max().clamp_min(1e-300)).double().mean())


def fid(activations: Tensor, reconstruction: Tensor) -> float:
    r"""Fréchet distance between Gaussian fits of real and reconstructed activations.

    :math:`\|\mu - \hat\mu\|^2 + \operatorname{Tr}(\Sigma + \hat\Sigma
    - 2 (\Sigma \hat\Sigma)^{1/2})`, the holistic paper's FID of a concept extraction, computed
    on the layer's own activations (rows of ``A`` against rows of ``U W``). The trace of the
    matrix square root is taken as :math:`\sum_i \sqrt{\lambda_i}` of the symmetric
    :math:`\Sigma^{1/2} \hat\Sigma \Sigma^{1/2}` (same eigenvalues), which is stable for
    singular covariances. 0 when the two sets have the same mean and covariance; lower is
    better.

    Args:
        activations: ``(n, C)`` real rows ``A``.
        reconstruction: ``(m, C)`` reconstructed rows (e.g. ``factorizer.decode(U)``).

    Raises:
        ValueError: mismatched feature sizes or fewer than 2 rows.
    """
    a, b = activations.double(), reconstruction.double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"activations and reconstruction must be (n >= 2, C) with the same C, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    evals, evecs = torch.linalg.eigh(cov_a)
    root_a = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return float(value.clamp_min(0))


def ood_score(activations: Tensor, reconstruction: Tensor, *, k: int = 1) -> float:
    """How far reconstructions lie from the real activations: mean k-NN cosine distance.

    For each reconstructed row, the mean cosine distance (``1 - cos``) to its ``k`` nearest
    real rows, averaged over rows (scikit-learn ``NearestNeighbors``). The holistic paper
    names an OOD score without a formula or code; this is the deep-kNN reading of it,
    documented as such. 0 when every reconstruction points like a real row; lower is better.

    Args:
        activations: ``(n, C)`` real rows.
        reconstruction: ``(m, C)`` reconstructed rows.
        k: neighbours (default 1, at most ``n``).

    Raises:
        ValueError: mismatched feature sizes, or ``k`` not in ``1..n``.
    """
    from sklearn.neighbors import NearestNeighbors

    a = activations.detach().double().cpu().numpy()
    b = reconstruction.detach().double().cpu().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"activations and reconstruction must be (n, C) with the same C, got {a.shape} "
            f"and {b.shape}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(a):
        raise ValueError(f"k must be an int in 1..{len(a)}, got {k!r}")
    dist, _ = NearestNeighbors(n_neighbors=k, metric="cosine").fit(a).kneighbors(b)
    return float(dist.mean())


def match_concepts(bank_a: Tensor, bank_b: Tensor) -> tuple[Tensor, Tensor]:
    """Match the concepts of two banks by the Hungarian algorithm on cosine similarity.

    Args:
        bank_a: ``(K, C)``.
        bank_b: ``(K', C)``.

    Returns:
        ``(index_b, cosines)``: for each matched concept of ``bank_a`` (``min(K, K')``, in
        order), the index of its partner in ``bank_b`` and their cosine similarity.
    """
    from scipy.optimize import linear_sum_assignment

    a = torch.nn.functional.normalize(bank_a.double(), dim=1)
    b = torch.nn.functional.normalize(bank_b.double(), dim=1)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    order = torch.as_tensor(rows).argsort()
    cols_t = torch.as_tensor(cols)[order]
    return cols_t, cos[torch.as_tensor(rows)[order], cols_t]


def stability(bank_a: Tensor, bank_b: Tensor) -> float:
    """Mean cosine similarity of Hungarian-matched concepts of two banks (1: identical).

    Fit the same extractor on two random subsets of the data and compare their banks.
    """
    return float(match_concepts(bank_a, bank_b)[1].mean())


def _order(importances: Tensor, n_images: int) -> Tensor:
    imp = torch.as_tensor(importances, dtype=torch.float64)
    if imp.dim() == 1:
        imp = imp.expand(n_images, -1)
    if imp.shape[0] != n_images:
        raise ValueError(f"importances must be (K,) or (B={n_images}, K), got {tuple(imp.shape)}")
    return torch.sort(imp, dim=1, descending=True, stable=True).indices


def _curve(
    extractor: ConceptExtractor, inputs: Tensor, importances: Tensor, insertion: bool
) -> MetricResult:
    u = extractor.encode(inputs)
    b, k = u.shape[0], u.shape[-1]
    order = _order(importances, b)
    curves = torch.empty(b, k + 1, dtype=torch.float64)
    for i in range(b):
        masks = (
            torch.zeros(k + 1, k, dtype=torch.float64)
            if insertion
            else torch.ones(k + 1, k, dtype=torch.float64)
        )
        for step in range(1, k + 1):
            masks[step:, order[i, step - 1]] = 1.0 if insertion else 0.0
        curves[i] = extractor.scores(u[i : i + 1], masks)[:, 0]
    steps = torch.linspace(0, 1, k + 1, dtype=torch.float64)
    return MetricResult(scores=torch.trapezoid(curves, steps, dim=1), curve=curves, steps=steps)


def c_deletion(extractor: ConceptExtractor, inputs: Tensor, importances: Tensor) -> MetricResult:
    """C-Deletion: remove concepts in decreasing importance; the area under the score curve
    (trapezoid on ``[0, 1]``, ``K + 1`` points). Lower is better.

    Args:
        extractor: a fitted :class:`~xai.concepts.ConceptExtractor`.
        inputs: ``(B, C, H, W)`` images.
        importances: ``(K,)`` global or ``(B, K)`` per-image importances.
    """
    return _curve(extractor, inputs, importances, insertion=False)


def c_insertion(extractor: ConceptExtractor, inputs: Tensor, importances: Tensor) -> MetricResult:
    """C-Insertion: from all coefficients 0, add concepts in decreasing importance; area under
    the score curve. Higher is better. Arguments as :func:`c_deletion`.
    """
    return _curve(extractor, inputs, importances, insertion=True)


def c_mufidelity(
    extractor: ConceptExtractor,
    inputs: Tensor,
    importances: Tensor,
    *,
    subset_size: float = 0.2,
    n_subsets: int = 128,
    seed: int | None = 0,
) -> MetricResult:
    r"""C-µFidelity: Pearson correlation over random concept subsets ``S`` (a fraction
    ``subset_size`` of the concepts, at least one; default 20 %, Bhatt et al. 2020) between
    :math:`\sum_{i \in S} \phi_i` and :math:`F(\mathbf{1}) - F(\mathbf{1}_{\bar S})`.
    Higher is better (1 for the exact contributions of a linear head).

    Args:
        extractor: a fitted :class:`~xai.concepts.ConceptExtractor`, as in :func:`c_deletion`.
        inputs: the images, as in :func:`c_deletion`.
        importances: the concept importances, as in :func:`c_deletion`.
        subset_size: fraction of concepts removed per subset.
        n_subsets: number of random subsets (default 128).
        seed: seed of the subsets.
    """
    u = extractor.encode(inputs)
    b, k = u.shape[0], u.shape[-1]
    imp = torch.as_tensor(importances, dtype=torch.float64)
    imp = imp.expand(b, -1) if imp.dim() == 1 else imp
    _order(imp, b)
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    size = max(1, round(subset_size * k))
    removed = torch.zeros(n_subsets, k, dtype=torch.float64)
    for s in range(n_subsets):
        removed[s, torch.randperm(k, generator=gen)[:size]] = 1.0
    masks = torch.cat([torch.ones(1, k, dtype=torch.float64), 1 - removed])
    scores = torch.empty(b, dtype=torch.float64)
    for i in range(b):
        f = extractor.scores(u[i : i + 1], masks)[:, 0]
        drop = f[0] - f[1:]
        attr = removed @ imp[i]
        x, y = attr - attr.mean(), drop - drop.mean()
        denom = (x.norm() * y.norm()).item()
        scores[i] = float(x @ y) / denom if denom > 0 else float("nan")
    return MetricResult(scores=scores)
