"""Perturbation curves: :class:`Deletion`, :class:`Insertion`, :class:`PixelFlipping` and
:class:`RegionPerturbation`, on one engine that perturbs the top-``k`` features for a list of
counts ``k``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xai._checks import check_positive_int
from xai.adapter import BatchSize, Target, check_batch_size, score_rows
from xai.metrics._perturb import (
    BaselineLike,
    check_baseline,
    feature_layout,
    rank_positions,
    resolve_baseline,
)
from xai.metrics.base import ExplanationMetric, MetricResult
from xai.metrics.faithfulness._shared import _ByOrder, _check_order, _per_row


class _PerturbationCurve(ExplanationMetric):
    """Engine of the curve metrics: perturb the top-``k`` features for a list of counts ``k``."""

    mode: ClassVar[str] = "delete"  # "delete": top-k -> baseline; "insert": top-k <- input
    reuses_clean_scores: ClassVar[bool] = True
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

    def _perturbed(self, inputs: Tensor, base: Tensor, mask: Tensor, samples: Tensor) -> Tensor:
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
        clean_scores: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Scores ``(B, T)`` after perturbing ``counts`` features and the fractions ``(T,)``.

        ``clean_scores`` ``(B,)``: the target's scores of the clean inputs, if known; the steps
        whose input is the clean one (nothing deleted, everything inserted) take them instead
        of a forward.
        """
        relevance, assign = feature_layout(maps, self.patch_size)
        positions = rank_positions(relevance, order or self.order)
        n_features = relevance.shape[1]
        counts = self._counts(n_features).to(inputs.device)
        base = resolve_baseline(self.baseline, inputs)
        batch, n_steps = inputs.shape[0], counts.numel()
        clean_step = counts == (0 if self.mode == "delete" else n_features)
        if clean_scores is None:
            clean_step.zero_()
        steps = (~clean_step).nonzero()[:, 0]  # the steps that need a forward
        sample_of_row = torch.arange(batch, device=inputs.device).repeat_interleave(len(steps))
        count_of_row = counts[steps].repeat(batch)
        # each pixel's position in the order, once (not per chunk); int32 halves the copies
        small = n_features < torch.iinfo(torch.int32).max
        pixel_pos = positions[:, assign].to(torch.int32 if small else torch.long)

        def build(rows: Tensor) -> Tensor:
            samples = sample_of_row[rows]
            pos = pixel_pos[samples]  # (n, H, W)
            mask = pos < _per_row(count_of_row[rows].to(pos.dtype), pos)
            return self._perturbed(inputs, base, mask, samples)

        scored = score_rows(
            model,
            target,
            batch * len(steps),
            build,
            sample_of_row,
            batch_size=self.batch_size,
            progress=self.progress,
            desc=type(self).__name__,
        )
        scores = torch.empty(batch, n_steps, dtype=scored.dtype, device=scored.device)
        scores[:, steps] = scored.view(batch, len(steps))
        if clean_scores is not None:
            scores[:, clean_step] = clean_scores.to(scores)[:, None]
        fractions = counts.to(maps.dtype) / n_features
        return scores.to(maps.dtype), fractions

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        """The curve and its trapezoid area over the fraction perturbed (subclasses may
        report another score from the same curve).
        """
        curve, steps = self._curve(model, inputs, maps, target, None, kwargs.get("clean_scores"))
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
            default ``"auto"``: sizes 1, 2, 4, ... up to 64 timed on the run's own chunks, the
            fastest kept, since the best size depends on hardware and model (one image per
            forward can win on a small CPU, large chunks on a GPU). The choice is remembered
            per model, input shape, dtype, device and thread count, so later calls skip the
            timing (:func:`xai.adapter.auto_batch_sizes` shows it,
            :func:`xai.adapter.reset_auto_batch_sizes` forgets it). Results do not depend on
            it beyond float rounding. See :func:`xai.adapter.score_rows`.
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
        self,
        model: nn.Module,
        inputs: Tensor,
        maps: Tensor,
        target: Target,
        order: str,
        clean_scores: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        curve, steps = self._curve(model, inputs, maps, target, order, clean_scores)
        return curve[:, :1] - curve, steps

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        clean = kwargs.get("clean_scores")
        if self.order == "difference":
            morf, steps = self._drops(model, inputs, maps, target, "morf", clean)
            lerf, _ = self._drops(model, inputs, maps, target, "lerf", clean)
            drops = morf - lerf
        else:
            drops, steps = self._drops(model, inputs, maps, target, self.order, clean)
        return MetricResult(drops.mean(1), drops, steps)
