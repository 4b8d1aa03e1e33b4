"""Your own model and images from the command line: ``xai explain``, ``xai audit``, ``xai layers``.

A model is given as

* a torchvision or timm architecture name (``resnet18``, ``timm:convnext_tiny``), built with
  random weights and then loaded from ``--weights``;
* a TorchScript file (``torch.jit.save``); hooks cannot be registered on TorchScript, so only
  the methods that need no layer run (``saliency``, ``integrated_gradients``, ``occlusion``...);
* ``module:function`` or ``path/to/file.py:function``, a function returning an ``nn.Module``.

``--weights`` is a state dict or a checkpoint holding one (``state_dict``, ``model``,
``model_state_dict``, ``net``, ``ema`` keys; a DataParallel ``module.`` prefix is removed),
always read with ``torch.load(weights_only=True)``: a file that needs arbitrary Python objects
to unpickle is refused. Every user error is a :class:`CliError`, printed as one line that
names the fix.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import glob
import importlib
import importlib.util
import json
import pickle
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema", "weights")
_NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": None,
}
# Default layer of the CAM-family methods per architecture family (name prefix): the last
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


class CliError(Exception):
    """A user error reported as one line."""


@dataclass
class LoadedModel:
    """A model ready to explain, and how it was given."""

    module: Any
    kind: str  # "torchvision", "timm", "torchscript" or "function"
    name: str
    default_layer: str | None
    in_channels: int


# ------------------------------------------------------------------------------------- models


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

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
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


def _classifier_size(state: dict, model) -> int | None:
    """Classes of a checkpoint whose last weight matrix differs from the model's."""
    own = model.state_dict()
    for key in reversed(list(own)):
        if key.endswith("weight") and own[key].dim() == 2 and key in state:
            return int(state[key].shape[0]) if state[key].shape != own[key].shape else None
    return None


def _load_state(model, state: dict, spec: str) -> None:
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


def _first_conv_channels(model) -> int:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def default_layer(model, name: str, kind: str) -> str | None:
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


# ------------------------------------------------------------------------------------- images


