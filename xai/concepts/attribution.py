r"""Concept attribution maps: gradients of a concept's coefficient w.r.t. the pixels.

CRAFT's third ingredient (Fel et al., CVPR 2023, section 3.3). An image's concept coefficients
are :math:`u(x) = \operatorname{enc}(\bar a(x))`, the encoding against the fixed bank ``W`` of
its spatially averaged activation :math:`\bar a(x) = \operatorname{mean}_{hw} g(x)` (the same
kind of row the bank was learned from: CRAFT's crops are averaged over space). For NMF the
encoding is the non-negative least-squares solution

.. math:: u^\star(a) = \arg\min_{u \ge 0} \tfrac12 \|a - uW\|^2 + \ell_1 \|u\|_1
          + \tfrac{\ell_2}{2} \|u\|^2,

whose derivative follows from the KKT conditions at the solution (implicit differentiation,
the factorization held fixed): on the active set :math:`S = \{i : u^\star_i > 0\}`,
:math:`u^\star_S (W_S W_S^\top + \ell_2 I) = a W_S^\top - \ell_1`, so

.. math:: \partial u^\star_S / \partial a = (W_S W_S^\top + \ell_2 I)^{-1} W_S,
          \qquad \partial u^\star_{\bar S} / \partial a = 0.

(:math:`\ell_1, \ell_2` are scikit-learn's penalties of ``NMF.transform``: ``alpha_W`` times
the number of features, split by ``l1_ratio``; both 0 by default.) The authors' code obtains the
same derivative by differentiating through the NNLS fixed point (jaxopt). PCA's encoding is
linear and is differentiated directly.

Two maps per concept ``i``:

- ``method="gradient_input"`` (default): :math:`\sum_c x_c \, \partial u_i / \partial x_c`,
  ``(B, K, H, W)`` at the input resolution: gradient x input of the coefficient on the pixels;
- ``method="grad_cam"``: the reference code's layer map
  :math:`\mathrm{ReLU}(\sum_c A_c \, \operatorname{mean}_{hw}(\partial u_i / \partial A)_c)`,
  upsampled bilinearly.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_inputs
from xai.adapter.split import layer_output
from xai.adapter.state import preserved
from xai.concepts.factorizers import Factorizer, NMFFactorizer, PCAFactorizer

__all__ = ["ATTRIBUTION_METHODS", "concept_attribution_maps", "differentiable_encode"]

ATTRIBUTION_METHODS = ("gradient_input", "grad_cam")


class _FittedConcepts(Protocol):
    """What :func:`concept_attribution_maps` reads of a :class:`~xai.concepts.ConceptExtractor`."""

    @property
    def model(self) -> nn.Module: ...
    @property
    def layer(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def concepts_(self) -> Tensor: ...
    @property
    def factorizer_(self) -> Factorizer: ...
    def _check_fitted(self) -> None: ...


def _nmf_penalties(factorizer: NMFFactorizer, n_features: int) -> tuple[float, float]:
    """scikit-learn's ``(l1, l2)`` penalties on the codes in ``NMF.transform``."""
    est = factorizer.estimator_
    alpha = float(getattr(est, "alpha_W", 0.0) or 0.0)
    l1_ratio = float(getattr(est, "l1_ratio", 0.0) or 0.0)
    return n_features * alpha * l1_ratio, n_features * alpha * (1.0 - l1_ratio)


def _active_solve(rows: Tensor, bank: Tensor, codes: Tensor, l1: float, l2: float) -> Tensor:
    """Exact solution of the penalized least squares on each row's active set.

    ``codes`` (from the iterative solver) fixes the active sets; solving the KKT system there
    removes the solver's tolerance, so the forward value and its implicit derivative agree.
    A row whose exact solution leaves the non-negative orthant (a wrongly identified active
    set) keeps the solver's codes.
    """
    out = codes.clone()
    scale = codes.abs().amax(1, keepdim=True).clamp_min(1e-300)
    active = codes > 1e-9 * scale
    eye = torch.eye(bank.shape[0], dtype=bank.dtype)
    for r in range(rows.shape[0]):
        s = active[r]
        if not bool(s.any()):
            continue
        ws = bank[s]
        sol = torch.linalg.solve(
            ws @ ws.T + l2 * eye[: ws.shape[0], : ws.shape[0]], ws @ rows[r] - l1
        )
        if bool((sol > 0).all()):
            out[r] = 0.0
            out[r, s] = sol
    return out


