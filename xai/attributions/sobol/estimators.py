r"""Estimators of first- and total-order Sobol indices from Saltelli-design evaluations.

Generic layer: inputs are the stacked outputs of any function evaluated on the design of
:mod:`xai.attributions.sobol.samplers`, ``f_a = f(A)``, ``f_b = f(B)`` (``(..., N)``) and
``f_c = f(C_i)`` (``(..., d, N)``); any leading dimensions (images, classes) are batched. Every
estimator returns a :class:`SobolIndices` with ``first`` and ``total``, both ``(..., d)``.

Notation (the sums run over the ``N`` designs ``j``): ``a_j``, ``b_j``, ``c_ij``. All outputs
are first centered by their grand mean over the whole design (as SALib does; it makes the
product-based estimators robust to a large output mean, e.g. logits of 20 with a spread of
0.1) and computed in float64. ``V`` is the output variance: by default the variance of the
pooled ``A`` and ``B`` blocks (``2N`` values, ddof 0; SALib's choice), or with
``variance="a"`` that of block ``A`` alone with ddof 1 (the choice of the Sobol attribution
reference codes; it rescales every index of one output by the same factor).

- ``"jansen"`` (default): total :math:`\frac{1}{2NV}\sum_j (a_j - c_{ij})^2`, first
  :math:`1 - \frac{1}{2NV}\sum_j (b_j - c_{ij})^2`;
- ``"homma"``: total :math:`\frac{1}{NV}\sum_j a_j (a_j - c_{ij})` (Homma-Saltelli), first
  :math:`\frac{1}{NV}\sum_j b_j (c_{ij} - a_j)` (Saltelli 2010; SALib's ``S1``);
- ``"janon"``: total :math:`1 - (\overline{a c_i} - m_i^2) / V_i`, first the same with ``b``
  in place of ``a``;
- ``"glen_isaacs"``: total :math:`1 - \mathrm{corr}(a, c_i)`, first
  :math:`\mathrm{corr}(b, c_i)` (Pearson).

``"saltelli"`` is an alias of ``"homma"``: the reference codes' "Saltelli" total-order
estimator is algebraically the Homma-Saltelli one. For Janon, :math:`m_i` and :math:`V_i` are
the mean and (ddof 0) variance of the pooled pair :math:`(a, c_i)` (resp. :math:`(b, c_i)`), so
Janon and Glen-Isaacs use their own per-variable variance instead of ``V``. ``C_i`` shares
column ``i`` with ``B`` and every other column with ``A``, hence ``A`` appears in the
total-order formulas and ``B`` in the first-order ones.

An output whose variance is zero (a constant function, up to float rounding) gets all-zero
indices, never NaN.

References:
    Jansen, "Analysis of variance designs for model output", Computer Physics Communications
    117, 1999. Homma & Saltelli, "Importance measures in global sensitivity analysis of
    nonlinear models", Reliability Engineering & System Safety 52, 1996. Janon et al.,
    "Asymptotic normality and efficiency of two Sobol index estimators", ESAIM: P&S 18, 2014.
    Glen & Isaacs, "Estimating Sobol sensitivity indices using correlations", Environmental
    Modelling & Software 37, 2012. Saltelli et al., Computer Physics Communications 181, 2010.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "SobolIndices",
    "estimate",
    "get_estimator",
    "glen_isaacs",
    "homma",
    "janon",
    "jansen",
    "sobol_indices",
    "split_outputs",
]

# Variances at or below (this * largest |output|)^2 are float rounding of a constant function.
_RELATIVE_TOL = 1e-12


@dataclass(frozen=True)
class SobolIndices:
    """First- and total-order Sobol indices of ``d`` variables.

    Attributes:
        first: ``(..., d)`` first-order indices :math:`S_i = V_i / V` (the share of the
            variance explained by variable ``i`` alone).
        total: ``(..., d)`` total-order indices :math:`S_{T_i}` (everything variable ``i``
            does, alone and in interaction with the others).
    """

    first: Tensor
    total: Tensor


Estimator = Callable[..., SobolIndices]
"""``estimator(f_a, f_b, f_c, *, variance="pooled") -> SobolIndices``."""


def split_outputs(outputs: Tensor, n_designs: int, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split outputs of the stacked design ``[A; B; C_1; ...; C_d]`` along the last axis.

    Args:
        outputs: ``(..., N * (d + 2))`` evaluations in the order of
            :func:`xai.attributions.sobol.samplers.design_matrix`.
        n_designs: ``N``.
        d: number of variables.

    Returns:
        ``f_a (..., N)``, ``f_b (..., N)``, ``f_c (..., d, N)``.
    """
    if outputs.shape[-1] != n_designs * (d + 2):
        raise ValueError(
            f"expected N * (d + 2) = {n_designs * (d + 2)} outputs along the last axis for "
            f"N={n_designs}, d={d}, got {outputs.shape[-1]}"
        )
    f_a = outputs[..., :n_designs]
    f_b = outputs[..., n_designs : 2 * n_designs]
    f_c = outputs[..., 2 * n_designs :].unflatten(-1, (d, n_designs))
    return f_a, f_b, f_c