def collect_images(specs: Sequence[str]) -> list[Path]:
    """Image files from files, folders (recursive) and glob patterns, in a stable order."""
    found: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if any(ch in spec for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
            files = [m for m in matches if m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise CliError(f"--images {spec!r}: the pattern matches no image file")
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise CliError(
                    f"--images {spec!r}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
                )
        elif p.is_file():
            files = [p]
        else:
            raise CliError(f"--images {spec!r}: no such file or folder")
        found += [f for f in files if f not in found]
    if not found:
        raise CliError("no images given: pass --images FILE|FOLDER|GLOB")
    return found


def parse_normalization(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``imagenet``, ``none`` or ``M1,M2,M3/S1,S2,S3`` -> ``(mean, std)`` or ``None``."""
    if spec in _NORMALIZATIONS:
        return _NORMALIZATIONS[spec]
    try:
        mean_s, std_s = spec.split("/")
        mean = tuple(float(v) for v in mean_s.split(","))
        std = tuple(float(v) for v in std_s.split(","))
    except ValueError:
        raise CliError(
            f"--normalize {spec!r}: use imagenet, none, or MEAN/STD such as 0.5,0.5,0.5/0.5,0.5,0.5"
        ) from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise CliError(f"--normalize {spec!r}: as many means as stds, stds > 0")
    return mean, std


@dataclass
class Preprocess:
    """Resize the short side to ``size / crop``, center-crop ``size``, scale to [0, 1],
    normalize (``crop=1``: resize to ``size`` only).
    """

    size: int = 224
    crop: float = 0.875
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    channels: int = 3

    def _geometry(self, t, interpolation):
        import torchvision.transforms.functional as TF

        t = TF.resize(
            t,
            round(self.size / self.crop),
            interpolation=interpolation,
            antialias=interpolation != TF.InterpolationMode.NEAREST,
        )
        return TF.center_crop(t, self.size)

    def image(self, path: Path):
        """``(C, size, size)`` float tensor of the image at ``path``."""
        import torch
        import torchvision.transforms.functional as TF

        from xai.data import load_image

        try:
            arr = load_image(path)
        except (FileNotFoundError, ValueError) as err:
            raise CliError(str(err)) from None
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0
        if self.channels == 1:
            t = TF.rgb_to_grayscale(t)
        t = self._geometry(t, TF.InterpolationMode.BILINEAR)
        if self.normalization is not None:
            mean, std = self.normalization
            if len(mean) not in (1, t.shape[0]):
                raise CliError(f"--normalize has {len(mean)} values for {t.shape[0]} channels")
            t = TF.normalize(
                t, list(mean) * (t.shape[0] // len(mean)), list(std) * (t.shape[0] // len(std))
            )
        return t

    def mask(self, path: Path):
        """``(size, size)`` bool mask (non-zero = object) with the image's geometry."""
        import torch
        import torchvision.transforms.functional as TF

        from xai.data import load_image

        try:
            arr = load_image(path)
        except (FileNotFoundError, ValueError) as err:
            raise CliError(str(err)) from None
        t = torch.from_numpy(np.ascontiguousarray(arr.max(axis=2) > 0))[None].float()
        return self._geometry(t, TF.InterpolationMode.NEAREST)[0] > 0.5


def _mean_std_for_display(pre: Preprocess):
    if pre.normalization is None:
        return None, None
    return pre.normalization


# -------------------------------------------------------------------------------- xai layers


def run_layers(args) -> int:
    import torch

    model = load_model(args.model, args.weights, num_classes=args.num_classes, device="cpu")
    from xai.adapter import list_layers

    if model.kind == "torchscript":
        print(
            f"{model.name} is TorchScript: hooks cannot be registered on it, so layer methods "
            "(grad_cam, ...) do not run; use saliency, integrated_gradients, occlusion, ..."
        )
        for n, m in model.module.named_modules():
            if n:
                print(f"  {n:<40} {getattr(m, 'original_name', type(m).__name__)}")
        return 0
    x = torch.zeros(1, model.in_channels, args.size, args.size)
    try:
        infos = list_layers(model.module, x)
    except RuntimeError as err:
        raise CliError(
            f"a forward pass at --size {args.size} failed: {str(err).splitlines()[0]}"
        ) from None
    print(f"{'layer':<40} {'type':<24} output shape")
    for info in infos:
        mark = "  (default)" if info.name == model.default_layer else ""
        shape = "x".join(map(str, info.output_shape)) if info.output_shape else "-"
        spatial = info.output_shape is not None and len(info.output_shape) in (3, 4)
        if args.all or spatial or mark:
            print(f"{info.name:<40} {info.type:<24} {shape}{mark}")
    if not args.all:
        print("(layers with a 4-D or 3-D output; --all lists every module)")
    return 0


# ------------------------------------------------------------------------------- xai explain


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


def _methods(spec: str | None, model: LoadedModel) -> list[str]:
    return pick_methods(
        spec, ["saliency"] if model.kind == "torchscript" else ["grad_cam", "saliency"]
    )


def _preprocess(args, model: LoadedModel) -> Preprocess:
    return Preprocess(
        args.size,
        args.crop,
        parse_normalization(args.normalize),
        args.channels or model.in_channels,
    )


def _targets(spec: str, logits) -> list[int]:
    if spec in ("pred", "prediction"):
        return logits.argmax(1).tolist()
    try:
        cls = int(spec)
    except ValueError:
        raise CliError(f"--target {spec!r}: use 'pred' or a class index") from None
    if not 0 <= cls < logits.shape[1]:
        raise CliError(f"--target {cls} is outside the model's {logits.shape[1]} classes")
    return [cls] * logits.shape[0]


def _class_names(n: int) -> list[str]:
    """ImageNet category names for a 1,000-class model, else ``class K``."""
    if n == 1000:
        from xai.data import imagenet_categories

        return list(imagenet_categories())
    return [f"class {k}" for k in range(n)]


def _stems(paths: Sequence[Path]) -> list[str]:
    stems, seen = [], {}
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def run_explain(args) -> dict:
    """``xai explain``: maps of every method for every image; figures, .npy maps, summary."""
    import torch

    import xai.visualize as viz
    from xai.attributions import get

    model = load_model(args.model, args.weights, num_classes=args.num_classes, device=args.device)
    layer = check_layer(model, args.layer)
    methods = _methods(args.methods, model)
    paths = collect_images(args.images)
    pre = _preprocess(args, model)
    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    x = torch.stack([pre.image(p) for p in paths]).to(args.device)
    try:
        with torch.no_grad():
            logits = model.module(x)
    except RuntimeError as err:
        raise CliError(
            f"the model failed on the images ({tuple(x.shape)}): "
            f"{str(err).splitlines()[0][:160]}; check --size, --channels"
        ) from None
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise CliError("the model must return (batch, classes) scores")
    targets = _targets(args.target, logits)
    probs = logits.float().softmax(1)
    maps: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for name in methods:
        cls = get(name)
        start = time.perf_counter()
        try:
            method = cls.create(model.module, layer=layer, batch_size=args.batch_size)
            parts = [
                method(x[i : i + args.batch_size], target=targets[i : i + args.batch_size])
                for i in range(0, len(paths), args.batch_size)
            ]
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
            text = str(err).strip().splitlines()
            skipped[name] = f"{type(err).__name__}: {text[0] if text else ''}"[:300]
            if model.kind == "torchscript":
                skipped[name] = (
                    "TorchScript takes no hooks, so a method that reads a layer "
                    f"cannot run ({skipped[name]})"
                )
            elif layer is None:
                skipped[name] += f"; pass --layer (list them with `xai layers {model.name}`)"
            print(f"xai explain: skipped {name}: {skipped[name]}", file=sys.stderr)
            continue
        maps[name] = torch.cat(parts).detach().float().cpu()
        seconds[name] = round((time.perf_counter() - start) / len(paths), 4)
    if not maps:
        raise CliError(
            "no method could explain the model: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    mean, std = _mean_std_for_display(pre)
    names = _class_names(logits.shape[1])
    rows = []
    for i, (path, stem) in enumerate(zip(paths, _stems(paths))):
        files = {}
        for name, m in maps.items():
            f = out / "maps" / f"{stem}__{name}.npy"
            np.save(f, m[i].numpy())
            files[name] = str(f)
        fig = viz.grid(
            x[i : i + 1].cpu(),
            {k: v[i : i + 1] for k, v in maps.items()},
            titles=[f"{stem}\n{names[targets[i]]} p={probs[i, targets[i]]:.2f}"],
            mean=mean,
            std=std,
        )
        figure = viz.save(fig, out / "figures" / f"{stem}.png", dpi=args.dpi)
        rows.append({
            "image": str(path), "name": stem, "target": targets[i],
            "target_name": names[targets[i]],
            "prediction": int(logits[i].argmax()), "probability": round(float(probs[i, targets[i]]), 4),
            "figure": str(figure), "maps": files,
        })  # fmt: skip
    summary = {
        "model": model.name, "model_kind": model.kind, "weights": args.weights, "layer": layer,
        "methods": list(maps), "skipped": skipped, "seconds_per_image": seconds,
        "input": {"size": args.size, "crop": args.crop, "normalize": args.normalize,
                  "channels": pre.channels},
        "device": args.device, "images": rows,
        "map_format": "float32 (H, W) at the input resolution, raw (not normalized)",
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# --------------------------------------------------------------------------------- xai audit


class _FolderDataset:
    """ImageFolder-style items ``{"inputs", "labels"[, "masks"][, "groups"]}``."""

    def __init__(self, files, labels, pre: Preprocess, masks=None, groups=None) -> None:
        self.files, self.labels, self.pre = files, labels, pre
        self.masks, self.groups = masks, groups

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        item = {"inputs": self.pre.image(self.files[i]), "labels": self.labels[i]}
        if self.masks is not None:
            item["masks"] = self.pre.mask(self.masks[i])
        if self.groups is not None:
            item["groups"] = self.groups[i]
        return item


def _image_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    if not root.is_dir():
        raise CliError(f"--data {str(root)!r}: no such folder (expected DATA/<class>/<image>)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise CliError(
            f"--data {str(root)!r} has no class sub-folders; lay it out as "
            "DATA/<class name>/<image> (torchvision ImageFolder)"
        )
    files, labels = [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(k)
    if not files:
        raise CliError(f"--data {str(root)!r}: no image files under its class folders")
    return classes, files, labels


def _mask_files(masks: Path, root: Path, files: Sequence[Path]) -> list[Path]:
    out, missing = [], []
    for f in files:
        rel = f.relative_to(root)
        cands = [masks / rel, *(masks / rel.with_suffix(s) for s in (".png", ".bmp", ".tif"))]
        hit = next((c for c in cands if c.is_file()), None)
        if hit is None:
            missing.append(str(rel))
        out.append(hit)
    if missing:
        raise CliError(
            f"--masks {str(masks)!r}: no mask for {len(missing)} image(s), e.g. "
            f"{missing[0]!r}; give MASKS/<class>/<same name>.png for every image"
        )
    return out


def _group_ids(path: Path, root: Path, files: Sequence[Path]) -> tuple[list[int], list[str]]:
    if not path.is_file():
        raise CliError(f"--groups {str(path)!r}: no such file")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "group"]:
        rows = rows[1:]
    table = {}
    for row in rows:
        if len(row) < 2:
            raise CliError(
                f"--groups {str(path)!r}: every row must be 'path,group' "
                f"(relative to --data), got {row!r}"
            )
        table[Path(row[0].strip()).as_posix()] = row[1].strip()
    names = sorted(set(table.values()))
    ids, missing = [], []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if rel not in table:
            missing.append(rel)
            continue
        ids.append(names.index(table[rel]))
    if missing:
        raise CliError(
            f"--groups {str(path)!r} has no row for {len(missing)} image(s), e.g. "
            f"{missing[0]!r}; add 'path,group' rows relative to --data"
        )
    return ids, names


def run_audit(args) -> dict:
    """``xai audit``: the dataset audit of an ImageFolder tree; writes the report."""
    from xai.audit import audit, write_report

    model = load_model(args.model, args.weights, num_classes=args.num_classes, device=args.device)
    layer = check_layer(model, args.layer)
    method = args.method or ("saliency" if model.kind == "torchscript" else "grad_cam")
    _methods(method, model)
    root = Path(args.data)
    classes, files, labels = _image_folder(root)
    masks = _mask_files(Path(args.masks), root, files) if args.masks else None
    groups, group_names = (
        _group_ids(Path(args.groups), root, files) if args.groups else (None, None)
    )
    pre = _preprocess(args, model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "audit-checkpoint.pt"
    if args.restart and checkpoint.exists():
        checkpoint.unlink()
    data = _FolderDataset(files, labels, pre, masks, groups)
    try:
        result = audit(
            model.module,
            data,
            explainer=method,
            layer=layer,
            class_names=classes,
            group_names=group_names,
            target=args.target,
            batch_size=args.batch_size,
            checkpoint=checkpoint,
            progress=not args.no_progress,
        )
    except (ValueError, TypeError) as err:
        raise CliError(f"audit: {str(err).splitlines()[0]}") from None
    mean, std = _mean_std_for_display(pre)
    written = {}
    for fmt in args.format.split(","):
        fmt = fmt.strip()
        if fmt not in ("html", "markdown"):
            raise CliError(f"--format {fmt!r}: use html, markdown or html,markdown")
        written.update(
            {
                f"{fmt}_{k}": str(v)
                for k, v in write_report(
                    result, out, format=fmt, title=args.title, mean=mean, std=std
                ).items()
            }
        )
    return {
        "flags": result.flags,
        "files": written,
        "n_images": len(files),
        "checkpoint": str(checkpoint),
    }


# ------------------------------------------------------------------------------------ parsers


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="torchvision/timm architecture (resnet18, timm:convnext_tiny), a "
        "TorchScript file, or module:function / file.py:function returning an nn.Module",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="state dict or checkpoint, loaded with torch.load(weights_only=True)",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of the architecture (default: from --weights, else 1000)",
    )
    p.add_argument(
        "--layer",
        default=None,
        help="layer of the CAM methods (default for known architectures; list them "
        "with `xai layers MODEL`)",
    )
    p.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument(
        "--crop",
        type=float,
        default=0.875,
        help="center-crop fraction after resizing the short side to size/crop "
        "(default 0.875 = 224/256, ImageNet; 1: no crop)",
    )
    p.add_argument(
        "--normalize",
        default="imagenet",
        help="imagenet (default), none, or MEAN/STD e.g. 0.5,0.5,0.5/0.5,0.5,0.5",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="image channels (default: the first convolution's)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="images per pass (default 16)")


def add_parsers(sub) -> None:
    """Add ``explain``, ``audit`` and ``layers`` to the ``xai`` sub-command parser."""
    ex = sub.add_parser("explain", help="explain your own model on your own images")
    _model_options(ex)
    ex.add_argument(
        "--images",
        nargs="+",
        required=True,
        help="image files, folders (searched recursively) or glob patterns",
    )
    ex.add_argument(
        "--methods",
        default=None,
        help="comma-separated registry names or 'all' (default grad_cam,saliency; "
        "saliency for TorchScript)",
    )
    ex.add_argument(
        "--target",
        default="pred",
        help="'pred' (each image's predicted class, default) or a class index",
    )
    ex.add_argument("--out", default="xai-explain", help="output folder (default xai-explain)")
    ex.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150)")
    au = sub.add_parser("audit", help="audit where your model looks over an image folder")
    _model_options(au)
    au.add_argument("--data", required=True, help="ImageFolder tree: DATA/<class>/<image>")
    au.add_argument(
        "--masks",
        default=None,
        help="object masks: MASKS/<class>/<image name>.png (non-zero = object)",
    )
    au.add_argument(
        "--groups", default=None, help="CSV of 'path,group' rows, path relative to --data"
    )
    au.add_argument(
        "--method",
        default=None,
        help="attribution method (default grad_cam; saliency for TorchScript)",
    )
    au.add_argument(
        "--target",
        choices=("label", "prediction"),
        default="label",
        help="explain the true class (default) or the prediction",
    )
    au.add_argument("--out", default="xai-audit", help="output folder (default xai-audit)")
    au.add_argument(
        "--format",
        default="html,markdown",
        help="report formats: html, markdown or html,markdown (default)",
    )
    au.add_argument("--title", default="Attribution audit", help="report title")
    au.add_argument(
        "--restart",
        action="store_true",
        help="ignore OUT/audit-checkpoint.pt (default: resume from it)",
    )
    au.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ly = sub.add_parser("layers", help="list a model's layers with output shapes")
    ly.add_argument("model", help="architecture name, TorchScript file or module:function")
    ly.add_argument("--weights", default=None, help="state dict (to get the class count)")
    ly.add_argument("--num-classes", type=int, default=None)
    ly.add_argument("--size", type=int, default=224, help="input side (default 224)")
    ly.add_argument("--all", action="store_true", help="every module, not only spatial ones")


def run(args) -> int:
    """Run the parsed ``explain``/``audit``/``layers`` command; errors raise :class:`CliError`."""
    if getattr(args, "batch_size", 1) < 1:
        raise CliError("--batch-size must be >= 1")
    if getattr(args, "crop", 1.0) is not None and not 0 < getattr(args, "crop", 1.0) <= 1:
        raise CliError("--crop must be in (0, 1]")
    if args.command == "layers":
        return run_layers(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {str(out)!r} is a file; give a folder path")
    if args.command == "explain":
        summary = run_explain(args)
        print(f"{'image':<24} {'target':>6} {'p':>6}")
        for r in summary["images"]:
            print(f"{r['name'][:24]:<24} {r['target']:>6} {r['probability']:>6.3f}")
        print("method                  seconds/image")
        for k, v in summary["seconds_per_image"].items():
            print(f"{k:<23} {v:.3f}")
        for k, v in summary["skipped"].items():
            print(f"{k:<23} skipped: {v}")
        print(f"wrote {out / 'summary.json'}, figures/ and maps/ ({len(summary['images'])} images)")
        return 0
    result = run_audit(args)
    for flag in result["flags"]:
        print(f"FLAG {flag['name']}: {flag['message']}")
    if not result["flags"]:
        print("no class flagged")
    print("wrote", ", ".join(result["files"].values()))
    return 0
