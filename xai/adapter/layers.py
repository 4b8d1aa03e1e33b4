"""Resolve layers given by name or module, and suggest candidates when a name is wrong."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

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

    Args:
        model: the model that contains the layer.
        layer: a dotted name as listed by ``model.named_modules()`` (``"features.18"``,
            ``"layer4.1.conv2"``) or the module object itself.

    Raises:
        ValueError: the name is not in the model (the message lists close matches) or the
            module is not a submodule of the model.
        TypeError: ``layer`` is neither a string nor an ``nn.Module``.
    """
    named = dict(_unwrap(model).named_modules())
    if isinstance(layer, str):
        key = layer.replace("[", ".").replace("]", "")  # accept "features[18]"
        if key in named:
            return key, named[key]
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


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer: its dotted name, module type and output shape (or ``None``)."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None


def list_layers(model: nn.Module, inputs: Tensor | None = None) -> list[LayerInfo]:
    """List the model's named submodules, with output shapes when ``inputs`` is given.

    With ``inputs``, one forward pass (no gradient) records each module's output shape, so a
    user can pick a layer with a spatial output (4-D) or a token output (3-D). The model is
    left unchanged; the hooks used to read the shapes are always removed.

    Example:
        >>> for info in list_layers(model, torch.rand(1, 3, 224, 224)):
        ...     print(info.name, info.output_shape)
    """
    from xai.adapter.hooks import hooks
    from xai.adapter.state import preserved

    model_ = _unwrap(model)
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, _args: object, output: object) -> None:
            if isinstance(output, Tensor):
                shapes.setdefault(name, tuple(output.shape))

        return hook

    named = [(n, m) for n, m in model_.named_modules() if n]
    if inputs is not None:
        with preserved(model_), hooks(forward={m: recorder(n) for n, m in named}):
            with torch.no_grad():
                model_(inputs)
    return [LayerInfo(n, type(m).__name__, shapes.get(n)) for n, m in named]
