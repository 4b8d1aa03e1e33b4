r"""NormGrad and the unified "spatial contribution" view of backpropagation saliency.

Rebuffi, Fong, Ji and Vedaldi ("There and Back Again: Revisiting Backpropagation Saliency
Methods", CVPR 2020) write many backpropagation saliency methods in two phases, at a layer with
activation :math:`x` ``(B, C, h, w)`` and gradient :math:`g = \partial y / \partial x` of the
target score :math:`y`:

1. **Virtual layer** (``virtual_layer``): insert after the layer a layer that is the identity in
   the forward pass but has parameters :math:`\theta`; the gradient
   :math:`\partial y / \partial \theta` is a sum over locations :math:`u` of contributions
   :math:`G_u`.

   * ``"bias"``: :math:`G_u = g_u` (``C`` values);
   * ``"scaling"`` (a per-channel scale): :math:`G_u = x_u \odot g_u`;
   * ``"conv1x1"`` (a 1x1 convolution): :math:`G_u = g_u x_u^\top` (``C x C``);
   * ``"conv3x3"``: :math:`G_u = g_u\,\mathrm{unfold}_{3\times3}(x)_u^\top` (padding 1);
   * ``"conv3x3_depthwise"``: the depthwise 3x3 version (one ``1 x 9`` block per channel);
   * ``"proper"``: no virtual layer; the layer must be a real ``nn.Conv2d``, :math:`g` is the
     gradient at its output and :math:`x` its input, unfolded with the layer's own kernel,
     stride, padding, dilation and groups, so :math:`\sum_u G_u` is the actual weight gradient.

   ``with_bias=True`` appends a bias to the virtual (or real) convolution, i.e. a constant 1 to
   every unfolded input vector.
2. **Aggregation** (``aggregation``) of :math:`G_u` to one number per location: ``"norm"``
   (Frobenius norm), ``"sum"``, ``"selective"`` (:math:`\lVert\max(0, G_u)\rVert_2`), ``"max"``
   (largest entry) or ``"max_abs"`` (largest absolute entry).

Optionally the gradient is first averaged over space (``gradient_reduction="mean"``) and a ReLU
is applied to the map (``relu=True``). Known methods are instances (:data:`PRESETS`):

=======================  ==============  ===========  ==================  =====
method                   virtual layer   aggregation  gradient reduction  ReLU
=======================  ==============  ===========  ==================  =====
Gradient (Simonyan)      bias            max_abs      --                  no
Gradient x Input         scaling         sum          --                  no
Grad-CAM                 scaling         sum          mean                yes
NormGrad                 conv1x1         norm         --                  no
selective NormGrad       scaling         selective    --                  no
=======================  ==============  ===========  ==================  =====

Every aggregation of a (block-diagonal) outer product :math:`a b^\top` has a closed form in
per-location statistics of :math:`a` and :math:`b` (e.g. NormGrad
:math:`\lVert g_u x_u^\top\rVert_F = \lVert g_u\rVert_2 \lVert x_u\rVert_2`), so no
``C x C`` matrix is ever built: windowed statistics (convolutions with a ones kernel, max
pooling) stand in for ``F.unfold``.

Several layers are captured in ONE forward/backward pass; their maps are upsampled (bilinear),
min-max normalized per sample and combined (``fusion``): ``"product"`` (the authors' standalone
code, the default), ``"geometric_mean"`` / ``"mean"`` (weighted geometric / arithmetic means of
their TorchRay branch, with ``layer_weights``), or ``"max"``.

:class:`~xai.attributions.meta_saliency.MetaSaliency` wraps any method with the paper's
meta-saliency step (one SGD step on the target class, on a copy of the model) to make it more
class-sensitive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._typing import LayerLike
from xai.attributions.base import FUSIONS, LayerAttribution, LayerView, register

__all__ = [
    "NormGrad",
    "PRESETS",
    "SelectiveNormGrad",
    "LAYER_SETS",
    "SpatialContribution",
    "spatial_contribution",
]

VIRTUAL_LAYERS = ("bias", "scaling", "conv1x1", "conv3x3", "conv3x3_depthwise", "proper")
AGGREGATIONS = ("norm", "sum", "selective", "max", "max_abs")


PRESETS: dict[str, dict[str, object]] = {
    "gradient": {"virtual_layer": "bias", "aggregation": "max_abs"},
    "gradient_x_input": {"virtual_layer": "scaling", "aggregation": "sum"},
    "grad_cam": {
        "virtual_layer": "scaling",
        "aggregation": "sum",
        "gradient_reduction": "mean",
        "relu": True,
    },
    "norm_grad": {"virtual_layer": "conv1x1", "aggregation": "norm"},
    "norm_grad_selective": {"virtual_layer": "scaling", "aggregation": "selective"},
}
"""The paper's instances of the two-phase formula, by name (see the module docstring)."""

