"""Samplers of the Saltelli design: the matrices ``A``, ``B`` and ``C_i`` of Sobol estimation.

This layer knows nothing about images: it draws points of ``[0, 1]^d`` for any function of
``d`` independent uniform variables (grid-cell masks for :class:`SobolAttribution`, concept
coefficients for concept importance).

Two independent ``(N, d)`` matrices ``A`` and ``B`` are the first and last ``d`` coordinates
of ``N`` points of a ``2d``-dimensional sequence. For each variable ``i``, ``C_i`` is ``A``
with column ``i`` taken from ``B`` (SALib calls it ``AB_i``). The stacked design
:func:`design_matrix` is ``[A; B; C_1; ...; C_d]``, ``N * (d + 2)`` rows, in that block order
(the reference implementations' order; :func:`xai.attributions.sobol.estimators.split_outputs`
undoes it).

References:
    Saltelli et al., "Variance based sensitivity analysis of model output. Design and
    estimator for the total sensitivity index", Computer Physics Communications 181, 2010.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SAMPLERS",
    "Sampler",
    "design_matrix",
    "halton",
    "latin_hypercube",
    "random",
    "sample",
    "sobol",
]

Sampler = Callable[[int, int, int], np.ndarray]
"""``sampler(dim, n, seed) -> (n, dim)`` array of points in ``[0, 1]^dim``."""


def _qmc_engine(cls: type, dim: int, seed: int, **kwargs: Any) -> Any:
    try:
        return cls(dim, rng=np.random.default_rng(seed), **kwargs)
    except TypeError:  # scipy < 1.15 names the argument ``seed``
        return cls(dim, seed=np.random.default_rng(seed), **kwargs)


def sobol(dim: int, n: int, seed: int, *, scramble: bool = True) -> np.ndarray:
    """Points of a Sobol low-discrepancy sequence (``scipy.stats.qmc.Sobol``).

    ``n`` must be a power of two: only then are the points a balanced (t, m, s)-net, the
    property Sobol estimation relies on. Scrambling (Owen-type linear matrix scrambling plus a
    digital shift, seeded) keeps the net property and makes the estimate unbiased
    (randomized QMC); without it the first point is the all-zero vector.

    Raises:
        ValueError: ``n`` is not a power of two (the message gives the nearest ones).
    """
    if n < 1 or n & (n - 1):
        lower = 1 << max(0, n.bit_length() - 1)
        raise ValueError(
            f"the Sobol sampler needs n_designs to be a power of two (balanced Sobol nets), got "
            f"{n}; use {lower} or {lower * 2}, or sampler='halton' / 'latin_hypercube' / "
            "'random', which take any n_designs"
        )
    from scipy.stats import qmc

    engine = _qmc_engine(qmc.Sobol, dim, seed, scramble=scramble)
    return engine.random_base2(int(math.log2(n)))


def halton(dim: int, n: int, seed: int, *, scramble: bool = True) -> np.ndarray:
    """Points of a (scrambled) Halton sequence (``scipy.stats.qmc.Halton``), any ``n``."""
    from scipy.stats import qmc

    return _qmc_engine(qmc.Halton, dim, seed, scramble=scramble).random(n)


def latin_hypercube(dim: int, n: int, seed: int) -> np.ndarray:
    """A random Latin hypercube (``scipy.stats.qmc.LatinHypercube``), any ``n``."""
    from scipy.stats import qmc

    return _qmc_engine(qmc.LatinHypercube, dim, seed).random(n)


def random(dim: int, n: int, seed: int) -> np.ndarray:
    """Plain Monte Carlo: independent uniform points (NumPy's PCG64), any ``n``."""
    return np.random.default_rng(seed).random((n, dim))


SAMPLERS: dict[str, Sampler] = {
    "sobol": sobol,
    "halton": halton,
    "latin_hypercube": latin_hypercube,
    "random": random,
}
"""Built-in samplers by name (``sobol`` is the default everywhere)."""


def sample(
    d: int,
    n_designs: int,
    *,
    sampler: str | Sampler = "sobol",
    seed: int | None = None,
    scramble: bool = True,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """The two independent base matrices ``A`` and ``B``, each ``(n_designs, d)`` in ``[0, 1]``.

    They are the first and last ``d`` coordinates of ``n_designs`` points of a
    ``2d``-dimensional sequence (Saltelli 2010).

    Args:
        d: number of variables (grid cells, concepts).
        n_designs: ``N``, points per matrix (the papers' ``nb_design``); a power of two for
            ``"sobol"``.
        sampler: ``"sobol"`` (default, as in Fel et al. 2021), ``"halton"``,
            ``"latin_hypercube"``, ``"random"``, or a callable ``(dim, n, seed) -> (n, dim)``
            array in ``[0, 1]``.
        seed: seed of the scrambling / random draws (``None`` means 0: always deterministic).
        scramble: scramble the Sobol / Halton sequence (default ``True``; the reference codes
            use unscrambled sequences, whose first point is the all-zero vector).
        dtype: dtype of the returned (CPU) tensors.

    Returns:
        ``(A, B)``, two CPU tensors of shape ``(n_designs, d)``.

    Raises:
        ValueError: ``d`` or ``n_designs`` not positive, an unknown sampler name, a
            non-power-of-two ``n_designs`` for the Sobol sampler, or a sampler returning the
            wrong shape / values outside ``[0, 1]``.
        TypeError: ``sampler`` is neither a name nor a callable.
    """
    for value, name in ((d, "d"), (n_designs, "n_designs")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    seed = 0 if seed is None else int(seed)
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(
                f"unknown sampler {sampler!r}; valid samplers: {', '.join(map(repr, SAMPLERS))}"
                " or a callable (dim, n, seed) -> (n, dim) array"
            )
        fn = SAMPLERS[sampler]
        if sampler in ("sobol", "halton"):
            points = fn(2 * d, n_designs, seed, scramble=scramble)  # type: ignore[call-arg]
        else:
            points = fn(2 * d, n_designs, seed)
    elif callable(sampler):
        points = sampler(2 * d, n_designs, seed)
    else:
        raise TypeError(f"sampler must be a name or a callable, got {type(sampler).__name__}")
    design = torch.as_tensor(np.asarray(points), dtype=dtype)
    if design.shape != (n_designs, 2 * d):
        raise ValueError(
            f"the sampler returned shape {tuple(design.shape)}, expected ({n_designs}, {2 * d})"
        )
    if bool(((design < 0) | (design > 1)).any()):
        raise ValueError("the sampler returned values outside [0, 1]")
    return design[:, :d].contiguous(), design[:, d:].contiguous()


def design_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Stack ``[A; B; C_1; ...; C_d]``, where ``C_i`` is ``A`` with column ``i`` from ``B``.

    Args:
        a: ``(N, d)`` base matrix ``A``.
        b: ``(N, d)`` base matrix ``B``.

    Returns:
        ``(N * (d + 2), d)``: rows ``0..N-1`` are ``A``, then ``B``, then ``C_1`` ... ``C_d``
        (block ``2 + i`` holds ``C_i``): the ``N (d + 2)`` evaluations of Saltelli's scheme.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"A and B must both be (N, d) matrices, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    n, d = a.shape
    c = a[None].repeat(d, 1, 1)  # (d, N, d): block i is a copy of A ...
    cols = torch.arange(d)
    c[cols, :, cols] = b.T  # ... whose column i comes from B
    return torch.cat([a, b, c.reshape(d * n, d)])
