"""Canonizers: make modern architectures explainable by LRP without changing them.

LRP rules are defined for chains of linear layers and element-wise activations. Two common
constructs break that form and need a *canonical* equivalent (Kohlbrenner et al., "Towards
best practice in explaining neural network decisions with LRP", IJCNN 2020):

* a batch norm directly after a convolution or dense layer, an affine map that must be merged
  into that layer (``W' = W s``, ``b' = (b - mu) s + beta`` with ``s = gamma / sqrt(var + eps)``)
  so that the layer's rule sees the effective weights;
* a residual addition ``y = post(branch(x) + shortcut(x))`` written inside a block's
  ``forward`` (``out += identity``), whose relevance must be split between the two summands in
  proportion to their contributions (the epsilon rule of a sum with unit weights).

zennit does both by changing the model for the duration (overwriting parameters, swapping
``forward`` methods). Here nothing about the model changes, not even temporarily:

* :class:`MergeBatchNorm` merges *virtually*: when a batch norm's input is exactly the output
  tensor of a conv/dense call (detected during the forward pass, so execution order counts,
  not registration order), that layer's rule uses the merged parameters and the batch norm
  passes relevance through. The batch norm's ``eps`` is used as is (zennit has to set it to 0
  after merging; no such caveat here) and the parameters are never written.
* :class:`ResidualCanonizer` describes where a block's summands come from; forward hooks
  (:func:`xai.adapter.rules.split_residuals`) record them and re-route the block's output
  through an autograd node that splits relevance with the composite's sum rule.

Canonizers are small objects with two optional methods: ``residuals(model)`` (the residual
blocks to split) and ``on_call(call)`` (called after every rewired module call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai.adapter.rules import Call, Link, Residual
from xai.attributions.lrp.rules import BATCH_NORMS, LINEAR_TYPES, Pass, parameters

__all__ = [
    "Canonizer",
    "MergeBatchNorm",
    "MobileNetV2Canonizer",
    "ResNetCanonizer",
    "ResidualCanonizer",
    "auto_canonizers",
    "merge_batch_norm",
]


class Canonizer:
    """Base class: a canonizer may declare residual blocks and observe module calls."""

    def residuals(self, model: nn.Module) -> list[Residual]:
        """The residual blocks of ``model`` whose sums this canonizer handles."""
        return []

    def links(self, model: nn.Module) -> list[Link]:
        """Functional operations between two modules that need a rule (e.g. pooling)."""
        return []

    def on_call(self, call: Call) -> None:
        """Called after the forward of every rewired module call (see ``rewired``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def merge_batch_norm(weight: Tensor, bias: Tensor | None, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Parameters of ``bn(linear(x))`` as one linear layer, computed without changing anything.

    Args:
        weight: the linear layer's weight, output channels first ``(C_out, ...)``.
        bias: its bias ``(C_out,)`` or ``None`` (zero).
        bn: a batch norm with running statistics (eval mode).

    Returns:
        ``(W', b')`` with ``W' = W s`` and ``b' = (b - mu) s + beta``, ``s = gamma / sqrt(var +
        eps)`` (``gamma = 1``, ``beta = 0`` for a non-affine batch norm).
    """
    norm = cast(Any, bn)  # a batch norm: running statistics, eps, optional affine parameters
    mean = norm.running_mean.detach().to(weight)
    var = norm.running_var.detach().to(weight)
    scale = (var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.detach().to(weight)
    shift = norm.bias.detach().to(weight) if norm.bias is not None else torch.zeros_like(mean)
    b = bias if bias is not None else torch.zeros_like(mean)
    merged_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    merged_b = (b - mean) * scale + shift
    return merged_w, merged_b


class MergeBatchNorm(Canonizer):
    """Merge each batch norm into the conv/dense call whose output it directly normalizes.

    The merge is virtual (see the module docstring): the rule of the conv/dense layer uses the
    merged parameters and the batch norm gets :class:`~.rules.Pass`. A batch norm whose input
    comes from anything else (an activation, a sum) is left alone and treated as an affine
    layer with the epsilon rule.
    """

    def on_call(self, call: Call) -> None:
        """Merge ``call``'s batch norm into its source call's linear layer, when it can."""
        bn, source = call.module, call.source
        if not isinstance(bn, BATCH_NORMS) or source is None:
            return
        if not isinstance(source.module, LINEAR_TYPES) or "parameters" in source.context:
            return
        if bn.running_mean is None or bn.num_features != source.output.shape[1]:
            return
        source.context["parameters"] = merge_batch_norm(*parameters(source), bn)
        source.context["merged_call"] = call  # its output is the merged layer's output
        call.context["rule"] = Pass()


class ResidualCanonizer(Canonizer):
    """Split the residual sum of every block of a type: ``y = post(branch + shortcut)``.

    Args:
        block_type: the block class (exact type match, so that a subclass with a different
            ``forward`` is not silently misread).
        branch: attribute name of the submodule whose output is the residual branch.
        shortcut: attribute name of the shortcut submodule; ``None`` (or an attribute that is
            ``None`` on a block) means the block's input.
        post: element-wise function applied to the sum (e.g. ``torch.relu``), or ``None``; used
            to check the block, relevance passes through it.
        applies: predicate selecting the blocks that have a residual connection (default: all).

    The block's output is checked against ``post(branch + shortcut)`` during the forward pass;
    a mismatch (the description does not fit the block) raises ``RuntimeError``.
    """

    def __init__(
        self,
        block_type: type[nn.Module],
        branch: str,
        shortcut: str | None = None,
        post: Callable[[Tensor], Tensor] | None = None,
        applies: Callable[[nn.Module], bool] | None = None,
    ) -> None:
        self.block_type = block_type
        self.branch = branch
        self.shortcut = shortcut
        self.post = post
        self.applies = applies

    def handles(self, module: nn.Module) -> bool:
        """Whether ``module`` is a block this canonizer splits."""
        return type(module) is self.block_type and (self.applies is None or self.applies(module))

    def residuals(self, model: nn.Module) -> list[Residual]:
        """One :class:`~xai.adapter.rules.Residual` per block of the type in ``model``."""
        out = []
        for name, module in model.named_modules():
            if not self.handles(module):
                continue
            shortcut = getattr(module, self.shortcut) if self.shortcut else None
            out.append(
                Residual(
                    block=module,
                    branch=getattr(module, self.branch),
                    shortcut=shortcut,
                    post=self.post,
                    name=name,
                )
            )
        return out

    def __repr__(self) -> str:
        return f"ResidualCanonizer({self.block_type.__name__}, branch={self.branch!r})"


class _Several(Canonizer):
    def __init__(self, parts: Sequence[Canonizer]) -> None:
        self.parts = list(parts)

    def residuals(self, model: nn.Module) -> list[Residual]:
        return [r for part in self.parts for r in part.residuals(model)]

    def links(self, model: nn.Module) -> list[Link]:
        return [link for part in self.parts for link in part.links(model)]

    def on_call(self, call: Call) -> None:
        for part in self.parts:
            part.on_call(call)

    def observers(self) -> list[Callable[[Call], None]]:
        """The parts' ``on_call`` methods that do something, nested parts flattened (they run
        after every module call: the no-op ones of residual canonizers are left out).
        """
        found: list[Callable[[Call], None]] = []
        for part in self.parts:
            if isinstance(part, _Several):
                found += part.observers()
            elif getattr(part.on_call, "__func__", None) is not Canonizer.on_call:
                found.append(part.on_call)
        return found


def observer(canonizers: Sequence[Canonizer]) -> Callable[[Call], None] | None:
    """One callable running the ``on_call`` of every canonizer that has one (``None``: none)."""
    found = _Several(canonizers).observers()
    if len(found) <= 1:
        return found[0] if found else None

    def each(call: Call) -> None:
        for on_call in found:
            on_call(call)

    return each


class ResNetCanonizer(_Several):
    """torchvision ResNet: ``BasicBlock`` and ``Bottleneck`` residual sums (plus nothing else;
    combine with :class:`MergeBatchNorm`, as ``canonizers="auto"`` does).
    """

    def __init__(self) -> None:
        from torchvision.models.resnet import BasicBlock, Bottleneck

        super().__init__(
            [
                ResidualCanonizer(BasicBlock, "bn2", "downsample", torch.relu),
                ResidualCanonizer(Bottleneck, "bn3", "downsample", torch.relu),
            ]
        )


def _global_average(features: Tensor) -> Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(features, (1, 1)), 1)


class MobileNetV2Canonizer(_Several):
    """torchvision MobileNetV2: the ``x + self.conv(x)`` sum of ``InvertedResidual`` blocks
    with ``use_res_connect``, and the functional ``adaptive_avg_pool2d`` + ``flatten`` between
    ``features`` and ``classifier``, which gets the composite's sum rule (a proportional
    split, as for an ``nn.AdaptiveAvgPool2d`` module) instead of the plain gradient's uniform
    split (what zennit does without a canonizer for it).
    """

    def __init__(self) -> None:
        from torchvision.models.mobilenetv2 import InvertedResidual

        super().__init__(
            [
                ResidualCanonizer(
                    InvertedResidual,
                    "conv",
                    None,
                    None,
                    applies=lambda block: bool(block.use_res_connect),
                ),
            ]
        )

    def links(self, model: nn.Module) -> list[Link]:
        """The functional global pooling between ``features`` and ``classifier``."""
        from torchvision.models.mobilenetv2 import MobileNetV2

        return [
            Link(source=m.features, sink=m.classifier, function=_global_average, name=name)
            for name, m in model.named_modules()
            if type(m) is MobileNetV2
        ]


def auto_canonizers() -> list[Canonizer]:
    """``canonizers="auto"``: batch-norm merging and the torchvision residual blocks."""
    return [MergeBatchNorm(), ResNetCanonizer(), MobileNetV2Canonizer()]


def residual_block_types() -> list[tuple[type[nn.Module], Callable[[nn.Module], bool]]]:
    """Block types known to add tensors inside ``forward``; LRP refuses them uncanonized."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    found: list[tuple[type[nn.Module], Callable[[nn.Module], bool]]] = [
        (BasicBlock, lambda m: True),
        (Bottleneck, lambda m: True),
        (InvertedResidual, lambda m: bool(m.use_res_connect)),
    ]
    try:
        from torchvision.models.efficientnet import MBConv
        from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3

        found += [
            (InvertedResidualV3, lambda m: bool(m.use_res_connect)),
            (MBConv, lambda m: bool(m.use_res_connect)),
        ]
    except ImportError:  # pragma: no cover - older torchvision
        pass
    return found
