"""Interval bound propagation (IBP) and the CROWN-style backward linear relaxation.

Both work on a :class:`~xai.verify.graph.Graph` and a perturbation set around each row's point
(:class:`Ball`: an L-inf or L2 ball of radius ``epsilon`` on the features where ``mask`` is 1,
optionally intersected with a box of valid inputs). Every row has its own point, radius and
mask, so the ``1 + n_cells`` sets of an EVA explanation go through in one batch.

Notation (Zhang et al. 2018, CROWN; Gowal et al. 2018, IBP): to bound ``S = C f(x)`` from above
over the set, a backward pass carries ``Λ`` (``(rows, S, *node_shape)``) and a bias ``β``
from the output to the input; each ReLU is replaced by its linear relaxation under the
pre-activation bounds of IBP (*CROWN-IBP*, Zhang et al. 2020), and the final linear function of
the input is maximized over the set in closed form (Hölder). A lower bound is the upper bound of
``-C``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from xai.verify.graph import Graph, Op

__all__ = ["RELU_LOWER", "Ball", "backward", "frontier", "ibp"]

RELU_LOWER = ("adaptive", "zero", "one", "same")


@dataclass
class Ball:
    """The perturbation set of each row: ``{x : ||(x - center) / mask||_p <= epsilon}``.

    Attributes:
        center: ``(N, *in_shape)`` the points ``x0``.
        epsilon: ``(N,)`` radii (>= 0).
        mask: ``(N, *in_shape)`` 1 where a feature may move, 0 where it is held at ``x0``.
        norm: ``"linf"`` or ``"l2"``.
        clip: optional ``(low, high)`` box of valid inputs (L-inf only), broadcastable to
            ``center``.
    """

    center: Tensor
    epsilon: Tensor
    mask: Tensor
    norm: str = "linf"
    clip: tuple[Tensor | float, Tensor | float] | None = None

    def _eps(self) -> Tensor:
        return self.epsilon.view(-1, *([1] * (self.center.dim() - 1)))

    def box(self) -> tuple[Tensor, Tensor]:
        """``(low, high)``: the smallest box holding the set (its hull for L2)."""
        radius = self._eps() * self.mask
        low, high = self.center - radius, self.center + radius
        if self.clip is not None:
            low = torch.maximum(low, torch.as_tensor(self.clip[0]).to(low))
            high = torch.minimum(high, torch.as_tensor(self.clip[1]).to(high))
        return low, high

    def concretize(self, lam: Tensor) -> Tensor:
        """``max_{x in set} <Λ_s, x>`` for each row and each of the ``S`` rows of ``Λ``."""
        flat = lam.flatten(2)
        if self.norm == "l2":
            center = self.center.flatten(1)[:, None]
            norm = (flat * self.mask.flatten(1)[:, None]).norm(dim=2)
            return (flat * center).sum(2) + self.epsilon[:, None] * norm
        low, high = self.box()
        return _box_max(flat, low.flatten(1)[:, None], high.flatten(1)[:, None])


def _box_max(lam: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``max_{low <= x <= high} <Λ, x>`` over the last dimension."""
    mid, rad = (high + low) / 2, (high - low) / 2
    return (lam * mid).sum(-1) + (lam.abs() * rad).sum(-1)


# -- IBP ------------------------------------------------------------------------------------


def ibp(graph: Graph, ball: Ball, keep: set[int] | None = None) -> dict[int, tuple[Tensor, Tensor]]:
    """Interval bounds ``(low, high)`` of every node (or only of the nodes in ``keep``).

    Affine ops map the center exactly and the radius through ``|L|``; monotone activations and
    max pooling map the two ends. Under L2, a Linear/Conv2d reading the input is bounded exactly
    with the dual norm (``radius_j = epsilon * ||W_j * mask||_2``) instead of the box hull.
    """
    ops = graph.ops
    last_use = [i for i in range(len(ops))]
    for i, op in enumerate(ops):
        for j in op.inputs:
            last_use[j] = max(last_use[j], i)
    boxes: dict[int, tuple[Tensor, Tensor]] = {0: ball.box()}
    # the input and its reshapes: a Linear/Conv2d reading them is bounded with the dual norm
    raw: dict[int, tuple[Tensor, Tensor]] = {0: (ball.center, ball.mask)}
    for i, op in enumerate(ops[1:], start=1):
        ins = [boxes[j] for j in op.inputs]
        if op.kind == "affine":
            source = raw.get(op.inputs[0]) if len(op.inputs) == 1 else None
            if source is not None and op.params.get("passthrough"):
                raw[i] = (op.fn(source[0]), op.fn(source[1]))
            boxes[i] = _ibp_affine(op, ins, ball, source)
        elif op.kind in ("relu", "maxpool"):  # monotone: map the two ends
            low, high = ins[0]
            boxes[i] = (op.fn(low), op.fn(high))
        else:  # pragma: no cover - the graph builder only emits these kinds
            raise AssertionError(op.kind)
        if keep is not None:
            for j in op.inputs:
                if last_use[j] == i and j not in keep:
                    boxes.pop(j, None)
    return boxes


