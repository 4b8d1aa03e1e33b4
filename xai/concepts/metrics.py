r"""Evaluation of concept extraction and concept importance (Fel et al., NeurIPS 2023, sec. 3).

Extraction: :func:`relative_reconstruction_error`, :func:`sparsity`, :func:`stability`.
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
    "match_concepts",
    "relative_reconstruction_error",
    "sparsity",
    "stability",
]


def relative_reconstruction_error(activations: Tensor, coefficients: Tensor, bank: Tensor,
                                  mean: Tensor | None = None) -> float:
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
        raise ValueError(
            f"importances must be (K,) or (B={n_images}, K), got {tuple(imp.shape)}"
        )
    return torch.sort(imp, dim=1, descending=True, stable=True).indices


def _curve(extractor: ConceptExtractor, inputs: Tensor, importances: Tensor,
           insertion: bool) -> MetricResult:
    u = extractor.encode(inputs)
    b, k = u.shape[0], u.shape[-1]
    order = _order(importances, b)
    curves = torch.empty(b, k + 1, dtype=torch.float64)
    for i in range(b):
        masks = torch.zeros(k + 1, k, dtype=torch.float64) if insertion else torch.ones(
            k + 1, k, dtype=torch.float64)
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
    the score curve. Higher is better. Arguments as :func:`c_deletion`."""
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
        extractor, inputs, importances: as :func:`c_deletion`.
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
