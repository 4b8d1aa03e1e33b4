"""The model as a list of operations the bound propagation knows: ``torch.fx`` trace + rules.

:func:`trace` turns a model into a :class:`Graph`: its ``torch.fx`` nodes in topological order,
each one an :class:`Op` that is either an *affine* map of its bounded inputs (Linear, Conv2d,
BatchNorm in eval, average pooling, reshapes, additions, concatenation, scaling by a constant),
an elementwise *activation* (ReLU, ReLU6/Hardtanh, LeakyReLU), or a *max pooling*. Nodes that do
not depend on the input (parameters, ``x.size(0)``) are evaluated once and kept as constants.
Any other operation raises :class:`UnsupportedOperationError` naming the node.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

_Args = tuple[Any, ...]  # a traced call's positional arguments (nodes, constants)
_Kwargs = dict[str, Any]
_IntOrTuple = int | tuple[int, ...]

__all__ = ["SUPPORTED", "Graph", "Op", "UnsupportedOperationError", "trace"]

SUPPORTED = (
    "nn.Linear / F.linear",
    "nn.Conv2d / F.conv2d (zero padding)",
    "nn.BatchNorm1d/2d (eval statistics)",
    "nn.ReLU / F.relu / torch.relu",
    "nn.ReLU6 / F.relu6 / nn.Hardtanh / F.hardtanh",
    "nn.LeakyReLU / F.leaky_relu",
    "nn.MaxPool2d / F.max_pool2d (no ceil_mode, no dilation, no indices)",
    "nn.AvgPool2d / F.avg_pool2d",
    "nn.AdaptiveAvgPool2d / F.adaptive_avg_pool2d",
    "nn.Flatten / torch.flatten / view / reshape",
    "mean / sum over per-sample dimensions, indexing that keeps the batch (t[:, :k])",
    "nn.Dropout* / nn.Identity (pass-through, eval)",
    "addition / subtraction of two tensors or of a constant (residuals)",
    "torch.cat",
    "multiplication / division by a constant (scalar or per-sample-shaped tensor)",
    "a final nn.Softmax / nn.LogSoftmax (stripped: bounds are on the logits)",
)


class UnsupportedOperationError(TypeError, ValueError):
    """The model cannot be bounded: a node without a bound-propagation rule, or a model that
    torch.fx cannot trace (the message names the node or the reason).

    A ``TypeError`` (the model's kind is not supported) and a ``ValueError`` (the library's
    refusal type for a model a method cannot explain), so either ``except`` catches it.
    """


@dataclass
class Op:
    """One node of the traced model.

    Attributes:
        name: where it comes from, e.g. ``"call_module ReLU at 'layer1.0.relu'"``.
        kind: ``"input"``, ``"affine"``, ``"relu"`` (with ``low_slope``/``cap``), ``"maxpool"``.
        inputs: indices of the bounded nodes it reads (constants are baked into ``fn``).
        fn: the operation on its bounded inputs, ``fn(*tensors) -> tensor`` (batch-first).
        shape: per-sample output shape.
        abs_fn: for affine ops, ``|L|`` applied to the radii of the inputs (IBP).
        transpose: for affine ops, an optional fast ``Λ -> [Λ_in, ...]`` (``Λ`` batch-first,
            rows flattened into the batch); the generic rule is the vector-Jacobian product.
        params: rule-specific data (ReLU slopes, pooling geometry, weights).
    """

    name: str
    kind: str
    inputs: list[int]
    fn: Callable[..., Tensor]
    shape: tuple[int, ...]
    abs_fn: Callable[..., Tensor] | None = None
    transpose: Callable[[Tensor], list[Tensor]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    module: str | None = None


@dataclass
class Graph:
    """The traced model: ops in topological order; ``ops[0]`` is the input, the last the output."""

    ops: list[Op]
    consumers: list[list[int]]

    @property
    def output(self) -> int:
        """The index of the output node (the last op)."""
        return len(self.ops) - 1

    def split_index(self, layer: str) -> int:
        """The node whose value is the output of submodule ``layer`` (its last op inside it).

        Raises:
            ValueError: no op comes from ``layer``, or later ops also read earlier nodes (a
                skip connection over the split), so the output does not depend on it alone.
        """
        inside = [
            i
            for i, op in enumerate(self.ops)
            if op.module is not None and (op.module == layer or op.module.startswith(layer + "."))
        ]
        if not inside:
            names = sorted({op.module.rsplit(".", 1)[0] for op in self.ops if op.module})
            raise ValueError(
                f"no traced operation comes from layer {layer!r}; modules: {', '.join(names[:20])}"
            )
        split = inside[-1]
        for i in range(split + 1, len(self.ops)):
            early = [j for j in self.ops[i].inputs if j < split]
            if early:
                raise ValueError(
                    f"layer {layer!r} does not separate the input from the output: "
                    f"{self.ops[i].name} also reads {self.ops[early[0]].name}"
                )
        return split

    def tail(self, split: int) -> Graph:
        """The sub-graph after node ``split``, whose input is that node's value."""
        first = Op(
            f"split at {self.ops[split].name}", "input", [], lambda t: t, self.ops[split].shape
        )
        ops = [first]
        for op in self.ops[split + 1 :]:
            ops.append(
                Op(
                    op.name,
                    op.kind,
                    [j - split for j in op.inputs],
                    op.fn,
                    op.shape,
                    op.abs_fn,
                    op.transpose,
                    op.params,
                    op.module,
                )
            )
        consumers: list[list[int]] = [[] for _ in ops]
        for i, op in enumerate(ops):
            for j in op.inputs:
                consumers[j].append(i)
        return Graph(ops, consumers)


