"""Faithfulness: does removing what the map calls relevant change the model's output?

Curves (:class:`Deletion`, :class:`Insertion`, :class:`PixelFlipping`,
:class:`RegionPerturbation`, :class:`ROAD`) perturb features in the order of the map and record
the target score; correlations (:class:`MuFidelity`, :class:`FaithfulnessCorrelation`) compare
the relevance of random subsets with the drop they cause.

Shared conventions (see :mod:`xai.metrics._perturb`): features are pixels or patches whose
channels are perturbed together; the ranking is a stable sort by descending relevance (ties go to
the lower row-major index); scores are the target's output (the **logit** for class targets; pass
``target=xai.adapter.ProbabilityTarget(...)`` for softmax probabilities); an argmax target
(``None``) is fixed on the clean input. Perturbed inputs are scored in chunks of ``batch_size``
across samples and steps, under ``torch.no_grad()``; the default ``"auto"`` times the first
chunks and keeps the fastest size (:func:`xai.adapter.score_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xai._checks import check_positive_int
from xai.adapter import (
    BatchSize,
    ClassTarget,
    ModelAdapter,
    Target,
    check_batch_size,
    score_rows,
)
from xai.metrics._perturb import (
    BaselineLike,
    check_baseline,
    feature_layout,
    grid_layout,
    noisy_linear_imputation,
    rank_positions,
    resolve_baseline,
)
from xai.metrics.base import (
    ExplanationMetric,
    MetricResult,
    check_fraction,
    pearson,
    spearman,
)

__all__ = [
    "ROAD",
    "Deletion",
    "FaithfulnessCorrelation",
    "Infidelity",
    "Insertion",
    "MuFidelity",
    "PixelFlipping",
    "RegionPerturbation",
]


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """``(n,)`` per-row values viewed to broadcast over the rows of ``like`` (any rank)."""
    return values.view(-1, *(1,) * (like.dim() - 1))


def _check_order(order: str, allowed: Sequence[str] = ("morf", "lerf")) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {', '.join(map(repr, allowed))}, got {order!r}")


class _ByOrder:
    """``higher_is_better`` of a perturbation curve whose ranking order is configurable.

    Declared for the MoRF order (most relevant first); removing the least relevant features
    first (``order="lerf"``) reverses what a good map does to the curve, so an instance ranking
    LeRF reports the opposite. Read on the class, it is the MoRF value.
    """

    def __init__(self, morf: bool) -> None:
        self.morf = morf

    def __get__(self, metric: object, owner: type | None = None) -> bool:
        return self.morf != (getattr(metric, "order", "morf") == "lerf")


class _PerturbationCurve(ExplanationMetric):
    """Engine of the curve metrics: perturb the top-``k`` features for a list of counts ``k``."""

    mode: ClassVar[str] = "delete"  # "delete": top-k -> baseline; "insert": top-k <- input
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)

    def __init__(
        self,
        *,
        baseline: BaselineLike,
        patch_size: int,
        order: str,
        batch_size: BatchSize,
        progress: bool,
    ) -> None:
        check_baseline(baseline)
        check_positive_int(patch_size, "patch_size")
        check_batch_size(batch_size)
        _check_order(order)
        self.baseline = baseline
        self.patch_size = patch_size
        self.order = order
        self.batch_size = batch_size
        self.progress = progress

    def _counts(self, n_features: int) -> Tensor:
        raise NotImplementedError

    def _perturbed(
        self, inputs: Tensor, base: Tensor, mask: Tensor, samples: Tensor, rows: Tensor
    ) -> Tensor:
        """Inputs with the ``mask`` ``(n, H, W)`` pixels perturbed (deleted or inserted)."""
        keep, put = (inputs, base) if self.mode == "delete" else (base, inputs)
        return torch.where(mask[:, None], put[samples], keep[samples])

    def _curve(
        self,
        model: nn.Module,
        inputs: Tensor,
        maps: Tensor,
        target: Target,
        order: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Scores ``(B, T)`` after perturbing ``counts`` features and the fractions ``(T,)``."""
        relevance, assign = feature_layout(maps, self.patch_size)
        positions = rank_positions(relevance, order or self.order)
        n_features = relevance.shape[1]
        counts = self._counts(n_features).to(inputs.device)
        base = resolve_baseline(self.baseline, inputs)
        batch, n_steps = inputs.shape[0], counts.numel()
        sample_of_row = torch.arange(batch, device=inputs.device).repeat_interleave(n_steps)

        def build(rows: Tensor) -> Tensor:
            samples = sample_of_row[rows]
            pixel_pos = positions[samples][:, assign]  # (n, H, W)
            mask = pixel_pos < _per_row(counts[rows % n_steps], pixel_pos)
            return self._perturbed(inputs, base, mask, samples, rows % n_steps)

        scores = score_rows(
            model,
            target,
            batch * n_steps,
            build,
            sample_of_row,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=type(self).__name__,
        )
        fractions = counts.to(maps.dtype) / n_features
        return scores.view(batch, n_steps).to(maps.dtype), fractions

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        """The curve and its trapezoid area over the fraction perturbed (subclasses may
        report another score from the same curve).
        """
        curve, steps = self._curve(model, inputs, maps, target)
        return MetricResult(torch.trapezoid(curve, steps, dim=1), curve, steps)


