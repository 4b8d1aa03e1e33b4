"""Rule hooks: change how gradients flow backward through chosen modules, without touching them.

A forward hook routes a module's output through an ``autograd.Function`` that is the identity in
the forward pass and applies a rule in the backward pass (the zennit pattern). Because the
function returns a new tensor, in-place operations after the module cannot corrupt it.

* :func:`guided_relus`: guided backpropagation through every ReLU.
* :func:`rewired`: replace the backward pass of chosen modules by arbitrary rules (LRP).
* :func:`split_residuals`: give the functional residual addition of a block (``out +=
  identity``) its own backward rule, with hooks only (no forward patching).
* :func:`functional_links`: the same for functional operations between two modules (e.g.
  MobileNetV2's ``adaptive_avg_pool2d`` + ``flatten`` before its classifier).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from xai.adapter.hooks import hooks

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class _PositiveGradient(torch.autograd.Function):
    """Identity forward; backward keeps only the positive part of the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


def _guide(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
    return _PositiveGradient.apply(output)


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[None]:
    """Guided backpropagation (Springenberg et al. 2015) for every ``nn.ReLU``/``nn.ReLU6``.

    The backward pass through each activation becomes ``1[x > 0] * max(grad, 0)``.

    Raises:
        ValueError: the model has no ReLU modules (functional ``F.relu`` cannot be hooked, and
            guided backprop would silently degrade to the plain gradient).
    """
    modules = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no nn.ReLU/nn.ReLU6 modules; guided backpropagation "
            "needs activation modules (functional F.relu calls cannot be hooked). Use "
            "nn.ReLU modules or a non-guided method"
        )
    with hooks(forward={m: _guide for m in modules}):
        yield


# --------------------------------------------------------------------------------------------
# Generic rule hooks (used by LRP): replace the backward pass of chosen modules.
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Call:
    """One call of a rewired module, as seen by its backward rule.

    Attributes:
        module: the module that was called.
        input: the module's (first) input, detached (not copied: see ``input_version``).
        output: the detached output value.
        source: the rewired call whose output tensor was this call's input, if any (so that,
            e.g., a batch norm can tell that it directly follows a convolution).
        context: free slot for rules and canonizers (merged parameters, a rule override).
        output_version: the output's version counter when the call returned; see
            :meth:`output_intact`.
        input_version: the input's version counter when the call returned; the input is not
            copied, so the backward pass checks that nothing changed it in place since. ``-1``:
            not checked (an in-place module allowed to overwrite its input, see
            :func:`rewired`'s ``overwrite``; its rule does not read the input).
    """

    module: nn.Module
    input: Tensor
    output: Tensor
    source: Call | None = None
    context: dict = field(default_factory=dict)
    output_version: int = -1
    input_version: int = -1

    def output_intact(self) -> bool:
        """Whether :attr:`output` still holds the module's result (no later in-place change)."""
        return self.output._version == self.output_version


BackwardRule = Callable[[Call, Tensor], Tensor]
"""``rule(call, grad_output) -> grad_input``: the backward pass of one module call."""