# -- tracing -------------------------------------------------------------------------------


def _describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return f"call_module {type(mod).__name__} at {node.target!r}"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target} (node {node.name!r})"


def _unsupported(node: torch.fx.Node, gm: torch.fx.GraphModule, why: str = "") -> Exception:
    extra = f" ({why})" if why else ""
    return UnsupportedOperationError(
        f"no bound-propagation rule for {_describe(node, gm)}{extra}. Supported: "
        + "; ".join(SUPPORTED)
        + ". Wrap the model so that it only uses these operations."
    )


def trace(model: nn.Module, example: Tensor) -> Graph:
    """Trace ``model`` on ``example`` ``(B, ...)`` into a :class:`Graph` of supported ops.

    Raises:
        UnsupportedOperationError: an operation without a rule (named, with the supported list).
        TypeError: the model cannot be traced symbolically (data-dependent control flow).
    """
    from xai.adapter.layers import _unwrap

    model = _unwrap(model)  # compiled / DataParallel wrappers: bound the module they wrap
    try:
        gm = torch.fx.symbolic_trace(model)
    except (torch.fx.proxy.TraceError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and not any(
            word in str(err) for word in ("symbolic", "Proxy", "trac")
        ):
            raise  # an error of the model itself, not of tracing
        raise UnsupportedOperationError(
            f"{type(model).__name__} cannot be traced by torch.fx ({err}); bound propagation "
            "needs a static graph: pass a wrapper module without data-dependent control flow"
        ) from None
    builder = _Builder(gm)
    with torch.no_grad():
        builder.run(example)
    return builder.graph()


_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_PASS_FUNCS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
_PASS_METHODS = ("contiguous", "clone", "detach")
_RESHAPE_FUNCS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("view", "reshape", "flatten", "squeeze", "unsqueeze")
_SOFTMAX = (nn.Softmax, nn.LogSoftmax)
_SOFTMAX_FUNCS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)


