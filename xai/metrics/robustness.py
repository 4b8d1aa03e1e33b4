"""Robustness: does the explanation stay put when the input barely moves?"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from xai._checks import check_positive_int
from xai.adapter import Target
from xai.metrics.base import Explainer, ExplainerMetric, MetricResult, explain

__all__ = ["AvgSensitivity", "MaxSensitivity"]

Perturbation = Callable[[Tensor, torch.Generator], Tensor]


class MaxSensitivity(ExplainerMetric):
    r"""Max-sensitivity (Yeh et al. 2019): the largest relative change of the map under noise.

    .. math:: \mathrm{SENS}_{\max} = \max_{j \le n} \frac{\lVert \Phi(x + \delta_j) - \Phi(x)
       \rVert_F}{\lVert \Phi(x) \rVert_F}, \quad \delta_j \sim U[-r, r]^{C \times H \times W}

    (relative, as Quantus and captum's ``sensitivity_max``; ``normalize=False`` gives Yeh et al.'s
    unnormalized difference; a zero map's norm counts as 1, as in captum). The target is fixed on
    the clean input. Noisy inputs are explained in chunks of ``batch_size`` across samples and
    draws. Lower is better.

    Args:
        n_samples: noise draws per input (captum's default 10; Quantus: 200).
        radius: half-width ``r`` of the uniform noise (captum's default 0.02; Quantus: 0.2).
        normalize: divide by the norm of the clean map.
        perturbation: ``(inputs, generator) -> noisy inputs`` replacing the uniform noise.
        seed: seed of the noise's ``torch.Generator``.
        batch_size: at most this many noisy inputs per explainer call (``None``: one call).
        progress: show a ``tqdm`` bar.

    References:
        Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.
    """

    name: ClassVar[str] = "max_sensitivity"
    higher_is_better: ClassVar[bool] = False
    category: ClassVar = "robustness"
    _reduce: ClassVar[str] = "max"
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)

    def __init__(
        self,
        *,
        n_samples: int = 10,
        radius: float = 0.02,
        normalize: bool = True,
        perturbation: Perturbation | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> None:
        check_positive_int(n_samples, "n_samples")
        check_positive_int(batch_size, "batch_size", allow_none=True)
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius!r}")
        self.n_samples = n_samples
        self.radius = radius
        self.normalize = normalize
        self.perturbation = perturbation
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress

    def _noisy(self, inputs: Tensor, gen: torch.Generator) -> Tensor:
        if self.perturbation is not None:
            return self.perturbation(inputs, gen)
        noise = torch.rand(inputs.shape, generator=gen, dtype=inputs.dtype)
        return inputs + (2 * noise.to(inputs.device) - 1) * self.radius

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, explainer: Explainer, target: Target
    ) -> MetricResult:
        clean = explain(explainer, inputs, target)
        batch = inputs.shape[0]
        n_rows = batch * self.n_samples  # row = draw * B + sample: draws are made in order
        gen = torch.Generator().manual_seed(int(self.seed))
        draws: dict[int, Tensor] = {}
        next_draw = 0
        diffs = torch.empty(n_rows, dtype=clean.dtype, device=clean.device)
        size = self.batch_size or n_rows
        starts = range(0, n_rows, size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=type(self).__name__, total=math.ceil(n_rows / size))
        for start in starts:
            rows = torch.arange(start, min(start + size, n_rows), device=inputs.device)
            draw, sample = rows // batch, rows % batch
            while next_draw <= int(draw[-1]):
                draws[next_draw] = self._noisy(inputs, gen)
                next_draw += 1
            for old in [k for k in draws if k < int(draw[0])]:
                del draws[old]
            noisy = torch.stack([draws[int(d)][int(s)] for d, s in zip(draw, sample, strict=True)])
            maps = explain(explainer, noisy, target.select(sample), rows=sample)
            diffs[rows] = (maps - clean[sample]).flatten(1).norm(dim=1)
        diffs = diffs.view(self.n_samples, batch).T
        if self.normalize:
            norm = clean.flatten(1).norm(dim=1, keepdim=True)
            diffs = diffs / torch.where(norm == 0, torch.ones_like(norm), norm)
        scores = diffs.amax(1) if self._reduce == "max" else diffs.mean(1)
        return MetricResult(scores)


class AvgSensitivity(MaxSensitivity):
    """Average sensitivity (Bhatt et al. 2020): :class:`MaxSensitivity` with the mean over the
    noise draws instead of the maximum. Lower is better.

    References:
        Bhatt, Weller, Moura, IJCAI 2020.
    """

    name: ClassVar[str] = "avg_sensitivity"
    _reduce: ClassVar[str] = "mean"
