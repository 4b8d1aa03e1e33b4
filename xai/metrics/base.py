"""The metric interface: configuration objects that score explanations and return a result.

Every metric is a small class holding configuration only (never results). Explanation metrics
score precomputed maps; explainer metrics need to re-explain (randomization, robustness, class
sensitivity), so they take an :class:`~xai.attributions.base.Attribution` instead of maps.

The score a class target refers to is the **logit** (Xplique's default); pass
``target=xai.adapter.ProbabilityTarget(...)`` to score softmax probabilities instead (RISE and
Quantus' default).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from xai._checks import check_finite, check_inputs, map_dtype, warn
from xai._typing import TargetLike
from xai.adapter import ModelAdapter, Target, freeze, freeze_scored, preserved
from xai.adapter.extras import AdditionalInputs
from xai.adapter.extras import additional_inputs as additional

Category = Literal["faithfulness", "localization", "randomization", "robustness", "complexity"]


@dataclass(frozen=True)
class MetricResult:
    """What a metric returns for a batch.

    Attributes:
        scores: ``(B,)`` per-sample scores (NaN where a score is undefined, e.g. an empty mask).
        curve: ``(B, T)`` per-sample curve (deletion, insertion, pixel flipping, randomization
            per layer) or ``None``.
        steps: ``(T,)`` x-axis of the curve: the fraction of features perturbed (perturbation
            curves) or the number of randomized layers (randomization); ``None`` without curve.
        labels: optional names of the curve points (the randomized layers' names).
    """

    scores: Tensor
    curve: Tensor | None = None
    steps: Tensor | None = None
    labels: tuple[str, ...] | None = None

    def mean(self) -> float:
        """Mean score over the samples, ignoring NaN (NaN when every score is NaN)."""
        finite = self.scores[~torch.isnan(self.scores)]
        return float(finite.mean()) if finite.numel() else float("nan")

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Metric(ABC):
    """Base of every metric: class metadata plus configuration.

    Class attributes:
        name: snake_case key of the metric (``"deletion"``, ``"pointing_game"``).
        higher_is_better: whether a larger score means a better explanation.
        category: what the metric measures (Quantus' grouping).
        needs_masks: whether the metric scores maps against ground-truth ``masks`` (passed as
            ``metric(..., masks=...)``; :func:`xai.metrics.evaluate` requires them then).
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    category: ClassVar[Category]
    needs_masks: ClassVar[bool] = False
    input_ranks: ClassVar[tuple[int, ...]] = (4,)
    """The input ranks the metric scores: ``4`` images ``(B, C, H, W)`` with ``(B, H, W)`` maps,
    ``5`` videos and volumes ``(B, C, T, H, W)`` with ``(B, T, H, W)`` maps (features are
    voxels, or ``(p, p, p)`` patches)."""
    rank_note: ClassVar[str] = "it is written for 2-D images"
    """Why a metric refuses videos and volumes, in its error message."""

    def _check_inputs(self, inputs: Tensor) -> Tensor:
        refusal = f"{type(self).__name__} scores images only ({self.rank_note})"
        return check_inputs(inputs, ranks=self.input_ranks, refusal=refusal).detach()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


def as_maps(attributions: Any, inputs: Tensor, *, name: str = "attributions") -> Tensor:
    """Turn attribution maps into a ``(B, H, W)`` tensor matching ``inputs``.

    Accepts tensors or NumPy arrays of shape ``(B, H, W)``, ``(B, 1, H, W)`` or
    ``(B, C, H, W)`` with ``C`` the input's channel count. Channel maps (captum-style
    attributions) are **summed over channels**: removing a pixel removes all its channels, so a
    pixel's relevance is the total of its channels' relevances (exact for linear models).
    Videos and volumes ``(B, C, T, H, W)`` take ``(B, T, H, W)`` maps (or ``(B, 1|C, T, H, W)``).

    Returns:
        ``(B, H, W)`` maps on the input's device, dtype of the input promoted to >= float32
        (``(B, T, H, W)`` for videos).

    Raises:
        TypeError: not a tensor/array.
        ValueError: a shape that does not match ``inputs``.
    """
    if isinstance(attributions, np.ndarray):
        attributions = torch.from_numpy(np.ascontiguousarray(attributions))
    if not isinstance(attributions, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor or numpy array of shape (B, H, W), got "
            f"{type(attributions).__name__}"
        )
    maps = attributions.detach()
    batch, channels, *spatial = inputs.shape
    expected = (batch, *spatial)
    if maps.dim() == inputs.dim() and maps.shape[1] in (1, channels) and maps.shape[0] == batch:
        maps = maps.sum(1)
    if tuple(maps.shape) != expected:
        raise ValueError(
            f"{name} of shape {tuple(attributions.shape)} do not match inputs "
            f"{tuple(inputs.shape)}: expected {expected} maps at the input "
            "resolution (upsample layer maps first, e.g. with Method(..., upsample=True))"
        )
    return maps.to(device=inputs.device, dtype=map_dtype(inputs))


def as_mask(masks: Any, inputs: Tensor, *, name: str = "masks") -> Tensor:
    """Ground-truth masks as a ``(B, H, W)`` bool tensor.

    Accepts ``(B, H, W)`` or ``(B, 1, H, W)`` masks (bool or numbers, non-zero = object), or
    boxes ``(B, 4)`` as ``(x0, y0, x1, y1)`` pixel coordinates (``x1``/``y1`` exclusive).
    Videos and volumes ``(B, C, T, H, W)`` take ``(B, T, H, W)`` or ``(B, 1, T, H, W)`` masks.

    Raises:
        ValueError: masks whose shape does not match ``inputs``.
    """
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    if not isinstance(masks, Tensor):
        raise TypeError(
            f"{name} must be a tensor/array of shape (B, H, W) or boxes (B, 4), got "
            f"{type(masks).__name__}"
        )
    batch, _, *spatial = inputs.shape
    expected = (batch, *spatial)
    if masks.dim() == 2 and tuple(masks.shape) == (batch, 4) and len(spatial) == 2:
        height, width = spatial
        boxes = masks.round().long().cpu()
        rows = torch.arange(height)[:, None]
        cols = torch.arange(width)[None, :]
        out = torch.stack(
            [
                (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
                for x0, y0, x1, y1 in boxes.tolist()
            ]
        )
        return out.to(inputs.device)
    if masks.dim() == inputs.dim() and masks.shape[1] == 1:
        masks = masks[:, 0]
    if tuple(masks.shape) != expected:
        or_boxes = f" or ({batch}, 4) boxes (x0, y0, x1, y1)" if len(spatial) == 2 else ""
        raise ValueError(
            f"{name} of shape {tuple(masks.shape)} do not match inputs {tuple(inputs.shape)}: "
            f"pass {expected} masks{or_boxes}"
        )
    return (masks != 0).to(inputs.device)


class ExplanationMetric(Metric):
    """A metric of precomputed maps (deletion, insertion, mu-fidelity, pointing game ...).

    Subclasses implement :meth:`_evaluate`; :meth:`__call__` validates the inputs, converts the
    maps, freezes the target and runs the model in eval mode under ``torch.no_grad()``,
    restoring the model's flags afterwards.

    Degenerate maps have one defined result, with a ``UserWarning`` naming the samples:
    NaN/Inf in ``inputs`` or ``attributions`` raise a ``ValueError``; a constant map (all
    zero included) scores NaN, or the metric's formula when :attr:`constant_maps` is
    ``"score"`` (Sparseness, Complexity, Infidelity, relevance mass); an empty mask scores NaN
    (localization). :meth:`MetricResult.mean` ignores NaN scores.
    """

    needs_model: ClassVar[bool] = True
    constant_maps: ClassVar[Literal["nan", "score"]] = "nan"
    """What a constant (e.g. all-zero) map scores: ``"nan"`` when the metric needs a ranking or
    a peak the map does not have (the curve, if any, is still returned, in row-major order);
    ``"score"`` when the metric's formula is defined for it (complexity, mass, infidelity).
    Either way a warning names the samples."""
    reuses_clean_scores: ClassVar[bool] = False
    """Whether :meth:`_evaluate` takes ``clean_scores=``: the target's scores ``(B,)`` of the
    clean batch when freezing an argmax target computed them, else ``None``."""

    def __call__(
        self,
        model: nn.Module | None,
        inputs: Tensor,
        attributions: Any,
        target: TargetLike | Target = None,
        *,
        additional_inputs: Any = None,
        **kwargs: Any,
    ) -> MetricResult:
        """Score ``attributions`` ``(B, H, W)`` of ``inputs`` ``(B, C, H, W)`` for ``target``.

        Args:
            model: the explained model (unused by model-free metrics; may be ``None`` there).
            inputs: the explained batch, never modified.
            attributions: the maps, ``(B, H, W)`` (or channel maps, summed, see
                :func:`as_maps`).
            target: ``None`` (each sample's argmax on the clean input), an int, one int per
                sample, a callable or an :class:`xai.adapter.Target`.
            additional_inputs: extra forward arguments, ``model(x, *additional_inputs)``, as
                for :class:`~xai.attributions.base.Attribution`: every perturbed copy of a
                sample gets that sample's rows (ignored by model-free metrics).
            **kwargs: metric-specific data (``masks`` for localization metrics).

        Returns:
            A :class:`MetricResult`.
        """
        x = self._check_inputs(inputs)
        maps = check_finite(as_maps(attributions, x), "attributions")
        if not self.needs_model:
            result = self._evaluate(model, x, maps, None, **kwargs)  # type: ignore[arg-type]
        else:
            if not isinstance(model, nn.Module):
                raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
            adapter = ModelAdapter(model)
            extras = additional(additional_inputs, x.shape[0])
            with preserved(model), torch.no_grad(), adapter.bound(extras):
                tgt, clean = freeze_scored(adapter, x, target)
                if self.reuses_clean_scores:
                    kwargs["clean_scores"] = clean
                result = self._evaluate(model, x, maps, tgt, **kwargs)
        return self._degenerate(maps, result)

    def _degenerate(self, maps: Tensor, result: MetricResult) -> MetricResult:
        """Apply :attr:`constant_maps` to samples whose map is constant, with a warning."""
        flat = maps.flatten(1)
        constant = (flat == flat[:, :1]).all(1).to(result.scores.device)
        if not bool(constant.any()):
            return result
        which = constant.nonzero()[:, 0].tolist()
        policy = "score NaN" if self.constant_maps == "nan" else "scored by the formula"
        warn(
            f"{type(self).__name__}: the attributions of sample(s) {which} are constant (e.g. "
            f"all zero), so they rank or localize nothing; {policy} for those samples"
        )
        if self.constant_maps == "score":
            return result
        scores = torch.where(constant, torch.full_like(result.scores, float("nan")), result.scores)
        return dataclasses.replace(result, scores=scores)

    @abstractmethod
    def _evaluate(
        self, model: nn.Module, inputs: Tensor, maps: Tensor, target: Target, **kwargs: Any
    ) -> MetricResult:
        """Compute the result from validated inputs, ``(B, H, W)`` maps and a frozen target."""


Explainer = Callable[..., Tensor]


class ExplainerMetric(Metric):
    """A metric that re-explains (randomization, robustness, class sensitivity).

    ``explainer`` is an :class:`~xai.attributions.base.Attribution` (or any callable
    ``explainer(inputs, target=...) -> (B, H, W)``). When it is bound to another model than
    ``model``, it is re-bound with ``explainer.rebind(model)``.
    """

    def __call__(
        self,
        model: nn.Module,
        inputs: Tensor,
        explainer: Explainer,
        target: TargetLike | Target = None,
        *,
        additional_inputs: Any = None,
    ) -> MetricResult:
        """Score ``explainer`` on ``inputs`` ``(B, C, H, W)`` for ``target``.

        Args:
            model: the explained model.
            inputs: the explained batch, never modified.
            explainer: an Attribution (or a callable ``explainer(inputs, target=...)``).
            target: as for :class:`ExplanationMetric`.
            additional_inputs: extra forward arguments, ``model(x, *additional_inputs)``:
                every forward of the metric and every re-explanation gets those of its rows'
                samples (the explainer is called with ``additional_inputs=``).

        Returns:
            A :class:`MetricResult`.
        """
        x = self._check_inputs(inputs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(explainer):
            raise TypeError(
                f"explainer must be an Attribution (e.g. xai.attributions.Saliency(model)), got "
                f"{type(explainer).__name__}"
            )
        bound = getattr(explainer, "model", model)
        if bound is not model and hasattr(explainer, "rebind"):
            explainer = explainer.rebind(model)
        adapter = ModelAdapter(model)
        extras = additional(additional_inputs, x.shape[0])
        if extras is not None:
            explainer = WithInputs(explainer, extras)
        with adapter.bound(extras):
            with preserved(model), torch.no_grad():
                tgt = freeze(adapter, x, target)
            return self._evaluate(model, x, explainer, tgt)

    @abstractmethod
    def _evaluate(
        self, model: nn.Module, inputs: Tensor, explainer: Explainer, target: Target
    ) -> MetricResult:
        """Compute the result."""


class WithInputs:
    """An explainer called with additional inputs: ``explainer(x, target=...,
    additional_inputs=...)``, those of the samples ``rows`` when given.

    Keeps :meth:`rebind` (re-explaining a modified copy of the model) and the ``model``
    attribute of the wrapped explainer.
    """

    def __init__(self, explainer: Explainer, extras: AdditionalInputs) -> None:
        self.explainer = explainer
        self.extras = extras
        self.model = getattr(explainer, "model", None)

    def __call__(self, inputs: Tensor, target: Any = None, rows: Tensor | None = None) -> Tensor:
        """Maps of ``inputs``; ``rows``: the original sample of each row (``None``: all)."""
        extras = self.extras if rows is None else self.extras.subset(rows)
        return self.explainer(inputs, target=target, additional_inputs=extras)

    def rebind(self, model: nn.Module) -> WithInputs:
        """The wrapped explainer re-bound to ``model``, with the same additional inputs."""
        return WithInputs(self.explainer.rebind(model), self.extras)  # type: ignore[attr-defined]


def explain(
    explainer: Explainer, inputs: Tensor, target: Any, rows: Tensor | None = None
) -> Tensor:
    """Run an explainer and return ``(B, H, W)`` maps validated against ``inputs``.

    ``rows``: the original sample of each row of ``inputs`` when they are perturbed copies of
    another batch (their additional inputs are those samples'); ``None``: the batch itself.
    """
    if isinstance(explainer, WithInputs):
        out = explainer(inputs, target=target, rows=rows)
    else:
        out = explainer(inputs, target=target)
    maps = as_maps(out, inputs, name="explainer output")
    return check_finite(maps, "explainer output")


def check_fraction(value: float, name: str, *, closed: bool = False) -> None:
    """Raise a ``ValueError`` unless ``0 < value < 1`` (``<= 1`` when ``closed``)."""
    ok = 0 < value <= 1 if closed else 0 < value < 1
    if not ok:
        bound = "(0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")


# --- rank statistics shared by several metrics ------------------------------------------------


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``1..N`` along the last axis of ``(B, N)`` values, ties get their average rank."""
    batch, n = values.shape
    sorted_vals, order = torch.sort(values, dim=1, stable=True)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    group = new_group.long().cumsum(1) - 1 + torch.arange(batch, device=values.device)[:, None] * n
    positions = torch.arange(1, n + 1, device=values.device, dtype=torch.float64).expand(batch, n)
    total = torch.zeros(batch * n, dtype=torch.float64, device=values.device)
    count = torch.zeros_like(total)
    total.index_add_(0, group.flatten(), positions.flatten())
    count.index_add_(0, group.flatten(), torch.ones_like(positions).flatten())
    mean_rank = (total / count.clamp_min(1))[group]
    ranks = torch.empty_like(mean_rank)
    ranks.scatter_(1, order, mean_rank)
    return ranks


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of ``(B, N)`` tensors (NaN where a row is constant)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(1) / denom, torch.full_like(denom, float("nan")))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Spearman rank correlation (average ranks for ties) of ``(B, N)`` tensors."""
    return pearson(average_ranks(a.double()), average_ranks(b.double()))
