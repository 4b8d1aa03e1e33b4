"""``--model`` and ``--weights``: build or load the model, find its default layer.

See :mod:`xai._cli_user` for the accepted forms. Weights are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pickle
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xai._cli_user.errors import CliError

if TYPE_CHECKING:
    from torch import nn


__all__ = [
    "DEFAULT_LAYERS",
    "LoadedModel",
    "check_layer",
    "default_layer",
    "load_model",
    "methods_for",
    "pick_methods",
    "read_weights",
]

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema", "weights")
# block before global pooling, as in the Grad-CAM paper and pytorch-grad-cam's table.
DEFAULT_LAYERS = {
    "resnet": "layer4",
    "resnext": "layer4",
    "wide_resnet": "layer4",
    "mobilenet_v2": "features.18",
    "regnet": "trunk_output",
    "googlenet": "inception5b",
    "inception_v3": "Mixed_7c",
    "shufflenet": "conv5",
    "vit_": "encoder.layers",
    "swin": "features",
}
_FEATURE_FAMILIES = ("vgg", "alexnet", "densenet", "efficientnet", "convnext", "mnasnet",
                     "squeezenet", "mobilenet_v3", "maxvit")  # fmt: skip


@dataclass
class LoadedModel:
    """A model ready to explain, and how it was given."""

    module: Any
    kind: str  # "torchvision", "timm", "torchscript" or "function"
    name: str
    default_layer: str | None
    in_channels: int


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _call_factory(spec: str):
    target, func_name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise CliError(f"--model {spec!r}: no Python file at {target!r}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
        sys.modules.setdefault(path.stem, module)
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise CliError(
                f"--model {spec!r}: cannot import {target!r} ({err}); run from the folder that "
                "holds it, set PYTHONPATH, or give path/to/file.py:function"
            ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        close = difflib.get_close_matches(func_name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise CliError(f"--model {spec!r}: {target} has no function {func_name!r}{hint}")
    return func()


def _build_architecture(name: str, num_classes: int | None):
    import torchvision

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise CliError(f"--model {name!r} needs timm: pip install timm") from None
        arch = name.split(":", 1)[1]
        try:
            return timm.create_model(arch, pretrained=False, **kwargs), "timm"
        except RuntimeError as err:  # unknown model
            raise CliError(f"--model {name!r}: {err}") from None
    known = torchvision.models.list_models()
    if name in known:
        return torchvision.models.get_model(name, weights=None, **kwargs), "torchvision"
    if importlib.util.find_spec("timm") is not None:
        import timm

        if name in timm.list_models():
            return timm.create_model(name, pretrained=False, **kwargs), "timm"
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CliError(
        f"--model {name!r} is not a torchvision architecture{hint}, a file, or module:function; "
        "see torchvision.models.list_models()"
    )


def read_weights(path: str | Path) -> dict:
    """A state dict from ``path`` (a state dict or a checkpoint holding one), read with
    ``torch.load(weights_only=True)``: pickles that would run code are refused.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise CliError(f"--weights {str(p)!r}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(
            f"refused to load --weights {str(p)!r}: it is not a plain tensor file "
            f"(weights_only=True: {first[:160]}); save only the weights with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CliError(
            f"--weights {str(p)!r} holds a {type(obj).__name__}, not a state dict; save it with "
            "torch.save(model.state_dict(), path)"
        )
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _classifier_size(state: dict, model: nn.Module) -> int | None:
    """Classes of a checkpoint whose last weight matrix differs from the model's."""
    own = model.state_dict()
    for key in reversed(list(own)):
        if key.endswith("weight") and own[key].dim() == 2 and key in state:
            return int(state[key].shape[0]) if state[key].shape != own[key].shape else None
    return None


def _load_state(model: nn.Module, state: dict, spec: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        missing = [k for k in model.state_dict() if k not in state]
        unexpected = [k for k in state if k not in model.state_dict()]
        detail = (
            (
                f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:2]})"
            )
            if missing or unexpected
            else str(err).strip().splitlines()[-1].strip()[:200]
        )
        raise CliError(
            f"--weights do not fit --model {spec!r}: {detail}; check the architecture name "
            "(or --num-classes)"
        ) from None


