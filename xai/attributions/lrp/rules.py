r"""LRP rules: how relevance flows from a layer's outputs to its inputs.

Every rule is a small object called as ``rule(call, relevance) -> relevance_at_input`` on one
:class:`xai.adapter.rules.Call` (the module, a private copy of its input, its output). Rules are
written as modified gradients (the "gradient trick" of zennit's ``BasicHook``): for each term
``t`` the rule evaluates a modified forward ``z_t = f(x_t; W_t, b_t)``, divides the incoming
relevance by a stabilized normalizer and takes one vector-Jacobian product,

.. math:: R_j = \sum_t x_{t,j} \, \partial_{x_t} \big( z_t \cdot R / \mathrm{stab}(z) \big)_j .

A layer ``z_k = \sum_j a_j w_{jk} + b_k`` and its incoming relevance ``R_k``:

==========================  ===============================================================
rule                        contribution ``q_jk`` (``R_j = \sum_k q_jk / \sum_j q_jk R_k``)
==========================  ===============================================================
:class:`Epsilon`            ``a_j w_jk``, normalizer ``z_k + eps sign(z_k)`` (eps=0: LRP-0)
:class:`Gamma`              ``a_j (w_jk + gamma w_jk^+)``
:class:`AlphaBeta`          ``alpha (a w)^+ / sum (a w)^+ - beta (a w)^- / sum (a w)^-``
:class:`ZPlus`              ``(a w)^+`` (alpha=1, beta=0)
:class:`ZBox`               ``a_j w_jk - l_j w_jk^+ - h_j w_jk^-`` (pixel bounds l <= a <= h)
:class:`Flat`               ``1`` (all inputs and weights set to one)
:class:`WSquare`            ``w_jk^2``
:class:`Norm`               ``a_j`` times the module's own Jacobian (sums, average pooling)
:class:`Pass`               identity (element-wise activations, merged batch norms)
:class:`Gradient`           the plain gradient (max pooling: winner-take-all; reshapes)
==========================  ===============================================================

The signed generalizations (negative inputs) and the treatment of biases follow zennit 0.5.1
(Anders et al., "Software for dataset-wide XAI", 2021), so that composites of the same rules
give the same relevance; ``zero_params=("bias",)`` gives the textbook bias-free variants.

References:
    Bach et al., "On pixel-wise explanations for non-linear classifier decisions by layer-wise
    relevance propagation", PLoS ONE 2015. Montavon et al., "Explaining nonlinear
    classification decisions with deep Taylor decomposition", Pattern Recognition 2017.
    Montavon et al., "Layer-wise relevance propagation: an overview", 2019.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, cast, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input
from torch.nn.modules.conv import _ConvNd

from xai.adapter.rules import Call

__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "Norm",
    "Pass",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "book",
    "stabilize",
]

# The layer types LRP treats specially, defined once for the rules, composites and canonizers.
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
DENSE = (nn.Linear,)
LINEAR_TYPES = CONVOLUTIONS + DENSE
"""Modules with ``weight`` and ``bias`` whose forward is linear in the input."""
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
"""Batch norms: merged into the preceding linear layer, or an affine layer of their own."""


def stabilize(z: Tensor, epsilon: float, *, sign_matched: bool = True) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (zennit's stabilizer), or ``z + epsilon``.

    Args:
        z: the normalizer.
        epsilon: the stabilizer (LRP-epsilon's epsilon).
        sign_matched: ``False`` adds ``epsilon`` regardless of the sign (the constant ``+1e-9``
            of Li et al.'s reference notebook).
    """
    if not sign_matched:
        return z + epsilon
    eps = torch.tensor(epsilon, dtype=z.dtype, device=z.device)
    return torch.where(z >= 0, eps, -eps).add_(z)


def divide(relevance: Tensor, denominator: Tensor) -> Tensor:
    """``relevance / denominator`` with ``0 / 0 := 0`` (a zero normalizer with ``epsilon=0``)."""
    zero = denominator == 0
    if not bool(zero.any()):  # the usual case (epsilon > 0): a plain division
        return relevance / denominator
    safe = torch.where(zero, torch.ones_like(denominator), denominator)
    return torch.where(zero, torch.zeros_like(relevance), relevance / safe)


