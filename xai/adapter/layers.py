"""Resolve layers given by name or module, and suggest candidates when a name is wrong."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from xai._typing import LayerLike


def _unwrap(model: nn.Module) -> nn.Module:
    """Return the module whose hooks fire: compiled and (Distributed)DataParallel wrappers
    are unwrapped, since hooks added to a compiled wrapper after compilation are ignored.
    """
    inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
    if isinstance(inner, nn.Module):
        return inner
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def resolve_layer(model: nn.Module, layer: LayerLike) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a layer given as a name or a module.

    A module that returns a dict, an ``OrderedDict`` or a tuple (a detector's
    ``backbone.body``, an FPN) is read at one entry with ``"name:key"``: ``"backbone.body:3"``
    takes the output's key ``"3"``, ``"encoder:0"`` the first element of a tuple. The
    returned name keeps the key; the key itself is checked when the layer runs.

    Args:
        model: the model that contains the layer.
        layer: a dotted name as listed by ``model.named_modules()`` (``"features.18"``,
            ``"layer4.1.conv2"``), optionally followed by ``":key"``, or the module object.

    Raises:
        ValueError: the name is not in the model (the message lists close matches) or the
            module is not a submodule of the model.
        TypeError: ``layer`` is neither a string nor an ``nn.Module``.
    """
    named = dict(_unwrap(model).named_modules())
    if isinstance(layer, str):
        path, sep, item = layer.partition(":")
        key = path.replace("[", ".").replace("]", "")  # accept "features[18]"
        if sep and not item:
            raise ValueError(f"layer {layer!r} has an empty output key after ':'")
        if key in named:
            return (f"{key}:{item}" if sep else key), named[key]
        close = difflib.get_close_matches(key, [n for n in named if n], n=5, cutoff=0.5)
        hint = f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""
        raise ValueError(
            f"unknown layer {layer!r} in {type(model).__name__}{hint}. "
            "List the names with xai.adapter.list_layers(model)."
        )
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return name, module
        raise ValueError(
            f"the {type(layer).__name__} module passed as layer is not a submodule of "
            f"{type(model).__name__}; pass a module of this model or its dotted name"
        )
    raise TypeError(
        f"layer must be a dotted name (str) or an nn.Module, got {type(layer).__name__}"
    )


def split_key(name: str) -> tuple[str, str | None]:
    """``"backbone.body:3"`` -> ``("backbone.body", "3")``; ``"layer4"`` -> ``("layer4", None)``."""
    path, sep, item = name.partition(":")
    return path, (item if sep else None)


def replace_item(name: str, output: Any, key: str, fn: Callable[[Tensor], Tensor]) -> Any:
    """A copy of a dict / tuple / list ``output`` whose entry ``key`` is ``fn(entry)``.

    Dict keys are matched as strings (torchvision's ``"0"``, ``"pool"``, ``"out"``); tuples and
    lists are indexed by an integer key. The container keeps its type (``OrderedDict``,
    named tuple).

    Raises:
        KeyError: the key is not in the output (the message lists the valid keys).
        TypeError: the output has no entries, or the entry is not a tensor.
    """
    if isinstance(output, Mapping):
        keys = {str(k): k for k in output}
        if key not in keys:
            raise KeyError(
                f"layer {name!r}: the output has no key {key!r}; its keys are "
                f"{', '.join(repr(k) for k in keys)}"
            )
        entry = output[keys[key]]
        new = fn(_tensor_entry(name, entry))
        copy = type(output)(output) if isinstance(output, dict) else dict(output)
        copy[keys[key]] = new
        return copy
    if isinstance(output, (tuple, list)):
        try:
            index = int(key)
            entry = output[index]
        except (ValueError, IndexError):
            raise KeyError(
                f"layer {name!r}: its output is a {type(output).__name__} of {len(output)} "
                f"elements; use an index 0..{len(output) - 1} after ':'"
            ) from None
        items = list(output)
        items[index] = fn(_tensor_entry(name, entry))
        if hasattr(output, "_fields"):  # named tuple
            return type(output)(*items)
        return type(output)(items)
    raise TypeError(
        f"layer {name!r} returns a {type(output).__name__}, which has no entries to select "
        "with ':key'; drop the key"
    )


def _tensor_entry(name: str, entry: object) -> Tensor:
    if not isinstance(entry, Tensor):
        raise TypeError(f"layer {name!r} is a {type(entry).__name__}, not a tensor")
    return entry


def output_error(name: str, output: object) -> TypeError:
    """The error for a layer output that is not one tensor, naming the ``"name:key"`` fix."""
    if isinstance(output, Mapping):
        keys = [str(k) for k, v in output.items() if isinstance(v, Tensor)]
        example = f"{name}:{keys[-1]}" if keys else f"{name}:key"
        return TypeError(
            f"layer {name!r} returns {type(output).__name__} with keys "
            f"{', '.join(repr(k) for k in keys)}, not a tensor; read one entry with "
            f"layer={example!r}"
        )
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return TypeError(
            f"layer {name!r} returns a {type(output).__name__}; pick a submodule that returns "
            f"a single tensor, or one element with layer='{name}:0'"
        )
    return TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer: its dotted name, module type and output shape (or ``None``)."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None


def list_layers(model: nn.Module, inputs: Tensor | None = None) -> list[LayerInfo]:
    """List the model's named submodules, with output shapes when ``inputs`` is given.

    With ``inputs``, one forward pass (no gradient) records each module's output shape, so a
    user can pick a layer with a spatial output (4-D) or a token output (3-D). A module that
    returns a dict (a detector's backbone, an FPN) is followed by one ``"name:key"`` entry per
    tensor in it, the form :func:`resolve_layer` accepts. The model is
    left unchanged; the hooks used to read the shapes are always removed.

    Example:
        >>> for info in list_layers(model, torch.rand(1, 3, 224, 224)):
        ...     print(info.name, info.output_shape)
    """
    from xai.adapter.hooks import hooks
    from xai.adapter.state import preserved

    model_ = _unwrap(model)
    shapes: dict[str, tuple[int, ...]] = {}
    entries: dict[str, list[tuple[str, tuple[int, ...]]]] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if isinstance(output, Tensor):
                shapes.setdefault(name, tuple(output.shape))
            elif isinstance(output, Mapping):  # selectable as "name:key"
                found = [
                    (str(k), tuple(v.shape)) for k, v in output.items() if isinstance(v, Tensor)
                ]
                entries.setdefault(name, found)

        return hook

    named = [(n, m) for n, m in model_.named_modules() if n]
    if inputs is not None:
        with preserved(model_), hooks(forward={m: recorder(n) for n, m in named}):
            with torch.no_grad():
                model_(inputs)
    infos = []
    for n, m in named:
        infos.append(LayerInfo(n, type(m).__name__, shapes.get(n)))
        infos += [LayerInfo(f"{n}:{k}", type(m).__name__, s) for k, s in entries.get(n, [])]
    return infos