def _linspace_counts(n_features: int, n_steps: int) -> Tensor:
    counts = torch.linspace(0, n_features, n_steps + 1, dtype=torch.float64).round().long()
    return torch.unique_consecutive(counts)


class Deletion(_PerturbationCurve):
    r"""Deletion (RISE): remove the most relevant features first; area under the score curve.

    Starting from the input, the next ``1 / n_steps`` of the features (by the map, most relevant
    first) are set to the baseline at each step, all channels of a pixel together. The curve has
    ``n_steps + 1`` points including both endpoints (the clean input and the fully perturbed
    one); the score is the trapezoid area under the curve against the **actual** fraction of
    features perturbed (``round(k * n / n_steps) / n``), on ``[0, 1]``. Lower is better.

    Closed form on ``f(x) = sum_i c_i`` with contributions ``c = (4, 3, 2, 1)`` and 4 steps: the
    perfect order gives the curve ``(10, 6, 3, 1, 0)`` and AUC 3.75, the reversed order 6.25.

    Args:
        n_steps: number of deletion steps ``T`` (Xplique's default 10); more steps than features
            are clipped to one feature per step.
        baseline: replacement values (Xplique: ``0.0``); a number, ``"zero"``, ``"mean"``,
            ``"min"``, ``"blur"``, a tensor or a callable (see ``_perturb.resolve_baseline``).
        patch_size: ``1`` ranks pixels; larger values rank non-overlapping patches by their
            summed relevance.
        batch_size: at most this many perturbed inputs per forward; ``None``: all at once;
            default ``"auto"``: timed on the first chunks (sizes 1, 2, 4, ... up to 64), the
            fastest kept for the rest, since the best size depends on hardware and model (one
            image per forward can win on a small CPU, large chunks on a GPU). Results do not
            depend on it beyond float rounding. See :func:`xai.adapter.score_rows`.
        progress: show a ``tqdm`` bar.

    Returns (from ``__call__``):
        scores ``(B,)`` AUC; curve ``(B, T+1)`` target scores; steps ``(T+1,)`` fractions.

    References:
        Petsiuk, Das, Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
        Models", BMVC 2018.
    """

    name: ClassVar[str] = "deletion"
    higher_is_better: ClassVar[bool] = False
    category: ClassVar = "faithfulness"
    mode: ClassVar[str] = "delete"

    def __init__(
        self,
        n_steps: int = 10,
        *,
        baseline: BaselineLike = 0.0,
        patch_size: int = 1,
        batch_size: BatchSize = "auto",
        progress: bool = False,
    ) -> None:
        super().__init__(
            baseline=baseline,
            patch_size=patch_size,
            order="morf",
            batch_size=batch_size,
            progress=progress,
        )
        check_positive_int(n_steps, "n_steps")
        self.n_steps = n_steps

    def _counts(self, n_features: int) -> Tensor:
        return _linspace_counts(n_features, min(self.n_steps, n_features))