class _Builder:
    """Evaluates the fx graph once on the example while building the :class:`Op` list."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.ops: list[Op] = []
        self.index: dict[torch.fx.Node, int] = {}  # bounded node -> op index
        self.const: dict[torch.fx.Node, Any] = {}  # input-independent node -> value
        self.value: dict[torch.fx.Node, Tensor] = {}  # bounded node -> value on the example

    def graph(self) -> Graph:
        consumers: list[list[int]] = [[] for _ in self.ops]
        for i, op in enumerate(self.ops):
            for j in op.inputs:
                consumers[j].append(i)
        return Graph(self.ops, consumers)

    # helpers
    def _arg(self, a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda n: self.const.get(n, n))

    def _bounded(self, a: Any) -> list[torch.fx.Node]:
        found: list[torch.fx.Node] = []
        torch.fx.node.map_arg(a, lambda n: found.append(n) if n in self.index else None)
        return found

    def _add(self, node: torch.fx.Node, op: Op, value: Tensor) -> None:
        self.index[node] = len(self.ops)
        self.ops.append(op)
        self.value[node] = value

    def run(self, example: Tensor) -> None:
        nodes = list(self.gm.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        # optional arguments of forward (e.g. attn_mask=None) keep their default values
        for extra in placeholders[1:]:
            if extra.args:
                self.const[extra] = extra.args[0]
        placeholders = placeholders[:1] + [n for n in placeholders[1:] if not n.args]
        if len(placeholders) != 1:
            raise UnsupportedOperationError(
                f"bound propagation needs a model with one tensor input, got "
                f"{len(placeholders)} inputs ({', '.join(n.name for n in placeholders)})"
            )
        output_node = next((n for n in nodes if n.op == "output"), None)
        needed = _fx_ancestors(_selected_output(output_node.args[0])) if output_node else set()
        for node in nodes:
            if node.op not in ("placeholder", "output", "get_attr") and node not in needed:
                continue  # off the explained output's path (an auxiliary head, a dict entry)
            if node.op == "placeholder" and node in self.const:
                continue
            if node.op == "placeholder":
                self._add(
                    node, Op("input", "input", [], lambda x: x, tuple(example.shape[1:])), example
                )
            elif node.op == "get_attr":
                self.const[node] = _fetch_attr(self.gm, node.target)
            elif node.op == "output":
                output_node = node
            else:
                bounded = self._bounded((node.args, node.kwargs))
                if not bounded:
                    self.const[node] = self._eval_const(node)
                else:
                    self._convert(node, bounded)
        assert output_node is not None
        out = _selected_output(output_node.args[0])
        if not isinstance(out, torch.fx.Node) or out not in self.index:
            raise UnsupportedOperationError(
                "the model's output does not depend on its input through supported operations"
            )
        # the output op must be the last one (drop ops after it: e.g. auxiliary heads)
        last = self.index[out]
        if last != len(self.ops) - 1:
            keep = _ancestors(self.ops, last)
            remap = {old: new for new, old in enumerate(sorted(keep))}
            ops = []
            for old in sorted(keep):
                op = self.ops[old]
                op.inputs = [remap[i] for i in op.inputs]
                ops.append(op)
            self.ops = ops
        if len(self.ops[-1].shape) != 1:
            raise UnsupportedOperationError(
                f"bounds are on logits of shape (B, n_classes); this model returns per-sample "
                f"shape {self.ops[-1].shape}"
            )

    def _eval_const(self, node: torch.fx.Node) -> Any:
        args, kwargs = self._arg(node.args), self._arg(node.kwargs)
        if node.op == "call_module":
            return self.gm.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_function":
            return cast(Callable[..., Any], node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        raise _unsupported(node, self.gm)

    def _convert(self, node: torch.fx.Node, bounded: list[torch.fx.Node]) -> None:
        gm = self.gm
        args, kwargs = self._arg(node.args), self._arg(node.kwargs)
        desc = _describe(node, gm)
        first = args[0] if args else None
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, _SOFTMAX):
                return self._strip(node, first, desc)
            make = _module_rule(mod)
            if make is None or len(bounded) != 1 or first is not bounded[0]:
                raise _unsupported(node, gm)
            spec = make(mod, self.value[first])
            if isinstance(spec, str):
                raise _unsupported(node, gm, spec)
            spec["module"] = node.target
            return self._emit(node, desc, [first], spec)
        if node.op == "call_function":
            fn = cast(Callable[..., Any], node.target)  # a callable for call_function
            return self._function(node, desc, fn, args, kwargs, bounded)
        if node.op == "call_method":
            return self._method(node, desc, str(node.target), args, kwargs, bounded)
        raise _unsupported(node, gm)

    def _strip(self, node: torch.fx.Node, src: Any, desc: str) -> None:
        users = list(node.users)
        if not (len(users) == 1 and users[0].op == "output"):
            raise _unsupported(node, self.gm, "softmax is only supported as the final operation")
        self.index[node] = self.index[src]
        self.value[node] = self.value[src]

    def _emit(
        self, node: torch.fx.Node, desc: str, inputs: list[torch.fx.Node], spec: dict
    ) -> None:
        values = [self.value[n] for n in inputs]
        out = spec["fn"](*values)
        if not isinstance(out, Tensor):
            raise _unsupported(node, self.gm, "it does not return a tensor")
        op = Op(
            desc,
            spec.pop("kind"),
            [self.index[n] for n in inputs],
            spec.pop("fn"),
            tuple(out.shape[1:]),
            spec.pop("abs_fn", None),
            spec.pop("transpose", None),
            spec,
            spec.pop("module", None),
        )
        self._add(node, op, out)

    def _function(
        self,
        node: torch.fx.Node,
        desc: str,
        fn: Callable[..., Any],
        args: _Args,
        kwargs: _Kwargs,
        bounded: list[torch.fx.Node],
    ) -> None:
        gm = self.gm
        if fn in _SOFTMAX_FUNCS:
            return self._strip(node, args[0], desc)
        if fn is getattr and len(args) == 2 and args[1] in ("shape", "ndim", "dtype", "device"):
            self.const[node] = getattr(self.value[args[0]], args[1])
            return None
        x: Any = args[0] if args else None  # a traced node when `single`
        single = len(bounded) == 1 and x is bounded[0]
        if fn in (F.relu, torch.relu) and single:
            return self._emit(node, desc, [x], _relu_spec(0.0, None))
        if fn is F.relu6 and single:
            return self._emit(node, desc, [x], _relu_spec(0.0, 6.0))
        if fn is F.hardtanh and single:
            lo = _option(args, kwargs, "min_val", 1, -1.0)
            hi = _option(args, kwargs, "max_val", 2, 1.0)
            if lo != 0.0:
                raise _unsupported(node, gm, "only hardtanh(min_val=0) (ReLU6-like) is supported")
            return self._emit(node, desc, [x], _relu_spec(0.0, float(hi)))
        if fn is F.leaky_relu and single:
            slope = _option(args, kwargs, "negative_slope", 1, 0.01)
            return self._leaky(node, desc, x, float(slope))
        if fn in _PASS_FUNCS and single:
            return self._emit(node, desc, [x], _identity_spec())
        if fn in _RESHAPE_FUNCS and single:
            return self._emit(node, desc, [x], _reshape_spec(self.value[x], fn, args, kwargs))
        if fn is F.linear and single and not self._bounded(args[1:]):
            w = args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            return self._emit(node, desc, [x], _linear_spec(w, b))
        if fn is F.conv2d and single and not self._bounded(args[1:]):
            return self._emit(node, desc, [x], _conv_functional(args, kwargs))
        if fn in (F.avg_pool2d, F.adaptive_avg_pool2d) and single:
            rest, kw = args[1:], kwargs
            return self._emit(node, desc, [x], _affine(lambda t: fn(t, *rest, **kw), positive=True))
        if fn is F.max_pool2d and single:
            spec = _maxpool_spec(*args[1:], **kwargs)
            if isinstance(spec, str):
                raise _unsupported(node, gm, spec)
            return self._emit(node, desc, [x], spec)
        if fn in (operator.add, torch.add, operator.sub, torch.sub) and not kwargs:
            return self._add_sub(node, desc, fn, args, bounded)
        if fn in (operator.mul, torch.mul, operator.truediv, torch.div) and not kwargs:
            return self._scale(node, desc, fn, args, bounded)
        if fn is operator.neg and single:
            return self._emit(node, desc, [x], _scale_spec(lambda t: -t, 1.0))
        if fn is torch.cat:
            return self._cat(node, desc, args, kwargs, bounded)
        if fn in (torch.mean, torch.sum) and single:
            return self._reduce(node, fn, args, kwargs)
        if fn is operator.getitem and single:
            return self._getitem(node, args[1])
        raise _unsupported(node, gm)

    def _method(
        self,
        node: torch.fx.Node,
        desc: str,
        name: str,
        args: _Args,
        kwargs: _Kwargs,
        bounded: list[torch.fx.Node],
    ) -> None:
        x = args[0]
        single = len(bounded) == 1 and x is bounded[0]
        if not single:
            raise _unsupported(node, self.gm)
        if name in ("softmax", "log_softmax"):
            return self._strip(node, x, desc)
        if name in _PASS_METHODS:
            return self._emit(node, desc, [x], _identity_spec())
        if name in _RESHAPE_METHODS:
            method = getattr(torch.Tensor, name)
            return self._emit(node, desc, [x], _reshape_spec(self.value[x], method, args, kwargs))
        if name == "relu":
            return self._emit(node, desc, [x], _relu_spec(0.0, None))
        if name in ("mean", "sum"):
            return self._reduce(node, getattr(torch, name), args, kwargs)
        if name in ("size", "dim"):
            self.const[node] = getattr(self.value[x], name)(*args[1:], **kwargs)
            return None
        if name in ("add", "sub", "mul", "div") and not kwargs:
            fn = {
                "add": operator.add,
                "sub": operator.sub,
                "mul": operator.mul,
                "div": operator.truediv,
            }[name]
            if name in ("add", "sub"):
                return self._add_sub(node, desc, fn, args, bounded)
            return self._scale(node, desc, fn, args, bounded)
        raise _unsupported(node, self.gm)

    def _reduce(
        self, node: torch.fx.Node, fn: Callable[..., Any], args: _Args, kwargs: _Kwargs
    ) -> None:
        """``mean``/``sum`` over per-sample dimensions (global average pooling written out)."""
        x, rest = args[0], args[1:]
        value = self.value[x]
        dims = _option(args, kwargs, "dim", 1, None)
        dims = [dims] if isinstance(dims, int) else dims
        if dims is None or any(d % value.dim() == 0 for d in dims) or kwargs.get("dtype"):
            raise _unsupported(node, self.gm, "a reduction over the batch dimension")
        spec = _affine(lambda t: fn(t, *rest, **kwargs), positive=True)
        return self._emit(node, _describe(node, self.gm), [x], spec)

    def _getitem(self, node: torch.fx.Node, index: Any) -> None:
        """Indexing that keeps the batch dimension whole (``t[:, :k]``, ``t[:, 0]``)."""
        index = index if isinstance(index, tuple) else (index,)
        if (
            not index
            or index[0] != slice(None)
            or any(isinstance(i, (Tensor, list)) or i is None for i in index)
        ):
            raise _unsupported(node, self.gm, "only indexing that keeps the batch dimension")
        x = cast(torch.fx.Node, node.args[0])
        spec = _affine(lambda t: t[index], positive=True)
        return self._emit(node, _describe(node, self.gm), [x], spec)

    def _leaky(self, node: torch.fx.Node, desc: str, x: torch.fx.Node, slope: float) -> None:
        if not 0.0 <= slope <= 1.0:
            raise _unsupported(node, self.gm, "LeakyReLU needs a negative slope in [0, 1]")
        return self._emit(node, desc, [x], _relu_spec(slope, None))

    def _add_sub(
        self,
        node: torch.fx.Node,
        desc: str,
        fn: Callable[..., Any],
        args: _Args,
        bounded: list[torch.fx.Node],
    ) -> None:
        a, b = args[0], args[1]
        sign = -1.0 if fn in (operator.sub, torch.sub) else 1.0
        if len(bounded) == 2 and a is not b and a in self.index and b in self.index:
            spec = _affine(lambda s, t: s + sign * t, positive=None)
            spec["abs_fn"] = lambda s, t: s + t
            if self.value[a].shape == self.value[b].shape:  # else broadcasting: generic vjp
                spec["transpose"] = lambda lam: [lam, sign * lam]
            return self._emit(node, desc, [a, b], spec)
        if len(bounded) == 1 and (a is bounded[0]) != (b is bounded[0]):
            if a is bounded[0]:
                other = b
                return self._emit(node, desc, [a], _scale_spec(lambda t: t + sign * other, 1.0))
            other = a
            return self._emit(node, desc, [b], _scale_spec(lambda t: other + sign * t, sign))
        raise _unsupported(node, self.gm, "needs two distinct tensors or a tensor and a constant")

    def _scale(
        self,
        node: torch.fx.Node,
        desc: str,
        fn: Callable[..., Any],
        args: _Args,
        bounded: list[torch.fx.Node],
    ) -> None:
        a, b = args[0], args[1]
        if len(bounded) != 1 or (a is bounded[0]) == (b is bounded[0]):
            raise _unsupported(node, self.gm, "a product of two bounded tensors has no rule")
        x, c = (a, b) if a is bounded[0] else (b, a)
        divide = fn in (operator.truediv, torch.div)
        if divide and x is b:
            raise _unsupported(node, self.gm, "division by a bounded tensor has no rule")
        if isinstance(c, Tensor) and c.numel() != 1:
            value = self.value[x]
            if (
                c.dim() > value.dim()
                or (c.dim() == value.dim() and c.shape[0] != 1)
                or (torch.broadcast_shapes(c.shape, value.shape) != value.shape)
            ):
                raise _unsupported(node, self.gm, "a constant factor must broadcast to one sample")
            const = c.detach().to(value.dtype)
            const = 1.0 / const if divide else const
            spec = {
                "kind": "affine",
                "fn": lambda t: t * const,
                "abs_fn": lambda r: r * const.abs(),
                "transpose": lambda lam: [lam * const],
            }
            return self._emit(node, desc, [x], spec)
        if isinstance(c, Tensor):
            c = float(c)
        if not isinstance(c, (int, float)):
            raise _unsupported(node, self.gm)
        factor = 1.0 / c if divide else float(c)
        return self._emit(node, desc, [x], _scale_spec(lambda t: t * factor, factor))

    def _cat(
        self,
        node: torch.fx.Node,
        desc: str,
        args: _Args,
        kwargs: _Kwargs,
        bounded: list[torch.fx.Node],
    ) -> None:
        tensors = args[0]
        dim = _option(args, kwargs, "dim", 1, 0)
        if not isinstance(tensors, (list, tuple)) or any(t not in self.index for t in tensors):
            raise _unsupported(node, self.gm, "only a concatenation of bounded tensors")
        if len(set(tensors)) != len(tensors):
            raise _unsupported(node, self.gm, "the same tensor twice in one concatenation")
        ndim = self.value[tensors[0]].dim()
        dim = dim % ndim
        if dim == 0:
            raise _unsupported(node, self.gm, "concatenation along the batch dimension")
        sizes = [self.value[t].shape[dim] for t in tensors]
        spec = _affine(lambda *ts: torch.cat(ts, dim), positive=True)
        spec["transpose"] = lambda lam: list(torch.split(lam, sizes, dim))
        return self._emit(node, desc, list(tensors), spec)


def _fetch_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, Tensor) else obj


def _ancestors(ops: list[Op], last: int) -> set[int]:
    keep, stack = set(), [last]
    while stack:
        i = stack.pop()
        if i not in keep:
            keep.add(i)
            stack.extend(ops[i].inputs)
    keep.add(0)
    return keep


# -- rules ----------------------------------------------------------------------------------


def _affine(fn: Callable[..., Tensor], positive: bool | None) -> dict:
    """An affine op; ``positive=True`` when its linear part has nonnegative coefficients."""
    spec: dict[str, Any] = {"kind": "affine", "fn": fn}
    if positive:

        def abs_fn(*rs: Tensor) -> Tensor:
            return fn(*rs) - fn(*[torch.zeros_like(r[:1]) for r in rs])

        spec["abs_fn"] = abs_fn
    return spec


def _identity_spec() -> dict:
    spec = _affine(lambda t: t, positive=True)
    spec["passthrough"] = True
    return spec


def _scale_spec(fn: Callable[[Tensor], Tensor], factor: float) -> dict:
    return {
        "kind": "affine",
        "fn": fn,
        "abs_fn": lambda r: r * abs(factor),
        "transpose": lambda lam: [lam * factor],
    }


def _relu_spec(low_slope: float, cap: float | None) -> dict:
    def fn(t: Tensor) -> Tensor:
        y = torch.where(t >= 0, t, t * low_slope) if low_slope else t.clamp_min(0)
        return y.clamp_max(cap) if cap is not None else y

    return {"kind": "relu", "fn": fn, "low_slope": low_slope, "cap": cap}


def _linear_spec(weight: Tensor, bias: Tensor | None) -> dict:
    w = weight.detach()
    b = None if bias is None else bias.detach()
    w_abs = w.abs()
    return {
        "kind": "affine",
        "fn": lambda t: F.linear(t, w, b),
        "abs_fn": lambda r: F.linear(r, w_abs),
        "transpose": lambda lam: [lam @ w],
        "weight": w,
        "dual": lambda m: m @ (w * w).T,  # sum_i w_ji^2 m_i, for the L2 first layer
        "op_name": "linear",
    }


def _option(args: _Args, kwargs: _Kwargs, name: str, position: int, default: Any) -> Any:
    """A traced call's argument ``name``, given by keyword or at ``position``, else ``default``."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _conv_spec(
    weight: Tensor,
    bias: Tensor | None,
    stride: _IntOrTuple,
    padding: _IntOrTuple,
    dilation: _IntOrTuple,
    groups: int,
) -> dict:
    w = weight.detach()
    b = None if bias is None else bias.detach()
    w_abs, w_sq = w.abs(), w * w
    kw: dict[str, Any] = {
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
    }

    def transpose(lam: Tensor, in_shape: tuple[int, ...]) -> list[Tensor]:
        # output_padding makes conv_transpose2d return exactly the input's spatial size
        out = F.conv_transpose2d(lam, w, None, stride, padding, 0, groups, dilation)
        pad_h, pad_w = in_shape[-2] - out.shape[-2], in_shape[-1] - out.shape[-1]
        if pad_h or pad_w:
            out = F.conv_transpose2d(
                lam, w, None, stride, padding, (pad_h, pad_w), groups, dilation
            )
        return [out]

    return {
        "kind": "affine",
        "fn": lambda t: F.conv2d(t, w, b, **kw),
        "abs_fn": lambda r: F.conv2d(r, w_abs, None, **kw),
        "transpose_shaped": transpose,
        "dual": lambda m: F.conv2d(m, w_sq, None, **kw),
        "op_name": "conv2d",
    }