def _ibp_affine(
    op: Op, ins: list[tuple[Tensor, Tensor]], ball: Ball, source: tuple[Tensor, Tensor] | None
) -> tuple[Tensor, Tensor]:
    if source is not None and ball.norm == "l2" and "dual" in op.params:
        # exact over the L2 ball: max_{||d * m|| <= eps} w.d = eps * ||w * m||_2 (m is 0/1)
        center, mask = source
        center = op.fn(center)
        radius = op.params["dual"](mask).clamp_min(0).sqrt()
        radius = radius * ball.epsilon.view(-1, *([1] * (radius.dim() - 1)))
    else:
        assert op.abs_fn is not None
        center = op.fn(*[(lo + hi) / 2 for lo, hi in ins])
        radius = op.abs_fn(*[(hi - lo) / 2 for lo, hi in ins])
    return center - radius, center + radius


# -- CROWN backward pass --------------------------------------------------------------------


def frontier(graph: Graph, rows: int, budget: int | None) -> set[int]:
    """Nodes at which the backward pass stops and concretizes ``Λ`` on the IBP box.

    Walking back from the output, the pass carries ``rows * numel`` coefficients for every
    pending node. As soon as going one node further would need more than ``budget`` of them
    (per sample), all pending nodes are cut there; ``budget=None`` goes back to the input.
    """
    ops = graph.ops
    if budget is None:
        return set()
    numel = [_prod(op.shape) for op in ops]
    pending = {graph.output}
    if rows * numel[graph.output] > budget:
        return {graph.output}
    for i in range(len(ops) - 1, 0, -1):
        if i not in pending:
            continue
        after = (pending - {i}) | set(ops[i].inputs)
        if rows * sum(numel[j] for j in after) > budget:
            return pending
        pending = after
    return set()


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def backward(
    graph: Graph,
    boxes: dict[int, tuple[Tensor, Tensor]],
    lam: Tensor,
    ball: Ball,
    cut: set[int] = frozenset(),  # type: ignore[assignment]
    relu_lower: str = "adaptive",
) -> Tensor:
    """Upper bound of ``Λ f(x)`` over the ball, ``(N, S)``, for ``Λ`` ``(N, S, n_outputs)``.

    ``cut`` nodes are concretized on their IBP boxes instead of being propagated further.
    """
    ops = graph.ops
    n, s = lam.shape[:2]
    beta = lam.new_zeros(n, s)
    lams: dict[int, Tensor] = {graph.output: lam}
    for i in range(len(ops) - 1, -1, -1):
        lam_i = lams.pop(i, None)
        if lam_i is None:
            continue
        op = ops[i]
        if op.kind == "input":
            beta = beta + ball.concretize(lam_i)
            continue
        if i in cut:
            low, high = boxes[i]
            beta = beta + _box_max(
                lam_i.flatten(2), low.flatten(1)[:, None], high.flatten(1)[:, None]
            )
            continue
        if op.kind == "affine":
            ins, bias = _back_affine(op, lam_i, [ops[j].shape for j in op.inputs])
        elif op.kind == "relu":
            low, high = boxes[op.inputs[0]]
            ins, bias = _back_relu(op, lam_i, low, high, relu_lower)
        else:
            low, high = boxes[op.inputs[0]]
            ins, bias = _back_maxpool(op, lam_i, low, high)
        beta = beta + bias
        for j, lam_j in zip(op.inputs, ins, strict=True):
            lams[j] = lam_j if j not in lams else lams[j] + lam_j
    return beta