def linear_forward(module: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The forward of a linear-type module with replaced parameters (the module is untouched)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(x, weight, bias)
    raise TypeError(f"{type(module).__name__} is not a linear-type module")


def parameters(call: Call) -> tuple[Tensor, Tensor | None]:
    """``(weight, bias)`` of a call, detached; merged with a following batch norm if one was."""
    merged = call.context.get("parameters")
    if merged is not None:
        return merged
    module = call.module
    bias = getattr(module, "bias", None)
    return module.weight.detach(), None if bias is None else bias.detach()  # type: ignore


def layer_output(call: Call) -> Tensor | None:
    """The (batch-norm-merged) layer's output ``W x + b`` as the forward pass computed it, or
    ``None`` when it is not available intact (then a rule recomputes it).
    """
    source = call.context.get("merged_call", call)
    if source is call and "parameters" in call.context:
        return None
    return source.output.detach() if source.output_intact() else None


@overload
def _pos(t: Tensor) -> Tensor: ...
@overload
def _pos(t: None) -> None: ...
def _pos(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


@overload
def _neg(t: Tensor) -> Tensor: ...
@overload
def _neg(t: None) -> None: ...
def _neg(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


def _per_sample(t: Tensor) -> Tensor:
    """Sum over everything but the batch axis, in float64: ``(B,)``."""
    return t.reshape(t.shape[0], -1).sum(1, dtype=torch.float64)


def book(ledger: dict | None, key: str, value: Tensor) -> None:
    """Add ``value``'s per-sample sum to ``ledger[key]`` (the relevance account of one call).

    Keys: ``"bias"`` (what the biases absorbed), ``"stabilizer"`` (what the epsilon of the
    normalizer absorbed), ``"rule"`` (rule-specific: relevance of outputs whose normalizer is
    exactly zero, gamma's sign masks, alpha-beta's missing share). Rules that redistribute only
    part of their relevance must book the rest here; what no key explains is reported as a leak
    by :class:`~xai.attributions.lrp.account.RelevanceAccount`.
    """
    if ledger is None:
        return
    total = _per_sample(value)
    ledger[key] = ledger[key] + total if key in ledger else total


def book_normalizer(
    ledger: dict | None, relevance: Tensor, z: Tensor, stabilized: Tensor, coefficient: float = 1.0
) -> None:
    """Book what the stabilizer and zero normalizers absorb when ``relevance`` is divided by
    ``stabilized = stab(z)``: ``R (1 - z / stab(z))`` where ``z != 0`` and ``R`` where
    ``z == 0`` (nothing to redistribute to).
    """
    if ledger is None:
        return
    zero = z == 0
    safe = torch.where(stabilized == 0, torch.ones_like(stabilized), stabilized)
    book(ledger, "stabilizer", coefficient * torch.where(zero, 0.0, relevance * (1 - z / safe)))
    book(ledger, "rule", coefficient * torch.where(zero, relevance, 0.0))


def _bias_like(bias: Tensor, z: Tensor) -> Tensor:
    return bias.reshape(1, -1, *([1] * (z.dim() - 2))) if z.dim() > 2 else bias


def input_vjp(module: nn.Module, shape: torch.Size, weight: Tensor, grad: Tensor) -> Tensor:
    """``d <linear(x; weight), grad> / dx`` for a linear-type module, without a forward pass
    (a transposed convolution or a matrix product).

    Convolutions go through ``conv_transposeNd`` with the output padding that restores
    ``shape``: the same numbers as ``torch.nn.grad.convNd_input`` (the convolution's backward),
    which on CPU takes a slow path for strided depthwise convolutions (MobileNetV2's: about
    3x slower than the transposed convolution).
    """
    if isinstance(module, nn.Linear):
        return grad @ weight
    transposed = _TRANSPOSED.get(type(module))
    conv = cast("_ConvNd", module)
    if transposed is not None and _pointwise(conv):
        # a 1x1 convolution's transpose is the 1x1 convolution with the transposed weight: the
        # same matrix product (the same numbers), without the transposed convolution's col2im
        # pass (on CPU up to 3x slower for MobileNetV2's 1x1 layers with few output channels)
        return _FORWARD[type(module)](grad, weight.transpose(0, 1))
    if transposed is not None and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple):
        # the output padding that gives back the input size (strided convolutions drop rows)
        output_padding = tuple(
            size - ((out - 1) * stride - 2 * pad + dilation * (kernel - 1) + 1)
            for size, out, stride, pad, dilation, kernel in zip(
                shape[2:],
                grad.shape[2:],
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.kernel_size,
                strict=True,
            )
        )
        stride, padding, groups, dilation = conv.stride, conv.padding, conv.groups, conv.dilation
        return transposed(grad, weight, None, stride, padding, output_padding, groups, dilation)
    with torch.enable_grad():  # other padding modes, subclasses: through autograd
        x = torch.zeros(shape, dtype=grad.dtype, device=grad.device, requires_grad=True)
        (out,) = torch.autograd.grad(linear_forward(module, x, weight, None), x, grad)
    return out


def _pointwise(conv: _ConvNd) -> bool:
    """Whether ``conv`` maps each pixel on its own: 1x1 kernel, stride 1, no padding, groups 1."""
    return (
        conv.groups == 1
        and all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and (conv.padding == "valid" or all(p == 0 for p in conv.padding))
    )


_TRANSPOSED: dict[type, Callable[..., Tensor]] = {
    nn.Conv1d: F.conv_transpose1d,
    nn.Conv2d: F.conv_transpose2d,
    nn.Conv3d: F.conv_transpose3d,
}
_FORWARD: dict[type, Callable[..., Tensor]] = {
    nn.Conv1d: F.conv1d,
    nn.Conv2d: F.conv2d,
    nn.Conv3d: F.conv3d,
}


class Rule(ABC):
    """Base class of LRP rules: ``rule(call, relevance) -> relevance at the call's input``.

    A rule for linear-type modules (conv, linear) sets ``needs_parameters = True``; rules that
    use only the module's own forward (pooling, sums) or none at all leave it ``False``.

    For the relevance account (:meth:`LRP.account <xai.attributions.lrp.lrp.LRP.account>`) a
    rule books what it does not pass on with :func:`book` into ``call.context["ledger"]``
    (present only while an account is being made); a rule that does not is reported as
    leaking wherever its output relevance differs from its input relevance.
    """

    needs_parameters: bool = False
    reads_input: bool = True
    """Whether the rule reads the values of ``call.input``; :class:`Pass` does not, so that an
    in-place module (``ReLU(inplace=True)``) with that rule may work on its input itself
    instead of a copy."""
    reads_output: bool = True
    """Whether the rule reads ``call.output`` (the epsilon and gamma rules take the layer's
    output from the forward pass); ``False`` lets an in-place module after the layer
    overwrite that output instead of a copy."""

    @abstractmethod
    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The relevance at the call's input, from the ``relevance`` at its output."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Term(NamedTuple):
    """One modified forward ``sign * linear(input; weight, bias)`` of a rule."""

    input: Tensor
    weight: Tensor
    bias: Tensor | None
    sign: float = 1.0


class Group(NamedTuple):
    """Terms sharing one normalizer ``z = sum_t sign_t z_t``; the group's relevance
    ``coefficient * mask * R`` is redistributed in proportion to the terms.

    ``output``: ``z`` when already known (skips the forward pass of the terms).
    """

    terms: Sequence[Term]
    coefficient: float = 1.0
    mask: Tensor | None = None
    output: Tensor | None = None
    nonnegative: bool = False  # z >= 0 by construction (z+: a+ w+ + a- w- + b+)


def _signed_parts(call: Call) -> tuple[Tensor, Tensor]:
    """``(a^+, a^-)`` of the call's input ``a``; ``a^-`` is the marker :data:`_ZERO` when
    ``a >= 0`` (after a ReLU), so that rules skip its terms: they change nothing but would cost
    two convolutions each.
    """
    a = call.input
    if _relu_output(call) or bool(a.min() >= 0):
        return a, _ZERO
    return a.clamp(min=0), a.clamp(max=0)


_RECTIFIERS = (nn.ReLU, nn.ReLU6)


def _relu_output(call: Call) -> bool:
    """Whether the call's input is, unchanged, the output of a ReLU call (so ``>= 0`` without
    looking: a reduction pass over the input saved). The input and the ReLU's output share one
    version counter: any in-place change since the ReLU ran makes this ``False``.
    """
    source = call.source
    return source is not None and type(source.module) in _RECTIFIERS and source.output_intact()


_ZERO = torch.zeros(())
"""Stands for an all-zero input: its terms are left out of the forward and backward passes."""


def _live(terms: Sequence[Term]) -> list[Term]:
    return [t for t in terms if t.input is not _ZERO or t.bias is not None]


class _Terms(Rule):
    """Rules built from groups of modified forward terms (zennit's ``BasicHook``): for each
    group, ``R / stab(z)`` is sent back through each term's transposed layer and multiplied by
    the term's input. Terms whose input is the marker :data:`_ZERO` (the negative part of a
    non-negative input) are skipped.
    """

    needs_parameters = True
    reads_output = False  # the terms' own forward passes give the normalizers
    empty: str = "absorb"
    """What happens to the relevance of an output whose normalizer is exactly zero (no
    contribution of the group's sign, e.g. a z+ output driven by its bias alone when biases
    are ignored): ``"absorb"`` (zennit; booked as rule-specific absorption) or ``"flat"``
    (spread uniformly over the output's receptive field, so that nothing is lost)."""

    def __init__(self, stabilizer: float, zero_params: Iterable[str] | None) -> None:
        self.stabilizer = float(stabilizer)
        self.zero_params = tuple(zero_params or ())
        bad = set(self.zero_params) - {"weight", "bias"}
        if bad:
            raise ValueError(f"zero_params may name 'weight' and 'bias', got {sorted(bad)}")

    def _params(self, call: Call) -> tuple[Tensor, Tensor | None]:
        weight, bias = parameters(call)
        if "weight" in self.zero_params:
            weight = torch.zeros_like(weight)
        if "bias" in self.zero_params and bias is not None:
            bias = torch.zeros_like(bias)
        return weight, bias

    def _stab(self, z: Tensor) -> Tensor:
        return stabilize(z, self.stabilizer)

    @staticmethod
    def _vjp(
        call: Call,
        terms: Sequence[tuple[Tensor, Tensor, Tensor | None]],
        ratios: Callable[[list[Tensor]], Sequence[Tensor]],
    ) -> list[Tensor]:
        """Gradients of ``sum_t <z_t, ratio_t>`` w.r.t. each term's input, through autograd
        (for rules outside :meth:`_propagate`'s groups; they then book their own ledger).
        """
        inputs, outputs = [], []
        with torch.enable_grad():
            for x, weight, bias in terms:
                x = x.detach().requires_grad_(True)
                inputs.append(x)
                outputs.append(linear_forward(call.module, x, weight, bias))
            grads = torch.autograd.grad(outputs, inputs, grad_outputs=list(ratios(outputs)))
        return list(grads)

    def _propagate(
        self, call: Call, relevance: Tensor, groups: Sequence[Group], *, sign_matched: bool = True
    ) -> Tensor:
        ledger = call.context.get("ledger")
        module = call.module
        result: Tensor | None = None
        covered = None  # sum of coefficient * mask over the groups (1 where R is fully covered)
        for group in groups:
            live = _live(group.terms)
            z = group.output
            # the rule's own normalizer may be overwritten unless the ledger or the empty
            # outputs (flat) need it later: fewer full-size temporaries, same numbers
            scratch = z is None and ledger is None and self.empty != "flat"
            if z is None:
                z = torch.zeros((), dtype=relevance.dtype, device=relevance.device)
                for i, t in enumerate(live):
                    x = torch.zeros_like(call.input) if t.input is _ZERO else t.input
                    term = linear_forward(module, x, t.weight, t.bias)
                    if i == 0:
                        z = term if t.sign == 1 else t.sign * term
                    elif t.sign == 1:
                        z = z.add_(term)
                    else:
                        z = z.sub_(term) if t.sign == -1 else z.add_(t.sign * term)
            if group.nonnegative and scratch and z.dim() > 0:
                stabilized = z.add_(self.stabilizer)  # sign(z) = +1: one in-place pass
            else:
                stabilized = stabilize(z, self.stabilizer, sign_matched=sign_matched)
            share = relevance if group.mask is None else relevance * group.mask
            # a sign-matched stabilizer > 0 is never zero: a plain division then, written
            # over the stabilized normalizer when nothing needs that later
            overwrite = scratch if stabilized is z else ledger is None
            if not (sign_matched and self.stabilizer > 0):
                ratio = divide(share, stabilized)
            elif overwrite and stabilized.shape == share.shape:
                ratio = torch.div(share, stabilized, out=stabilized)
            else:
                ratio = share / stabilized
            booked = share
            if self.empty == "flat":
                empty = z.expand_as(share) == 0
                if bool((empty & (share != 0)).any()):
                    ratio = torch.where(empty, 0.0, ratio)
                    booked = torch.where(empty, 0.0, share)
                    part = group.coefficient * _flat(call, torch.where(empty, share, 0.0))
                    result = part if result is None else result.add_(part)
            for t in live:
                if t.input is _ZERO:
                    continue
                part = input_vjp(module, t.input.shape, t.weight, ratio).mul_(t.input)
                if group.coefficient * t.sign != 1:
                    part = part.mul_(group.coefficient * t.sign)
                result = part if result is None else result.add_(part)
            if ledger is not None:
                for t in live:
                    if t.bias is not None:
                        book(
                            ledger,
                            "bias",
                            (group.coefficient * t.sign) * _bias_like(t.bias, z) * ratio,
                        )
                book_normalizer(
                    ledger,
                    booked,
                    z.expand_as(share),
                    stabilized.expand_as(share),
                    group.coefficient,
                )
                weight = torch.ones_like(relevance) if group.mask is None else group.mask
                covered = (
                    group.coefficient * weight
                    if covered is None
                    else (covered + group.coefficient * weight)
                )
        if ledger is not None and covered is not None:
            book(ledger, "rule", relevance * (1 - covered))
        return result if result is not None else torch.zeros_like(call.input)


def _flat(call: Call, relevance: Tensor) -> Tensor:
    """``relevance`` at a linear-type layer's outputs spread uniformly over each output's
    receptive field (the flat rule).
    """
    ones_w = torch.ones_like(parameters(call)[0])
    count = linear_forward(call.module, torch.ones_like(call.input), ones_w, None)
    return input_vjp(call.module, call.input.shape, ones_w, divide(relevance, count))


class Epsilon(_Terms):
    r"""LRP-:math:`\epsilon`: divide by the normalizer plus :math:`\epsilon` of its sign.

    :math:`R_j = \sum_k a_j w_{jk} / (z_k + \epsilon\,\mathrm{sign}(z_k)) R_k`.

    Args:
        epsilon: the stabilizer (default ``1e-6``, zennit's; ``0`` gives LRP-0, which equals
            gradient x input on ReLU networks).
        zero_params: parameters set to zero in the rule (``("bias",)``: bias-free; the
            normalizer is then ``z_k - b_k``, and the layer passes on all its relevance).
        sign_matched: ``False`` adds ``epsilon`` without the sign (Li et al.'s notebook).

    Works on linear-type modules (with their, possibly batch-norm-merged, parameters) and on
    any other module through its own forward (e.g. an unmerged batch norm as an affine layer,
    whose shift ``f(0)`` plays the bias).
    """

    needs_parameters = False  # other modules go through their own forward
    reads_output = True  # the layer's output is its normalizer

    def __init__(
        self,
        epsilon: float = 1e-6,
        zero_params: Iterable[str] | None = None,
        *,
        sign_matched: bool = True,
    ) -> None:
        super().__init__(epsilon, zero_params)
        self.sign_matched = sign_matched

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The epsilon rule (the module's own Jacobian for parameter-free modules)."""
        if not isinstance(call.module, LINEAR_TYPES):
            return _module_rule(
                call,
                relevance,
                self.stabilizer,
                sign_matched=self.sign_matched,
                zero_bias="bias" in self.zero_params,
            )
        weight, bias = self._params(call)
        z = None if "weight" in self.zero_params else layer_output(call)  # no extra forward
        if z is not None and "bias" in self.zero_params and bias is not None:
            z = z - _bias_like(parameters(call)[1], z)  # type: ignore[arg-type]
        return self._propagate(
            call,
            relevance,
            [Group([Term(call.input, weight, bias)], output=z)],
            sign_matched=self.sign_matched,
        )


class ZPlus(_Terms):
    r"""LRP-:math:`z^+` (= :class:`AlphaBeta` with alpha=1, beta=0): only positive contributions.

    Signed version (zennit): the positive part is :math:`a^+ w^+ + a^- w^-` plus the positive
    bias in the normalizer. ``zero_params=("bias",)`` gives the textbook :math:`z^+`.

    Args:
        stabilizer: added to the normalizer (default ``1e-6``).
        zero_params: parameters set to zero.
    """

    def __init__(self, stabilizer: float = 1e-6, zero_params: Iterable[str] | None = None) -> None:
        super().__init__(stabilizer, zero_params)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The z+ rule: positive contributions only."""
        weight, bias = self._params(call)
        ap, an = _signed_parts(call)
        terms = [Term(ap, _pos(weight), _pos(bias))]
        if an is not _ZERO:  # (a ReLU's output has no negative part: no w- to compute)
            terms.append(Term(an, _neg(weight), None))
        # a+ w+ + a- w- + b+ >= 0 term by term: the normalizer is non-negative for any input
        return self._propagate(call, relevance, [Group(terms, nonnegative=True)])


class AlphaBeta(_Terms):
    r"""LRP-:math:`\alpha\beta`: :math:`\alpha` times the positive and :math:`-\beta` times the
    negative contributions, each normalized separately; :math:`\alpha - \beta = 1`.

    Common choices: ``(alpha=1, beta=0)`` (:math:`z^+`) and ``(alpha=2, beta=1)`` (default).

    Raises:
        ValueError: ``alpha`` or ``beta`` negative, or ``alpha - beta != 1``.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 1.0,
        stabilizer: float = 1e-6,
        zero_params: Iterable[str] | None = None,
    ) -> None:
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(
                f"AlphaBeta needs alpha, beta >= 0 and alpha - beta = 1 (conservation), got "
                f"alpha={alpha}, beta={beta}; e.g. AlphaBeta(2, 1) or AlphaBeta(1, 0)"
            )
        super().__init__(stabilizer, zero_params)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """Positive and negative contributions, weighted alpha and -beta."""
        weight, bias = self._params(call)
        ap, an = _signed_parts(call)
        w_pos, w_neg = _pos(weight), _neg(weight)
        positive = [Term(ap, w_pos, _pos(bias)), Term(an, w_neg, None)]
        negative = [Term(ap, w_neg, _neg(bias)), Term(an, w_pos, None)]
        groups = [Group(positive, self.alpha, nonnegative=True)]  # a sum of products >= 0
        if self.beta:
            groups.append(Group(negative, -self.beta))
        return self._propagate(call, relevance, groups)


class Gamma(_Terms):
    r"""LRP-:math:`\gamma`: weights :math:`w + \gamma w^+` favour positive contributions.

    Signed version (zennit): where :math:`z_k > 0` the positive part
    :math:`a^+(w + \gamma w^+) + a^-(w + \gamma w^-)` is used, where :math:`z_k < 0` the mirrored
    negative part; for non-negative inputs this is the original rule. Outputs with
    :math:`z_k = 0` pass nothing on (booked as rule-specific absorption).

    Args:
        gamma: the weight of the positive part (default ``0.25``).
        stabilizer: added to the normalizer (default ``1e-6``).
        zero_params: parameters set to zero.
    """

    reads_output = True  # the signs of the layer's output choose the part

    def __init__(
        self,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        zero_params: Iterable[str] | None = None,
    ) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        super().__init__(stabilizer, zero_params)
        self.gamma = float(gamma)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The gamma rule: positive weights (and biases) favoured by gamma."""
        weight, bias = self._params(call)
        g = self.gamma
        a = call.input
        ap, an = _signed_parts(call)
        w_up, w_down = weight + g * weight.clamp(min=0), weight + g * weight.clamp(max=0)
        b_up = None if bias is None else bias + g * bias.clamp(min=0)
        b_down = None if bias is None else bias + g * bias.clamp(max=0)
        z = layer_output(call)  # zennit: the signs of the unmodified output
        if z is None:
            z = linear_forward(call.module, a, *parameters(call))
        up = [Term(ap, w_up, b_up), Term(an, w_down, None)]
        down = [Term(ap, w_down, b_down), Term(an, w_up, None)]
        return self._propagate(
            call, relevance, [Group(up, mask=(z > 0).to(z)), Group(down, mask=(z < 0).to(z))]
        )


class ZBox(_Terms):
    r"""LRP-:math:`z^\mathcal{B}` for the input layer: inputs bounded by ``low <= x <= high``.

    :math:`q_{jk} = x_j w_{jk} - l_j w_{jk}^+ - h_j w_{jk}^-`; the bias cancels, so the rule
    conserves relevance exactly.

    Args:
        low: lowest input value, a float or a tensor broadcastable to one sample ``(C, 1, 1)``
            (e.g. ``(0 - mean) / std`` per channel for normalized images).
        high: highest input value, same forms.
        stabilizer: added to the normalizer (default ``1e-6``).
        zero_params: parameters set to zero.
    """

    def __init__(
        self,
        low: float | Tensor,
        high: float | Tensor,
        stabilizer: float = 1e-6,
        zero_params: Iterable[str] | None = None,
    ) -> None:
        super().__init__(stabilizer, zero_params)
        self.low = low
        self.high = high

    def _bound(self, value: float | Tensor, like: Tensor) -> Tensor:
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        if t.dim() == 1:  # per channel
            t = t.reshape(-1, *([1] * (like.dim() - 2)))
        return t.expand_as(like)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The z-box rule, with the input bounds ``low`` and ``high``."""
        weight, bias = self._params(call)
        x = call.input
        low, high = self._bound(self.low, x), self._bound(self.high, x)
        terms = [
            Term(x, weight, bias),
            Term(low, _pos(weight), _pos(bias), -1.0),
            Term(high, _neg(weight), _neg(bias), -1.0),
        ]
        return self._propagate(call, relevance, [Group(terms)])


class Flat(_Terms):
    """LRP-flat: relevance spread uniformly over each output's receptive field.

    Inputs and weights are set to one and the bias to zero (Lapuschkin et al., Nature
    Communications 2019); the result does not depend on the input values.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer, None)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The flat rule: uniform over each output's receptive field."""
        module = call.module
        if (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            return self._conv2d(call, relevance)
        weight, _ = parameters(call)
        ones = torch.ones_like(call.input)
        return self._propagate(
            call, relevance, [Group([Term(ones, torch.ones_like(weight), None)])]
        )

    def _conv2d(self, call: Call, relevance: Tensor) -> Tensor:
        """Same result without a full-size convolution: with all weights one, every output
        channel has the same normalizer ``C_in * (taps inside the image)`` and every input
        channel the same relevance, so one single-channel convolution each way suffices.
        """
        module = cast(nn.Conv2d, call.module)
        shape = call.input.shape
        kernel = relevance.new_ones(1, 1, *module.kernel_size)
        taps = F.conv2d(
            relevance.new_ones(1, 1, *shape[2:]),
            kernel,
            None,
            module.stride,
            module.padding,
            module.dilation,
        )
        count = taps * shape[1]
        stabilized = self._stab(count)
        ratio = (relevance / stabilized).sum(1, keepdim=True)
        spread = conv2d_input(
            (shape[0], 1, *shape[2:]),
            kernel,
            ratio,
            module.stride,
            module.padding,
            module.dilation,
            1,
        )
        ledger = call.context.get("ledger")
        if ledger is not None:
            book_normalizer(
                ledger, relevance, count.expand_as(relevance), stabilized.expand_as(relevance)
            )
        return spread.expand(shape).contiguous()


class WSquare(_Terms):
    r"""LRP-:math:`w^2`: :math:`q_{jk} = w_{jk}^2`, independent of the input (Montavon 2017).

    As in zennit the squared bias enters the normalizer unless ``zero_params=("bias",)``.
    """

    def __init__(self, stabilizer: float = 1e-6, zero_params: Iterable[str] | None = None) -> None:
        super().__init__(stabilizer, zero_params)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The w-square rule: in proportion to the squared weights."""
        weight, bias = self._params(call)
        ones = torch.ones_like(call.input)
        return self._propagate(
            call, relevance, [Group([Term(ones, weight**2, None if bias is None else bias**2)])]
        )


def _module_rule(
    call: Call,
    relevance: Tensor,
    epsilon: float,
    *,
    sign_matched: bool = True,
    zero_bias: bool = False,
) -> Tensor:
    """The epsilon rule through the module's own (affine) forward ``f``:
    ``a * d/da <f(a), R / stab(z)>`` with ``z = f(a)`` (``f(a) - f(0)`` with ``zero_bias``).
    ``f(0)`` is what the module adds regardless of its input (a batch norm's shift): its bias.
    """
    ledger = call.context.get("ledger")
    module = call.module
    offset = None
    if zero_bias or ledger is not None:
        with torch.no_grad():
            offset = module.forward(torch.zeros_like(call.input))
    with torch.enable_grad():
        x = call.input.detach().requires_grad_(True)
        z = module.forward(x)
        value = z.detach() - offset if zero_bias else z.detach()
        stabilized = stabilize(value, epsilon, sign_matched=sign_matched)
        ratio = divide(relevance, stabilized)
        (grad,) = torch.autograd.grad(z, x, grad_outputs=ratio)
    if ledger is not None:
        if not zero_bias:
            book(ledger, "bias", offset * ratio)  # type: ignore[operator]
        book_normalizer(ledger, relevance, value, stabilized)
    return call.input * grad


class Norm(Rule):
    r"""Proportional split for parameter-free linear maps (sums, average pooling).

    :math:`R_j = a_j \, \partial_{a_j} \langle z, R / \mathrm{stab}(z) \rangle` with the
    module's own forward ``z``: the epsilon rule with ``epsilon`` as a mere stabilizer.
    Residual additions use :meth:`split`, functional operations :meth:`through`.
    """

    reads_output = False  # recomputed from the input

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """Proportional split through the module's own forward."""
        return _module_rule(call, relevance, self.stabilizer)

    def through(
        self,
        inputs: Tensor,
        function: Callable[[Tensor], Tensor],
        relevance: Tensor,
        ledger: dict | None = None,
    ) -> Tensor:
        """The rule for a parameter-free linear ``function`` applied functionally (e.g. the
        ``adaptive_avg_pool2d`` + ``flatten`` of MobileNetV2's head).
        """
        with torch.enable_grad():
            x = inputs.detach().requires_grad_(True)
            z = function(x)
            stabilized = stabilize(z.detach(), self.stabilizer)
            (grad,) = torch.autograd.grad(z, x, grad_outputs=divide(relevance, stabilized))
        book_normalizer(ledger, relevance, z.detach(), stabilized)
        return inputs * grad

    def split(
        self, branch: Tensor, shortcut: Tensor, relevance: Tensor, ledger: dict | None = None
    ) -> tuple[Tensor, Tensor]:
        """Relevance of a sum ``branch + shortcut``, split in proportion to the two terms."""
        z = branch + shortcut
        stabilized = stabilize(z, self.stabilizer)
        book_normalizer(ledger, relevance, z, stabilized)
        if self.stabilizer > 0 and stabilized.shape == relevance.shape:
            # sign-matched: never zero; the ratio is written over the stabilized sum
            ratio = torch.div(relevance, stabilized, out=stabilized)
        else:
            ratio = divide(relevance, stabilized)
        if ratio.shape != shortcut.shape:
            return branch * ratio, shortcut * ratio
        return branch * ratio, ratio.mul_(shortcut)  # ratio is ours: reused for the shortcut


class Pass(Rule):
    """Pass relevance through unchanged (element-wise activations, merged batch norms)."""

    reads_input = False  # only its shape
    reads_output = False

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The relevance unchanged."""
        if relevance.shape != call.input.shape:
            raise RuntimeError(
                f"Pass rule on {type(call.module).__name__} needs equal input and output shapes"
            )
        return relevance


class Gradient(Rule):
    """The plain gradient of the module: winner-take-all for max pooling, reshape for flatten.

    This is what zennit does for layers without a rule (max pooling, dropout).
    """

    reads_output = False  # recomputed from the input

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        """The plain gradient of the relevance (winner-take-all for max pooling)."""
        with torch.enable_grad():
            x = call.input.detach().requires_grad_(True)
            z = call.module.forward(x)
            (grad,) = torch.autograd.grad(z, x, grad_outputs=relevance)
        return grad