class _Rewire(torch.autograd.Function):
    """Forward: the module's output value. Backward: ``rule(call, grad)`` w.r.t. the input.

    The module's own autograd graph is bypassed: the output depends on the input only through
    this node.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, call: Call, rule: BackwardRule) -> Tensor:
        ctx.call = call
        ctx.rule = rule
        # A new alias (same storage and version counter), not ``call.output`` itself: the
        # returned tensor gets this node as grad_fn, and ctx -> call -> that tensor -> grad_fn
        # -> ctx would be a reference cycle through C++ that Python's gc cannot free, keeping
        # every activation of the graph alive after the explanation (about 0.2 GB per image on
        # MobileNetV2).
        return call.output.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        call: Call = ctx.call
        if call.input_version >= 0 and call.input._version != call.input_version:
            raise RuntimeError(
                f"the input of {type(call.module).__name__} was changed in place after the "
                "module ran (e.g. `x += y` or `x.relu_()` in the model's forward); its backward "
                "rule needs the value the module saw: make that operation out-of-place"
            )
        grad_input = ctx.rule(call, grad)
        if grad_input.shape != call.input.shape:
            raise RuntimeError(
                f"the backward rule of {type(call.module).__name__} returned shape "
                f"{tuple(grad_input.shape)} for an input of shape {tuple(call.input.shape)}"
            )
        return grad_input, None, None


def _largest(t: Tensor) -> float:
    """``max |t|`` in one pass, without a temporary (NaN if ``t`` has one)."""
    low, high = torch.aminmax(t)
    return max(-float(low), float(high))


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


Overwrite = Callable[[nn.Module, Call], bool]
"""``overwrite(module, source) -> bool``: whether an in-place ``module`` may act on the output
of the call ``source`` itself (see :func:`rewired`)."""


class _Rewirer:
    """State of one :func:`rewired` context: pending inputs and the producer of each tensor."""

    def __init__(
        self,
        rules: Mapping[nn.Module, BackwardRule],
        on_call: Callable[[Call], None] | None,
        overwrite: Overwrite | None = None,
    ) -> None:
        self.rules = rules
        self.on_call = on_call
        self.overwrite = overwrite
        # module -> [(input, snapshot, source, overwritten)], one per call not yet returned
        self.pending: dict[nn.Module, list[tuple[Tensor, Tensor, Call | None, bool]]] = {}
        # id(tensor) -> (tensor, call); the tensor is kept alive so that its id is not reused
        self.produced: dict[int, tuple[Tensor, Call]] = {}
        self.consumed: set[int] = set()  # ids of produced tensors some call took as input

    def pre(self, module: nn.Module, args: tuple):
        if not args or not isinstance(args[0], Tensor):
            raise TypeError(
                f"{type(module).__name__} was called without a tensor as first argument; "
                "LRP rules need single-tensor modules"
            )
        x = args[0]
        snapshot = x.detach()  # no copy: later in-place changes are detected (input_version)
        entry = self.produced.get(id(x))
        source = entry[1] if entry is not None and entry[0] is x else None
        given, overwritten = snapshot, False
        if getattr(module, "inplace", False):
            # in-place modules (ReLU(inplace=True)) work on their own copy, like zennit's
            # clone, unless nothing needs the value they overwrite: the output of a rewired
            # call that no other call took as input, and that ``overwrite`` releases
            overwritten = (
                source is not None
                and self.overwrite is not None
                and id(x) not in self.consumed
                and self.overwrite(module, source)
            )
            if not overwritten:
                given = snapshot.clone()
        if source is not None:
            self.consumed.add(id(x))
        self.pending.setdefault(module, []).append((x, snapshot, source, overwritten))
        return (given,) + tuple(args[1:])

    def post(self, module: nn.Module, _args: tuple, output: object):
        x, snapshot, source, overwritten = self.pending[module].pop()
        if not isinstance(output, Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}; LRP rules need "
                "modules that return a single tensor"
            )
        value = output.detach()
        if not overwritten and _same_storage(value, snapshot):
            value = value.clone()  # identity-like modules return their input
        call = Call(
            module=module,
            input=snapshot,
            output=value,
            source=source,
            output_version=value._version,
            input_version=-1 if overwritten else snapshot._version,
        )
        if self.on_call is not None:
            self.on_call(call)
        out = _Rewire.apply(x, call, self.rules[module]) if x.requires_grad else value
        self.produced[id(out)] = (out, call)
        return out


@contextlib.contextmanager
def rewired(
    rules: Mapping[nn.Module, BackwardRule],
    on_call: Callable[[Call], None] | None = None,
    overwrite: Overwrite | None = None,
) -> Iterator[None]:
    """Replace the backward pass of ``rules``' modules for the duration of a ``with`` block.

    A forward pre-hook records each call's input (in-place modules get a copy to work on,
    unless ``overwrite`` allows otherwise; an in-place change of a recorded input by other code
    raises in the backward pass); a
    forward hook returns the module's output through an identity ``autograd.Function`` whose
    backward is ``rule(call, grad_output)`` (the zennit pattern, without module backward
    hooks). Downstream in-place operations (``ReLU(inplace=True)``, ``out += identity``) act on
    fresh tensors and cannot corrupt the recorded values. Hooks are removed on exit, also after
    an exception.

    Args:
        rules: module -> backward rule. Each module must take one tensor and return one tensor.
        on_call: called with every :class:`Call` right after the forward of its module, e.g.
            to merge a batch norm with the convolution that produced its input.
        overwrite: ``overwrite(module, source)``, asked before an in-place module (``inplace``
            attribute true) runs on the output of the rewired call ``source`` that no other
            call has taken as input yet: ``True`` lets it overwrite that output instead of a
            copy (saving one copy per ``ReLU(inplace=True)``). Answer ``True`` only when the
            module's rule does not read its input and the rules of ``source`` (and of a call
            merged with it) do not need its output: both are changed in place (their
            ``output_intact()`` turns false). ``None`` (default): always a copy.
    """
    state = _Rewirer(rules, on_call, overwrite)
    modules = list(rules)
    try:
        with hooks(
            forward={m: state.post for m in modules}, forward_pre={m: state.pre for m in modules}
        ):
            yield
    finally:
        state.pending.clear()
        state.produced.clear()
        state.consumed.clear()


# --------------------------------------------------------------------------------------------
# Residual additions y = post(branch(x) + shortcut(x)), split between the two terms.
# --------------------------------------------------------------------------------------------

SplitRule = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""``split(branch, shortcut, grad_output) -> (grad_branch, grad_shortcut)``."""


