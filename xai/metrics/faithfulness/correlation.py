"""Correlation metrics: :class:`MuFidelity` and :class:`FaithfulnessCorrelation` compare the
relevance of random subsets with the drop they cause.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xai._checks import check_positive_int
from xai.adapter import BatchSize, Target, check_batch_size, score_rows
from xai.metrics._perturb import BaselineLike, check_baseline, grid_layout, resolve_baseline
from xai.metrics.base import ExplanationMetric, MetricResult, check_fraction, pearson, spearman
from xai.metrics.faithfulness._shared import _per_row


class MuFidelity(ExplanationMetric):
    r"""μ-Fidelity (Bhatt et al. 2020): correlation between subset relevance and output drop.

    .. math::
        \mu F = \mathrm{corr}_{S}\Big(\sum_{i \in S} \phi_i,\;
        f(x) - f(x_{[x_S = \bar x_S]})\Big)

    over ``n_samples`` random subsets ``S`` of ``round(subset_fraction * n_cells)`` cells of a
    ``grid_size`` x ``grid_size`` grid (cells drawn without replacement, Bhatt et al.'s fixed
    ``|S|``; Xplique draws each cell independently); ``grid_size=None`` works on pixels. The
    relevance of a cell is the sum of the map over its pixels. The exact explanation of a
    linear model scores 1, its negation -1. Higher is better.

    Args:
        grid_size: cells per side (Xplique: 9); ``None`` for pixels.
        subset_fraction: fraction of cells set to the baseline in each sample (Xplique: 0.2).
        n_samples: number of subsets (Xplique: 200).
        baseline: replacement values (Xplique: 0.0).
        correlation: ``"pearson"`` (Bhatt et al.) or ``"spearman"`` (Xplique).
        seed: seed of the subsets' ``torch.Generator``.
        batch_size: at most this many perturbed inputs per forward, ``"auto"`` (default:
            the fastest size timed on the first chunks) or ``None`` (all at once); see
            :class:`Deletion`.
        progress: show a ``tqdm`` bar.

    Returns (from ``__call__``):
        scores ``(B,)`` in [-1, 1] (NaN when a side is constant); no curve.

    References:
        Bhatt, Weller, Moura, "Evaluating and Aggregating Feature-based Model Explanations",
        IJCAI 2020.
    """

    name: ClassVar[str] = "mu_fidelity"
    higher_is_better: ClassVar[bool] = True
    category: ClassVar = "faithfulness"
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)

    def __init__(
        self,
        *,
        grid_size: int | None = 9,
        subset_fraction: float = 0.2,
        n_samples: int = 200,
        baseline: BaselineLike = 0.0,
        correlation: str = "pearson",
        seed: int = 0,
        batch_size: BatchSize = "auto",
        progress: bool = False,
    ) -> None:
        check_positive_int(grid_size, "grid_size", allow_none=True)
        check_fraction(subset_fraction, "subset_fraction")
        self._init_common(n_samples, baseline, correlation, seed, batch_size, progress)
        self.grid_size = grid_size
        self.subset_fraction = subset_fraction

    def _init_common(
        self,
        n_samples: int,
        baseline: BaselineLike,
        correlation: str,
        seed: int,
        batch_size: BatchSize,
        progress: bool,
    ) -> None:
        check_positive_int(n_samples, "n_samples")
        if n_samples < 2:
            raise ValueError("n_samples must be at least 2 to compute a correlation")
        check_baseline(baseline)
        if correlation not in ("pearson", "spearman"):
            raise ValueError(f"correlation must be 'pearson' or 'spearman', got {correlation!r}")
        check_batch_size(batch_size)
        self.n_samples = n_samples
        self.baseline = baseline
        self.correlation = correlation
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress

    def _layout(self, maps: Tensor) -> tuple[Tensor, int]:
        assign = grid_layout(maps.shape[1:], self.grid_size, maps.device)
        return assign, int(assign.max()) + 1

    def _subset_size(self, n_features: int) -> int:
        return max(1, round(self.subset_fraction * n_features))

    def _draw(self, gen: torch.Generator, batch: int, n_features: int, size: int) -> Tensor:
        """Indices ``(B, n_samples, size)`` of the features in each subset, drawn per sample."""
        return torch.stack(
            [
                torch.rand(self.n_samples, n_features, generator=gen).argsort(1)[:, :size]
                for _ in range(batch)
            ]
        )

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        assign, n_features = self._layout(maps)
        size = self._subset_size(n_features)
        if size > n_features:
            raise ValueError(f"subsets of {size} features but the inputs have only {n_features}")
        batch = inputs.shape[0]
        gen = torch.Generator().manual_seed(int(self.seed))
        subsets = self._draw(gen, batch, n_features, size).to(inputs.device)
        chosen = torch.zeros(
            batch, self.n_samples, n_features, dtype=torch.bool, device=maps.device
        )
        chosen.scatter_(2, subsets, True)
        relevance = torch.zeros(batch, n_features, dtype=maps.dtype, device=maps.device)
        relevance.index_add_(1, assign.flatten(), maps.flatten(1))
        subset_relevance = (chosen * relevance[:, None]).sum(2)  # (B, S)

        base = resolve_baseline(self.baseline, inputs)
        n_rows = batch * (self.n_samples + 1)
        per = self.n_samples + 1
        sample_of_row = torch.arange(batch, device=inputs.device).repeat_interleave(per)

        def build(rows: Tensor) -> Tensor:
            samples = sample_of_row[rows]
            draw = rows % per - 1  # -1: the clean input
            mask = chosen[samples, draw.clamp_min(0)][:, assign]  # (n, H, W)
            mask = mask & _per_row(draw >= 0, mask)
            return torch.where(mask[:, None], base[samples], inputs[samples])

        scores = score_rows(
            model,
            target,
            n_rows,
            build,
            sample_of_row,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=type(self).__name__,
        ).view(batch, per)
        drops = scores[:, :1] - scores[:, 1:]
        corr = pearson if self.correlation == "pearson" else spearman
        return MetricResult(corr(subset_relevance, drops).to(maps.dtype))


class FaithfulnessCorrelation(MuFidelity):
    """Faithfulness correlation (Bhatt et al. 2020, as in Quantus): μ-fidelity on pixel subsets.

    Each of ``n_samples`` runs sets ``subset_size`` random pixels (all channels) to the baseline
    and records the drop of the target score; the score is the correlation over runs between the
    drop and the summed relevance of those pixels. Higher is better.

    Args:
        subset_size: pixels per subset (Quantus: 224).
        n_samples: runs (Quantus' ``nr_runs=100``).
        baseline: replacement values (Quantus: ``"black"``, each sample's minimum: ``"min"``).
        correlation: ``"pearson"`` (Quantus) or ``"spearman"``.
        seed: seed of the subsets.
        batch_size: at most this many perturbed inputs per forward, ``"auto"`` (default:
            the fastest size timed on the first chunks) or ``None`` (all at once); see
            :class:`Deletion`.
        progress: show a ``tqdm`` bar.

    References:
        Bhatt, Weller, Moura, IJCAI 2020; Hedström et al., "Quantus", JMLR 2023.
    """

    name: ClassVar[str] = "faithfulness_correlation"

    def __init__(
        self,
        *,
        subset_size: int = 224,
        n_samples: int = 100,
        baseline: BaselineLike = "min",
        correlation: str = "pearson",
        seed: int = 0,
        batch_size: BatchSize = "auto",
        progress: bool = False,
    ) -> None:
        check_positive_int(subset_size, "subset_size")
        self._init_common(n_samples, baseline, correlation, seed, batch_size, progress)
        self.subset_size = subset_size
        self.grid_size = None

    def _subset_size(self, n_features: int) -> int:
        return self.subset_size
