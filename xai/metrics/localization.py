"""Localization: does the map point at the object? Needs ground-truth masks or boxes.

Every localization metric is called as ``metric(model, inputs, attributions, masks=...)``
(``model`` and ``target`` are unused and may be ``None``); ``masks`` are ``(B, H, W)`` or
``(B, 1, H, W)`` (non-zero = object) or boxes ``(B, 4)`` as ``(x0, y0, x1, y1)`` pixels with
exclusive ends. A sample with an empty mask scores NaN (ignored by :meth:`MetricResult.mean`),
with a warning.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import warn
from xai.adapter import Target
from xai.metrics.base import ExplanationMetric, MetricResult, as_mask

__all__ = [
    "EnergyPointingGame",
    "PointingGame",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
]


class _Localization(ExplanationMetric):
    needs_model: ClassVar[bool] = False
    needs_masks: ClassVar[bool] = True
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)  # (B, T, H, W) masks; boxes are for images
    category: ClassVar = "localization"
    higher_is_better: ClassVar[bool] = True

    def __call__(  # type: ignore[override]
        self,
        model: nn.Module | None,
        inputs: Tensor,
        attributions: Any,
        target: Any = None,
        *,
        masks: Any = None,
    ) -> MetricResult:
        """Score ``attributions`` ``(B, H, W)`` against ``masks`` (see the module docstring)."""
        if masks is None:
            raise ValueError(
                f"{type(self).__name__} needs ground truth: pass masks=(B, H, W) masks or "
                "(B, 4) boxes"
            )
        return super().__call__(model, inputs, attributions, target, masks=masks)

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        mask = as_mask(kwargs["masks"], inputs)
        scores = self._score(maps, mask).to(maps.dtype)
        empty = mask.flatten(1).sum(1) == 0
        if bool(empty.any()):
            warn(
                f"{type(self).__name__}: the masks of sample(s) {empty.nonzero()[:, 0].tolist()} "
                "are empty (no object pixel); score NaN for those samples"
            )
        return MetricResult(torch.where(empty, torch.full_like(scores, float("nan")), scores))

    def _score(self, maps: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError


def dilate(mask: Tensor, radius: float) -> Tensor:
    """Pixels within Euclidean distance ``radius`` of a mask pixel, ``(B, H, W)`` bool
    (voxels of ``(B, T, H, W)`` masks).
    """
    if radius <= 0:
        return mask
    r = int(math.floor(radius))
    coords = torch.arange(-r, r + 1, device=mask.device, dtype=torch.float64)
    axes = torch.meshgrid(*[coords] * (mask.dim() - 1), indexing="ij")
    disc = (torch.stack(axes).pow(2).sum(0) <= radius**2).double()
    conv = F.conv2d if mask.dim() == 3 else F.conv3d
    hit = conv(mask[:, None].double(), disc[None, None], padding=r)[:, 0]
    return hit > 0


class PointingGame(_Localization):
    """Pointing game (Zhang et al. 2016): is the map's maximum on the object?

    A sample scores 1 (hit) when a pixel of maximal value lies within ``tolerance`` pixels
    (Euclidean) of the mask, else 0. With ties for the maximum, any maximal pixel counts (as in
    Quantus). The mean over samples is the pointing accuracy. Higher is better.

    Args:
        tolerance: radius in pixels around the mask still counted as a hit (Zhang et al. and
            TorchRay: 15 px at 224 px; Quantus: 0).

    References:
        Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018.
    """

    name: ClassVar[str] = "pointing_game"

    def __init__(self, tolerance: float = 15) -> None:
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
        self.tolerance = tolerance

    def _score(self, maps: Tensor, mask: Tensor) -> Tensor:
        flat = maps.flatten(1)
        is_max = flat == flat.amax(1, keepdim=True)
        region = dilate(mask, self.tolerance).flatten(1)
        return (is_max & region).any(1).double()


def _relevance(maps: Tensor, relevance: str) -> Tensor:
    if relevance == "positive":
        return maps.clamp_min(0)
    if relevance == "abs":
        return maps.abs()
    return maps


class RelevanceMassAccuracy(_Localization):
    r"""Relevance mass accuracy (Arras et al. 2022): share of relevance inside the mask.

    .. math:: \mathrm{RMA} = \frac{\sum_{p \in \mathrm{GT}} R_p}{\sum_p R_p}

    with ``R`` the positive part of the map by default (so the score lies in [0, 1]; a map with
    no positive relevance scores NaN). Higher is better.

    Args:
        relevance: ``"positive"`` (default; the energy-based pointing game's choice), ``"abs"``
            or ``"raw"`` (signed values, as Quantus: may leave [0, 1]).

    References:
        Arras, Osman, Samek, "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of
        neural network explanations", Information Fusion 2022.
    """

    name: ClassVar[str] = "relevance_mass_accuracy"
    constant_maps: ClassVar[Literal["nan", "score"]] = "score"

    def __init__(self, relevance: str = "positive") -> None:
        if relevance not in ("positive", "abs", "raw"):
            raise ValueError(f"relevance must be 'positive', 'abs' or 'raw', got {relevance!r}")
        self.relevance = relevance

    def _score(self, maps: Tensor, mask: Tensor) -> Tensor:
        r = _relevance(maps, self.relevance).flatten(1).double()
        inside = (r * mask.flatten(1)).sum(1)
        total = r.sum(1)
        return torch.where(total != 0, inside / total, torch.full_like(total, float("nan")))


class EnergyPointingGame(RelevanceMassAccuracy):
    """Energy-based pointing game (Wang et al. 2020, Score-CAM): positive relevance inside the
    bounding box over all positive relevance; :class:`RelevanceMassAccuracy` with boxes.

    References:
        Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
        Networks", CVPR Workshops 2020.
    """

    name: ClassVar[str] = "energy_pointing_game"


class RelevanceRankAccuracy(_Localization):
    """Relevance rank accuracy (Arras et al. 2022): fraction of the top-``K`` pixels in the mask.

    ``K`` is the mask's size; pixels are ranked by a stable sort on descending value (ties go to
    the lower row-major index). Higher is better.

    References:
        Arras, Osman, Samek, Information Fusion 2022.
    """

    name: ClassVar[str] = "relevance_rank_accuracy"

    def _score(self, maps: Tensor, mask: Tensor) -> Tensor:
        flat = maps.flatten(1)
        m = mask.flatten(1)
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        k = m.sum(1, keepdim=True)
        rank = torch.arange(flat.shape[1], device=flat.device).expand_as(flat)
        top_in_mask = m.gather(1, order) & (rank < k)
        return top_in_mask.sum(1).double() / k[:, 0].clamp_min(1).double()