@dataclass(frozen=True, eq=False)
class Residual:
    """Where a residual block's two summands come from.

    Attributes:
        block: the block; its output must be ``post(branch_output + shortcut_output)``.
        branch: the module whose output is the residual branch (e.g. ``bn2``).
        shortcut: the module whose output is the shortcut (e.g. ``downsample``), or ``None``
            when the shortcut is the block's input itself.
        post: the element-wise function applied after the sum (e.g. ReLU) or ``None``; it is
            used only to check that the block computes what this description says, and is
            treated as pass-through in the backward pass.
        name: the block's name, for error messages.
    """

    block: nn.Module
    branch: nn.Module
    shortcut: nn.Module | None = None
    post: Callable[[Tensor], Tensor] | None = None
    name: str = ""


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        branch: Tensor,
        shortcut: Tensor,
        value: tuple[Tensor],
        split: SplitRule,
    ) -> Tensor:
        ctx.save_for_backward(branch, shortcut)
        ctx.split = split
        # wrapped, so not an input of this node: returned as a new output without a copy
        return value[0]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        branch, shortcut = ctx.saved_tensors
        grad_branch, grad_shortcut = ctx.split(branch, shortcut, grad)
        return grad_branch, grad_shortcut, None, None


class _ResidualState:
    def __init__(self, spec: Residual, split: SplitRule) -> None:
        self.spec = spec
        self.split = split
        self.frames: list[dict[str, Tensor]] = []

    def _grab(self, key: str):
        def hook(_module: nn.Module, _args: tuple, output: object):
            if self.frames and isinstance(output, Tensor):
                self.frames[-1][key] = output
                return output.clone()  # the block may add to it in place (`out += identity`)
            return None

        return hook

    def block_pre(self, _module: nn.Module, args: tuple):
        self.frames.append({"input": args[0]} if args and isinstance(args[0], Tensor) else {})

    def block_post(self, _module: nn.Module, _args: tuple, output: object):
        frame = self.frames.pop()
        spec = self.spec
        branch = frame.get("branch")
        shortcut = frame.get("shortcut") if spec.shortcut is not None else frame.get("input")
        if branch is None or shortcut is None or not isinstance(output, Tensor):
            raise RuntimeError(
                f"residual block {spec.name!r} ({type(spec.block).__name__}) did not call the "
                "expected branch/shortcut modules; its canonizer does not match its forward"
            )
        value = output.detach()
        with torch.no_grad():
            expected = branch.detach() + shortcut.detach()
            if spec.post is not None:
                expected = spec.post(expected)
            mismatch = expected.shape != value.shape
            if not mismatch:
                tol = 1e-4 * max(_largest(expected), 1.0)
                # expected is a fresh tensor: the difference is taken in place
                diff = expected.sub_(value) if expected.is_contiguous() else expected - value
                mismatch = _largest(diff) > tol
            if mismatch:
                raise RuntimeError(
                    f"residual block {spec.name!r} ({type(spec.block).__name__}) does not "
                    "compute post(branch + shortcut); its canonizer does not match its forward"
                )
        if not (branch.requires_grad or shortcut.requires_grad):
            return None
        # the block's own output (its graph is dropped) carries the split: no copy
        return _Split.apply(branch, shortcut, (value,), self.split)


