"""ROAD (remove and debias): the perturbation curve with noisy linear imputation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xai.adapter import BatchSize, ClassTarget, Target, score_rows
from xai.metrics._perturb import feature_layout, noisy_linear_imputation, rank_positions
from xai.metrics.base import MetricResult, check_fraction
from xai.metrics.faithfulness._shared import _ByOrder
from xai.metrics.faithfulness.curves import _PerturbationCurve


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
    reuses_clean_scores: ClassVar[bool] = False  # no fraction leaves the input clean
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
