"""Verified bounds on a model's logits over a ball of input perturbations.

``bounds(model, x, epsilon)`` returns, for every sample, a lower and an upper bound on every
logit that hold for **every** input in the L-inf (or L2) ball of radius ``epsilon`` around
``x`` (optionally only on the features where ``mask`` is 1, and inside a ``clip`` box);
``certified_margin(model, x, epsilon)`` is a lower bound on ``f_c(x') - max_{j != c} f_j(x')``
over the ball: when it is positive, no perturbation in the ball changes the prediction.

The engine is written here (no auto_LiRPA: its only release pins torch<1.13 and fails under
numpy 2): the model is traced with ``torch.fx`` (:mod:`xai.verify.graph`) and bounded with
interval bound propagation and a CROWN-style backward pass (:mod:`xai.verify.propagate`).

What ``bound`` means:

- ``"ibp"``: interval bound propagation (Gowal et al. 2018), with the margin matrix folded into
  the last affine layer (tighter than ``u_j - l_c``) and, under L2, the first Linear/Conv2d
  bounded exactly with the dual norm.
- ``"crown"`` (default): **CROWN-IBP** (Zhang et al. 2020): the pre-activation bounds of every
  ReLU / max pooling come from IBP, and the output is bounded by one backward linear relaxation
  pass (CROWN, Zhang et al. 2018) from the logits to the input; each bound returned is the
  elementwise **minimum** of this and the IBP bound (decomon's convention). When carrying the
  coefficients back to the input would exceed ``backward_budget`` numbers per sample (large
  images, many output rows), the pass stops where it reaches that size and concretizes there on
  the IBP boxes: the bound stays sound, it is only less tight. Full CROWN (a backward pass for
  every intermediate layer) is not implemented: O(L^2) passes is for small MLPs only.

Soundness: every bound holds for all points of the set up to floating-point rounding (use
float64 when the last digits matter). The model is bounded in eval mode (BatchNorm running
statistics, Dropout off) and is never modified.

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", 2018. Zhang et al., "Efficient Neural Network Robustness Certification with
    General Activation Functions" (CROWN), NeurIPS 2018. Zhang et al., "Towards Stable and
    Efficient Training of Verifiably Robust Neural Networks" (CROWN-IBP), ICLR 2020.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor, nn

from xai.verify.graph import SUPPORTED, Graph, UnsupportedOperationError, trace
from xai.verify.propagate import RELU_LOWER, Ball, backward, frontier, ibp

__all__ = [
    "BOUNDS",
    "SUPPORTED",
    "BoundedModel",
    "LogitBounds",
    "UnsupportedOperationError",
    "bounds",
    "certified_margin",
]

BOUNDS = ("ibp", "crown")
NORMS = ("linf", "l2")
DEFAULT_BUDGET = 2**22
"""Default ``backward_budget``: 4M coefficients per sample (16 MB in float32)."""


@dataclass
class LogitBounds:
    """``lower <= f(x') <= upper`` for every ``x'`` in the ball; both ``(B, n_classes)``."""

    lower: Tensor
    upper: Tensor


class BoundedModel:
    """A model traced once for bound propagation (inputs shaped like ``example``).

    Args:
        model: the network (eval semantics are used; it is never modified).
        example: one batch ``(B, *in_shape)`` fixing the per-sample input shape.
        backward_budget: coefficients per sample the CROWN pass may carry (``None``: no
            limit, back to the input); see the module docstring.

    Raises:
        UnsupportedOperationError: an operation without a rule, named with the supported list.
    """

    def __init__(
        self, model: nn.Module, example: Tensor, *, backward_budget: int | None = DEFAULT_BUDGET
    ) -> None:
        self.graph: Graph = trace(model, example[:1].detach())
        self.backward_budget = backward_budget

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input sample (without the batch dimension)."""
        return self.graph.ops[0].shape

    @property
    def n_outputs(self) -> int:
        """The number of model outputs (logits)."""
        return self.graph.ops[-1].shape[0]

    def values(self, x: Tensor) -> list[Tensor]:
        """The value of every node at ``x`` (the model's forward, node by node)."""
        vals: list[Tensor] = [x]
        for op in self.graph.ops[1:]:
            vals.append(op.fn(*[vals[j] for j in op.inputs]))
        return vals

    def value_at(self, x: Tensor, node: int) -> Tensor:
        """The value of node ``node`` at ``x``, each earlier value dropped after its last use
        up to ``node``: memory holds the live frontier of the graph, not its whole depth (a
        224 px MobileNetV2 keeps 3-4 activations alive instead of about 150).
        """
        ops, consumers = self.graph.ops, self.graph.consumers
        vals: dict[int, Tensor] = {0: x}
        for i in range(1, node + 1):
            op = ops[i]
            vals[i] = op.fn(*[vals[j] for j in op.inputs])
            for j in set(op.inputs):
                if j != node and max(c for c in consumers[j] if c <= node) <= i:
                    del vals[j]
        return vals[node]

    def forward(self, x: Tensor) -> Tensor:
        """The logits at ``x`` (softmax stripped), ``(B, n_classes)``."""
        return self.value_at(x, self.graph.output)

    @overload
    def upper(
        self,
        ball: Ball,
        rows: Tensor,
        *,
        bound: str = ...,
        relu_lower: str = ...,
        top_k: int | None = ...,
        parts: Literal[False] = ...,
    ) -> Tensor: ...

    @overload
    def upper(
        self,
        ball: Ball,
        rows: Tensor,
        *,
        bound: str = ...,
        relu_lower: str = ...,
        top_k: int | None = ...,
        parts: Literal[True],
    ) -> tuple[Tensor, Tensor | None]: ...

    def upper(
        self,
        ball: Ball,
        rows: Tensor,
        *,
        bound: str = "crown",
        relu_lower: str = "adaptive",
        top_k: int | None = None,
        parts: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor | None]:
        """Upper bounds of ``rows @ f(x')`` over each row's ball, ``(N, S)``.

        Args:
            ball: the perturbation set of each of the ``N`` rows.
            rows: ``(N, S, n_classes)`` linear functions of the logits to bound.
            bound: ``"ibp"`` or ``"crown"`` (min of CROWN-IBP and IBP).
            relu_lower: lower ReLU slope of the CROWN pass (see ``relu_relaxation``).
            top_k: run the CROWN pass only on the ``top_k`` rows with the largest IBP bound
                (the others keep their IBP bound: sound, only looser).
            parts: return ``(ibp, crown)`` separately instead of their minimum (tests);
                ``crown`` has ``NaN`` for rows outside ``top_k``.
        """
        return _upper(self.graph, ball, rows, bound, relu_lower, top_k, parts, self.backward_budget)

    def hybrid_upper(
        self,
        ball: Ball,
        rows: Tensor,
        split: int,
        noise: Tensor,
        *,
        chunk: int = 32,
        bound: str = "crown",
        relu_lower: str = "adaptive",
        top_k: int | None = None,
    ) -> Tensor:
        """Hybrid empirical/verified bounds (EVA's scaling mode, Fel et al. 2023, Fig. 3).

        Each row's ball is **sampled** (``noise``: ``(N, n_samples, *in_shape)`` in the unit
        ball of the norm, scaled by ``epsilon`` and the mask; sample 0 should be 0), the
        network is run up to node ``split``, the elementwise min/max of those activations is
        taken as the box at ``split``, and the rest of the network is bounded from that box.
        **Not verified**: the box is an inner estimate of the true reachable set.

        Returns:
            ``(N, S)`` upper bounds of ``rows @ f`` over the sampled-box set.
        """
        n, m = noise.shape[:2]
        eps = ball._eps()[:, None]
        points = (ball.center[:, None] + eps * ball.mask[:, None] * noise).flatten(0, 1)
        acts = [
            self.value_at(points[start : start + chunk], split)
            for start in range(0, points.shape[0], chunk)
        ]
        act = torch.cat(acts).view(n, m, *self.graph.ops[split].shape)
        low, high = act.amin(1), act.amax(1)
        box = Ball((low + high) / 2, torch.ones_like(ball.epsilon), (high - low) / 2)
        return _upper(
            self.graph.tail(split), box, rows, bound, relu_lower, top_k, False, self.backward_budget
        )

    def node_bounds(self, ball: Ball) -> list[tuple[Tensor, Tensor]]:
        """IBP ``(low, high)`` of every node (the pre-activation bounds the CROWN pass uses)."""
        with torch.no_grad():
            boxes = ibp(self.graph, ball)
        return [boxes[i] for i in range(len(self.graph.ops))]


@overload
def _upper(
    graph: Graph,
    ball: Ball,
    rows: Tensor,
    bound: str,
    relu_lower: str,
    top_k: int | None,
    parts: Literal[False],
    budget: int | None,
) -> Tensor: ...


@overload
def _upper(
    graph: Graph,
    ball: Ball,
    rows: Tensor,
    bound: str,
    relu_lower: str,
    top_k: int | None,
    parts: bool,
    budget: int | None,
) -> Tensor | tuple[Tensor, Tensor | None]: ...


def _upper(
    graph: Graph,
    ball: Ball,
    rows: Tensor,
    bound: str,
    relu_lower: str,
    top_k: int | None,
    parts: bool,
    budget: int | None,
) -> Tensor | tuple[Tensor, Tensor | None]:
    """Upper bounds ``(N, S)`` of ``rows @ f`` over ``ball`` (see :meth:`BoundedModel.upper`)."""
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if relu_lower not in RELU_LOWER:
        raise ValueError(f"relu_lower must be one of {RELU_LOWER}, got {relu_lower!r}")
    n_rows = rows.shape[1]
    out = graph.ops[graph.output]
    ibp_cut = set(out.inputs) if out.kind == "affine" else {graph.output}
    crown_rows = n_rows if top_k is None else min(top_k, n_rows)
    cut = frontier(graph, crown_rows, budget) if bound == "crown" else set()
    keep = {j for op in graph.ops if op.kind != "affine" for j in op.inputs}
    keep |= ibp_cut | cut | {graph.output}
    with torch.no_grad():
        boxes = ibp(graph, ball, keep)
        upper_ibp = backward(graph, boxes, rows, ball, ibp_cut)
        if bound == "ibp":
            return (upper_ibp, None) if parts else upper_ibp
        if crown_rows < n_rows:
            top = upper_ibp.topk(crown_rows, dim=1).indices
            chosen = rows.gather(1, top[..., None].expand(-1, -1, rows.shape[2]))
            crown = backward(graph, boxes, chosen, ball, cut, relu_lower)
            upper_crown = torch.full_like(upper_ibp, torch.nan).scatter(1, top, crown)
            combined = upper_ibp.scatter(1, top, torch.minimum(upper_ibp.gather(1, top), crown))
        else:
            upper_crown = backward(graph, boxes, rows, ball, cut, relu_lower)
            combined = torch.minimum(upper_ibp, upper_crown)
    return (upper_ibp, upper_crown) if parts else combined


def make_ball(
    inputs: Tensor,
    epsilon: float | Tensor,
    *,
    norm: str = "linf",
    mask: Tensor | None = None,
    clip: tuple[float | Tensor, float | Tensor] | None = None,
) -> Ball:
    """Validate the perturbation arguments and build the :class:`Ball` of every sample."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    n = inputs.shape[0]
    eps = torch.as_tensor(epsilon, dtype=inputs.dtype, device=inputs.device)
    if eps.dim() == 0:
        eps = eps.expand(n)
    if eps.shape != (n,):
        raise ValueError(
            f"epsilon must be a number or one per sample ({n},), got {tuple(eps.shape)}"
        )
    if not bool(torch.isfinite(eps).all()) or bool((eps < 0).any()):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    if mask is None:
        full = torch.ones_like(inputs)
    else:
        try:
            full = torch.as_tensor(mask).to(inputs).expand_as(inputs)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(torch.as_tensor(mask).shape)} does not broadcast to the "
                f"inputs {tuple(inputs.shape)}"
            ) from None
        if not bool(((full == 0) | (full == 1)).all()):
            raise ValueError("mask must hold 0 (feature held fixed) or 1 (feature may move)")
    if clip is not None and norm != "linf":
        raise ValueError("clip is supported with norm='linf' only")
    return Ball(inputs, eps, full.contiguous(), norm, clip)


def _check(model: nn.Module, inputs: Tensor) -> Tensor:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, Tensor) or not torch.is_floating_point(inputs):
        raise TypeError("inputs must be a floating torch.Tensor of shape (B, ...)")
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs must be a non-empty batch (B, ...), got shape {tuple(inputs.shape)}; "
            "a single sample needs .unsqueeze(0)"
        )
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or infinite values")
    return inputs.detach()


def _targets(target: int | Sequence[int] | Tensor | None, logits: Tensor) -> Tensor:
    n, k = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    t = t.expand(n) if t.numel() == 1 else t
    if t.shape != (n,):
        raise ValueError(f"got {t.numel()} targets for a batch of {n}")
    if bool(((t < 0) | (t >= k)).any()):
        raise ValueError(f"target out of range for {k} classes")
    return t


def margin_rows(classes: Tensor, n_classes: int, dtype: torch.dtype) -> Tensor:
    """``(N, K-1, K)``: rows ``e_j - e_c`` for every ``j != c`` (decomon's ``C = I - source``)."""
    n = classes.shape[0]
    eye = torch.eye(n_classes, dtype=dtype, device=classes.device)
    rows = eye[None].expand(n, -1, -1) - eye[classes][:, None, :]
    keep = ~torch.nn.functional.one_hot(classes, n_classes).bool()
    return rows[keep].view(n, n_classes - 1, n_classes)


def bounds(
    model: nn.Module,
    inputs: Tensor,
    epsilon: float | Tensor,
    *,
    norm: str = "linf",
    mask: Tensor | None = None,
    clip: tuple[float | Tensor, float | Tensor] | None = None,
    bound: str = "crown",
    relu_lower: str = "adaptive",
    backward_budget: int | None = DEFAULT_BUDGET,
) -> LogitBounds:
    """Lower and upper bounds of every logit over the ball around each sample.

    Args:
        model: classifier returning logits ``(B, n_classes)`` (a final softmax is stripped).
        inputs: ``(B, *in_shape)`` points, never modified.
        epsilon: radius of the ball, a number or ``(B,)`` (in the units of ``inputs``).
        norm: ``"linf"`` (default) or ``"l2"``.
        mask: 0/1, broadcastable to ``inputs``: only features with 1 move (default: all).
        clip: ``(low, high)`` valid input range intersected with the ball (L-inf only).
        bound: ``"crown"`` (default, min of CROWN-IBP and IBP) or ``"ibp"``.
        relu_lower: lower slope of unstable ReLUs in the CROWN pass (``"adaptive"``).
        backward_budget: see :class:`BoundedModel`.

    Returns:
        :class:`LogitBounds` with ``lower``/``upper`` ``(B, n_classes)``.

    Raises:
        UnsupportedOperationError: the model uses an operation without a rule.
        ValueError: bad epsilon, norm, mask or inputs.
    """
    from xai.adapter import preserved

    x = _check(model, inputs)
    ball = make_ball(x, epsilon, norm=norm, mask=mask, clip=clip)
    with preserved(model), torch.no_grad():
        bm = BoundedModel(model, x, backward_budget=backward_budget)
        k = bm.n_outputs
        eye = torch.eye(k, dtype=x.dtype, device=x.device)
        rows = torch.cat([eye, -eye])[None].expand(x.shape[0], -1, -1)
        up = bm.upper(ball, rows, bound=bound, relu_lower=relu_lower)
    return LogitBounds(lower=-up[:, k:], upper=up[:, :k])


def certified_margin(
    model: nn.Module,
    inputs: Tensor,
    epsilon: float | Tensor,
    *,
    target: int | Sequence[int] | Tensor | None = None,
    norm: str = "linf",
    mask: Tensor | None = None,
    clip: tuple[float | Tensor, float | Tensor] | None = None,
    bound: str = "crown",
    relu_lower: str = "adaptive",
    top_k: int | None = None,
    backward_budget: int | None = DEFAULT_BUDGET,
) -> Tensor:
    r"""A lower bound on :math:`\min_{x' \in B} f_c(x') - \max_{j \ne c} f_j(x')`, ``(B,)``.

    Positive means *certified*: no input in the ball changes the decision away from ``c``
    (``target``, default each sample's predicted class). It is ``-AO`` of EVA's adversarial
    overlap (Fel et al. 2023), bounded with the margin rows ``e_j - e_c`` folded into the
    propagation, which is tighter than ``lower_c - max_j upper_j``.

    Args:
        model: classifier returning logits ``(B, n_classes)`` (a final softmax is stripped).
        inputs: ``(B, *in_shape)`` points, never modified.
        epsilon: radius of the ball, a number or ``(B,)`` (in the units of ``inputs``).
        target: the class ``c`` per sample: an index, one per sample, or ``None`` (default:
            each sample's predicted class).
        norm: ``"linf"`` (default) or ``"l2"``.
        mask: 0/1, broadcastable to ``inputs``: only features with 1 move (default: all).
        clip: ``(low, high)`` valid input range intersected with the ball (L-inf only).
        bound: ``"crown"`` (default, min of CROWN-IBP and IBP) or ``"ibp"``.
        relu_lower: lower slope of unstable ReLUs in the CROWN pass (``"adaptive"``).
        top_k: run the CROWN pass only on the ``top_k`` competing classes with the largest IBP
            bound (default: all when ``n_classes <= 100``, else 10); sound either way.
        backward_budget: see :class:`BoundedModel`.

    Returns:
        ``(B,)`` lower bounds of the margin; positive entries are certified.

    Raises:
        UnsupportedOperationError: the model uses an operation without a rule.
        ValueError: bad epsilon, norm, mask, inputs, or a model with fewer than 2 outputs.
    """
    from xai.adapter import preserved

    x = _check(model, inputs)
    ball = make_ball(x, epsilon, norm=norm, mask=mask, clip=clip)
    with preserved(model), torch.no_grad():
        bm = BoundedModel(model, x, backward_budget=backward_budget)
        classes = _targets(target, bm.forward(x))
        k = bm.n_outputs
        if k < 2:
            raise ValueError("a margin needs a model with at least 2 outputs")
        rows = margin_rows(classes, k, x.dtype)
        up = bm.upper(
            ball,
            rows,
            bound=bound,
            relu_lower=relu_lower,
            top_k=default_top_k(k) if top_k is None else top_k,
        )
    return -up.amax(1)


def default_top_k(n_classes: int) -> int | None:
    """All competing classes up to 100 outputs, else 10 (spec section 3.3)."""
    return None if n_classes <= 100 else 10
