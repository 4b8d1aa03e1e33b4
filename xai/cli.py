"""Command line: ``xai demo`` explains the real ImageNet MobileNetV2 on real photos;
``xai explain`` / ``xai audit`` / ``xai layers`` work on your own model and images
(:mod:`xai._cli_user`).

Usage:
    xai demo [--out DIR] [--methods grad_cam,score_cam,...] [--images chelsea,coffee,PATH...]
             [--full]
    xai explain --model resnet18 --weights model.pt --images photos/ [--methods ...] [--out DIR]
    xai audit --model resnet18 --weights model.pt --data tree/ [--masks m/] [--groups g.csv]
    xai layers MODEL
    xai methods
    xai report-card [--sets shortcut,background] [--methods ...] [--n-images N] [--json PATH]
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

from xai._cli_user import CliError, add_parsers, pick_methods, run
from xai._presets import CHEAP_SETTINGS

DEFAULT_IMAGES = ["chelsea", "coffee"]
FULL_IMAGES = ["chelsea", "coffee", "grace_hopper", "imagenet_16_251"]
# Every method of the demo runs with at most this many inputs per forward pass, so that
# path/noise/mask methods (IG, SmoothGrad, Score-CAM, Sobol, Occlusion) keep memory bounded.
DEMO_BATCH_SIZE = 16
DEMO_LAYER = "features.18"
# The demo's cheap settings, per registry key (shared with the report card): see
# xai._presets.CHEAP_SETTINGS. ``--full`` ignores them (paper defaults, ``DEMO_LAYER``); a method
# that cannot explain MobileNetV2 is skipped with its reason.
DEMO_SETTINGS: dict[str, dict] = CHEAP_SETTINGS
# The same for the demo's sections (keyword arguments their functions accept; others ignored).
DEMO_SECTION_SETTINGS: dict[str, dict] = {
    # 24 random crops instead of 48: the NMF fit and the gradient x input pass halve
    "concepts": {"n_patches": 24},
    # two photos and a 64 px occluder (stride 32: 36 forwards per photo instead of 81)
    "segmentation": {"photos": ("chelsea", "coffee"), "occlusion_window": 64},
}


# Further demo sections: (folder, module, function(out_dir) -> list of written paths)
_SECTIONS = [
    ("similarity", "xai._demos.similarity", "similarity_demo"),
    ("concepts", "xai._demos.concepts", "concepts_demo"),
    ("features", "xai._demos.features", "features_demo"),
    ("segmentation", "xai._demos.segmentation", "segmentation_demo"),
]


def _pick_methods(spec: str | None) -> list[str]:
    from xai.attributions import available

    return pick_methods(spec, available("any"))  # the demo model is a CNN


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


def demo_settings(name: str, full: bool = False) -> dict:
    """Constructor arguments (with ``layer``) the demo gives method ``name``.

    Args:
        name: registry key.
        full: ``True`` for the paper defaults (only ``layer``), ``False`` for the cheap
            :data:`DEMO_SETTINGS` (a method missing there gets its defaults).
    """
    settings = {"layer": DEMO_LAYER, "batch_size": DEMO_BATCH_SIZE}
    if not full:
        settings.update(DEMO_SETTINGS.get(name, {}))
    return settings


def _skip_reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def run_demo(
    out: Path,
    methods: str | None = None,
    images: str | None = None,
    size: int = 224,
    progress: bool = True,
    full: bool = False,
) -> dict:
    """Explain the real MobileNetV2 on real photos with every method; write figures and a table.

    Args:
        out: output folder.
        methods: comma-separated registry keys, ``"all"`` or ``None`` (all).
        images: comma-separated photo names or paths, ``"all"``, or ``None`` (two photos; four
            with ``full``).
        size: input side.
        progress: show progress bars.
        full: the paper settings of every method (slow on a CPU) instead of
            :data:`DEMO_SETTINGS`.

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
    x, names = _load_images(images if images or not full else ",".join(FULL_IMAGES), size)
    out.mkdir(parents=True, exist_ok=True)
    categories = imagenet_categories()
    with torch.no_grad():
        probs = model(x).softmax(1)
    score, pred = probs.max(1)
    maps, seconds, settings, skipped = {}, {}, {}, {}
    for name in tqdm(chosen, desc="methods", disable=not progress):
        kwargs = demo_settings(name, full)
        start = time.perf_counter()
        try:
            method = get(name).create(model, **kwargs)
            maps[name] = method(x, target=pred)
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as err:
            # e.g. a transformer-only method: the demo goes on without it
            skipped[name] = _skip_reason(err)
            print(f"xai demo: skipped {name}: {skipped[name]}", file=sys.stderr)
            continue
        seconds[name] = (time.perf_counter() - start) / len(names)
        settings[name] = {k: v for k, v in kwargs.items() if k != "batch_size"}
    if not maps:
        raise CliError(
            "no method could explain the model: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        )
    titles = [
        f"{n}\n{categories[p]} {s:.2f}"
        for n, p, s in zip(names, pred.tolist(), score.tolist(), strict=True)
    ]
    fig = viz.grid(x, maps, titles=titles, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    files = [
        viz.save(fig, out / "methods_grid.png", dpi=110),
        viz.save(fig, out / "methods_grid.pdf"),
    ]
    summary: dict[str, Any] = {
        "model": "torchvision mobilenet_v2 IMAGENET1K_V1",
        "layer": DEMO_LAYER,
        "images": [
            {"name": n, "class": categories[p], "class_index": p, "score": round(s, 4)}
            for n, p, s in zip(names, pred.tolist(), score.tolist(), strict=True)
        ],
        "settings": "full (paper defaults)" if full else "demo (cheap, see xai.cli.DEMO_SETTINGS)",
        "method_settings": settings,
        "seconds_per_image": {k: round(v, 4) for k, v in seconds.items()},
        "skipped": skipped,
    }
    lines = [
        "image            predicted class                 score",
        *[
            f"{r['name'][:16]:<16} {r['class'][:30]:<30} {r['score']:.3f}"
            for r in summary["images"]
        ],
        "",
        f"method                  seconds/image  settings ({summary['settings']})",
        *[
            f"{k:<23} {v:>13.3f}  " + ", ".join(f"{a}={b}" for a, b in settings[k].items())
            for k, v in seconds.items()
        ],
        *[f"{k:<23} {'skipped':>13}  {v}" for k, v in skipped.items()],
    ]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    summary["files"] = [str(f) for f in files] + [str(out / "summary.txt")]
    for section, module, func in _SECTIONS:
        if progress:
            print(f"{section} ...", file=sys.stderr)
        try:
            demo = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            continue  # the section's module is not part of this version
        accepted = inspect.signature(demo).parameters
        kwargs = (
            {}
            if full
            else {k: v for k, v in DEMO_SECTION_SETTINGS.get(section, {}).items() if k in accepted}
        )
        start = time.perf_counter()
        written = demo(out / section, **kwargs)
        summary[f"{section}_seconds"] = round(time.perf_counter() - start, 2)
        summary["files"] += [str(p) for p in written]
        with (out / "summary.txt").open("a") as f:
            f.write(f"{section + ' (section)':<23} {summary[f'{section}_seconds']:>13.3f}  total\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """The ``xai`` command line (``xai demo``, ``xai explain``, ...).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success).
    """
    parser = argparse.ArgumentParser(prog="xai", description="Explain PyTorch vision models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="explain the real ImageNet MobileNetV2 on real photos")
    demo.add_argument("--out", default="xai-demo", help="output folder (default: xai-demo)")
    demo.add_argument("--methods", default=None, help="comma-separated registry names or 'all'")
    demo.add_argument(
        "--images",
        default=None,
        help="comma-separated photo names or image paths, or 'all' "
        "(default: chelsea,coffee; four with --full)",
    )
    demo.add_argument("--size", type=int, default=224, help="input size (default 224)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument(
        "--full",
        action="store_true",
        help="paper settings for every method and four photos (slow on a CPU; "
        "the default uses the cheap settings of xai.cli.DEMO_SETTINGS)",
    )
    sub.add_parser("methods", help="list the attribution methods")
    add_parsers(sub)
    sub.add_parser(
        "report-card",
        add_help=False,
        help="every method on the ground-truth sets (xai report-card --help)",
    )
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
        if args.command in ("explain", "audit", "layers"):
            return run(args)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise CliError(f"--out {str(out)!r} is a file; give a folder path")
        summary = run_demo(
            out, args.methods, args.images, args.size, progress=not args.no_progress, full=args.full
        )
    except CliError as err:
        print(f"xai: error: {err}", file=sys.stderr)
        return 2
    print((out / "summary.txt").read_text())
    print("wrote:", ", ".join(summary["files"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