def _first_conv_channels(model: nn.Module) -> int:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def default_layer(model: nn.Module, name: str, kind: str) -> str | None:
    """The default CAM layer of a known architecture, else the last 4-D-output layer of a
    ``features`` block, else ``None`` (then ``--layer`` is needed for layer methods).
    """
    if kind == "torchscript":
        return None
    named = dict(model.named_modules())
    if kind == "timm":
        info = getattr(model, "feature_info", None)
        try:
            module = info[-1]["module"]  # type: ignore[index]
        except (TypeError, KeyError, IndexError):
            module = None
        if module:
            module = module.replace("_", ".") if module not in named else module
            if module in named:
                return module
    base = name.split(":", 1)[-1]
    for prefix, layer in DEFAULT_LAYERS.items():
        if base.startswith(prefix) and layer in named:
            return layer
    features = named.get("features")
    if features is not None and base.startswith(_FEATURE_FAMILIES):
        children = [n for n, _ in features.named_children()]
        if children:
            return f"features.{children[-1]}"
    for candidate in ("layer4", "features"):
        if candidate in named:
            return candidate
    return None


def load_model(
    spec: str,
    weights: str | None = None,
    *,
    num_classes: int | None = None,
    device: str = "cpu",
) -> LoadedModel:
    """Build or load the model named by ``spec`` (see the module docstring), in eval mode."""
    import torch
    from torch import nn

    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".zip") or path.is_file():
        if not path.is_file():
            raise CliError(f"--model {spec!r}: no such file")
        if not _is_torchscript(path):
            raise CliError(
                f"--model {spec!r} is not a TorchScript file; save the model with "
                "torch.jit.script(model).save(path), or give an architecture name with "
                "--weights for a state dict"
            )
        model = torch.jit.load(str(path), map_location=device)
        kind, name = "torchscript", path.name
        if weights:
            raise CliError(
                "--weights goes with an architecture name or module:function, "
                "not with a TorchScript file (its weights are inside)"
            )
    elif ":" in spec and not spec.startswith("timm:"):
        model = _call_factory(spec)
        kind, name = "function", spec
        if not isinstance(model, nn.Module):
            raise CliError(f"--model {spec!r} returned a {type(model).__name__}, not an nn.Module")
    else:
        model, kind = _build_architecture(spec, num_classes)
        name = spec
    if weights:
        state = read_weights(weights)
        if kind != "function" and num_classes is None:
            classes = _classifier_size(state, model)
            if classes is not None:
                model, kind = _build_architecture(spec, classes)
        _load_state(model, state, spec)
    try:
        model = model.to(device).eval()
    except (RuntimeError, AssertionError) as err:
        raise CliError(f"--device {device!r}: {str(err).splitlines()[0]}") from None
    return LoadedModel(
        model, kind, name, default_layer(model, name, kind), _first_conv_channels(model)
    )


def check_layer(model: LoadedModel, layer: str | None) -> str | None:
    """``layer`` (or the model's default) after checking it exists; a wrong name gets close
    matches and the ``xai layers`` hint.
    """
    if layer is None:
        return model.default_layer
    names = [n for n, _ in model.module.named_modules() if n]
    key = layer.replace("[", ".").replace("]", "")
    if key in names:
        return key
    close = difflib.get_close_matches(key, names, n=5, cutoff=0.5)
    hint = f" (close matches: {', '.join(close)})" if close else ""
    raise CliError(
        f"--layer {layer!r} is not in the model{hint}; list them with `xai layers {model.name}`"
    )


def pick_methods(spec: str | None, default: Sequence[str]) -> list[str]:
    """Registry names from a comma-separated ``spec`` (``"all"``: every method; empty:
    ``default``); an unknown name is a :class:`CliError` with close matches.
    """
    from xai.attributions import available

    names = available()
    if not spec:
        return list(default)
    chosen = names if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    for name in chosen:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CliError(f"unknown method {name!r}{hint}; run `xai methods` to list them")
    return chosen


def methods_for(spec: str | None, model: LoadedModel) -> list[str]:
    return pick_methods(
        spec, ["saliency"] if model.kind == "torchscript" else ["grad_cam", "saliency"]
    )
