"""The traced model's data structures: :class:`Op` (one operation) and :class:`Graph`.

:func:`~xai.verify.graph.trace` builds them; :mod:`xai.verify.propagate` bounds them. A leaf
module, so that the tracer (:mod:`xai.verify.graph`) and the per-operation rules
(:mod:`xai.verify.specs`) both import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.fx
from torch import Tensor


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


def _ancestors(ops: list[Op], last: int) -> set[int]:
    keep, stack = set(), [last]
    while stack:
        i = stack.pop()
        if i not in keep:
            keep.add(i)
            stack.extend(ops[i].inputs)
    keep.add(0)
    return keep


def _fetch_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if isinstance(obj, Tensor) else obj


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