class Insertion(Deletion):
    """Insertion (RISE): start from the baseline and insert the most relevant features first.

    Same steps, endpoints and trapezoid AUC as :class:`Deletion`, but the curve starts at the
    baseline image and ends at the input. Xplique uses the same constant baseline as deletion
    (default ``0.0``); RISE starts from a blurred copy: pass ``baseline="blur"``. Higher is better.

    References:
        Petsiuk, Das, Saenko, "RISE", BMVC 2018.
    """

    name: ClassVar[str] = "insertion"
    higher_is_better: ClassVar[bool] = True
    mode: ClassVar[str] = "insert"


class PixelFlipping(_PerturbationCurve):
    """Pixel flipping (Bach et al. 2015): flip ``features_per_step`` features per step until all
    are flipped, most relevant first (``order="morf"``) or least relevant first (``"lerf"``).

    The curve holds the target score before any flip and after each step (Quantus' curve is the
    same without the first point); the score is the trapezoid AUC over the fraction flipped.
    Lower is better for MoRF; with ``order="lerf"`` the instance's ``higher_is_better`` is True.

    Args:
        features_per_step: features flipped per step (Quantus' default 1: one forward per pixel).
        baseline: replacement values; default ``"min"`` (each sample's minimum, Quantus' "black").
        patch_size: feature granularity (pixels by default).
        order: ``"morf"`` or ``"lerf"``.
        batch_size: at most this many perturbed inputs per forward, ``"auto"`` (default:
            the fastest size timed on the first chunks) or ``None`` (all at once); see
            :class:`Deletion`.
        progress: show a ``tqdm`` bar.

    References:
        Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
        Layer-Wise Relevance Propagation", PLoS ONE 2015.
    """

    name: ClassVar[str] = "pixel_flipping"
    higher_is_better = _ByOrder(morf=False)
    category: ClassVar = "faithfulness"

    def __init__(
        self,
        features_per_step: int = 1,
        *,
        baseline: BaselineLike = "min",
        patch_size: int = 1,
        order: str = "morf",
        batch_size: BatchSize = "auto",
        progress: bool = False,
    ) -> None:
        super().__init__(
            baseline=baseline,
            patch_size=patch_size,
            order=order,
            batch_size=batch_size,
            progress=progress,
        )
        check_positive_int(features_per_step, "features_per_step")
        self.features_per_step = features_per_step

    def _counts(self, n_features: int) -> Tensor:
        counts = torch.arange(0, n_features, self.features_per_step)
        return torch.cat([counts, torch.tensor([n_features])])