def _back_affine(
    op: Op, lam: Tensor, in_shapes: list[tuple[int, ...]]
) -> tuple[list[Tensor], Tensor]:
    n, s = lam.shape[:2]
    flat = lam.reshape(n * s, *op.shape)
    zeros = [flat.new_zeros(1, *shape) for shape in in_shapes]
    offset = op.fn(*zeros)  # the affine op's constant part, (1, *out_shape)
    bias = (lam * offset).flatten(2).sum(2)
    if op.transpose is not None:
        outs = op.transpose(flat)
    elif "transpose_shaped" in op.params:
        outs = op.params["transpose_shaped"](flat, in_shapes[0])
    else:
        outs = _vjp(op, flat, in_shapes)
    return [o.reshape(n, s, *shape) for o, shape in zip(outs, in_shapes, strict=True)], bias


def _vjp(op: Op, flat: Tensor, in_shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """The transpose of an affine op's linear part, applied to each row (generic rule)."""
    with torch.enable_grad():
        zs = [flat.new_zeros(flat.shape[0], *shape, requires_grad=True) for shape in in_shapes]
        out = op.fn(*zs)
        grads = torch.autograd.grad(out, zs, flat, allow_unused=True)
    return [
        torch.zeros_like(z) if g is None else g.detach() for z, g in zip(zs, grads, strict=True)
    ]


def relu_relaxation(
    low: Tensor, high: Tensor, low_slope: float = 0.0, relu_lower: str = "adaptive"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear bounds ``a_L z + b_L <= g(z) <= a_U z + b_U`` on ``[low, high]``.

    ``g(z) = max(z, low_slope * z)`` (ReLU, LeakyReLU). Upper: the chord. Lower: a line through
    the origin with slope 1 when ``high > -low`` else ``low_slope`` (``"adaptive"``, CROWN's
    choice and auto_LiRPA's ``'adaptive'``), always ``low_slope`` (``"zero"``), always 1
    (``"one"``) or the chord's slope (``"same"``). Stable neurons are exact.

    Returns:
        ``(a_L, b_L, a_U, b_U)``, each shaped like ``low``.
    """
    one = torch.ones_like(low)
    alpha = one * low_slope  # tensors of low's dtype: python floats would round to float32
    dead, alive = high <= 0, low >= 0
    unstable = ~(dead | alive)
    span = torch.where(unstable, high - low, one)
    g_low = torch.where(low >= 0, low, alpha * low)
    g_high = torch.where(high >= 0, high, alpha * high)
    stable = torch.where(alive, one, alpha)
    a_up = torch.where(unstable, (g_high - g_low) / span, stable)
    b_up = torch.where(unstable, g_low - a_up * low, torch.zeros_like(low))
    if relu_lower == "adaptive":
        slope = torch.where(high > -low, one, alpha)
    elif relu_lower == "zero":
        slope = alpha
    elif relu_lower == "one":
        slope = one
    elif relu_lower == "same":
        slope = a_up
    else:
        raise ValueError(f"relu_lower must be one of {RELU_LOWER}, got {relu_lower!r}")
    a_low = torch.where(unstable, slope, stable)
    return a_low, torch.zeros_like(low), a_up, b_up


def clipped_relaxation(
    low: Tensor, high: Tensor, cap: float, relu_lower: str = "adaptive"
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear bounds ``a_L z + b_L <= clamp(z, 0, cap) <= a_U z + b_U`` on ``[low, high]``.

    ReLU6 / Hardtanh(0, cap), relaxed directly rather than as ``relu(z) - relu(z - cap)``: the
    difference of two relaxations loses the clipping, and its intercepts grow with the width of
    ``[low, high]`` (on MobileNetV2 they reached 1e6 where IBP stays in ``[0, 6]``). Cases:
    below 0 or above ``cap``: the constant; inside: identity; across 0 only: the ReLU
    relaxation; across ``cap`` only: the mirror image (lower chord; upper ``z`` when
    ``cap - low >= high - cap`` else ``cap``, with ``"adaptive"``; always ``cap`` otherwise);
    across both: the constants 0 and ``cap``. Every line stays in ``[g(low), g(high)]`` on the
    interval except the adaptive choices, as in :func:`relu_relaxation`.

    Returns:
        ``(a_L, b_L, a_U, b_U)``, each shaped like ``low``.
    """
    zero, one = torch.zeros_like(low), torch.ones_like(low)
    a_l, b_l, a_u, b_u = relu_relaxation(low, high, 0.0, relu_lower)  # right for 0 < high <= cap
    top = low >= cap
    across_cap = (low >= 0) & (low < cap) & (high > cap)
    both = (low < 0) & (high > cap)
    span = torch.where(across_cap, high - low, one)
    chord = (cap - low) / span
    a_l = torch.where(across_cap, chord, a_l)
    b_l = torch.where(across_cap, low - chord * low, b_l)
    lean = (cap - low >= high - cap) if relu_lower == "adaptive" else torch.zeros_like(top)
    a_u = torch.where(across_cap, torch.where(lean, one, zero), a_u)
    b_u = torch.where(across_cap, torch.where(lean, zero, zero + cap), b_u)
    a_l, b_l = torch.where(both, zero, a_l), torch.where(both, zero, b_l)
    a_u, b_u = torch.where(both, zero, a_u), torch.where(both, zero + cap, b_u)
    a_l, a_u = torch.where(top, zero, a_l), torch.where(top, zero, a_u)
    b_l, b_u = torch.where(top, zero + cap, b_l), torch.where(top, zero + cap, b_u)
    return a_l, b_l, a_u, b_u


def _back_relu(
    op: Op, lam: Tensor, low: Tensor, high: Tensor, mode: str
) -> tuple[list[Tensor], Tensor]:
    alpha, cap = op.params["low_slope"], op.params["cap"]
    if cap is None:
        a_l, b_l, a_u, b_u = relu_relaxation(low, high, alpha, mode)
    else:
        a_l, b_l, a_u, b_u = clipped_relaxation(low, high, cap, mode)
    a_l, b_l, a_u, b_u = (t.unsqueeze(1) for t in (a_l, b_l, a_u, b_u))
    pos, neg = lam.clamp_min(0), lam.clamp_max(0)
    bias = (pos * b_u + neg * b_l).flatten(2).sum(2)
    return [pos * a_u + neg * a_l], bias


def _windows(
    t: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    n, c = t.shape[:2]
    padded = F.pad(t, (padding[1], padding[1], padding[0], padding[0]), value=-torch.inf)
    return F.unfold(padded, kernel, stride=stride).view(n, c, kernel[0] * kernel[1], -1)


def _back_maxpool(op: Op, lam: Tensor, low: Tensor, high: Tensor) -> tuple[list[Tensor], Tensor]:
    """Max pooling (auto_LiRPA 0.3 ``BoundMaxPool``): ``x_{i*} <= y``, ``y <= x_{i*}`` when
    ``l_{i*} >= u_j`` for every other ``j`` of the window, else ``y <= max_i u_i``.
    """
    k, st, p = op.params["kernel"], op.params["stride"], op.params["padding"]
    n, s = lam.shape[:2]
    ch, h, w = low.shape[1:]
    lw, uw = _windows(low, k, st, p), _windows(high, k, st, p)  # (N, C, kk, L)
    best = lw.argmax(2, keepdim=True)
    others = uw.scatter(2, best, -torch.inf).amax(2)
    tight = lw.gather(2, best)[:, :, 0] >= others  # (N, C, L)
    b_up = torch.where(tight, torch.zeros_like(others), uw.amax(2))
    a_up = tight.to(lam.dtype)
    lam = lam.reshape(n, s, ch, -1)
    pos, neg = lam.clamp_min(0), lam.clamp_max(0)
    bias = (pos * b_up[:, None]).flatten(2).sum(2)
    coef = pos * a_up[:, None] + neg  # coefficient of x_{i*}
    kk, windows = k[0] * k[1], lam.shape[-1]
    spread = lam.new_zeros(n, s, ch, kk, windows)
    spread.scatter_(3, best[:, None].expand(n, s, ch, 1, windows), coef[:, :, :, None])
    size = (h + 2 * p[0], w + 2 * p[1])
    out = F.fold(spread.view(n * s, ch * kk, windows), size, k, stride=st)
    out = out[:, :, p[0] : p[0] + h, p[1] : p[1] + w]
    return [out.reshape(n, s, ch, h, w)], bias