def _prepare(f_a: Tensor, f_b: Tensor, f_c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n_ok = f_c.dim() >= 2 and f_c.shape[-1] == f_a.shape[-1]
    if f_a.shape != f_b.shape or not n_ok or f_c.shape[:-2] != f_a.shape[:-1]:
        raise ValueError(
            f"expected f_a and f_b of shape (..., N) and f_c of shape (..., d, N), got "
            f"{tuple(f_a.shape)}, {tuple(f_b.shape)} and {tuple(f_c.shape)}"
        )
    if f_a.shape[-1] < 2:
        raise ValueError(f"need at least N=2 designs to estimate a variance, got {f_a.shape[-1]}")
    a, b, c = f_a.double(), f_b.double(), f_c.double()
    everything = torch.cat([a, b, c.flatten(-2)], -1)
    scale = everything.abs().amax(-1, keepdim=True)
    center = everything.mean(-1, keepdim=True)
    a, b, c = a - center, b - center, c - center[..., None]
    return a, b, c, (scale * _RELATIVE_TOL) ** 2


def _variance(a: Tensor, b: Tensor, variance: str) -> Tensor:
    if variance == "pooled":
        return torch.cat([a, b], -1).var(-1, correction=0, keepdim=True)
    if variance == "a":
        return a.var(-1, correction=1, keepdim=True)
    raise ValueError(f"variance must be 'pooled' or 'a', got {variance!r}")


def _ratio(numerator: Tensor, denominator: Tensor, floor: Tensor) -> Tensor:
    """``numerator / denominator``, and 0 where the denominator is rounding noise."""
    ok = denominator > floor
    return torch.where(ok, numerator / torch.where(ok, denominator, 1.0), 0.0)


def jansen(f_a: Tensor, f_b: Tensor, f_c: Tensor, *, variance: str = "pooled") -> SobolIndices:
    """Jansen (1999) estimators; the total-order one is the default of Fel et al. (2021).

    Args:
        f_a: ``(..., N)`` outputs on ``A``.
        f_b: ``(..., N)`` outputs on ``B``.
        f_c: ``(..., d, N)`` outputs on ``C_1 .. C_d``.
        variance: ``"pooled"`` (A and B, ddof 0; default) or ``"a"`` (A alone, ddof 1).

    Returns:
        :class:`SobolIndices` with ``(..., d)`` float64 tensors.
    """
    a, b, c, floor = _prepare(f_a, f_b, f_c)
    v = _variance(a, b, variance)
    total = _ratio(((a[..., None, :] - c) ** 2).mean(-1) / 2, v, floor)
    spread = ((b[..., None, :] - c) ** 2).mean(-1) / 2
    first = torch.where(v > floor, 1 - _ratio(spread, v, floor), 0.0)
    return SobolIndices(first=first, total=total)


def homma(f_a: Tensor, f_b: Tensor, f_c: Tensor, *, variance: str = "pooled") -> SobolIndices:
    """Homma-Saltelli (1996) total order and Saltelli (2010) first order (SALib's ``S1``).

    Args and Returns: as :func:`jansen`.
    """
    a, b, c, floor = _prepare(f_a, f_b, f_c)
    v = _variance(a, b, variance)
    total = _ratio((a[..., None, :] * (a[..., None, :] - c)).mean(-1), v, floor)
    first = _ratio((b[..., None, :] * (c - a[..., None, :])).mean(-1), v, floor)
    return SobolIndices(first=first, total=total)


def _janon(x: Tensor, c: Tensor, floor: Tensor) -> Tensor:
    x = x[..., None, :].expand_as(c)
    mean = (x + c).mean(-1) / 2
    var = ((x**2 + c**2) / 2).mean(-1) - mean**2
    return _ratio((x * c).mean(-1) - mean**2, var, floor)


def janon(f_a: Tensor, f_b: Tensor, f_c: Tensor, *, variance: str = "pooled") -> SobolIndices:
    """Janon et al. (2014) estimators (asymptotically efficient); ``variance`` is unused.

    Args and Returns: as :func:`jansen`.
    """
    _variance(f_a, f_b, variance)  # validate the option
    a, b, c, floor = _prepare(f_a, f_b, f_c)
    v = torch.cat([a, b], -1).var(-1, correction=0, keepdim=True)
    total = torch.where(v > floor, 1 - _janon(a, c, floor), 0.0)
    first = torch.where(v > floor, _janon(b, c, floor), 0.0)
    return SobolIndices(first=first, total=total)


def _corr(x: Tensor, c: Tensor, floor: Tensor) -> Tensor:
    x = x[..., None, :] - x.mean(-1, keepdim=True)[..., None, :]
    c = c - c.mean(-1, keepdim=True)
    return _ratio((x * c).mean(-1), ((x**2).mean(-1) * (c**2).mean(-1)).sqrt(), floor)


def glen_isaacs(f_a: Tensor, f_b: Tensor, f_c: Tensor, *, variance: str = "pooled") -> SobolIndices:
    """Glen & Isaacs (2012) correlation estimators (plain Pearson correlations, as in the
    reference codes); ``variance`` is unused.

    Args and Returns: as :func:`jansen`.
    """
    _variance(f_a, f_b, variance)
    a, b, c, floor = _prepare(f_a, f_b, f_c)
    v = torch.cat([a, b], -1).var(-1, correction=0, keepdim=True)
    total = torch.where(v > floor, 1 - _corr(a, c, floor), 0.0)
    first = torch.where(v > floor, _corr(b, c, floor), 0.0)
    return SobolIndices(first=first, total=total)


ESTIMATORS: dict[str, Estimator] = {
    "jansen": jansen,
    "homma": homma,
    "saltelli": homma,
    "janon": janon,
    "glen_isaacs": glen_isaacs,
}
"""Built-in estimators by name (``"saltelli"`` is ``"homma"``, see the module docstring)."""


def get_estimator(estimator: str | Estimator) -> Estimator:
    """The estimator function for a name (or a callable, returned as is)."""
    if isinstance(estimator, str):
        if estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown estimator {estimator!r}; valid estimators: "
                f"{', '.join(map(repr, ESTIMATORS))} or a callable (f_a, f_b, f_c) -> SobolIndices"
            )
        return ESTIMATORS[estimator]
    if callable(estimator):
        return estimator
    raise TypeError(f"estimator must be a name or a callable, got {type(estimator).__name__}")


