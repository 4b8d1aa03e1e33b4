"""Layer-wise relevance propagation (LRP) on the adapter's rule hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xai._checks import check_inputs, map_dtype
from xai._typing import LayerLike, TargetLike
from xai.adapter import Target, as_target, hooks, preserved
from xai.adapter.rules import Call, functional_links, rewired, split_residuals
from xai.attributions.base import Attribution, reduce_channels, register
from xai.attributions.lrp.canonizers import (
    Canonizer,
    _Several,
    auto_canonizers,
    residual_block_types,
)
from xai.attributions.lrp.composites import Composite, get_composite
from xai.attributions.lrp.rules import Rule

__all__ = ["LRP"]


def _refuse(message: str):
    def hook(_module: nn.Module, _args: tuple, _output: object) -> None:
        raise ValueError(message)

    return hook


@register
class LRP(Attribution):
    r"""Layer-wise relevance propagation: the target score redistributed layer by layer.

    One forward pass, one backward pass: each layer's backward is replaced by its rule (see
    :mod:`xai.attributions.lrp.rules`), chosen by the ``composite``; ``canonizers`` merge batch
    norms and split residual sums first. The input relevance ``R`` ``(B, C, H, W)`` sums to the
    target score up to what biases absorb and stabilizers lose (exactly, for the epsilon rule
    with ``epsilon -> 0`` on bias-free networks: *conservation*).

    ``method(inputs, target)`` returns the heatmap ``(B, H, W)``: ``R`` reduced over channels
    (``reduction="sum"`` by default, which keeps conservation). :meth:`relevance` returns ``R``.

    Args:
        model: the model; never modified (not even temporarily: batch norms are merged
            virtually and residual sums are split with hooks).
        composite: a :class:`~xai.attributions.lrp.composites.Composite` or a preset name
            (default ``"epsilon_plus_flat"``: epsilon for dense layers, z+ for convolutions,
            flat for the first layer; zennit's recommended composite for image classifiers).
        canonizers: ``"auto"`` (batch-norm merging plus torchvision ResNet / MobileNetV2 residual
            blocks), a list of canonizers, or ``None``/``[]``.
        init: initial relevance at the output: ``"logit"`` (default; the target score, i.e.
            ``output * d score / d output``, so that relevance sums to the logit) or ``"one"``
            (``d score / d output``; zennit's convention, relevance sums to about 1).
        reduction: channel reduction of the heatmap: ``"sum"`` (default), ``"mean"``,
            ``"max_abs"`` or ``"norm"``.
        batch_size: samples per forward/backward pass (``None``: the whole batch).

    Raises:
        ValueError: in the forward pass, before any relevance is computed, when a module
            without a rule (layer norm, attention, a custom layer) or an uncanonized residual
            block (torchvision ``BasicBlock``/``Bottleneck``/``InvertedResidual`` with
            ``canonizers=[]``) is called; the message names the module and the supported set.

    Functional operations inside ``forward`` (``torch.flatten``, ``F.adaptive_avg_pool2d``,
    ``F.relu``) cannot be hooked and see the plain gradient: exact for reshapes and
    element-wise activations, but a uniform (not proportional) split for functional average
    pooling (the ``"auto"`` canonizers route torchvision MobileNetV2's functional head pooling
    through the sum rule). Functional *sums* of tensors are wrong without a canonizer;
    describe such blocks with :class:`~xai.attributions.lrp.canonizers.ResidualCanonizer`.

    References:
        Bach et al., "On pixel-wise explanations for non-linear classifier decisions by
        layer-wise relevance propagation", PLoS ONE 2015. Montavon et al., "Layer-wise
        relevance propagation: an overview", 2019. Hook design and rule definitions after
        zennit (Anders et al., 2021).

    Example:
        >>> lrp = LRP(model, composite="epsilon_gamma_box")
        >>> heatmap = lrp(x, target=281)          # (B, H, W)
        >>> relevance = lrp.relevance(x, 281)     # (B, C, H, W)
    """

    def __init__(
        self,
        model: nn.Module,
        composite: str | Composite = "epsilon_plus_flat",
        *,
        canonizers: str | Sequence[Canonizer] | None = "auto",
        init: str = "logit",
        reduction: str = "sum",
        **kwargs,
    ) -> None:
        super().__init__(model, **kwargs)
        self.composite = get_composite(composite)
        if canonizers == "auto":
            self.canonizers: list[Canonizer] = auto_canonizers()
        elif canonizers is None:
            self.canonizers = []
        elif isinstance(canonizers, str):
            raise ValueError(f"canonizers must be 'auto', a list or None, got {canonizers!r}")
        else:
            self.canonizers = list(canonizers)
            for c in self.canonizers:
                if not isinstance(c, Canonizer):
                    raise TypeError(f"canonizers must be Canonizer objects, got {type(c).__name__}")
        if init not in ("logit", "one"):
            raise ValueError(f"init must be 'logit' or 'one', got {init!r}")
        reduce_channels(torch.zeros(1, 1, 1, 1), reduction)  # validate early
        self.init = init
        self.reduction = reduction

    @classmethod
    def create(cls, model: nn.Module, *, layer: LayerLike | None = None, **kwargs) -> LRP:
        """Registry constructor; ``layer`` is ignored (LRP explains the input)."""
        return cls(model, **kwargs)

    # public -------------------------------------------------------------------------------
    def relevance(self, inputs: Tensor, target: TargetLike | Target = None) -> Tensor:
        """Input relevance ``(B, C, H, W)`` (same dtype/device rules as ``__call__``)."""
        x = check_inputs(inputs)
        tgt = as_target(target)
        tgt.check_batch(x.shape[0])
        with preserved(self.adapter.module):
            rel = self._relevance(x.detach(), tgt)
        return rel.to(dtype=map_dtype(x), device=x.device)

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        return reduce_channels(self._relevance(inputs, target), self.reduction)

    # machinery ----------------------------------------------------------------------------
    def _plan(self):
        """Rules per module, residual and link specs, refusal hooks for unsupported modules."""
        model = self.adapter.module
        assigned, unsupported = self.composite.assign(model)
        rules: dict[nn.Module, Rule] = {module: rule for module, rule in assigned.values()}
        residuals = [r for c in self.canonizers for r in c.residuals(model)]
        links = [link for c in self.canonizers for link in c.links(model)]
        covered = {r.block for r in residuals}
        supported = ", ".join(self.composite.supported_types())
        refuse: dict[nn.Module, object] = {}
        for name, module in unsupported.items():
            refuse[module] = _refuse(
                f"LRP has no rule for module {name!r} ({type(module).__name__}). Supported "
                f"layer types: {supported}. Add its type to the composite's layer_map (or its "
                "name to name_map) with a rule, or explain another model (vision "
                "transformers: composite='attn_lrp' or 'cp_lrp')"
            )
        for name, module in model.named_modules():
            for block_type, has_sum in residual_block_types():
                if type(module) is block_type and has_sum(module) and module not in covered:
                    refuse[module] = _refuse(
                        f"module {name!r} ({block_type.__name__}) adds tensors inside its "
                        "forward, which LRP cannot see; pass canonizers='auto' (or a "
                        "ResidualCanonizer describing the block)"
                    )
        return rules, residuals, links, refuse

    def _relevance(self, inputs: Tensor, target: Target) -> Tensor:
        engine = getattr(self.composite, "relevance", None)
        if engine is not None:  # composites with their own propagation (transformers)
            return engine(self, inputs, target)
        rules, residuals, links, refuse = self._plan()
        canonizer = _Several(self.canonizers)

        def backward(call: Call, relevance: Tensor) -> Tensor:
            rule = call.context.get("rule") or rules[call.module]
            return rule(call, relevance)

        out = []
        for chunk in self._chunks(inputs.shape[0]):
            rows = torch.arange(chunk.start, chunk.stop)
            tgt = target if target.needs_freeze else target.select(rows)
            x = inputs[chunk].detach().clone().requires_grad_(True)
            with contextlib.ExitStack() as stack:
                # refusals first: they fire after the module ran, before any rule matters
                stack.enter_context(hooks(forward=refuse))  # type: ignore[arg-type]
                stack.enter_context(rewired({m: backward for m in rules}, canonizer.on_call))
                stack.enter_context(split_residuals(residuals, self.composite.sum_rule.split))
                stack.enter_context(functional_links(links, self.composite.sum_rule.through))
                output = self.adapter.forward(x)
                scores = tgt(output)
                (grad,) = torch.autograd.grad(scores.sum(), output, retain_graph=True)
                top = grad * output.detach() if self.init == "logit" else grad
                if not output.requires_grad:
                    raise RuntimeError("the model output does not depend on the input")
                (rel,) = torch.autograd.grad(output, x, grad_outputs=top)
            out.append(rel.detach())
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"LRP({type(self.model).__name__}, composite={self.composite!r})"