@contextlib.contextmanager
def split_residuals(residuals: Sequence[Residual], split: SplitRule) -> Iterator[None]:
    """Route each residual block's output through ``split`` in the backward pass.

    Without touching the blocks' code: forward hooks record the branch and shortcut outputs
    (handing the block clones, so ``out += identity`` cannot change them), and the block's
    output is replaced by the same value computed by an autograd node whose backward sends
    ``split(branch, shortcut, grad)`` to the two summands (e.g. in proportion to their
    contributions, the LRP rule for a sum). Register this after :func:`rewired` so that the
    recorded branch output is the rewired one. Hooks are removed on exit.
    """
    forward: dict[nn.Module, Callable] = {}
    pre: dict[nn.Module, Callable] = {}
    for spec in residuals:
        state = _ResidualState(spec, split)
        for module in (spec.block, spec.branch, spec.shortcut):
            if module is not None and (module in forward or module in pre):
                raise ValueError(f"module {type(module).__name__} is used by two residual specs")
        pre[spec.block] = state.block_pre
        forward[spec.block] = state.block_post
        forward[spec.branch] = state._grab("branch")
        if spec.shortcut is not None:
            forward[spec.shortcut] = state._grab("shortcut")
    with hooks(forward=forward, forward_pre=pre):
        yield


# --------------------------------------------------------------------------------------------
# Functional links: the input of one module is a known function of another module's output
# (e.g. MobileNetV2's functional `adaptive_avg_pool2d` + `flatten` between features and head).
# --------------------------------------------------------------------------------------------

LinkRule = Callable[[Tensor, Callable[[Tensor], Tensor], Tensor], Tensor]
"""``rule(source_output, function, grad_at_sink_input) -> grad_at_source_output``."""


@dataclass(frozen=True, eq=False)
class Link:
    """``sink``'s input is ``function(source's output)``, computed functionally in between.

    Attributes:
        source: the module whose output feeds the functional operations.
        sink: the module that receives their result.
        function: the functional operations, e.g. ``lambda f: f.mean((2, 3))``; used to check
            the model (a mismatch raises) and by the backward rule.
        name: for error messages.
    """

    source: nn.Module
    sink: nn.Module
    function: Callable[[Tensor], Tensor]
    name: str = ""


class _Link(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        source: Tensor,
        value: Tensor,
        link: Link,
        rule: LinkRule,
    ) -> Tensor:
        ctx.save_for_backward(source)
        ctx.link = link
        ctx.rule = rule
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (source,) = ctx.saved_tensors
        return ctx.rule(source.detach(), ctx.link.function, grad), None, None, None


class _LinkState:
    def __init__(self, link: Link, rule: LinkRule) -> None:
        self.link = link
        self.rule = rule
        self.last: Tensor | None = None

    def grab(self, _module: nn.Module, _args: tuple, output: object):
        if isinstance(output, Tensor):
            self.last = output
            return output.clone()  # later in-place operations act on the copy
        return None

    def sink(self, _module: nn.Module, args: tuple):
        source, self.last = self.last, None
        x = args[0] if args else None
        if source is None or not isinstance(x, Tensor):
            raise RuntimeError(
                f"{self.link.name!r}: the head was called without its features module "
                "running first; the canonizer does not match this model's forward"
            )
        with torch.no_grad():
            expected = self.link.function(source.detach())
            tol = 1e-4 * float(expected.abs().max().clamp_min(1.0))
            if expected.shape != x.shape or float((expected - x.detach()).abs().max()) > tol:
                raise RuntimeError(
                    f"{self.link.name!r}: the head's input is not the declared function of "
                    "the features; the canonizer does not match this model's forward"
                )
        if not source.requires_grad:
            return None
        return (_Link.apply(source, x.detach().clone(), self.link, self.rule),) + args[1:]


@contextlib.contextmanager
def functional_links(links: Sequence[Link], rule: LinkRule) -> Iterator[None]:
    """Give functional operations between two modules their own backward ``rule``.

    A forward hook records the source's output; a forward pre-hook on the sink checks that its
    input is ``function(source output)`` and replaces it by the same value from an autograd
    node whose backward is ``rule``. Hooks are removed on exit.
    """
    forward: dict[nn.Module, Callable] = {}
    pre: dict[nn.Module, Callable] = {}
    for link in links:
        state = _LinkState(link, rule)
        if link.source in forward or link.sink in pre:
            raise ValueError(f"module used by two links: {link.name!r}")
        forward[link.source] = state.grab
        pre[link.sink] = state.sink
    with hooks(forward=forward, forward_pre=pre):
        yield