class _NNLSEncode(torch.autograd.Function):
    """``u*(a)`` of the fixed-bank NNLS with its implicit (KKT) derivative."""

    @staticmethod
    def forward(
        ctx: Any, rows: Tensor, bank: Tensor, codes: Tensor, l1: float, l2: float
    ) -> Tensor:
        u = _active_solve(rows, bank, codes, l1, l2)
        ctx.save_for_backward(u, bank)
        ctx.l2 = l2
        return u

    @staticmethod
    def backward(ctx: Any, grad_u: Tensor) -> tuple[Tensor, None, None, None, None]:
        u, bank = ctx.saved_tensors
        grad_rows = torch.zeros(u.shape[0], bank.shape[1], dtype=bank.dtype)
        for r in range(u.shape[0]):
            s = u[r] > 0
            if not bool(s.any()):
                continue
            ws = bank[s]
            system = ws @ ws.T + ctx.l2 * torch.eye(ws.shape[0], dtype=bank.dtype)
            # du_S/da = system^{-1} W_S (system symmetric): grad_a = grad_u_S system^{-1} W_S
            grad_rows[r] = torch.linalg.solve(system, grad_u[r, s].to(bank.dtype)) @ ws
        return grad_rows.to(grad_u.dtype), None, None, None, None


def differentiable_encode(factorizer: Factorizer, rows: Tensor) -> Tensor:
    """Codes ``(n, K)`` of ``(n, C)`` activation rows, differentiable w.r.t. ``rows``.

    NMF: the exact NNLS solution on the solver's active set, with the implicit derivative of
    the module docstring; PCA: the linear projection.

    Raises:
        ValueError: a factorizer whose encoding is not differentiable here (ICA, K-means,
            dictionary learning, custom objects).
    """
    if isinstance(factorizer, NMFFactorizer):
        bank = factorizer.components.to(torch.float64)
        l1, l2 = _nmf_penalties(factorizer, bank.shape[1])
        codes = factorizer.encode(rows.detach()).to(torch.float64)
        u = _NNLSEncode.apply(rows.to(torch.float64), bank, codes, l1, l2)
        return u.to(rows.dtype)
    if isinstance(factorizer, PCAFactorizer):
        bank = factorizer.components.to(rows)
        return (rows - factorizer.mean.to(rows)) @ bank.T
    raise ValueError(
        f"concept attribution maps need a differentiable encoding: factorizer 'nmf' (implicit "
        f"differentiation of NNLS) or 'pca', got {type(factorizer).__name__}; use "
        "ConceptExtractor.concept_maps for coefficient maps with other factorizers"
    )


def concept_attribution_maps(
    extractor: _FittedConcepts,
    inputs: Tensor,
    concepts: list[int] | None = None,
    *,
    method: str = "gradient_input",
) -> Tensor:
    """Where each concept comes from in the pixels: ``(B, len(concepts), H, W)``.

    Args:
        extractor: a fitted :class:`~xai.concepts.ConceptExtractor` (NMF or PCA).
        inputs: ``(B, C, H, W)`` images; never modified.
        concepts: concept indices (default all ``K``).
        method: ``"gradient_input"`` (default) or ``"grad_cam"``, see the module docstring.

    Returns:
        Float maps at the input resolution (dtype promoted to at least float32), raw.

    Raises:
        ValueError: an unknown method, a concept index out of range, a factorizer without a
            differentiable encoding.
    """
    extractor._check_fitted()
    check_inputs(inputs)
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, ATTRIBUTION_METHODS))}, got {method!r}"
        )
    k = extractor.concepts_.shape[0]
    concepts = list(range(k)) if concepts is None else [int(c) for c in concepts]
    bad = [c for c in concepts if not 0 <= c < k]
    if bad:
        raise ValueError(f"concepts {bad} out of range for K={k} concepts (0..{k - 1})")
    dtype = torch.promote_types(inputs.dtype, torch.float32)
    maps = []
    with preserved(extractor.model):
        for start in range(0, inputs.shape[0], extractor.batch_size):
            x = inputs[start : start + extractor.batch_size].detach().clone().requires_grad_(True)
            acts = layer_output(extractor.model, extractor.layer, x, differentiable=True)
            if acts.dim() == 2:
                acts = acts[:, :, None, None]
            rows = acts.mean((2, 3))
            codes = differentiable_encode(extractor.factorizer_, rows)  # (b, K)
            per_concept = []
            for i, c in enumerate(concepts):
                last = i == len(concepts) - 1
                if method == "gradient_input":
                    (grad,) = torch.autograd.grad(codes[:, c].sum(), x, retain_graph=not last)
                    per_concept.append((grad * x).sum(1).detach())
                else:
                    (grad,) = torch.autograd.grad(codes[:, c].sum(), acts, retain_graph=not last)
                    weights = grad.mean((2, 3), keepdim=True)
                    cam = F.relu((weights * acts).sum(1, keepdim=True)).detach()
                    per_concept.append(
                        F.interpolate(
                            cam, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False
                        )[:, 0]
                    )
            maps.append(torch.stack(per_concept, 1).to(dtype))
    return torch.cat(maps)