def _conv_functional(args: _Args, kwargs: _Kwargs) -> dict:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    padding = bound.get("padding", 0)
    if isinstance(padding, str):
        raise TypeError("string padding of F.conv2d is not supported; use integers")
    return _conv_spec(
        bound["weight"],
        bound.get("bias"),
        bound.get("stride", 1),
        padding,
        bound.get("dilation", 1),
        bound.get("groups", 1),
    )


def _bn_spec(mod: nn.modules.batchnorm._BatchNorm, value: Tensor) -> dict | str:
    if mod.running_mean is None or mod.running_var is None:
        return "batch norm without running statistics (track_running_stats=False)"
    scale = torch.rsqrt(mod.running_var.detach() + mod.eps)
    if mod.weight is not None:
        scale = scale * mod.weight.detach()
    shift = -mod.running_mean.detach() * scale
    if mod.bias is not None:
        shift = shift + mod.bias.detach()
    view = (1, -1) + (1,) * (value.dim() - 2)
    s, t = scale.to(value.dtype).view(view), shift.to(value.dtype).view(view)
    return {
        "kind": "affine",
        "fn": lambda x: x * s + t,
        "abs_fn": lambda r: r * s.abs(),
        "transpose": lambda lam: [lam * s],
    }


def _maxpool_spec(
    kernel_size: _IntOrTuple,
    stride: _IntOrTuple | None = None,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> dict | str:
    pair = nn.modules.utils._pair
    if return_indices:
        return "return_indices=True"
    if ceil_mode:
        return "ceil_mode=True"
    if pair(dilation) != (1, 1):
        return "dilation > 1"
    k = pair(kernel_size)
    s = pair(stride) if stride is not None and stride != [] else k
    p = pair(padding)
    return {
        "kind": "maxpool",
        "fn": lambda t: F.max_pool2d(t, k, s, p),
        "kernel": k,
        "stride": s,
        "padding": p,
    }


def _reshape_spec(value: Tensor, fn: Callable[..., Any], args: _Args, kwargs: _Kwargs) -> dict:
    # a reshape keeps each sample's elements: re-target it to the traced per-sample shape, so
    # that shapes computed from x.size(0) work for any number of rows
    out = fn(value, *args[1:], **kwargs)
    shape = tuple(out.shape[1:])
    if out.dim() == 0 or out.shape[0] != value.shape[0]:
        raise UnsupportedOperationError(
            f"a reshape that mixes samples (shape {tuple(value.shape)} -> {tuple(out.shape)})"
        )
    spec = _affine(lambda t: t.reshape(t.shape[0], *shape), positive=True)
    spec["passthrough"] = True
    return spec


def _module_rule(mod: nn.Module):
    if isinstance(mod, nn.Linear):
        return lambda m, v: _linear_spec(m.weight, m.bias)
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            return lambda m, v: f"padding_mode={m.padding_mode!r}"
        if isinstance(mod.padding, str):
            return _string_padding_conv
        return lambda m, v: _conv_spec(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _bn_spec
    if isinstance(mod, nn.ReLU):
        return lambda m, v: _relu_spec(0.0, None)
    if isinstance(mod, nn.ReLU6):
        return lambda m, v: _relu_spec(0.0, 6.0)
    if isinstance(mod, nn.Hardtanh):
        return lambda m, v: (
            _relu_spec(0.0, float(m.max_val))
            if m.min_val == 0.0
            else "only Hardtanh(0, max_val) (ReLU6-like) is supported"
        )
    if isinstance(mod, nn.LeakyReLU):
        return lambda m, v: (
            _relu_spec(float(m.negative_slope), None)
            if 0.0 <= m.negative_slope <= 1.0
            else "LeakyReLU needs a negative slope in [0, 1]"
        )
    if isinstance(mod, nn.MaxPool2d):
        return lambda m, v: _maxpool_spec(
            m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
        )
    if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return lambda m, v: _affine(lambda t: m(t), positive=True)
    if isinstance(mod, nn.Flatten):
        return lambda m, v: _reshape_spec(v, m.forward, (v,), {})
    if isinstance(mod, _PASS_MODULES):
        return lambda m, v: _identity_spec()
    return None


def _string_padding_conv(mod: nn.Conv2d, value: Tensor) -> dict | str:
    left_right_top_bottom = mod._reversed_padding_repeated_twice
    left, right, top, bottom = left_right_top_bottom
    if left != right or top != bottom:
        return f"asymmetric padding={mod.padding!r}"
    return _conv_spec(mod.weight, mod.bias, mod.stride, (top, left), mod.dilation, mod.groups)


def _selected_output(out: Any) -> Any:
    """The explained entry of a traced output, as ``xai.adapter.unwrap_output`` picks it: the
    first of a tuple/list, ``logits`` (or ``out``) of a dict.
    """
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, dict):
        out = out.get("logits", out.get("out"))
    return out


def _fx_ancestors(node: Any) -> set:
    """Every fx node the given node depends on, itself included."""
    if not isinstance(node, torch.fx.Node):
        return set()
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen
