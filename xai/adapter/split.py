"""Split a model at a layer: ``g`` (input -> the layer's output) and ``h`` (that output -> model
output), for any ``nn.Module``, with forward hooks only (the model is never rebuilt or edited).

- :func:`layer_output` runs the model until ``layer`` has produced its output and stops there
  (the rest of the forward pass is skipped): ``g(x)``. :func:`layer_outputs` does it for
  several layers, optionally keeping the autograd graph; :func:`recorder` hooks the layers
  once for a loop of such passes (representation inversion, feature visualization).
- :func:`replace_output` is a context manager inside which every forward pass of the model
  sees ``tensor`` as the output of ``layer``: running the model then computes ``h(tensor)``.
  The computation before the layer still runs (on whatever input is given), so callers pass
  a cheap probe input; what reaches the output through ``layer`` is exactly ``h(tensor)`` as
  long as nothing after the layer reads the input through another path (a skip connection
  around the layer).

Used by concept extraction (CRAFT, Fel et al., CVPR 2023), where ``A = g(x)`` is factorized and
``h`` is evaluated on reconstructed activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from xai._typing import LayerLike
from xai.adapter.hooks import hooks
from xai.adapter.layers import _unwrap, output_error, replace_item, resolve_layer, split_key
from xai.adapter.state import preserved
from xai.adapter.targets import unwrap_output

__all__ = ["head", "layer_output", "layer_outputs", "recorder", "replace_output"]


class _Stop(Exception):
    """Raised from a forward hook to end the forward pass once the layer has run."""


def _check_tensor(name: str, output: object) -> Tensor:
    if not isinstance(output, Tensor):
        raise output_error(name, output)
    return output


def _on_entry(name: str, output: object, fn: Callable[[Tensor], Tensor | None]) -> object:
    """Apply ``fn`` to the layer's tensor (the entry ``key`` of ``"name:key"`` in a dict or
    tuple output); its non-``None`` result replaces that tensor in the returned output.
    """
    key = split_key(name)[1]
    if key is None:
        return fn(_check_tensor(name, output))

    def entry(t: Tensor) -> Tensor:
        new = fn(t)
        return t if new is None else new

    return replace_item(name, output, key, entry)


def layer_output(
    model: nn.Module, layer: LayerLike, inputs: Tensor, *, differentiable: bool = False
) -> Tensor:
    """``g(inputs)``: the output of ``layer`` (detached), without running the rest of the model.

    The model runs in eval mode under ``torch.no_grad()``; its state is restored on exit.
    With ``differentiable=True`` gradients are enabled instead and the output keeps its
    autograd graph back to ``inputs`` (a clone, so gradients w.r.t. the pixels of a function
    of ``g`` can be taken, e.g. concept attribution maps).

    Args:
        model: any ``nn.Module``.
        layer: dotted name or module (see :func:`xai.adapter.resolve_layer`); ``"name:key"``
            reads one entry of a dict or tuple output.
        inputs: the model's input batch.
        differentiable: keep the autograd graph back to ``inputs`` (default ``False``: detached,
            under ``torch.no_grad()``).

    Returns:
        The layer's output for ``inputs``, detached (a clone: in-place operations after the
        layer cannot change it).

    Raises:
        RuntimeError: the layer was not called during the forward pass.
        TypeError: the layer does not return a tensor.
    """
    outputs, _ = layer_outputs(model, [layer], inputs, grad=differentiable)
    return next(iter(outputs.values()))


def layer_outputs(
    model: nn.Module,
    layers: Sequence[LayerLike],
    inputs: Tensor,
    *,
    grad: bool = False,
    output: bool = False,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """The outputs of several layers in one forward pass that stops once all of them ran.

    One call of :func:`recorder`; see there for the arguments. Returns ``(outputs,
    model_output)``: layer name -> output in the order of ``layers``, and the model output
    (``None`` unless ``output=True``).
    """
    with recorder(model, layers, grad=grad, output=output) as run:
        return run(inputs)


@contextlib.contextmanager
def recorder(
    model: nn.Module,
    layers: Sequence[LayerLike],
    *,
    grad: bool = False,
    output: bool = False,
) -> Iterator[Callable[[Tensor], tuple[dict[str, Tensor], Tensor | None]]]:
    """Hook ``layers`` once and yield ``run(inputs) -> (outputs, model_output)`` for many passes.

    Each ``run`` is one forward pass that stops as soon as every layer has produced its output
    (unless ``output=True``, which runs the whole model and also returns its unwrapped output).
    With ``grad=True`` the outputs stay attached to the autograd graph of ``inputs`` (gradients
    are enabled even under an outer ``torch.no_grad()``), so an objective on them can be
    differentiated w.r.t. the input, as representation inversion and activation maximization
    do in a loop of many steps; the rest of the model then receives a clone, so in-place
    operations after a layer cannot overwrite its recorded output. With ``grad=False`` the
    outputs are detached clones computed under ``torch.no_grad()``.

    Inside the block the model is in eval mode; on exit (also after an exception) the hooks are
    removed and its state is restored (:func:`xai.adapter.preserved`).

    Args:
        model: any ``nn.Module``.
        layers: dotted names or modules (see :func:`xai.adapter.resolve_layer`); may be empty
            when only the model output is wanted.
        grad: keep the graph (default ``False``).
        output: run the whole model and also return its output (default ``False``).

    Raises:
        RuntimeError: (from ``run``) a layer was not called in the forward pass, or called
            more than once.
        TypeError: (from ``run``) a layer does not return a tensor.
        ValueError: the same layer is given twice, or neither layers nor ``output``.
    """
    module = _unwrap(model)
    resolved = [resolve_layer(module, layer) for layer in layers]
    names = [n for n, _ in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"a layer is given twice in {names}")
    if not names and not output:
        raise ValueError("nothing to compute: give at least one layer or output=True")
    found: dict[str, Tensor] = {}
    calls = dict.fromkeys(names, 0)

    def make_hook(name: str):
        def hook(_module: nn.Module, _args: tuple, output: object) -> object:
            return _on_entry(name, output, record)

        def record(out: Tensor) -> Tensor | None:
            calls[name] += 1
            if calls[name] > 1:
                raise RuntimeError(
                    f"layer {name!r} was called {calls[name]} times in one forward pass; its "
                    "output is ambiguous: choose a layer the model uses once"
                )
            found[name] = out if grad else out.detach().clone()
            if not output and len(found) == len(names):
                raise _Stop
            return out.clone() if grad else None

        return hook

    def run(inputs: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        found.clear()
        calls.update(dict.fromkeys(names, 0))
        result = None
        with torch.set_grad_enabled(grad):
            try:
                # the unwrapped module: a compiled wrapper would skip the hooks
                result = unwrap_output(module(inputs))
            except _Stop:
                pass
        for name in names:
            if name not in found:
                raise RuntimeError(
                    f"layer {name!r} was not called in the forward pass: is it used by the model?"
                )
        values = {n: found[n] for n in names}
        found.clear()
        return values, result

    try:
        with preserved(module), hooks(forward={m: make_hook(n) for n, m in resolved}):
            yield run
    finally:
        found.clear()


@contextlib.contextmanager
def replace_output(model: nn.Module, layer: LayerLike, tensor: Tensor) -> Iterator[None]:
    """Within the block, ``layer`` returns ``tensor`` instead of its own output.

    Running the model inside the block evaluates ``h(tensor)``, the part of the model after
    the layer; gradients flow to ``tensor`` when it requires them. The hook is removed on exit,
    also after an exception; the model's flags are not touched here (wrap the block in
    :func:`xai.adapter.preserved` for eval mode).

    Args:
        model: any ``nn.Module``.
        layer: dotted name or module.
        tensor: the replacement output; its batch size must match the input's batch size
            wherever the model mixes the two.

    Raises:
        RuntimeError: (on exit) the layer was not called in the block, or was called more
            than once.

    Example:
        >>> with replace_output(model, "features.18", acts):
        ...     logits = model(torch.zeros(len(acts), 3, 32, 32))  # h(acts)
    """
    module = _unwrap(model)
    name, target = resolve_layer(module, layer)
    calls = [0]

    def hook(_module: nn.Module, _args: tuple, output: object) -> object:
        return _on_entry(name, output, replace)

    def replace(_output: Tensor) -> Tensor:
        calls[0] += 1
        return tensor

    with hooks(forward={target: hook}):
        yield
    if calls[0] == 0:
        raise RuntimeError(
            f"layer {name!r} was not called in the forward pass: is it used by the model?"
        )
    if calls[0] > 1:
        raise RuntimeError(
            f"layer {name!r} was called {calls[0]} times in one block; its output is "
            "ambiguous: choose a layer the model uses once"
        )


def head(model: nn.Module, layer: LayerLike, activations: Tensor, probe: Tensor) -> Tensor:
    """``h(activations)``: the (unwrapped) model output when ``layer`` outputs ``activations``.

    Args:
        model: any ``nn.Module``.
        layer: dotted name or module.
        activations: replacement output of the layer, ``(n, ...)``.
        probe: the input run through the model (only its part before the layer is computed on
            it); a small input keeps that part cheap.

    Raises:
        RuntimeError: the layer was not called in the forward pass.
    """
    with replace_output(model, layer, activations):
        out = unwrap_output(_unwrap(model)(probe))
    return out
