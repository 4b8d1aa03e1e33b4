"""The ``explain``, ``audit`` and ``layers`` sub-commands: their options and their dispatch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xai._cli_user.audit import run_audit
from xai._cli_user.errors import CliError
from xai._cli_user.explain import run_explain
from xai._cli_user.layers import run_layers

__all__ = ["add_parsers", "run"]


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


def add_parsers(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
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
