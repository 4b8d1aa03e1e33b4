"""Layer-wise relevance propagation (LRP) on the adapter's rule hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xai._checks import check_inputs, map_dtype
from xai._typing import LayerLike, TargetLike
from xai.adapter import Target, as_target, chunks, hooks, preserved
from xai.adapter.rules import Call, functional_links, rewired, split_residuals
from xai.attributions.base import Attribution, reduce_channels, register
from xai.attributions.lrp.account import AccountBook, RelevanceAccount
from xai.attributions.lrp.canonizers import (
    Canonizer,
    auto_canonizers,
    observer,
    residual_block_types,
)
from xai.attributions.lrp.composites import Composite, get_composite
from xai.attributions.lrp.rules import Rule, _per_sample

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
    (``reduction="sum"`` by default, which keeps conservation). :meth:`relevance` returns ``R``,
    :meth:`account` the per-layer balance (where the score went).

    **Where the relevance goes on real networks.** Every bias, including the shift
    ``beta - mu * gamma / sigma`` of a merged batch norm, takes the share
    ``b_k R_k / stab(z_k)`` of its output's relevance. On trained networks with batch norms
    these shares add up to almost the whole score, so the input relevance is a small
    fraction of the logit: that is absorption, not a leak (:meth:`account` shows each layer's
    ``in = out + bias + stabilizer + rule``, with ``leak`` zero to rounding). Measured on the
    real ImageNet MobileNetV2 (``xai.data.load_mobilenet_v2``), chelsea and coffee at 224 px,
    target = predicted class, ``init="logit"``, as fractions of the logit (chelsea / coffee):

    ==============================  ===============  ===============  =========  ===============
    composite                       input            biases           stabil.    rule-specific
    ==============================  ===============  ===============  =========  ===============
    ``epsilon``                     -0.021 / 0.193   1.021 / 0.807    0.0000     0
    ``epsilon_plus_flat``           0.0001 / 0.0001  0.9999 / 0.9999  0.0000     0
    ``epsilon_plus``                0.0000 / 0.0001  1.0000 / 0.9999  0.0000     0
    ``epsilon_gamma_box``           0.0013 / 0.0029  0.9987 / 0.9971  0.0000     0
    ``epsilon_alpha2_beta1``        0.0000 / 0.0001  1.588 / 1.582    -0.0001    -0.588 / -0.582
    same, ``zero_params=("bias",)``  0.0011 / 0.0022  0                -0.0001    0.999 / 0.998
    ``epsilon_plus_flat``,          0.0045 / 0.0054  0                0.0001     0.995 / 0.995
    ``zero_params=("bias",)``
    ``epsilon_plus_flat``,          0.9990 / 0.9988  0                0.0010 /   0
    ``zero_params=("bias",),``                                        0.0012
    ``empty="flat"``
    ==============================  ===============  ===============  =========  ===============

    Alpha-beta's negative rule-specific term is the beta share it cannot take from outputs
    without negative contributions (the alpha share then exceeds the relevance). Ignoring
    biases alone moves the loss, it does not remove it: outputs driven by their bias alone
    (all contributions zero, e.g. a depthwise window of dead activations) have nothing to
    redistribute to; ``empty="flat"`` spreads their relevance over the receptive field, and
    then the input keeps the logit up to the stabilizer (pass ``stabilizer=1e-9`` to the
    composite to make that negligible). The epsilon rule with biases ignored divides by sums
    of contributions near zero and overflows on this network (a clear ``RuntimeError``).

    The same weights with every bias, batch-norm shift and running mean set to zero (no bias
    anywhere, issue 23) give ``epsilon_plus`` 0.992 / 0.975, not 1: the account puts the
    missing 0.007 / 0.022 on z+ outputs without positive contributions (rule-specific, mostly
    the linear-bottleneck projection ``features.17.conv.2``, whose outputs have no activation
    after them and receive relevance even where all contributions are negative) and 0.001 /
    0.003 on the stabilizer (mostly ``features.1.conv.1``); ``empty="flat"`` and a smaller
    stabilizer remove both.

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
        **kwargs: Any,
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
    def create(cls, model: nn.Module, *, layer: LayerLike | None = None, **kwargs: Any) -> LRP:
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

    def account(self, inputs: Tensor, target: TargetLike | Target = None) -> RelevanceAccount:
        """The relevance account: where the target score went, layer by layer.

        Same computation as :meth:`relevance` (same relevance), plus, for every rewired layer,
        residual sum and functional pooling, the relevance entering and leaving it and what
        its bias, its stabilizer and its rule absorbed (see
        :class:`~xai.attributions.lrp.account.RelevanceAccount`). For every row
        ``relevance_in = relevance_out + absorbed`` (its ``leak`` is zero to rounding), and the
        rows reconcile the score with the input relevance. Use float64 inputs (and model) for
        a 1e-6 reconciliation; float32 gives about 1e-4 of the largest term.

        Returns:
            a :class:`~xai.attributions.lrp.account.RelevanceAccount`; ``.relevance`` is the
            input relevance ``(B, C, H, W)``, ``.table()`` a printable summary.
        """
        x = check_inputs(inputs)
        tgt = as_target(target)
        tgt.check_batch(x.shape[0])
        books: list[AccountBook] = []
        with preserved(self.adapter.module):
            rel, scores = self._relevance(x.detach(), tgt, books=books)
        return RelevanceAccount(
            relevance=rel.to(dtype=map_dtype(x), device=x.device),
            score=scores,
            rows=books[0].concat(books),
        )

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
        block_types = residual_block_types()
        for name, module in model.named_modules():
            for block_type, has_sum in block_types:
                if type(module) is block_type and has_sum(module) and module not in covered:
                    refuse[module] = _refuse(
                        f"module {name!r} ({block_type.__name__}) adds tensors inside its "
                        "forward, which LRP cannot see; pass canonizers='auto' (or a "
                        "ResidualCanonizer describing the block)"
                    )
        return rules, residuals, links, refuse

    def _relevance(self, inputs: Tensor, target: Target, books: list[AccountBook] | None = None):
        """Input relevance; with ``books`` (a list to fill with one book per chunk), also the
        ``(B,)`` relevance put on the output, as ``(relevance, scores)``.
        """
        engine = getattr(self.composite, "relevance", None)
        if engine is not None:  # composites with their own propagation (transformers)
            if books is not None:
                raise ValueError(
                    f"{type(self.composite).__name__} propagates relevance itself; the per-layer "
                    "account covers the rule-based CNN composites (see composite.absorbed for "
                    "the transformer composites' absorbed share)"
                )
            return engine(self, inputs, target)
        rules, residuals, links, refuse = self._plan()
        on_call = observer(self.canonizers)
        model = self.adapter.module
        names = {m: n or "<model>" for n, m in model.named_modules()} if books is not None else {}
        sum_rule = self.composite.sum_rule
        book: AccountBook | None = None

        def rule_of(call: Call) -> Rule:
            return call.context.get("rule") or rules[call.module]

        def overwrite(module: nn.Module, source: Call) -> bool:
            """An in-place module (ReLU(inplace=True)) may overwrite the output of ``source``
            instead of a copy when no rule reads what it overwrites.
            """
            if rules[module].reads_input or rule_of(source).reads_output:
                return False
            merged = source.source  # the layer a batch norm was merged into reads its output
            return (
                merged is None
                or merged.context.get("merged_call") is not source
                or (not rule_of(merged).reads_output)
            )

        def backward(call: Call, relevance: Tensor) -> Tensor:
            rule = rule_of(call)
            if call.input_version < 0 and rule.reads_input:
                raise RuntimeError(
                    f"{type(call.module).__name__} overwrote its input in place, but its rule "
                    f"{rule!r} (set after it ran) reads that input"
                )
            if book is None:
                return rule(call, relevance)
            ledger = call.context["ledger"] = {}
            out = rule(call, relevance)
            book.add(names[call.module], "layer", rule, relevance, out, ledger)
            return out

        def split(name: str):
            def rule(branch: Tensor, shortcut: Tensor, relevance: Tensor):
                if book is None:
                    return sum_rule.split(branch, shortcut, relevance)
                ledger: dict = {}
                out = sum_rule.split(branch, shortcut, relevance, ledger)
                book.add(f"{name} (sum)", "residual", sum_rule, relevance, out, ledger)
                return out

            return rule

        def through(name: str):
            def rule(source: Tensor, function: Callable[[Tensor], Tensor], relevance: Tensor):
                if book is None:
                    return sum_rule.through(source, function, relevance)
                ledger: dict = {}
                out = sum_rule.through(source, function, relevance, ledger)
                book.add(
                    f"{name} (functional pooling)", "functional", sum_rule, relevance, out, ledger
                )
                return out

            return rule

        out, totals = [], []
        for chunk in chunks(inputs.shape[0], self.batch_size):
            rows = torch.arange(chunk.start, chunk.stop)
            tgt = target if target.needs_freeze else target.select(rows)
            x = inputs[chunk].detach().clone().requires_grad_(True)
            if books is not None:
                book = AccountBook()
                books.append(book)
            with contextlib.ExitStack() as stack:
                # refusals first: they fire after the module ran, before any rule matters
                stack.enter_context(hooks(forward=refuse))
                stack.enter_context(rewired({m: backward for m in rules}, on_call, overwrite))
                for residual in residuals:
                    stack.enter_context(split_residuals([residual], split(residual.name)))
                for link in links:
                    stack.enter_context(functional_links([link], through(link.name or "<model>")))
                output = self.adapter.forward(x, rows=rows)
                scores = tgt(output)
                (grad,) = torch.autograd.grad(scores.sum(), output, retain_graph=True)
                top = grad * output.detach() if self.init == "logit" else grad
                if not output.requires_grad:
                    raise RuntimeError("the model output does not depend on the input")
                (rel,) = torch.autograd.grad(output, x, grad_outputs=top)
            if not bool(torch.isfinite(rel).all()):
                raise RuntimeError(
                    "LRP relevance overflowed (not finite). The epsilon rule with biases ignored "
                    "(zero_params=('bias',)) divides by sums of contributions that can be near "
                    "zero; use z+ or alpha-beta rules for convolutions, a larger epsilon, or "
                    "float64 (LRP.account shows the layer where it grows)"
                )
            out.append(rel.detach())
            totals.append(_per_sample(top))
        if books is not None:
            return torch.cat(out), torch.cat(totals)
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"LRP({type(self.model).__name__}, composite={self.composite!r})"
