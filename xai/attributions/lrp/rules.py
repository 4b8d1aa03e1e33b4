"""LRP rules: how relevance flows from a layer's outputs to its inputs.

Every rule is a small object called as ``rule(call, relevance) -> relevance_at_input`` on one
:class:`xai.adapter.rules.Call` (the module, a private copy of its input, its output). Rules are
written as modified gradients (the "gradient trick" of zennit's ``BasicHook``): for each term
``t`` the rule evaluates a modified forward ``z_t = f(x_t; W_t, b_t)``, divides the incoming
relevance by a stabilized normalizer and takes one vector-Jacobian product,

.. math:: R_j = \\sum_t x_{t,j} \\, \\partial_{x_t} \\big( z_t \\cdot R / \\mathrm{stab}(z) \\big)_j .

A layer ``z_k = \\sum_j a_j w_{jk} + b_k`` and its incoming relevance ``R_k``:

==========================  ===============================================================
rule                        contribution ``q_jk`` (``R_j = \\sum_k q_jk / \\sum_j q_jk R_k``)
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

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    "stabilize",
]

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Modules with ``weight`` and ``bias`` whose forward is linear in the input."""


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
    sign = (z == 0).to(z) + z.sign()
    return z + sign * epsilon


def divide(relevance: Tensor, denominator: Tensor) -> Tensor:
    """``relevance / denominator`` with ``0 / 0 := 0`` (a zero normalizer with ``epsilon=0``)."""
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return torch.where(denominator == 0, torch.zeros_like(relevance), relevance / safe)


def linear_forward(module: nn.Module, x: Tensor, weight: Tensor | None, bias: Tensor | None
                   ) -> Tensor:
    """The forward of a linear-type module with replaced parameters (the module is untouched)."""
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(x, weight, bias)  # type: ignore[operator]
    raise TypeError(f"{type(module).__name__} is not a linear-type module")


def parameters(call: Call) -> tuple[Tensor, Tensor | None]:
    """``(weight, bias)`` of a call, detached; merged with a following batch norm if one was."""
    merged = call.context.get("parameters")
    if merged is not None:
        return merged
    module = call.module
    bias = getattr(module, "bias", None)
    return module.weight.detach(), None if bias is None else bias.detach()  # type: ignore


