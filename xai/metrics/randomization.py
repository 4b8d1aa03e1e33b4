"""Sanity checks: does the explanation depend on the model's parameters and on the class?

- :class:`ModelParameterRandomization` (Adebayo et al. 2018): cascading randomization of the
  layers of a deep copy of the model, top-down, comparing each map with the original one.
- :class:`ClassSensitivity` (Rebuffi et al. 2020, NormGrad): the rank correlation between the
  maps of the highest- and the lowest-scoring class of each image.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai.adapter import ModelAdapter, Target, preserved
from xai.metrics.base import Explainer, ExplainerMetric, MetricResult, explain, spearman

__all__ = ["ClassSensitivity", "ModelParameterRandomization", "ssim"]


def ssim(a: Tensor, b: Tensor, *, win_size: int = 7) -> Tensor:
    """Structural similarity of ``(B, H, W)`` maps, one score per sample.

    Follows ``skimage.metrics.structural_similarity``'s defaults (Wang et al. 2004 constants
    ``K1=0.01``, ``K2=0.03``, a uniform ``win_size`` window, sample covariance, mean over the
    valid region) with ``data_range`` taken per sample from both maps (``max - min``), as
    Quantus does. ``win_size`` is clipped to the smallest odd size that fits the map.
    """
    if a.dim() != 3:
        raise ValueError(
            f"ssim compares image maps (B, H, W), got {tuple(a.shape)}; use "
            "similarity='spearman' for videos and volumes"
        )
    a = a.double()
    b = b.double()
    win = min(win_size, a.shape[-1], a.shape[-2])
    win = win if win % 2 else win - 1
    both = torch.cat([a.flatten(1), b.flatten(1)], 1)
    data_range = (both.amax(1) - both.amin(1)).clamp_min(torch.finfo(torch.float64).tiny)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    kernel = torch.full((1, 1, win, win), 1.0 / win**2, dtype=a.dtype, device=a.device)

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t[:, None], kernel)[:, 0]

    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = filt(a), filt(b)
    vx = cov_norm * (filt(a * a) - ux * ux)
    vy = cov_norm * (filt(b * b) - uy * uy)
    vxy = cov_norm * (filt(a * b) - ux * uy)
    c1 = c1[:, None, None]
    c2 = c2[:, None, None]
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def _similarity(kind: str, a: Tensor, b: Tensor) -> Tensor:
    if kind == "spearman":
        return spearman(a.flatten(1), b.flatten(1))
    return ssim(a, b)


class ModelParameterRandomization(ExplainerMetric):
    """Model-parameter randomization test (cascading, top-down).

    On a deep copy of the model, the layers (every module with ``reset_parameters``, in
    ``named_modules`` order, as in Quantus' MPRT) are re-initialized one after the other from the
    output layer down (cascading: earlier randomizations are kept); after each layer the maps are
    recomputed with ``explainer.rebind(model_copy)`` and compared with the original maps.
    Each layer's ``reset_parameters`` runs under a forked RNG seeded with ``seed`` (the same seed
    for every layer, as Quantus does with ``seed + 1``), so the user's global RNG and model are
    untouched. A method that passes the check decorrelates quickly (low similarity).

    Args:
        similarity: ``"spearman"`` (rank correlation, average ranks on ties; Adebayo et al.'s
            main measure) or ``"ssim"`` (see :func:`ssim`).
        abs: compare absolute maps (Adebayo et al. report both; Quantus' default ``True``).
        order: ``"top_down"`` (cascading from the output) or ``"independent"`` (each layer
            alone on the original model).
        layers: names of the layers to randomize (default: every module with
            ``reset_parameters``).
        reduce: the per-sample score: ``"mean"`` over layers (Quantus'
            ``return_average_correlation``) or ``"last"`` (fully randomized model).
        seed: seed of the re-initializations (Quantus: 42 + 1).

    Returns (from ``__call__``):
        scores ``(B,)``; curve ``(B, L)`` similarity after each randomization step; steps
        ``(L,)`` = 1..L; labels = the layers' names. Lower is better.

    References:
        Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.
    """

    name: ClassVar[str] = "model_parameter_randomization"
    higher_is_better: ClassVar[bool] = False
    category: ClassVar = "randomization"
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)  # similarity="ssim" needs images

    def __init__(
        self,
        *,
        similarity: str = "spearman",
        abs: bool = True,
        order: str = "top_down",
        layers: Sequence[str] | None = None,
        reduce: str = "mean",
        seed: int = 43,
    ) -> None:
        if similarity not in ("spearman", "ssim"):
            raise ValueError(f"similarity must be 'spearman' or 'ssim', got {similarity!r}")
        if order not in ("top_down", "independent"):
            raise ValueError(f"order must be 'top_down' or 'independent', got {order!r}")
        if reduce not in ("mean", "last"):
            raise ValueError(f"reduce must be 'mean' or 'last', got {reduce!r}")
        self.similarity = similarity
        self.abs = abs
        self.order = order
        self.layers = None if layers is None else list(layers)
        self.reduce = reduce
        self.seed = seed

    def _layers(self, model: nn.Module) -> list[str]:
        found = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")]
        if self.layers is not None:
            unknown = [n for n in self.layers if n not in dict(model.named_modules())]
            if unknown:
                raise ValueError(f"unknown layers {unknown}; see model.named_modules()")
            found = [n for n in found if n in self.layers]
        if not found:
            raise ValueError("the model has no module with reset_parameters() to randomize")
        return found[::-1]

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, explainer: Explainer, target: Target
    ) -> MetricResult:
        names = self._layers(model)
        original = explain(explainer, inputs, target)
        if self.abs:
            original = original.abs()
        copy_ = copy.deepcopy(model)
        state = copy.deepcopy(model.state_dict()) if self.order == "independent" else None
        rebind = getattr(explainer, "rebind", None)
        if rebind is None:
            raise TypeError("the explainer must have rebind(model) (an xai Attribution)")
        other = rebind(copy_)
        cuda = sorted({p.device.index or 0 for p in copy_.parameters() if p.is_cuda})
        curve = []
        for name in names:
            if state is not None:
                copy_.load_state_dict(state)
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed)
                # Module.__getattr__ is typed Tensor | Module; the layers were picked for it
                cast(Callable[[], None], copy_.get_submodule(name).reset_parameters)()
            maps = explain(other, inputs, target)
            curve.append(_similarity(self.similarity, original, maps.abs() if self.abs else maps))
        curve_t = torch.stack(curve, 1).to(original.dtype)
        scores = curve_t.mean(1) if self.reduce == "mean" else curve_t[:, -1]
        steps = torch.arange(1, len(names) + 1, dtype=original.dtype)
        return MetricResult(scores, curve_t, steps, tuple(names))


class ClassSensitivity(ExplainerMetric):
    """Class sensitivity: Spearman correlation between the maps of the top and bottom class.

    For each image, the maps for the class with the highest and the lowest model score (the same
    classes by logit or by softmax probability) are compared with the Spearman rank correlation of
    the flattened signed maps (``1e-6`` added as in the authors' code; average ranks on ties). A
    class-insensitive method (the map does not depend on the class) scores about 1; lower is
    better. ``target`` is ignored: the two classes come from the model output.

    Returns (from ``__call__``):
        scores ``(B,)`` in [-1, 1] (NaN where a map is constant); no curve.

    References:
        Rebuffi, Fong, Ji, Vedaldi, "There and Back Again: Revisiting Backpropagation Saliency
        Methods", CVPR 2020 (TorchRay ``normgrad`` branch).
    """

    name: ClassVar[str] = "class_sensitivity"
    higher_is_better: ClassVar[bool] = False
    category: ClassVar = "randomization"
    input_ranks: ClassVar[tuple[int, ...]] = (4, 5)

    def _evaluate(
        self, model: nn.Module, inputs: Tensor, explainer: Explainer, target: Target
    ) -> MetricResult:
        with preserved(model), torch.no_grad():
            outputs = ModelAdapter(model).forward(inputs)
        if outputs.dim() != 2:
            raise ValueError(
                f"ClassSensitivity needs class scores (B, n_classes), got {tuple(outputs.shape)}"
            )
        top = outputs.argmax(1).cpu()
        bottom = outputs.argmin(1).cpu()
        high = explain(explainer, inputs, top) + 1e-6
        low = explain(explainer, inputs, bottom) + 1e-6
        scores = spearman(high.flatten(1), low.flatten(1)).to(high.dtype)
        return MetricResult(scores)
