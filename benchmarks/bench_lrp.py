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
      [--threads N]
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

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


def _interleaved(fns: dict, rounds: int, sync) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock seconds and median CPU seconds (this process, all threads) of each
    function, timed in interleaved rounds. On a shared, oversubscribed machine the CPU time
    is the steadier measure of the work done; wall time is what a user waits on a quiet one."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return (
        {k: statistics.median(v) for k, v in wall.items()},
        {k: statistics.median(v) for k, v in cpu.items()},
    )


def _zennit_mobilenet_canonizer():
    """zennit canonizer for MobileNetV2 (the one the tests compare against)."""
    threads = torch.get_num_threads()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.attributions.test_lrp import _zennit_inverted_residual

    torch.set_num_threads(threads)  # the tests' conftest sets its own thread count on import
    return _zennit_inverted_residual()


def _model(name: str, device: str) -> tuple[nn.Module, list]:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.manual_seed(0)
    if name == "mobilenet_v2":
        # random-init MobileNetV2 has logits ~1e-9 and relevance ~1e-21 (denormal arithmetic,
        # meaningless ratios): use the real offline ImageNet weights when they are installed
        from xai.data import load_mobilenet_v2

        try:
            model = load_mobilenet_v2()
        except FileNotFoundError:
            model = getattr(torchvision.models, name)(num_classes=1000)
        canonizers = [SequentialMergeBatchNorm(), _zennit_mobilenet_canonizer()]
        return model.eval().to(device), canonizers
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

    print(
        f"\nLRP epsilon_plus_flat, batch {args.batch}, {args.size} px, {args.device}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds"
    )
    print("wall-clock seconds (cpu seconds of this process in brackets)")
    print(
        f"{'model':<14}{'floor s':>15}{'xai s':>15}{'zennit s':>15}{'xai/floor':>15}"
        f"{'xai/zennit':>15}{'rel. diff':>11}"
    )
    gen = torch.Generator().manual_seed(0)  # the same input in every run
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(args.device)
    target = torch.arange(args.batch, device=args.device)
    for name in args.models.split(","):
        model, canonizers = _model(name, args.device)
        onehot = nn.functional.one_hot(target, 1000).float()
        lrp = LRP(model, "epsilon_plus_flat")

        # the closures bind this iteration's model through their defaults (bugbear B023)
        def floor(model=model, onehot=onehot):
            xg = x.clone().requires_grad_(True)
            out = model(xg)
            torch.autograd.grad(out, xg, grad_outputs=out * onehot)

        def theirs(model=model, canonizers=canonizers, onehot=onehot):
            with Gradient(model, EpsilonPlusFlat(canonizers=canonizers)) as attributor:
                return attributor(x, lambda out: out * onehot)[1]

        def ours(lrp=lrp):
            return lrp.relevance(x, target)

        ours_rel, their_rel = ours(), theirs()  # also the warm-up
        floor()
        diff = float((ours_rel - their_rel).norm() / their_rel.norm())
        t, c = _interleaved({"floor": floor, "xai": ours, "zennit": theirs}, args.rounds, sync)

        def cell(wall: float, cpu: float, digits: int = 3) -> str:
            return f"{wall:.{digits}f} ({cpu:.{digits}f})".rjust(15)

        print(
            f"{name:<14}"
            + cell(t["floor"], c["floor"])
            + cell(t["xai"], c["xai"])
            + cell(t["zennit"], c["zennit"])
            + cell(t["xai"] / t["floor"], c["xai"] / c["floor"], 2)
            + cell(t["xai"] / t["zennit"], c["xai"] / c["zennit"], 2)
            + f"{diff:>11.1e}",
            flush=True,
        )


def bench_sr(args, sync) -> None:
    from xai.attributions.lrp.salient_relevance import context_aware_saliency, relevance_to_rgb

    gen = torch.Generator().manual_seed(0)
    relevance = torch.randn(1, 3, 224, 224, generator=gen) ** 3  # sparse-ish heavy tails
    image = relevance_to_rgb(relevance).to(args.device)
    print(f"\nSR (context-aware saliency of one 224 px heatmap), {args.device}")
    print(f"{'longest_side':<14}{'seconds':>10}")
    for side in [int(s) for s in args.sides.split(",")]:
        rounds = 1 if side > 160 and args.device == "cpu" else args.rounds
        t = _median_time(
            lambda side=side: context_aware_saliency(image, longest_side=side), rounds, sync
        )
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
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
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
