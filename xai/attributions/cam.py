"""The Grad-CAM family on the shared adapter.

Notation (see ``shared/specs/cam.md``): activations ``A`` of shape ``(B, K, h, w)``, gradients
``G = dy/dA`` of the target score ``y``; every map is computed at layer resolution, then
upsampled (bilinear, ``align_corners=False``) to the input size unless ``upsample=False``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._spatial import resize
from xai._typing import LayerLike
from xai.adapter import ClassTarget, ProbabilityTarget, Target, freeze, score_rows
from xai.adapter.rules import guided_relus
from xai.attributions.base import (
    LayerAttribution,
    LayerView,
    reduce_channels,
    register,
    upsample,
)

__all__ = [
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
]


def _spatial_dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.dim()))


def _weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """ReLU(sum_k w_k A_k) for channel weights ``(B, K)``."""
    shape = weights.shape + (1,) * (activations.dim() - 2)
    return F.relu((weights.view(shape) * activations).sum(1))


@register
class GradCAM(LayerAttribution):
    r"""Grad-CAM: channel weights are the spatially averaged gradients.

    :math:`\alpha_k = \frac{1}{Z}\sum_{ij} G_{kij}`, :math:`L = \mathrm{ReLU}(\sum_k \alpha_k A_k)`.
    On a GAP + linear network it equals CAM (the classifier weights) divided by ``Z = h w``.

    Args:
        model: the model to explain.
        layer: layer(s) to read, typically the last convolutional block (``"layer4"``,
            ``"features.18"``). See :class:`~xai.attributions.base.LayerAttribution`.

    Returns:
        ``(B, H, W)`` non-negative maps (``(B, h, w)`` with ``upsample=False``).

    References:
        Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
        Localization", ICCV 2017.

    Example:
        >>> maps = GradCAM(model, layer="layer4")(images, target=None)
    """

    def _layer_map(self, view: LayerView) -> Tensor:
        gradients = view.require_gradients()
        return _weighted_sum(gradients.mean(_spatial_dims(gradients)), view.activations)


@register
class HiResCAM(LayerAttribution):
    r"""HiResCAM: :math:`L = \mathrm{ReLU}(\sum_k G_k \odot A_k)` (element-wise, no averaging).

    Equal to Grad-CAM when the layer is followed by global average pooling and a
    linear head; different at intermediate layers.

    References:
        Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
        convolutional neural networks", 2020.
    """

    name = "hires_cam"

    def _layer_map(self, view: LayerView) -> Tensor:
        return F.relu((view.require_gradients() * view.activations).sum(1))


@register
class GradCAMPlusPlus(LayerAttribution):
    r"""Grad-CAM++: pixel-weighted positive gradients.

    :math:`a_{kij} = G^2 / (2G^2 + \sum_{ab} A_{kab} G^3)` (0 where the denominator is 0),
    :math:`\alpha_k = \sum_{ij} a_{kij}\,\mathrm{ReLU}(G_{kij})`,
    :math:`L = \mathrm{ReLU}(\sum_k \alpha_k A_k)`. This closed form assumes the explained score
    is the exponential of the logit, as in the paper and in peer libraries.

    Args:
        eps: added to the denominator. ``0`` (default) follows the paper with a guarded
            division; pytorch-grad-cam uses ``1e-6``.

    References:
        Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual Explanations for
        Deep Convolutional Networks", WACV 2018.
    """

    name = "grad_cam_plus_plus"

    def __init__(
        self, model: nn.Module, layer: LayerLike, *, eps: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.eps = float(eps)

    def _layer_map(self, view: LayerView) -> Tensor:
        activations, gradients = view.activations, view.require_gradients()
        dims = _spatial_dims(gradients)
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_a = activations.sum(dims, keepdim=True)
        denom = 2 * g2 + sum_a * g3 + self.eps
        safe = torch.where(denom != 0, denom, torch.ones_like(denom))
        alpha = torch.where((denom != 0) & (gradients != 0), g2 / safe, torch.zeros_like(g2))
        weights = (alpha * F.relu(gradients)).sum(dims)
        return _weighted_sum(weights, activations)


@register
class XGradCAM(LayerAttribution):
    r"""XGrad-CAM: activation-normalized gradient weights.

    :math:`\alpha_k = \sum_{ij} \frac{A_{kij}}{\sum_{ab} A_{kab}} G_{kij}`; channels whose
    activations sum to zero get weight 0 (guarded division).

    Args:
        eps: added to the normalizer (pytorch-grad-cam uses ``1e-7``); default ``0``.

    References:
        Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of
        CNNs", BMVC 2020.
    """

    name = "xgrad_cam"

    def __init__(
        self, model: nn.Module, layer: LayerLike, *, eps: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.eps = float(eps)

    def _layer_map(self, view: LayerView) -> Tensor:
        activations, gradients = view.activations, view.require_gradients()
        dims = _spatial_dims(activations)
        norm = activations.sum(dims, keepdim=True) + self.eps
        safe = torch.where(norm != 0, norm, torch.ones_like(norm))
        weights = torch.where(norm != 0, gradients * activations / safe, 0.0).sum(dims)
        return _weighted_sum(weights, activations)


@register
class LayerCAM(LayerAttribution):
    r"""Layer-CAM: :math:`L = \mathrm{ReLU}(\sum_k \mathrm{ReLU}(G_k) \odot A_k)`.

    Element-wise weights make it usable at shallow layers too.

    References:
        Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
        Localization", IEEE TIP 2021.
    """

    def _layer_map(self, view: LayerView) -> Tensor:
        return F.relu((F.relu(view.require_gradients()) * view.activations).sum(1))


@register
class ScoreCAM(LayerAttribution):
    r"""Score-CAM: gradient-free channel weights from the score of masked inputs.

    Each channel's activation is upsampled to the input size and min-max normalized to
    ``[0, 1]`` (per channel), the input is multiplied by it, and the channel weight is the
    score of that masked input: :math:`L = \mathrm{ReLU}(\sum_k \alpha_k A_k)`.
    ``B * K`` forward passes, run under ``torch.no_grad()`` in chunks of ``batch_size``.

    Args:
        weighting: ``"probability"`` (default, the official code: softmax probability of the
            target class for each masked input; the raw target score for non-class targets)
            or ``"channel_softmax"`` (pytorch-grad-cam: softmax across channels of the raw
            target scores).
        baseline_subtract: subtract the score of the all-zero input (the paper's
            :math:`f(X \circ H_k) - f(X_b)`).
        align_corners: upsampling of the masks (pytorch-grad-cam uses ``True``).
        batch_size: masked inputs per forward pass (default 32).

    References:
        Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
        Networks", CVPR Workshops 2020.
    """

    needs_gradients = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike,
        *,
        weighting: str = "probability",
        baseline_subtract: bool = False,
        align_corners: bool = False,
        batch_size: int | None = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, batch_size=batch_size, **kwargs)
        if weighting not in ("probability", "channel_softmax"):
            raise ValueError(
                f"weighting must be 'probability' or 'channel_softmax', got {weighting!r}"
            )
        self.weighting = weighting
        self.class_score = "probability" if weighting == "probability" else "logit"
        self.baseline_subtract = baseline_subtract
        self.align_corners = align_corners

    def _score_target(self, target: Target) -> Target:
        if self.weighting == "probability" and type(target) is ClassTarget:
            return ProbabilityTarget(target.classes)
        return target

    def _masks(self, channels: Tensor, size: tuple[int, ...]) -> Tensor:
        """``(n, h, w)`` activation channels -> ``(n, H, W)`` masks, min-max normalized each
        (``(n, t, h, w)`` -> ``(n, T, H, W)``, trilinear, for videos and volumes).
        """
        masks = resize(channels, size, align_corners=self.align_corners)
        flat = masks.flatten(1)
        per_mask = (-1,) + (1,) * len(size)
        lo, hi = flat.min(1).values.view(per_mask), flat.max(1).values.view(per_mask)
        span = hi - lo
        return torch.where(span > 0, (masks - lo) / span.clamp_min(1e-12), 0.0)

    def _layer_map(self, view: LayerView) -> Tensor:
        activations, inputs = view.activations, view.inputs
        target = self._score_target(view.target)
        b, k = activations.shape[:2]
        size = tuple(inputs.shape[2:])
        sample_of = torch.arange(b).repeat_interleave(k)  # row r = (sample r // k, channel r % k)

        def masked(rows: Tensor) -> Tensor:
            # only this chunk's masks exist at input size: memory is bounded by batch_size,
            # not by the layer's B x K channels
            masks = self._masks(activations[rows // k, rows % k], size)
            return inputs[rows // k] * masks[:, None].to(inputs.dtype)

        weights = score_rows(
            self.adapter,
            target,
            b * k,
            masked,
            sample_of,
            batch_size=self.batch_size,
            progress=self.progress,
            desc="Score-CAM",
            dtype=torch.float32,
        ).view(b, k)
        if self.baseline_subtract:
            with torch.no_grad():
                base = target(self.adapter.forward(torch.zeros_like(inputs))).float()
            weights = weights - base[:, None]
        if self.weighting == "channel_softmax":
            weights = weights.softmax(dim=1)
        return _weighted_sum(weights.to(activations.dtype), activations)


@register
class EigenCAM(LayerAttribution):
    r"""Eigen-CAM: projection of the activations on their first principal direction.

    The activations of each sample, as a ``(h w) x K`` matrix (centered per channel when
    ``center=True``, as in pytorch-grad-cam), are projected on their first right singular
    vector. The SVD sign is arbitrary; it is fixed so that the projection correlates
    positively with the channel-mean activation map, then a ReLU keeps the positive part.
    Gradient-free and class-agnostic: ``target`` is ignored.

    References:
        Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
        IJCNN 2020.
    """

    needs_gradients = False

    def __init__(
        self, model: nn.Module, layer: LayerLike, *, center: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(model, layer, **kwargs)
        self.center = center

    def _layer_map(self, view: LayerView) -> Tensor:
        activations = view.activations
        b, k = activations.shape[:2]
        spatial = activations.shape[2:]
        mat = activations.reshape(b, k, -1).transpose(1, 2).double()  # (B, hw, K)
        if self.center:
            mat = mat - mat.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(mat, full_matrices=False)
        proj = mat @ vh[:, 0, :, None]  # (B, hw, 1)
        proj = proj[..., 0]
        mean_map = activations.reshape(b, k, -1).mean(1).double()
        corr = (
            (proj - proj.mean(1, keepdim=True)) * (mean_map - mean_map.mean(1, keepdim=True))
        ).sum(1)
        sign = torch.where(corr < 0, -1.0, 1.0).to(proj.dtype)
        proj = proj * sign[:, None]
        return F.relu(proj).reshape(b, *spatial).to(activations.dtype)


@register
class GuidedGradCAM(GradCAM):
    r"""Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map.

    The per-channel product ``(B, C, H, W)`` is reduced over channels with ``reduction``
    (default ``"max_abs"``). Needs ``nn.ReLU``/``nn.ReLU6`` modules (functional activations
    cannot be guided; an error says so). Always at the input resolution.

    References:
        Selvaraju et al., ICCV 2017; Springenberg et al., "Striving for Simplicity: The All
        Convolutional Net", ICLR Workshops 2015.
    """

    def __init__(
        self, model: nn.Module, layer: LayerLike, *, reduction: str = "max_abs", **kwargs: Any
    ) -> None:
        if kwargs.get("upsample") is False:
            raise ValueError("GuidedGradCAM maps are at the input resolution; drop upsample")
        super().__init__(model, layer, **kwargs)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduction)  # validate early
        self.reduction = reduction

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        target = freeze(self.adapter, inputs, target)
        cam = super()._attribute(inputs, target)
        x = inputs.detach().requires_grad_(True)
        with guided_relus(self.adapter.module):
            scores = target(self.adapter.forward(x))
            (guided,) = torch.autograd.grad(scores.sum(), x)
        return reduce_channels(
            guided * upsample(cam, tuple(inputs.shape[2:]))[:, None], self.reduction
        )


# Every map above is computed over the layer's spatial axes, whatever their number: a video or
# volume layer (B, K, t, h, w) gives (B, t, h, w) maps, upsampled trilinearly to (T, H, W).
for _cam in (GradCAM, HiResCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, ScoreCAM, EigenCAM):
    _cam.input_ranks = (4, 5)
