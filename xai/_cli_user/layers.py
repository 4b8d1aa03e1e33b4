"""``xai layers MODEL``: list a model's layers with their output shapes."""

from __future__ import annotations

import argparse

from xai._cli_user.errors import CliError
from xai._cli_user.models import load_model

__all__ = ["run_layers"]


def run_layers(args: argparse.Namespace) -> int:
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