class RegionPerturbation(_PerturbationCurve):
    r"""Region perturbation (Samek et al. 2017) and its AOPC.

    Non-overlapping ``patch_size`` x ``patch_size`` regions are ranked by their summed relevance
    and perturbed one after the other (``n_regions`` of them, cumulatively). The curve is the drop
    ``f(x) - f(x^{(k)})`` for ``k = 0..L`` (the first point is 0); the score is the area over the
    perturbation curve, :math:`\mathrm{AOPC} = \frac{1}{L+1}\sum_{k=0}^{L} (f(x) - f(x^{(k)}))`.
    MoRF: higher is better; ``order="lerf"``: lower is better (the instance's
    ``higher_is_better`` says so); ``order="difference"``: AOPC(MoRF) - AOPC(LeRF), higher is
    better, curve = MoRF drop - LeRF drop.

    Args:
        patch_size: region size (Samek et al. / Quantus: 8 px).
        n_regions: regions perturbed (Quantus' ``regions_evaluation=100``), at most all.
        baseline: replacement values; default ``"min"`` (Quantus' "black"). Samek et al. draw
            uniform noise: pass a callable.
        order: ``"morf"``, ``"lerf"`` or ``"difference"``.
        batch_size: at most this many perturbed inputs per forward, ``"auto"`` (default:
            the fastest size timed on the first chunks) or ``None`` (all at once); see
            :class:`Deletion`.
        progress: show a ``tqdm`` bar.

    References:
        Samek et al., "Evaluating the Visualization of What a Deep Neural Network Has Learned",
        IEEE TNNLS 2017.
    """

    name: ClassVar[str] = "region_perturbation"
    higher_is_better = _ByOrder(morf=True)
    category: ClassVar = "faithfulness"

    def __init__(
        self,
        patch_size: int = 8,
        *,
        n_regions: int = 100,
        baseline: BaselineLike = "min",
        order: str = "morf",
        batch_size: BatchSize = "auto",
        progress: bool = False,
    ) -> None:
        _check_order(order, ("morf", "lerf", "difference"))
        super().__init__(
            baseline=baseline,
            patch_size=patch_size,
            order="morf" if order == "difference" else order,
            batch_size=batch_size,
            progress=progress,
        )
        self.order = order
        check_positive_int(n_regions, "n_regions")
        self.n_regions = n_regions

    def _counts(self, n_features: int) -> Tensor:
        return torch.arange(0, min(self.n_regions, n_features) + 1)

    def _drops(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, order: str
    ) -> tuple[Tensor, Tensor]:
        curve, steps = self._curve(model, inputs, maps, target, order)
        return curve[:, :1] - curve, steps

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        if self.order == "difference":
            morf, steps = self._drops(model, inputs, maps, target, "morf")
            lerf, _ = self._drops(model, inputs, maps, target, "lerf")
            drops = morf - lerf
        else:
            drops, steps = self._drops(model, inputs, maps, target, self.order)
        return MetricResult(drops.mean(1), drops, steps)


class _Correct(Target):
    """1 where the argmax is the target class, else 0 (ROAD's accuracy curve)."""

    def __init__(self, classes: ClassTarget) -> None:
        self.classes = classes

    def __call__(self, outputs: Tensor) -> Tensor:
        return (outputs.argmax(1) == self.classes.indices(outputs)).to(outputs.dtype)

    def select(self, index: Tensor) -> _Correct:
        return _Correct(self.classes.select(index))


