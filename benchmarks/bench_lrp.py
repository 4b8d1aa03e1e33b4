"""LRP and Salient Relevance speed, and LRP against zennit 0.5.1 on the same model.

Part 1, LRP: torchvision models (random init, seed 0, eval) at ``--size`` px, batch ``--batch``,
composite ``epsilon_plus_flat`` with the default canonizers, against zennit's ``Gradient``
attributor with its ``EpsilonPlusFlat`` composite and matching canonizers (for MobileNetV2 an
``AttributeCanonizer`` for the inverted residuals and the functional head pooling, as in the
tests), and the floor: one bare forward + backward of the same model and batch. The three are
timed in interleaved rounds (floor, xai, zennit, floor, ...) so that a shared machine's load
hits them alike; reported: medians, the ratios xai/floor and xai/zennit, and the relative
difference of the two relevances (BN eps set to 0 so that zennit's merge is exact too).

Part 2, SR: :func:`context_aware_saliency` of one 224 px heatmap image at several working
resolutions (``longest_side``; 250 is Goferman's / the re-implementation's), median seconds.

Run:  python benchmarks/bench_lrp.py [--batch 4] [--rounds 5] [--size 224] [--device cpu]
      [--sides 64,128,250] [--models vgg16,resnet18,resnet50,mobilenet_v2] [--skip-sr]
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchvision
from torch import nn


def _median_time(fn, rounds: int, sync) -> float:
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _interleaved(fns: dict, rounds: int, sync) -> dict[str, float]:
    """Median seconds of each function, timed in interleaved rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _zennit_mobilenet_canonizer():
    from torchvision.models.mobilenetv2 import InvertedResidual
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(self, x):
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

    def head(self, x):
        return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))

    def attribute_map(name, module):
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        if isinstance(module, torchvision.models.MobileNetV2):
            return {"forward": head.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
        return None

    return AttributeCanonizer(attribute_map)


def _model(name: str, device: str) -> tuple[nn.Module, list]:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=1000)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
            m.running_var.uniform_(0.5, 1.5)
    if name.startswith("resnet"):
        canonizers = [ResNetCanonizer()]
    elif name.startswith("vgg"):
        canonizers = [VGGCanonizer()]
    else:
        canonizers = [SequentialMergeBatchNorm(), _zennit_mobilenet_canonizer()]
    return model.eval().to(device), canonizers


def bench_lrp(args, sync) -> None:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    from xai.attributions.lrp import LRP

    print(f"\nLRP epsilon_plus_flat, batch {args.batch}, {args.size} px, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(f"{'model':<14}{'floor s':>9}{'xai s':>9}{'zennit s':>10}{'xai/floor':>11}"
          f"{'xai/zennit':>12}{'rel. diff':>11}")
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    target = torch.arange(args.batch, device=args.device)
    for name in args.models.split(","):
        model, canonizers = _model(name, args.device)
        onehot = nn.functional.one_hot(target, 1000).float()
        lrp = LRP(model, "epsilon_plus_flat")

        def floor():
            xg = x.clone().requires_grad_(True)
            out = model(xg)
            torch.autograd.grad(out, xg, grad_outputs=out * onehot)

        def theirs():
            with Gradient(model, EpsilonPlusFlat(canonizers=canonizers)) as attributor:
                return attributor(x, lambda out: out * onehot)[1]

        def ours():
            return lrp.relevance(x, target)

        ours_rel, their_rel = ours(), theirs()  # also the warm-up
        floor()
        diff = float((ours_rel - their_rel).norm() / their_rel.norm())
        t = _interleaved({"floor": floor, "xai": ours, "zennit": theirs}, args.rounds, sync)
        print(f"{name:<14}{t['floor']:>9.3f}{t['xai']:>9.3f}{t['zennit']:>10.3f}"
              f"{t['xai'] / t['floor']:>11.2f}{t['xai'] / t['zennit']:>12.2f}{diff:>11.1e}",
              flush=True)


def bench_sr(args, sync) -> None:
    from xai.attributions.lrp.salient_relevance import context_aware_saliency, relevance_to_rgb

    gen = torch.Generator().manual_seed(0)
    relevance = torch.randn(1, 3, 224, 224, generator=gen) ** 3  # sparse-ish heavy tails
    image = relevance_to_rgb(relevance).to(args.device)
    print(f"\nSR (context-aware saliency of one 224 px heatmap), {args.device}")
    print(f"{'longest_side':<14}{'seconds':>10}")
    for side in [int(s) for s in args.sides.split(",")]:
        rounds = 1 if side > 160 and args.device == "cpu" else args.rounds
        t = _median_time(lambda: context_aware_saliency(image, longest_side=side), rounds, sync)
        print(f"{side:<14}{t:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="vgg16,resnet18,resnet50,mobilenet_v2")
    parser.add_argument("--sides", default="64,128,250")
    parser.add_argument("--skip-lrp", action="store_true")
    parser.add_argument("--skip-sr", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if not args.skip_lrp:
        bench_lrp(args, sync)
    if not args.skip_sr:
        bench_sr(args, sync)
    if hasattr(os, "getloadavg"):
        print("load average at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
