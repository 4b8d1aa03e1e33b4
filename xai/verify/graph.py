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
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai.verify.ops import (
    Graph,
    Op,
    UnsupportedOperationError,
    _ancestors,
    _fetch_attr,
    _fx_ancestors,
    _selected_output,
)
from xai.verify.specs import (
    _PASS_FUNCS,
    _PASS_METHODS,
    _RESHAPE_FUNCS,
    _RESHAPE_METHODS,
    _SOFTMAX,
    _SOFTMAX_FUNCS,
    SUPPORTED,
    _affine,
    _Args,
    _conv_functional,
    _describe,
    _identity_spec,
    _Kwargs,
    _linear_spec,
    _maxpool_spec,
    _module_rule,
    _option,
    _relu_spec,
    _reshape_spec,
    _scale_spec,
    _unsupported,
)

__all__ = ["SUPPORTED", "Graph", "Op", "UnsupportedOperationError", "trace"]


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