class ROAD(_PerturbationCurve):
    """ROAD: remove and debias, with noisy linear imputation instead of a constant baseline.

    For each fraction ``p`` the top ``round(p * n)`` pixels (MoRF, or LeRF) are removed and
    filled by noisy linear imputation (each removed pixel = weighted mean of its 8 neighbours,
    1/6 direct and 1/12 diagonal, solved jointly, plus Gaussian noise ``noise``), which limits the
    class information leaking through the mask's shape. The curve is the target score per
    fraction (or the accuracy ``argmax == class`` with ``accuracy=True``, as Rong et al. and
    Quantus report); the score is its mean. MoRF: lower is better; LeRF: higher is better.

    Args:
        fractions: fractions removed (default 0.1, 0.2, ..., 0.9; Quantus uses 1 %..99 % in
            steps of 2 %); each in (0, 1).
        order: ``"morf"`` or ``"lerf"``.
        noise: standard deviation of the imputation noise (Rong et al.: 0.01).
        accuracy: curve of 0/1 correctness of the target class instead of scores (class targets).
        seed: seed of the imputation noise.
        batch_size: at most this many perturbed inputs per forward, ``"auto"`` (default:
            the fastest size timed on the first chunks) or ``None`` (all at once); see
            :class:`Deletion`.
        progress: show a ``tqdm`` bar.

    References:
        Rong, Leemann, Borisov, Kasneci, Kasneci, "A Consistent and Efficient Evaluation
        Strategy for Attribution Methods", ICML 2022.
    """

    name: ClassVar[str] = "road"
    higher_is_better = _ByOrder(morf=False)
    category: ClassVar = "faithfulness"
    input_ranks: ClassVar[tuple[int, ...]] = (4,)
    rank_note: ClassVar[str] = "its imputation solves over the 8 neighbours of each pixel"

    def __init__(
        self,
        fractions: Sequence[float] | None = None,
        *,
        order: str = "morf",
        noise: float = 0.01,
        accuracy: bool = False,
        seed: int = 0,
        batch_size: BatchSize = "auto",
        progress: bool = False,
    ) -> None:
        super().__init__(
            baseline=0.0, patch_size=1, order=order, batch_size=batch_size, progress=progress
        )
        fr = [round(0.1 * i, 10) for i in range(1, 10)] if fractions is None else list(fractions)
        if not fr:
            raise ValueError("fractions must not be empty")
        for f in fr:
            check_fraction(float(f), "each fraction")
        self.fractions = [float(f) for f in fr]
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise!r}")
        self.noise = noise
        self.accuracy = accuracy
        self.seed = seed

    def _counts(self, n_features: int) -> Tensor:
        return torch.tensor([round(f * n_features) for f in self.fractions])

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        relevance, assign = feature_layout(maps, 1)
        positions = rank_positions(relevance, self.order)
        counts = self._counts(relevance.shape[1])
        batch, n_steps = inputs.shape[0], counts.numel()
        gen = torch.Generator().manual_seed(int(self.seed))
        # Imputation happens up front in a fixed (sample, step) order, so the noise, hence the
        # result, does not depend on batch_size.
        imputed = torch.stack(
            [
                noisy_linear_imputation(
                    inputs[b], (positions[b] < counts[s]).view_as(assign), self.noise, gen
                )
                for b in range(batch)
                for s in range(n_steps)
            ]
        )
        sample_of_row = torch.arange(batch, device=inputs.device).repeat_interleave(n_steps)
        if self.accuracy:
            if not isinstance(target, ClassTarget):
                raise ValueError("accuracy=True needs a class target (None, int or per-sample)")
            target = _Correct(target)
        scores = score_rows(
            model,
            target,
            batch * n_steps,
            lambda rows: imputed[rows],
            sample_of_row,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="ROAD",
        )
        curve = scores.view(batch, n_steps).to(maps.dtype)
        steps = counts.to(maps.dtype) / relevance.shape[1]
        return MetricResult(curve.mean(1), curve, steps)


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


class Infidelity(ExplanationMetric):
    r"""Infidelity (Yeh et al. 2019): how badly the map, as a linear model, predicts the effect of
    random perturbations on the target score.

    .. math:: \mathrm{INFD} = \mathbb{E}_{I}\Big[\big(I^\top \phi - (f(x) - f(x - I))\big)^2\Big]

    estimated with ``n_samples`` perturbations ``I`` per sample. The map ``(B, H, W)`` is
    broadcast over the channels, so ``I^T phi = sum_{c,h,w} I[c,h,w] phi[h,w]`` (captum's value
    for the attributions ``maps[:, None].expand_as(inputs)``). With ``normalize=True`` the map is
    first rescaled by the least-squares factor
    :math:`\beta = \mathbb{E}[I^\top\phi\,\Delta f] / \mathbb{E}[(I^\top\phi)^2]` (0 when the
    denominator is 0), which makes the score invariant to the map's scale (captum's
    ``normalize``). Lower is better; for a one-channel linear model ``f(x) = sum W x`` the map
    ``W`` scores 0 for any perturbation (``2 W`` too once normalized).

    Matches ``captum.metrics.infidelity(forward, perturb_func, inputs, maps[:, None]
    .expand_as(inputs), target=..., n_perturb_samples=n_samples, normalize=...)`` when
    ``perturb_func`` returns ``(I, inputs - I)`` with the same ``I``.

    Args:
        perturbation: ``None`` for Gaussian noise ``I ~ N(0, noise_std^2)`` on every input value,
            or a callable ``rows (n, C, H, W) -> I (n, C, H, W)``; it is called once per chunk of
            at most ``batch_size`` rows, the rows being the inputs repeated ``n_samples`` times
            in sample-major order (row ``b * n_samples + s``), as captum's ``repeat_interleave``.
        n_samples: perturbations per sample (captum's and Quantus' default 10).
        noise_std: standard deviation of the default noise (0.003: captum's documented example).
        normalize: rescale the map by the optimal ``beta`` first (captum's ``normalize``,
            default False there too).
        seed: seed of the default noise (one ``torch.Generator`` on the CPU, drawn row by row,
            so results do not depend on ``batch_size``).
        batch_size: at most this many perturbed inputs per forward; ``None``: all at once;
            default ``"auto"``: timed on the first chunks (sizes 1, 2, 4, ... up to 64), the
            fastest kept for the rest, since the best size depends on hardware and model (one
            image per forward can win on a small CPU, large chunks on a GPU). Results do not
            depend on it beyond float rounding. See :func:`xai.adapter.score_rows`.
        progress: show a ``tqdm`` bar.

    Returns (from ``__call__``):
        scores ``(B,)`` >= 0; no curve.

    References:
        Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (In)fidelity and Sensitivity of
        Explanations", NeurIPS 2019.
    """

    name: ClassVar[str] = "infidelity"
    constant_maps: ClassVar[Literal["nan", "score"]] = "score"
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)
    higher_is_better: ClassVar[bool] = False
    category: ClassVar = "faithfulness"

    def __init__(
        self,
        perturbation: Callable[[Tensor], Tensor] | None = None,
        *,
        n_samples: int = 10,
        noise_std: float = 0.003,
        normalize: bool = False,
        seed: int = 0,
        batch_size: BatchSize = "auto",
        progress: bool = False,
    ) -> None:
        if perturbation is not None and not callable(perturbation):
            raise TypeError(
                "perturbation must be None (Gaussian noise) or a callable rows (n, C, H, W) -> "
                f"perturbation (n, C, H, W), got {type(perturbation).__name__}"
            )
        check_positive_int(n_samples, "n_samples")
        check_batch_size(batch_size)
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std!r}")
        self.perturbation = perturbation
        self.n_samples = n_samples
        self.noise_std = noise_std
        self.normalize = normalize
        self.seed = seed
        self.batch_size = batch_size
        self.progress = progress

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        batch, per = inputs.shape[0], self.n_samples
        sample_of_row = torch.arange(batch, device=inputs.device).repeat_interleave(per)
        clean = target(ModelAdapter(model).forward(inputs)).detach()
        dots = torch.empty(batch * per, dtype=maps.dtype, device=inputs.device)
        gen = torch.Generator().manual_seed(int(self.seed))

        def build(rows: Tensor) -> Tensor:
            samples = sample_of_row[rows]
            rows_in = inputs[samples]
            if self.perturbation is None:
                noise = torch.stack(
                    [torch.randn(inputs.shape[1:], generator=gen) for _ in range(len(rows))]
                )
                pert = (self.noise_std * noise).to(device=inputs.device, dtype=inputs.dtype)
            else:
                pert = self.perturbation(rows_in)
                if not isinstance(pert, Tensor) or pert.shape != rows_in.shape:
                    shape = tuple(pert.shape) if isinstance(pert, Tensor) else type(pert).__name__
                    raise ValueError(
                        "the perturbation callable must return a tensor shaped like its rows "
                        f"{tuple(rows_in.shape)}, got {shape}"
                    )
                pert = pert.to(device=inputs.device, dtype=inputs.dtype)
            dots[rows] = (pert.to(maps.dtype) * maps[samples][:, None]).flatten(1).sum(1)
            return rows_in - pert

        perturbed = score_rows(
            model,
            target,
            batch * per,
            build,
            sample_of_row,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=type(self).__name__,
        )
        diffs = (clean[sample_of_row] - perturbed).to(maps.dtype).view(batch, per)
        dots = dots.view(batch, per)
        if self.normalize:
            denom = dots.pow(2).sum(1)
            beta = (dots * diffs).sum(1) / torch.where(denom == 0, torch.ones_like(denom), denom)
            dots = beta[:, None] * dots
        return MetricResult((dots - diffs).pow(2).mean(1))