LAYER_SETS: dict[str, list[str]] = {
    # the paper's layers: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision names)
    "vgg16": ["features.3", "features.8", "features.15", "features.22", "features.29"],
    "resnet50": ["layer1", "layer2", "layer3", "layer4"],
    # not in the paper: the last block at each resolution (strides 4, 8, 16, 32)
    "mobilenet_v2": ["features.3", "features.6", "features.13", "features.18"],
}
"""Layers to combine for torchvision networks: ``NormGrad(model, LAYER_SETS["resnet50"])``."""


# --------------------------------------------------------------------------------------------
# closed-form aggregations of block-diagonal outer products
# --------------------------------------------------------------------------------------------
# A location's contribution is G_u = blockdiag_k(a_{u,k} b_{u,k}^T) over groups k, with a the
# gradient side and b the (unfolded) activation side. Each aggregation needs a few statistics of
# a and b per group; `_Stats` holds them as (B, G, h, w) tensors.

_NEEDS: dict[str, tuple[str, ...]] = {
    "norm": ("sq",),
    "sum": ("sum",),
    "selective": ("pos_sq", "neg_sq"),
    "max": ("max", "min"),
    "max_abs": ("max_abs",),
}


def _group_stats(t: Tensor, groups: int, needs: tuple[str, ...]) -> dict[str, Tensor]:
    """Per-group statistics of ``t`` ``(B, C, h, w)`` over channels: each ``(B, G, h, w)``."""
    b, c = t.shape[:2]
    v = t.reshape(b, groups, c // groups, *t.shape[2:])
    out: dict[str, Tensor] = {}
    for need in needs:
        if need == "sq":
            out[need] = v.pow(2).sum(2)
        elif need == "sum":
            out[need] = v.sum(2)
        elif need == "pos_sq":
            out[need] = F.relu(v).pow(2).sum(2)
        elif need == "neg_sq":
            out[need] = F.relu(-v).pow(2).sum(2)
        elif need == "max":
            out[need] = v.amax(2)
        elif need == "min":
            out[need] = v.amin(2)
        elif need == "max_abs":
            out[need] = v.abs().amax(2)
    return out


def _window_stats(stats: dict[str, Tensor], conv: _Geometry) -> dict[str, Tensor]:
    """Statistics of the unfolded (k x k window) vectors from per-location statistics.

    Additive statistics are summed over the window (a grouped convolution with a ones kernel),
    extremes are max-pooled. Padding is applied first with the layer's padding mode (zeros by
    default; padded zeros are entries of the unfolded vector, as with ``F.unfold``).
    """
    out = {}
    for key, value in stats.items():
        if conv.padding_mode == "zeros":
            padded = F.pad(value, conv.pad)
        else:
            # the statistics of padded entries are the statistics of the copied locations
            padded = F.pad(value, conv.pad, mode=conv.padding_mode)
        if key in ("sq", "sum", "pos_sq", "neg_sq"):
            g = padded.shape[1]
            ones = padded.new_ones(g, 1, *conv.kernel_size)
            out[key] = F.conv2d(padded, ones, stride=conv.stride, dilation=conv.dilation, groups=g)
        elif key == "min":
            out[key] = -F.max_pool2d(-padded, conv.kernel_size, conv.stride, 0, conv.dilation)
        else:  # max, max_abs
            out[key] = F.max_pool2d(padded, conv.kernel_size, conv.stride, 0, conv.dilation)
    return out


def _add_constant_one(stats: dict[str, Tensor]) -> dict[str, Tensor]:
    """Statistics after appending a constant 1 to every vector (a bias parameter)."""
    out = {}
    for key, value in stats.items():
        if key in ("sq", "sum", "pos_sq"):
            out[key] = value + 1
        elif key in ("max", "max_abs"):
            out[key] = value.clamp_min(1)
        elif key == "min":
            out[key] = value.clamp_max(1)
        else:  # neg_sq
            out[key] = value
    return out


def _aggregate(a: dict[str, Tensor], b: dict[str, Tensor], aggregation: str) -> Tensor:
    """Aggregate ``blockdiag(a_k b_k^T)`` per location from the statistics; ``(B, h, w)``."""
    if aggregation == "norm":
        return (a["sq"] * b["sq"]).sum(1).sqrt()
    if aggregation == "sum":
        return (a["sum"] * b["sum"]).sum(1)
    if aggregation == "selective":
        # max(0, a_i b_j) is a_i+ b_j+ + a_i- b_j- (the two cannot both be non-zero)
        return (a["pos_sq"] * b["pos_sq"] + a["neg_sq"] * b["neg_sq"]).sum(1).sqrt()
    if aggregation == "max":
        corners = torch.stack(
            [a["max"] * b["max"], a["max"] * b["min"], a["min"] * b["max"], a["min"] * b["min"]]
        )
        return corners.amax(0).amax(1)
    return (a["max_abs"] * b["max_abs"]).amax(1)  # max_abs


class _Geometry:
    """Kernel geometry of a (virtual or real) convolution."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (1, 1),
        stride: tuple[int, int] = (1, 1),
        dilation: tuple[int, int] = (1, 1),
        pad: tuple[int, int, int, int] = (0, 0, 0, 0),
        padding_mode: str = "zeros",
    ) -> None:
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.pad = pad  # F.pad order: left, right, top, bottom
        self.padding_mode = padding_mode

    @property
    def is_pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and not any(self.pad)

    @classmethod
    def of(cls, conv: nn.Conv2d) -> _Geometry:
        return cls(
            tuple(conv.kernel_size),  # type: ignore[arg-type]
            tuple(conv.stride),  # type: ignore[arg-type]
            tuple(conv.dilation),  # type: ignore[arg-type]
            tuple(conv._reversed_padding_repeated_twice),  # type: ignore[arg-type]
            conv.padding_mode,
        )


_CONV3X3 = _Geometry((3, 3), pad=(1, 1, 1, 1))


def spatial_contribution(
    activations: Tensor,
    gradients: Tensor,
    *,
    virtual_layer: str = "conv1x1",
    aggregation: str = "norm",
    gradient_reduction: str | None = None,
    relu: bool = False,
    with_bias: bool = False,
    layer_inputs: Tensor | None = None,
    conv: nn.Conv2d | None = None,
) -> Tensor:
    r"""The two-phase map of one layer from its activations and gradients (no hooks).

    Args:
        activations: layer output :math:`x` ``(B, C, h, w)``.
        gradients: :math:`\partial y / \partial x`, same shape.
        virtual_layer: phase 1, one of ``"bias"``, ``"scaling"``, ``"conv1x1"``, ``"conv3x3"``,
            ``"conv3x3_depthwise"``, ``"proper"`` (see the module docstring).
        aggregation: phase 2, one of ``"norm"``, ``"sum"``, ``"selective"``, ``"max"``,
            ``"max_abs"``.
        gradient_reduction: ``None`` (local gradients) or ``"mean"`` (the gradient averaged over
            space first, as in Grad-CAM).
        relu: apply a ReLU to the map (Grad-CAM).
        with_bias: the virtual/real convolution also has a bias (a constant 1 is appended to
            each unfolded activation vector); ignored by ``"bias"`` and ``"scaling"``.
        layer_inputs: for ``"proper"``: the input of ``conv`` ``(B, C_in, H_in, W_in)``.
        conv: for ``"proper"``: the real ``nn.Conv2d`` whose output gave ``gradients``.

    Returns:
        ``(B, h, w)`` maps in the dtype of ``activations``.

    Raises:
        ValueError: an unknown choice, or ``"proper"`` without ``conv`` and ``layer_inputs``.
    """
    _check_choice(virtual_layer, "virtual_layer", VIRTUAL_LAYERS)
    _check_choice(aggregation, "aggregation", AGGREGATIONS)
    _check_choice(gradient_reduction, "gradient_reduction", (None, "mean"))
    if gradient_reduction == "mean":
        gradients = gradients.mean(tuple(range(2, gradients.dim())), keepdim=True)
        gradients = gradients.expand_as(activations)
    needs = _NEEDS[aggregation]
    c = activations.shape[1]
    if virtual_layer == "bias":
        a = _group_stats(gradients, 1, needs)
        b = {k: torch.ones_like(v) for k, v in a.items()}
        b = {k: (torch.zeros_like(v) if k == "neg_sq" else v) for k, v in b.items()}
    elif virtual_layer == "scaling":
        a = _group_stats(gradients, c, needs)
        b = _group_stats(activations, c, needs)
    elif virtual_layer == "proper":
        if not isinstance(conv, nn.Conv2d) or layer_inputs is None:
            raise ValueError("virtual_layer='proper' needs the nn.Conv2d `conv` and its input")
        a = _group_stats(gradients, conv.groups, needs)
        b = _group_stats(layer_inputs.to(activations.dtype), conv.groups, needs)
        geometry = _Geometry.of(conv)
        if not geometry.is_pointwise:
            b = _window_stats(b, geometry)
        if with_bias:
            b = _add_constant_one(b)
    else:
        groups = c if virtual_layer == "conv3x3_depthwise" else 1
        a = _group_stats(gradients, groups, needs)
        b = _group_stats(activations, groups, needs)
        if virtual_layer != "conv1x1":
            b = _window_stats(b, _CONV3X3)
        if with_bias:
            b = _add_constant_one(b)
    maps = _aggregate(a, b, aggregation)
    return F.relu(maps) if relu else maps


def _check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@register
class SpatialContribution(LayerAttribution):
    r"""The unified two-phase saliency of Rebuffi et al. (CVPR 2020) at one or several layers.

    Builds any instance of the framework in the module docstring: choose the layer(s), the
    virtual layer (phase 1), the aggregation (phase 2), the gradient reduction and the ReLU.
    :data:`PRESETS` names the paper's instances; :meth:`from_preset` builds them. All layers
    are captured in one forward and one backward pass.

    Args:
        model: the model to explain (never modified).
        layer: one layer (dotted name or module) or a list of layers.
        virtual_layer: phase 1 (default ``"conv1x1"``, NormGrad's).
        aggregation: phase 2 (default ``"norm"``, NormGrad's).
        gradient_reduction: ``None`` (default) or ``"mean"`` (spatial mean, Grad-CAM).
        relu: ReLU on each layer's map (default ``False``; Grad-CAM uses ``True``).
        with_bias: add a bias to the (virtual or real) convolution: NormGrad becomes
            :math:`\lVert g_u\rVert_2 \sqrt{\lVert x_u\rVert_2^2 + 1}` (default ``False``).
        fusion: how several layers' maps (each upsampled and min-max normalized) are combined:
            ``"product"`` (default; the authors' standalone code multiplies them),
            ``"geometric_mean"`` (:math:`\prod_l M_l^{w_l / \sum w}`), ``"mean"``
            (:math:`\sum_l (w_l / \sum w) M_l`), both from the authors' TorchRay branch, or
            ``"max"``. Note that a layer whose normalized map is 0 at a pixel zeroes the
            product and the geometric mean there.
        layer_weights: for ``"geometric_mean"`` and ``"mean"``: ``None`` (uniform), one
            non-negative weight per layer, or ``"linear"`` (``linspace(0, 1, L + 1)[1:]``,
            deeper layers weigh more, as in the TorchRay branch).
        reshape, upsample: see :class:`~xai.attributions.base.LayerAttribution`.
        **kwargs: ``batch_size``, ``seed``, ``progress``.

    Returns:
        ``(B, H, W)`` maps: raw for one layer, in ``[0, 1]`` for several layers
        (``(B, h, w)`` with ``upsample=False``).

    Raises:
        ValueError: an unknown choice, ``layer_weights`` of the wrong length or with a fusion
            that takes none.
        TypeError: ``virtual_layer="proper"`` on a layer that is not an ``nn.Conv2d``.

    References:
        Rebuffi, Fong, Ji, Vedaldi, "There and Back Again: Revisiting Backpropagation
        Saliency Methods", CVPR 2020.

    Example:
        >>> gxi = SpatialContribution.from_preset("gradient_x_input", model, "layer3")
        >>> maps = SpatialContribution(model, ["layer3", "layer4"], virtual_layer="scaling",
        ...                            aggregation="selective")(images)
    """

    defaults: ClassVar[dict[str, object]] = {}

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike | Sequence[LayerLike],
        *,
        virtual_layer: str = "conv1x1",
        aggregation: str = "norm",
        gradient_reduction: str | None = None,
        relu: bool = False,
        with_bias: bool = False,
        fusion: str = "product",
        layer_weights: str | Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, layer, **kwargs)
        _check_choice(virtual_layer, "virtual_layer", VIRTUAL_LAYERS)
        _check_choice(aggregation, "aggregation", AGGREGATIONS)
        _check_choice(gradient_reduction, "gradient_reduction", (None, "mean"))
        _check_choice(fusion, "fusion", FUSIONS)
        self.virtual_layer = virtual_layer
        self.aggregation = aggregation
        self.gradient_reduction = gradient_reduction
        self.relu = bool(relu)
        self.with_bias = bool(with_bias)
        self.fusion = fusion
        self.layer_weights = self._weights(layer_weights)
        if virtual_layer == "proper":
            for name in self.layers:
                module = self.adapter.resolve(name)[1]
                if not isinstance(module, nn.Conv2d):
                    raise TypeError(
                        f"virtual_layer='proper' needs nn.Conv2d layers, but {name!r} is a "
                        f"{type(module).__name__}; pick a convolution or use 'conv1x1'"
                    )

    def _weights(self, weights: str | Sequence[float] | None) -> Tensor | None:
        if weights is None:
            return None
        if self.fusion not in ("geometric_mean", "mean"):
            raise ValueError(
                f"layer_weights apply to fusion='geometric_mean' or 'mean', not {self.fusion!r}"
            )
        n = len(self.layers)
        if isinstance(weights, str):
            _check_choice(weights, "layer_weights", ("linear",))
            return torch.linspace(0, 1, n + 1, dtype=torch.float64)[1:]
        w = torch.as_tensor(list(weights), dtype=torch.float64)
        if w.shape != (n,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(
                f"layer_weights must be {n} non-negative numbers (one per layer) with a "
                f"positive sum, got {list(weights)}"
            )
        return w

    @classmethod
    def from_preset(
        cls, preset: str, model: nn.Module, layer: LayerLike | Sequence[LayerLike], **kwargs: Any
    ) -> SpatialContribution:
        """Build one of :data:`PRESETS` (``"grad_cam"``, ``"norm_grad"``, ...) at ``layer``."""
        _check_choice(preset, "preset", tuple(PRESETS))
        return cls(model, layer, **{**PRESETS[preset], **kwargs})

    @property
    def needs_layer_input(self) -> bool:
        """``virtual_layer="proper"`` unfolds the convolution's input."""
        return self.virtual_layer == "proper"

    def _layer_map(self, view: LayerView) -> Tensor:
        proper = self.virtual_layer == "proper"
        return spatial_contribution(
            view.activations,
            view.require_gradients(),
            virtual_layer=self.virtual_layer,
            aggregation=self.aggregation,
            gradient_reduction=self.gradient_reduction,
            relu=self.relu,
            with_bias=self.with_bias,
            layer_inputs=view.layer_input,
            conv=self.adapter.resolve(view.name)[1] if proper else None,  # type: ignore[arg-type]
        )


@register
class NormGrad(SpatialContribution):
    r"""NormGrad: the norm of each location's contribution to a weight gradient.

    With a virtual 1x1 identity convolution after the layer (default), the map is
    :math:`\lVert g_u x_u^\top\rVert_F = \lVert g_u\rVert_2\,\lVert x_u\rVert_2`, the product
    of the activation norm and the gradient norm at each location; ``with_bias=True`` gives
    :math:`\lVert g_u\rVert_2 \sqrt{\lVert x_u\rVert_2^2 + 1}`; ``virtual_layer="conv3x3"``
    uses the 3x3 patch around :math:`u`, and ``virtual_layer="proper"`` the real weight
    gradient of an ``nn.Conv2d`` layer (its unfolded input). Several layers are captured in
    one pass and multiplied (the paper's combination; see :class:`SpatialContribution` for
    ``fusion`` and ``layer_weights``).

    Caveat (paper and tests): at the last convolutional layer of a network ending in global
    average pooling + a linear layer the gradient is spatially constant, so NormGrad gives the
    same map for every class; use :class:`SelectiveNormGrad`, an earlier layer, or
    :class:`~xai.attributions.meta_saliency.MetaSaliency`.

    Args:
        model: the model to explain.
        layer: one or several layers (VGG16: ``features.3/8/15/22/29``; ResNet50:
            ``layer1``-``layer4``; MobileNetV2: e.g. ``features.14``, ``features.18``).
        virtual_layer: ``"conv1x1"`` (default), ``"conv3x3"``, ``"conv3x3_depthwise"`` or
            ``"proper"``; any phase-1 choice of :class:`SpatialContribution` is accepted.
        with_bias: see above (default ``False``).
        **kwargs: the other options of :class:`SpatialContribution`.

    Returns:
        ``(B, H, W)`` non-negative maps (raw for one layer, in ``[0, 1]`` for several).

    References:
        Rebuffi, Fong, Ji, Vedaldi, "There and Back Again: Revisiting Backpropagation
        Saliency Methods", CVPR 2020.

    Example:
        >>> maps = NormGrad(model, ["layer3", "layer4"])(images, target=None)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike | Sequence[LayerLike],
        *,
        virtual_layer: str = "conv1x1",
        aggregation: str = "norm",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model, layer, virtual_layer=virtual_layer, aggregation=aggregation, **kwargs
        )


@register
class SelectiveNormGrad(SpatialContribution):
    r"""Selective NormGrad: :math:`\lVert \max(0, x_u \odot g_u)\rVert_2` per location.

    A virtual per-channel scaling layer and the norm of the positive part of its gradient
    contributions: only channels that increase the target score count, which makes it far more
    class-sensitive than NormGrad. Best-localizing variant in the authors' code (VOC07 pointing,
    ResNet50 ``layer4``: 87.4 vs 78.8 for NormGrad).

    Args:
        model: the model to explain.
        layer: one or several layers.
        **kwargs: the options of :class:`SpatialContribution` (``fusion``, ...).

    References:
        Rebuffi et al., CVPR 2020 (``norm_grad_selective`` in the authors' TorchRay branch).
    """

    def __init__(
        self, model: nn.Module, layer: LayerLike | Sequence[LayerLike], **kwargs: Any
    ) -> None:
        kwargs.setdefault("virtual_layer", "scaling")
        kwargs.setdefault("aggregation", "selective")
        super().__init__(model, layer, **kwargs)
