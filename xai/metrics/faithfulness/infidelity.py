"""Infidelity (Yeh et al. 2019): the map as a linear model of random perturbations' effect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xai._checks import check_positive_int
from xai.adapter import BatchSize, ModelAdapter, Target, check_batch_size, score_rows
from xai.metrics.base import ExplanationMetric, MetricResult


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
        batch_size: at most this many perturbed inputs per forward, ``"auto"`` (default: the
            fastest size timed on the run's chunks, remembered per model and input kind) or
            ``None`` (all at once); see :class:`~xai.metrics.Deletion`.
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
