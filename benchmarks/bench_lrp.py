"""LRP and Salient Relevance speed, and LRP against zennit 0.5.1 on the same model.

Part 1, LRP: torchvision models (random init, seed 0, eval) at 224 px, batch ``--batch``,
composite ``epsilon_plus_flat`` with the default canonizers, against zennit's ``Gradient``
attributor with its ``EpsilonPlusFlat`` composite and matching canonizers, and the bare
forward + backward floor. Reported: median seconds over ``--rounds`` and the relative
difference of the two relevances (BN eps set to 0 so that zennit's merge is exact too).

Part 2, SR: :func:`context_aware_saliency` of one 224 px heatmap image at several working
resolutions (``longest_side``; 250 is Goferman's / the re-implementation's), median seconds.
The exact method compares every pixel's patch with every candidate patch: about 1e11 flops at
250 px, so expect tens of seconds on a few CPU cores and well under a second on a GPU.

Run:  python benchmarks/bench_lrp.py [--batch 4] [--rounds 3] [--device cpu]
      [--sides 64,128,250] [--models vgg16,resnet18,mobilenet_v2]
Not collected by pytest.
"""

from __future__ import annotations

import argparse
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


def _model(name: str, device: str) -> tuple[nn.Module, list]:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=1000)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
            m.running_var.uniform_(0.5, 1.5)
    canonizers = {"resnet18": [ResNetCanonizer()], "resnet50": [ResNetCanonizer()]}.get(
        name, [VGGCanonizer()] if name.startswith("vgg") else [SequentialMergeBatchNorm()])
    return model.eval().to(device), canonizers


def bench_lrp(args, sync) -> None:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    from xai.attributions.lrp import LRP

    print(f"\nLRP, batch {args.batch}, 224 px, {args.device}, median of {args.rounds}")
    print(f"{'model':<14}{'floor s':>10}{'xai s':>10}{'zennit s':>10}{'rel. diff':>12}")
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    target = torch.arange(args.batch, device=args.device)
    for name in args.models.split(","):
        if name == "mobilenet_v2":
            print(f"{name:<14}(zennit has no MobileNetV2 canonizer; see the tests)")
            continue
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

        ours_rel = lrp.relevance(x, target)
        their_rel = theirs()
        diff = float((ours_rel - their_rel).norm() / their_rel.norm())
        t_floor = _median_time(floor, args.rounds, sync)
        t_ours = _median_time(lambda: lrp.relevance(x, target), args.rounds, sync)
        t_theirs = _median_time(theirs, args.rounds, sync)
        print(f"{name:<14}{t_floor:>10.3f}{t_ours:>10.3f}{t_theirs:>10.3f}{diff:>12.2e}")


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="vgg16,resnet18,mobilenet_v2")
    parser.add_argument("--sides", default="64,128,250")
    parser.add_argument("--skip-lrp", action="store_true")
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if not args.skip_lrp:
        bench_lrp(args, sync)
    bench_sr(args, sync)


if __name__ == "__main__":
    main()
