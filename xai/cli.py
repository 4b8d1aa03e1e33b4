"""Command line: ``xai demo`` explains the real ImageNet MobileNetV2 on real photos.

Usage:
    xai demo [--out DIR] [--methods grad_cam,score_cam,...] [--images chelsea,coffee,PATH...]
    xai methods
    xai report-card [--sets shortcut,background] [--methods ...] [--n-images N] [--json PATH]
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import sys
import time
from pathlib import Path

DEFAULT_IMAGES = ["chelsea", "coffee", "grace_hopper", "imagenet_16_251"]
# Every method of the demo runs with at most this many inputs per forward pass, so that
# path/noise/mask methods (IG, SmoothGrad, Score-CAM, Sobol, Occlusion) keep memory bounded.
DEMO_BATCH_SIZE = 64
DEMO_LAYER = "features.18"


# Further demo sections: (folder, module, function(out_dir) -> list of written paths)
_SECTIONS = [
    ("similarity", "xai._demos.similarity", "similarity_demo"),
    ("concepts", "xai._demos.concepts", "concepts_demo"),
    ("features", "xai._demos.features", "features_demo"),
]


class CliError(Exception):
    """A user error reported as one line."""


def _pick_methods(spec: str | None) -> list[str]:
    from xai.attributions import available

    names = available()
    if not spec or spec == "all":
        return names
    chosen = [s.strip() for s in spec.split(",") if s.strip()]
    for name in chosen:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CliError(f"unknown method {name!r}{hint}; run `xai methods` to list them")
    return chosen


def _load_images(spec: str | None, size: int):
    import torch

    from xai.data import load_image, preprocess, sample_photos_raw

    photos = dict(sample_photos_raw())
    if spec == "all":
        wanted = list(photos)
    elif spec:
        wanted = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        wanted = [n for n in DEFAULT_IMAGES if n in photos]
    if not wanted:
        raise CliError("no photos found: install scikit-image (pip install scikit-image)")
    names, tensors, raws = [], [], []
    for item in wanted:
        if item in photos:
            raw = photos[item]
            name = item
        elif Path(item).suffix or "/" in item:
            try:
                raw = load_image(item)
            except (FileNotFoundError, ValueError) as err:
                raise CliError(str(err)) from None
            name = Path(item).stem
        else:
            close = difflib.get_close_matches(item, list(photos), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CliError(
                f"unknown photo {item!r}{hint}; give a built-in name ({', '.join(list(photos)[:4])}"
                ", ...) or a path to an image file"
            )
        names.append(name)
        raws.append(raw)
        tensors.append(preprocess(raw, size))
    return torch.cat(tensors), names


def run_demo(out: Path, methods: str | None = None, images: str | None = None,
             size: int = 224, progress: bool = True) -> dict:
    """Explain the real MobileNetV2 on real photos with every method; write figures and a table.

    Returns the summary written to ``out/summary.json``.
    """
    import torch
    from tqdm.auto import tqdm

    import xai.visualize as viz
    from xai.attributions import get
    from xai.data import IMAGENET_MEAN, IMAGENET_STD, imagenet_categories, load_mobilenet_v2

    chosen = _pick_methods(methods)
    try:
        model = load_mobilenet_v2()
    except FileNotFoundError as err:
        raise CliError(str(err)) from None
    x, names = _load_images(images, size)
    out.mkdir(parents=True, exist_ok=True)
    categories = imagenet_categories()
    with torch.no_grad():
        probs = model(x).softmax(1)
    score, pred = probs.max(1)
    maps, seconds = {}, {}
    for name in tqdm(chosen, desc="methods", disable=not progress):
        method = get(name).create(model, layer=DEMO_LAYER, batch_size=DEMO_BATCH_SIZE)
        start = time.perf_counter()
        maps[name] = method(x, target=pred)
        seconds[name] = (time.perf_counter() - start) / len(names)
    titles = [f"{n}\n{categories[p]} {s:.2f}" for n, p, s in zip(names, pred.tolist(),
                                                                    score.tolist())]
    fig = viz.grid(x, maps, titles=titles, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    files = [viz.save(fig, out / "methods_grid.png", dpi=110),
             viz.save(fig, out / "methods_grid.pdf")]
    summary = {
        "model": "torchvision mobilenet_v2 IMAGENET1K_V1",
        "layer": DEMO_LAYER,
        "images": [{"name": n, "class": categories[p], "class_index": p, "score": round(s, 4)}
                   for n, p, s in zip(names, pred.tolist(), score.tolist())],
        "seconds_per_image": {k: round(v, 4) for k, v in seconds.items()},
    }
    lines = ["image            predicted class                 score",
             *[f"{r['name'][:16]:<16} {r['class'][:30]:<30} {r['score']:.3f}"
               for r in summary["images"]],
             "", "method                  seconds/image",
             *[f"{k:<23} {v:.3f}" for k, v in summary["seconds_per_image"].items()]]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    summary["files"] = [str(f) for f in files] + [str(out / "summary.txt")]
    for section, module, func in _SECTIONS:
        if progress:
            print(f"{section} ...", file=sys.stderr)
        try:
            demo = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            continue  # the section's module is not part of this version
        start = time.perf_counter()
        written = demo(out / section)
        summary[f"{section}_seconds"] = round(time.perf_counter() - start, 2)
        summary["files"] += [str(p) for p in written]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xai", description="Explain PyTorch vision models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain the real ImageNet MobileNetV2 on real photos")
    demo.add_argument("--out", default="xai-demo", help="output folder (default: xai-demo)")
    demo.add_argument("--methods", default=None, help="comma-separated registry names or 'all'")
    demo.add_argument("--images", default=None,
                      help="comma-separated photo names or image paths, or 'all' (default: four)")
    demo.add_argument("--size", type=int, default=224, help="input size (default 224)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub.add_parser("methods", help="list the attribution methods")
    sub.add_parser("report-card", add_help=False,
                   help="every method on the ground-truth sets (xai report-card --help)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report-card"]:
        from xai.audit.report_card import main as report_card_main

        return report_card_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command == "methods":
            from xai.attributions import available, get

            for name in available():
                doc = (get(name).__doc__ or "").strip().splitlines()[0]
                print(f"{name:<24} {doc}")
            return 0
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise CliError(f"--out {str(out)!r} is a file; give a folder path")
        summary = run_demo(out, args.methods, args.images, args.size,
                           progress=not args.no_progress)
    except CliError as err:
        print(f"xai: error: {err}", file=sys.stderr)
        return 2
    print((out / "summary.txt").read_text())
    print("wrote:", ", ".join(summary["files"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