def _pos(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


class Rule:
    """Base class of LRP rules: ``rule(call, relevance) -> relevance at the call's input``.

    A rule for linear-type modules (conv, linear) sets ``needs_parameters = True``; rules that
    use only the module's own forward (pooling, sums) or none at all leave it ``False``.
    """

    needs_parameters: bool = False

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class _Terms(Rule):
    """Rules built from modified forward terms and one vector-Jacobian product per term."""

    needs_parameters = True

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

    @staticmethod
    def _vjp(call: Call, terms: Sequence[tuple[Tensor, Tensor, Tensor | None]],
             ratios: Callable[[list[Tensor]], Sequence[Tensor]]) -> list[Tensor]:
        """Gradients of ``sum_t <z_t, ratio_t>`` w.r.t. each term's input."""
        inputs, outputs = [], []
        with torch.enable_grad():
            for x, weight, bias in terms:
                x = x.detach().requires_grad_(True)
                inputs.append(x)
                outputs.append(linear_forward(call.module, x, weight, bias))
            grads = torch.autograd.grad(outputs, inputs, grad_outputs=list(ratios(outputs)))
        return list(grads)

    def _stab(self, z: Tensor) -> Tensor:
        return stabilize(z, self.stabilizer)


class Epsilon(_Terms):
    r"""LRP-:math:`\epsilon`: :math:`R_j = \sum_k a_j w_{jk} / (z_k + \epsilon\,\mathrm{sign}(z_k)) R_k`.

    Args:
        epsilon: the stabilizer (default ``1e-6``, zennit's; ``0`` gives LRP-0, which equals
            gradient x input on ReLU networks).
        zero_params: parameters set to zero in the rule (``("bias",)``: bias-free).
        sign_matched: ``False`` adds ``epsilon`` without the sign (Li et al.'s notebook).

    Works on linear-type modules (with their, possibly batch-norm-merged, parameters) and on
    any other module through its own forward (e.g. an unmerged batch norm as an affine layer).
    """

    needs_parameters = False  # other modules go through their own forward

    def __init__(self, epsilon: float = 1e-6, zero_params: Iterable[str] | None = None, *,
                 sign_matched: bool = True) -> None:
        super().__init__(epsilon, zero_params)
        self.sign_matched = sign_matched

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        def ratio(outputs):
            return [divide(relevance, stabilize(outputs[0], self.stabilizer,
                                                 sign_matched=self.sign_matched))]

        if not isinstance(call.module, LINEAR_TYPES):
            return _module_rule(call, relevance, ratio)
        (grad,) = self._vjp(call, [(call.input, *self._params(call))], ratio)
        return call.input * grad


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
        weight, bias = self._params(call)
        a = call.input
        terms = [(a.clamp(min=0), _pos(weight), _pos(bias)), (a.clamp(max=0), _neg(weight), None)]
        g1, g2 = self._vjp(call, terms, lambda z: [divide(relevance, self._stab(z[0] + z[1]))] * 2)
        return terms[0][0] * g1 + terms[1][0] * g2


class AlphaBeta(_Terms):
    r"""LRP-:math:`\alpha\beta`: :math:`\alpha` times the positive and :math:`-\beta` times the
    negative contributions, each normalized separately; :math:`\alpha - \beta = 1`.

    Common choices: ``(alpha=1, beta=0)`` (:math:`z^+`) and ``(alpha=2, beta=1)`` (default).

    Raises:
        ValueError: ``alpha`` or ``beta`` negative, or ``alpha - beta != 1``.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6,
                 zero_params: Iterable[str] | None = None) -> None:
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1.0) > 1e-12:
            raise ValueError(
                f"AlphaBeta needs alpha, beta >= 0 and alpha - beta = 1 (conservation), got "
                f"alpha={alpha}, beta={beta}; e.g. AlphaBeta(2, 1) or AlphaBeta(1, 0)"
            )
        super().__init__(stabilizer, zero_params)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        weight, bias = self._params(call)
        ap, an = call.input.clamp(min=0), call.input.clamp(max=0)
        terms = [(ap, _pos(weight), _pos(bias)), (an, _neg(weight), None),
                 (ap, _neg(weight), _neg(bias)), (an, _pos(weight), None)]

        def ratios(z):
            pos = divide(relevance, self._stab(z[0] + z[1]))
            neg = divide(relevance, self._stab(z[2] + z[3]))
            return [pos, pos, neg, neg]

        g = self._vjp(call, terms, ratios)
        return self.alpha * (ap * g[0] + an * g[1]) - self.beta * (ap * g[2] + an * g[3])


class Gamma(_Terms):
    r"""LRP-:math:`\gamma`: weights :math:`w + \gamma w^+` favour positive contributions.

    Signed version (zennit): where :math:`z_k > 0` the positive part
    :math:`a^+(w + \gamma w^+) + a^-(w + \gamma w^-)` is used, where :math:`z_k < 0` the mirrored
    negative part; for non-negative inputs this is the original rule.

    Args:
        gamma: the weight of the positive part (default ``0.25``).
        stabilizer: added to the normalizer (default ``1e-6``).
        zero_params: parameters set to zero.
    """

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6,
                 zero_params: Iterable[str] | None = None) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        super().__init__(stabilizer, zero_params)
        self.gamma = float(gamma)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        weight, bias = self._params(call)
        g = self.gamma
        a = call.input
        ap, an = a.clamp(min=0), a.clamp(max=0)
        w_up, w_down = weight + g * weight.clamp(min=0), weight + g * weight.clamp(max=0)
        b_up = None if bias is None else bias + g * bias.clamp(min=0)
        b_down = None if bias is None else bias + g * bias.clamp(max=0)
        terms = [(ap, w_up, b_up), (an, w_down, None), (ap, w_down, b_down), (an, w_up, None)]
        z = linear_forward(call.module, a, *parameters(call))  # zennit: unmodified output

        def ratios(out):
            pos = (z > 0).to(z) * divide(relevance, self._stab(out[0] + out[1]))
            neg = (z < 0).to(z) * divide(relevance, self._stab(out[2] + out[3]))
            return [pos, pos, neg, neg]

        grads = self._vjp(call, terms, ratios)
        return ap * grads[0] + an * grads[1] + ap * grads[2] + an * grads[3]


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

    def __init__(self, low: float | Tensor, high: float | Tensor, stabilizer: float = 1e-6,
                 zero_params: Iterable[str] | None = None) -> None:
        super().__init__(stabilizer, zero_params)
        self.low = low
        self.high = high

    def _bound(self, value: float | Tensor, like: Tensor) -> Tensor:
        t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        if t.dim() == 1:  # per channel
            t = t.reshape(-1, *([1] * (like.dim() - 2)))
        return t.expand_as(like)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        weight, bias = self._params(call)
        x = call.input
        low, high = self._bound(self.low, x), self._bound(self.high, x)
        terms = [(x, weight, bias), (low, _pos(weight), _pos(bias)),
                 (high, _neg(weight), _neg(bias))]
        grads = self._vjp(call, terms,
                          lambda z: [divide(relevance, self._stab(z[0] - z[1] - z[2]))] * 3)
        return x * grads[0] - low * grads[1] - high * grads[2]


class Flat(_Terms):
    """LRP-flat: relevance spread uniformly over each output's receptive field.

    Inputs and weights are set to one and the bias to zero (Lapuschkin et al., Nature
    Communications 2019); the result does not depend on the input values.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(stabilizer, None)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        weight, _ = parameters(call)
        ones = torch.ones_like(call.input)
        (grad,) = self._vjp(call, [(ones, torch.ones_like(weight), None)],
                            lambda z: [divide(relevance, self._stab(z[0]))])
        return grad


class WSquare(_Terms):
    r"""LRP-:math:`w^2`: :math:`q_{jk} = w_{jk}^2`, independent of the input (Montavon 2017).

    As in zennit the squared bias enters the normalizer unless ``zero_params=("bias",)``.
    """

    def __init__(self, stabilizer: float = 1e-6, zero_params: Iterable[str] | None = None) -> None:
        super().__init__(stabilizer, zero_params)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        weight, bias = self._params(call)
        ones = torch.ones_like(call.input)
        (grad,) = self._vjp(call, [(ones, weight**2, None if bias is None else bias**2)],
                            lambda z: [divide(relevance, self._stab(z[0]))])
        return grad


def _module_rule(call: Call, relevance: Tensor, ratio: Callable[[list[Tensor]], list[Tensor]]
                 ) -> Tensor:
    """``a * d/da <module(a), ratio>`` with the module's own forward (no parameter change)."""
    with torch.enable_grad():
        x = call.input.detach().requires_grad_(True)
        z = call.module.forward(x)
        (grad,) = torch.autograd.grad(z, x, grad_outputs=ratio([z.detach()])[0])
    return call.input * grad


class Norm(Rule):
    """Proportional split for parameter-free linear maps (sums, average pooling).

    :math:`R_j = a_j \\, \\partial_{a_j} \\langle z, R / \\mathrm{stab}(z) \\rangle` with the
    module's own forward ``z``: the epsilon rule with ``epsilon`` as a mere stabilizer.
    Residual additions use :meth:`split`.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = float(stabilizer)

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        return _module_rule(call, relevance,
                            lambda z: [divide(relevance, stabilize(z[0], self.stabilizer))])

    def through(self, inputs: Tensor, function: Callable[[Tensor], Tensor], relevance: Tensor
                ) -> Tensor:
        """The rule for a parameter-free linear ``function`` applied functionally (e.g. the
        ``adaptive_avg_pool2d`` + ``flatten`` of MobileNetV2's head)."""
        with torch.enable_grad():
            x = inputs.detach().requires_grad_(True)
            z = function(x)
            ratio = divide(relevance, stabilize(z.detach(), self.stabilizer))
            (grad,) = torch.autograd.grad(z, x, grad_outputs=ratio)
        return inputs * grad

    def split(self, branch: Tensor, shortcut: Tensor, relevance: Tensor
              ) -> tuple[Tensor, Tensor]:
        """Relevance of a sum ``branch + shortcut``, split in proportion to the two terms."""
        ratio = divide(relevance, stabilize(branch + shortcut, self.stabilizer))
        return branch * ratio, shortcut * ratio


class Pass(Rule):
    """Pass relevance through unchanged (element-wise activations, merged batch norms)."""

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        if relevance.shape != call.input.shape:
            raise RuntimeError(
                f"Pass rule on {type(call.module).__name__} needs equal input and output shapes"
            )
        return relevance


class Gradient(Rule):
    """The plain gradient of the module: winner-take-all for max pooling, reshape for flatten.

    This is what zennit does for layers without a rule (max pooling, dropout).
    """

    def __call__(self, call: Call, relevance: Tensor) -> Tensor:
        with torch.enable_grad():
            x = call.input.detach().requires_grad_(True)
            z = call.module.forward(x)
            (grad,) = torch.autograd.grad(z, x, grad_outputs=relevance)
        return grad