def estimate(
    outputs: Tensor,
    n_designs: int,
    d: int,
    *,
    estimator: str | Estimator = "jansen",
    variance: str = "pooled",
) -> SobolIndices:
    """First- and total-order indices from the outputs of the whole stacked design.

    Args:
        outputs: ``(..., N * (d + 2))`` evaluations on ``[A; B; C_1; ...; C_d]``.
        n_designs: ``N``.
        d: number of variables.
        estimator: a name of :data:`ESTIMATORS` (default ``"jansen"``) or a callable.
        variance: ``"pooled"`` (default) or ``"a"``; see the module docstring.

    Returns:
        :class:`SobolIndices`, ``first`` and ``total`` of shape ``(..., d)`` (float64).
    """
    fn = get_estimator(estimator)
    return fn(*split_outputs(outputs, n_designs, d), variance=variance)


def sobol_indices(
    fn: Callable[[Tensor], Tensor],
    d: int,
    n_designs: int = 32,
    *,
    sampler: str | Callable = "sobol",
    scramble: bool = True,
    estimator: str | Estimator = "jansen",
    variance: str = "pooled",
    seed: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SobolIndices:
    """Sobol indices of any batched torch function of ``d`` variables uniform in ``[0, 1]``.

    Draws the Saltelli design (:func:`~xai.attributions.sobol.samplers.sample`,
    :func:`~xai.attributions.sobol.samplers.design_matrix`), evaluates ``fn`` on its
    ``n_designs * (d + 2)`` rows in chunks of ``batch_size`` under ``torch.no_grad()``, and
    estimates the indices (:func:`estimate`). This is the entry point for Sobol analyses
    other than image masks (e.g. the importance of concept coefficients).

    Args:
        fn: ``fn(x) -> y`` with ``x`` of shape ``(n, d)`` and ``y`` of shape ``(n,)`` or
            ``(n, *S)`` (several outputs, e.g. one score per image, analyzed separately).
        d: number of variables.
        n_designs: ``N`` (the papers' ``nb_design``; default 32, Fel et al. 2021); a power of
            two for the Sobol sampler.
        sampler: see :func:`~xai.attributions.sobol.samplers.sample` (default ``"sobol"``).
        scramble: scramble the Sobol / Halton sequence (default ``True``).
        estimator: see :data:`ESTIMATORS` (default ``"jansen"``).
        variance: ``"pooled"`` (default) or ``"a"``; see the module docstring.
        seed: seed of the design (``None`` means 0).
        batch_size: at most this many rows per call of ``fn`` (``None``: all at once).
        progress: show a ``tqdm`` progress bar over the chunks.
        device: device of the rows given to ``fn`` (default CPU).
        dtype: dtype of the rows given to ``fn`` (default float32).

    Returns:
        :class:`SobolIndices` whose ``first`` and ``total`` have shape ``(*S, d)`` (float64).

    Example:
        >>> idx = sobol_indices(lambda x: x[:, 0] + 2 * x[:, 1], d=2, n_designs=1024)
        >>> idx.total  # close to (0.2, 0.8)
    """
    from tqdm.auto import tqdm

    from xai._checks import check_positive_int
    from xai.attributions.sobol.samplers import design_matrix, sample

    check_positive_int(batch_size, "batch_size", allow_none=True)
    a, b = sample(d, n_designs, sampler=sampler, seed=seed, scramble=scramble)
    design = design_matrix(a, b).to(device=device, dtype=dtype)
    total = design.shape[0]
    size = batch_size or total
    outputs = []
    with torch.no_grad():
        for start in tqdm(range(0, total, size), desc="Sobol", disable=not progress):
            rows = design[start : start + size]
            y = fn(rows)
            if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != rows.shape[0]:
                shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise ValueError(
                    f"fn must return a tensor with one row per design row, shape "
                    f"({rows.shape[0]}, ...), got {shape}"
                )
            outputs.append(y.detach().double())
    stacked = torch.cat(outputs).movedim(0, -1)  # (*S, N (d + 2))
    return estimate(stacked, n_designs, d, estimator=estimator, variance=variance)
