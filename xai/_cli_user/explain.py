"""``xai explain``: every chosen method on every image; figures, ``.npy`` maps, a summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xai._cli_user.errors import CliError
from xai._cli_user.images import collect_images, display_mean_std, preprocess_for
from xai._cli_user.models import check_layer, load_model, methods_for

if TYPE_CHECKING:
    import torch


__all__ = ["run_explain"]


def _targets(spec: str, logits: torch.Tensor) -> list[int]:
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
    stems: list[str] = []
    seen: dict[str, int] = {}
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def run_explain(args: argparse.Namespace) -> dict:
    """``xai explain``: maps of every method for every image; figures, .npy maps, summary."""
    import torch

    import xai.visualize as viz
    from xai.attributions import get

    model = load_model(args.model, args.weights, num_classes=args.num_classes, device=args.device)
    layer = check_layer(model, args.layer)
    methods = methods_for(args.methods, model)
    paths = collect_images(args.images)
    pre = preprocess_for(args, model)
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
    mean, std = display_mean_std(pre)
    names = _class_names(logits.shape[1])
    rows = []
    for i, (path, stem) in enumerate(zip(paths, _stems(paths), strict=True)):
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
            "prediction": int(logits[i].argmax()),
            "probability": round(float(probs[i, targets[i]]), 4),
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
