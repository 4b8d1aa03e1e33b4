"""Composites: which LRP rule each layer of a model gets, by layer type, name and position.

A :class:`Composite` maps every leaf module of a model to a rule; a model with a leaf that no
mapping covers (a layer norm, attention, a transposed convolution, a custom layer) is rejected
*before* anything runs, with a message naming the layer and the supported types.

Presets (zennit 0.5.1's composites of the same names, same defaults):

=========================  ==================  ===============  ==========================
composite                  convolutions        dense layers     first layer
=========================  ==================  ===============  ==========================
``epsilon_plus_flat``      z+                  epsilon          flat (conv or dense)
``epsilon_gamma_box``      gamma (0.25)        epsilon          z^B (first convolution)
``epsilon_plus``           z+                  epsilon          -
``epsilon_alpha2_beta1``   alpha2-beta1        epsilon          -
``epsilon_alpha2_beta1_flat``  alpha2-beta1    epsilon          flat
``epsilon``                epsilon             epsilon          -
``li2019``                 LRP-0 (+1e-9)       bias-free z+     -
=========================  ==================  ===============  ==========================

Every preset also maps element-wise activations to :class:`~.rules.Pass`, average (and
adaptive average) pooling to :class:`~.rules.Norm`, max pooling to the winner-take-all
:class:`~.rules.Gradient` (``max_pool=Norm()`` for the proportional split), dropout, identity
and flatten to :class:`~.rules.Gradient` (identity / reshape) and batch norms to
:class:`~.rules.Pass` once merged into the preceding layer (an unmerged batch norm is an
affine layer and gets the epsilon rule).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xai.attributions.lrp.rules import (
    BATCH_NORMS,
    CONVOLUTIONS,
    DENSE,
    LINEAR_TYPES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Norm,
    Pass,
    Rule,
    ZBox,
    ZPlus,
)

__all__ = [
    "Composite",
    "EpsilonAlpha2Beta1",
    "EpsilonAlpha2Beta1Flat",
    "EpsilonGammaBox",
    "EpsilonPlus",
    "EpsilonPlusFlat",
    "Li2019",
    "UniformEpsilon",
    "composite_names",
    "get_composite",
]

Types = type | tuple[type, ...]
LayerMap = Sequence[tuple[Types, Rule]]

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)
AVG_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
MAX_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
RESHAPES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def with_zero_params(rule: Rule, zero_params: Sequence[str], empty: str = "absorb") -> Rule:
    """A copy of ``rule`` that also zeroes ``zero_params`` (and treats outputs with a zero
    normalizer as ``empty`` says); rules without parameters, such as :class:`~.rules.Pass` or
    :class:`~.rules.Norm`, are returned unchanged.
    """
    if not hasattr(rule, "zero_params"):
        return rule
    bad = set(zero_params) - {"weight", "bias"}
    if bad:
        raise ValueError(f"zero_params may name 'weight' and 'bias', got {sorted(bad)}")
    clone = copy.copy(rule)
    clone.zero_params = tuple(dict.fromkeys((*rule.zero_params, *zero_params)))
    if empty != "absorb":
        clone.empty = empty  # type: ignore[attr-defined]
    return clone


def _types(types: Types) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


class Composite:
    """Assign one LRP rule to every leaf module of a model.

    Priority: ``name_map`` (exact dotted names), then the first layer (``first_map``), then
    ``layer_map`` (first matching entry), then the base map shared by all composites
    (activations, pooling, dropout, batch norm).

    Args:
        layer_map: ``[(types, rule), ...]``, e.g. ``[(nn.Conv2d, ZPlus()), (nn.Linear,
            Epsilon())]``.
        first_map: rules for the input layer, same form. The input layer is ``first_layer`` if
            given, else the first module in registration order (``model.named_modules()``)
            that matches ``first_map``'s types (zennit's convention).
        name_map: ``{"features.0": Flat(), ...}``, overriding everything else.
        first_layer: dotted name of the input layer (for models that register their head
            before their backbone).
        stabilizer: stabilizer of the base map's :class:`~.rules.Norm` and unmerged batch
            norms (default ``1e-6``, zennit's).
        max_pool: rule for max pooling (default :class:`~.rules.Gradient`: winner-take-all, as
            zennit and Li et al.'s notebook).
        zero_params: ``("bias",)`` makes every rule of the composite ignore biases (zennit's
            ``zero_params``; merged batch-norm shifts and unmerged batch norms included): each
            layer then passes on all the relevance it receives, up to the stabilizer, so the
            input keeps the score instead of the biases absorbing it. Default ``None``: the
            rules as given (biases absorb their share, as in zennit's composites).
        empty: ``"flat"`` spreads the relevance of outputs that have no contribution to
            redistribute (a zero normalizer: with ``zero_params=("bias",)``, the z+ or
            alpha-beta outputs driven by their bias alone) uniformly over their receptive
            field instead of absorbing it (default ``"absorb"``, zennit's behaviour).
            ``zero_params=("bias",), empty="flat"`` keeps the score on the input.
    """

    def __init__(
        self,
        layer_map: LayerMap,
        *,
        first_map: LayerMap = (),
        name_map: Mapping[str, Rule] | None = None,
        first_layer: str | None = None,
        stabilizer: float = 1e-6,
        max_pool: Rule | None = None,
        zero_params: Iterable[str] | None = None,
        empty: str = "absorb",
    ) -> None:
        for _, rule in [*layer_map, *first_map, *(name_map or {}).items()]:
            if not isinstance(rule, Rule):
                raise TypeError(f"a composite maps to Rule objects, got {type(rule).__name__}")
        self.layer_map = list(layer_map)
        self.first_map = list(first_map)
        self.name_map = dict(name_map or {})
        self.first_layer = first_layer
        self.stabilizer = float(stabilizer)
        self.sum_rule = Norm(self.stabilizer)
        self.base_map: list[tuple[Types, Rule]] = [
            (ACTIVATIONS, Pass()),
            (AVG_POOLS, self.sum_rule),
            (MAX_POOLS, max_pool if max_pool is not None else Gradient()),
            (RESHAPES, Gradient()),
            (BATCH_NORMS, Epsilon(self.stabilizer)),
        ]
        if empty not in ("absorb", "flat"):
            raise ValueError(f"empty must be 'absorb' or 'flat', got {empty!r}")
        self.zero_params = tuple(zero_params or ())
        self.empty = empty
        if self.zero_params or empty != "absorb":

            def adapt(rule: Rule) -> Rule:
                return with_zero_params(rule, self.zero_params, empty)

            self.layer_map = [(t, adapt(r)) for t, r in self.layer_map]
            self.first_map = [(t, adapt(r)) for t, r in self.first_map]
            self.name_map = {n: adapt(r) for n, r in self.name_map.items()}
            self.base_map = [(t, adapt(r)) for t, r in self.base_map]

    def supported_types(self) -> list[str]:
        """Names of the module types this composite has a rule for."""
        names: list[str] = []
        for types, _ in [*self.layer_map, *self.first_map, *self.base_map]:
            names.extend(t.__name__ for t in _types(types) if t.__name__ not in names)
        return names

    def _match(self, module: nn.Module, layer_map: LayerMap) -> Rule | None:
        for types, rule in layer_map:
            if isinstance(module, _types(types)):
                return rule
        return None

    def _first(self, model: nn.Module) -> str | None:
        if self.first_layer is not None:
            names = dict(model.named_modules())
            if self.first_layer not in names:
                raise ValueError(f"first_layer {self.first_layer!r} is not a module of the model")
            return self.first_layer
        if not self.first_map:
            return None
        for name, module in model.named_modules():
            if self._match(module, self.first_map) is not None:
                return name
        return None

    def assign(
        self, model: nn.Module
    ) -> tuple[dict[str, tuple[nn.Module, Rule]], dict[str, nn.Module]]:
        """Rules for the leaf modules of ``model``, and the modules no rule covers.

        Returns:
            ``({name: (module, rule)}, {name: module})``: the assigned leaves, and the modules
            LRP cannot explain: leaves without a rule, batch norms without running statistics,
            attention/transformer blocks, and non-leaf modules that own parameters (their
            forward computes something no rule sees). :class:`~.lrp.LRP` refuses the latter
            as soon as one of them is called.

        Raises:
            ValueError: a name in ``name_map`` does not exist, or a rule that needs weights
                is assigned to a module that has none.
        """
        modules = dict(model.named_modules())
        missing = set(self.name_map) - set(modules)
        if missing:
            raise ValueError(f"name_map names modules that do not exist: {sorted(missing)}")
        first = self._first(model)
        out: dict[str, tuple[nn.Module, Rule]] = {}
        unsupported: dict[str, nn.Module] = {}
        for name, module in modules.items():
            is_leaf = next(module.children(), None) is None
            if not is_leaf:
                if isinstance(
                    module,
                    (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer),
                ) or any(True for _ in module.parameters(recurse=False)):
                    unsupported[name or "<model>"] = module
                continue
            rule = self.name_map.get(name)
            if rule is None and name == first:
                rule = self._match(module, self.first_map) or self._match(module, self.layer_map)
            if rule is None:
                rule = self._match(module, self.layer_map) or self._match(module, self.base_map)
            if rule is None or (
                isinstance(module, BATCH_NORMS) and getattr(module, "running_mean", None) is None
            ):
                unsupported[name or "<model>"] = module
                continue
            if rule.needs_parameters and not isinstance(module, LINEAR_TYPES):
                raise ValueError(
                    f"rule {type(rule).__name__} needs a linear layer (conv or dense) but is "
                    f"assigned to {name!r} ({type(module).__name__})"
                )
            out[name] = (module, rule)
        return out, unsupported

    def __repr__(self) -> str:
        extra = [f"zero_params={self.zero_params!r}"] if self.zero_params else []
        extra += [f"empty={self.empty!r}"] if self.empty != "absorb" else []
        return f"{type(self).__name__}({', '.join(extra)})"


class EpsilonPlusFlat(Composite):
    """Epsilon for dense layers, z+ for convolutions, flat for the first layer (zennit)."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(
            [(CONVOLUTIONS, ZPlus(stabilizer)), (DENSE, Epsilon(epsilon))],
            first_map=[(LINEAR_TYPES, Flat(stabilizer))],
            stabilizer=stabilizer,
            **kwargs,
        )


class EpsilonGammaBox(Composite):
    """Epsilon for dense layers, gamma for convolutions, z^B for the first convolution (zennit).

    Args:
        low: lowest input value (float or per-channel tensor); default: ImageNet-normalized
            black, ``(0 - mean) / std``.
        high: highest input value; default ImageNet-normalized white, ``(1 - mean) / std``.
        epsilon: epsilon of the dense layers (default ``1e-6``).
        gamma: gamma of the convolutions (default ``0.25``).
        stabilizer: stabilizer of the other rules (default ``1e-6``).
    """

    def __init__(
        self,
        low: float | Tensor | None = None,
        high: float | Tensor | None = None,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        **kwargs: Any,
    ) -> None:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        low = (0 - mean) / std if low is None else low
        high = (1 - mean) / std if high is None else high
        super().__init__(
            [(CONVOLUTIONS, Gamma(gamma, stabilizer)), (DENSE, Epsilon(epsilon))],
            first_map=[(CONVOLUTIONS, ZBox(low, high, stabilizer))],
            stabilizer=stabilizer,
            **kwargs,
        )


class EpsilonPlus(Composite):
    """Epsilon for dense layers, z+ for convolutions (zennit)."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(
            [(CONVOLUTIONS, ZPlus(stabilizer)), (DENSE, Epsilon(epsilon))],
            stabilizer=stabilizer,
            **kwargs,
        )


class EpsilonAlpha2Beta1(Composite):
    """Epsilon for dense layers, alpha2-beta1 for convolutions (zennit)."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(
            [(CONVOLUTIONS, AlphaBeta(2, 1, stabilizer)), (DENSE, Epsilon(epsilon))],
            stabilizer=stabilizer,
            **kwargs,
        )


class EpsilonAlpha2Beta1Flat(Composite):
    """Epsilon for dense layers, alpha2-beta1 for convolutions, flat for the first (zennit)."""

    def __init__(self, epsilon: float = 1e-6, stabilizer: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(
            [(CONVOLUTIONS, AlphaBeta(2, 1, stabilizer)), (DENSE, Epsilon(epsilon))],
            first_map=[(LINEAR_TYPES, Flat(stabilizer))],
            stabilizer=stabilizer,
            **kwargs,
        )


class UniformEpsilon(Composite):
    """The epsilon rule on every conv and dense layer (``epsilon=0``: LRP-0 = gradient x input).

    Args:
        epsilon: epsilon of every layer; also the stabilizer of sums and pooling.
    """

    def __init__(self, epsilon: float = 1e-6, **kwargs: Any) -> None:
        kwargs.setdefault("stabilizer", epsilon)
        super().__init__([(LINEAR_TYPES, Epsilon(epsilon))], **kwargs)


class Li2019(Composite):
    """The rules of Li et al.'s reference notebook for the SR map (VGG16 / AlexNet).

    Bias-free z+ with a ``1e-9`` stabilizer on dense layers, LRP-0 with a constant ``+1e-9``
    (not sign-matched) on every convolution including the first, winner-take-all max pooling,
    pass-through ReLU. Input relevance can be negative.

    References:
        Li, Tian, Mueller, Chen, "Beyond saliency: understanding convolutional neural networks
        from saliency prediction on layer-wise relevance propagation", Image and Vision
        Computing 2019; github.com/Hey1Li/Salient-Relevance-Propagation.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("stabilizer", 1e-9)
        super().__init__(
            [
                (CONVOLUTIONS, Epsilon(1e-9, sign_matched=False)),
                (DENSE, ZPlus(1e-9, zero_params=("bias",))),
            ],
            **kwargs,
        )


_PRESETS: dict[str, Callable[..., Composite]] = {
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_gamma_box": EpsilonGammaBox,
    "epsilon_plus": EpsilonPlus,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
    "epsilon": UniformEpsilon,
    "li2019": Li2019,
}


def composite_names() -> list[str]:
    """Names accepted by ``LRP(model, composite=...)``."""
    return sorted(_PRESETS)


def get_composite(composite: str | Composite) -> Composite:
    """A composite from its preset name (default parameters) or the composite itself.

    Raises:
        ValueError: unknown name (the message lists the presets).
        TypeError: neither a name nor a :class:`Composite`.
    """
    if isinstance(composite, Composite):
        return composite
    if isinstance(composite, str):
        if composite not in _PRESETS:
            raise ValueError(
                f"unknown composite {composite!r}; choose one of {', '.join(composite_names())} "
                "or pass a Composite object"
            )
        return _PRESETS[composite]()
    raise TypeError(f"composite must be a name or a Composite, got {type(composite).__name__}")
