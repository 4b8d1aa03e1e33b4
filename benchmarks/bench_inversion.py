"""Cost of one optimization step of inversion and feature visualization against its floor.

Model: torchvision MobileNetV2 (random init: the timing does not depend on the weights, so no
download or offline package is needed). Rows:

- ``inversion @ layer``: one step of :class:`xai.features.Inversion` (forward up to the layer
  through the adapter's recorder, normalized loss, TV and alpha-norm regularizers, gradient,
  momentum update) on a batch of ``--batch`` images of ``--size`` px. Floor: one forward of
  the same batch through ``model.features[:k+1]`` (the same truncated network, parameters
  frozen) and ``torch.autograd.grad`` of a squared loss w.r.t. the input.
- ``feature vis @ layer`` / ``class logit``: one Adam step of
  :class:`xai.features.FeatureVisualization` (FFT parameterization, decorrelation, Lucid's
  five transforms, upsampling to 224 px, forward to the layer or through the whole model,
  gradient). Floor: one forward+backward of the model part it needs on a batch of 224 px
  images.

The per-step time is the difference between runs of ``n`` and ``3n`` steps divided by ``2n``,
so one-off costs (the reference code, the final forward) cancel; the fastest of ``--repeats``
(robust to a shared CPU's interruptions).
Target (issue #14): step <= 1.2 x floor.

Run: ``python benchmarks/bench_inversion.py [--batch 4] [--size 64] [--threads 2]``. The CPU
may be shared: the load average is printed before and after; compare rows, not machines.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def _best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _per_step(make, n: int, repeats: int) -> float:
    short = _best_time(lambda: make(n)(), repeats)
    long = _best_time(lambda: make(3 * n)(), repeats)
    return max(long - short, 0.0) / (2 * n)


def _floor(net, x: torch.Tensor, repeats: int, n: int) -> float:
    def once():
        for _ in range(n):
            xr = x.detach().requires_grad_(True)
            torch.autograd.grad(net(xr).square().sum(), xr)

    return _best_time(once, repeats) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="inversion image size (px)")
    parser.add_argument("--vis-size", type=int, default=128, help="visualization size (px)")
    parser.add_argument("--steps", type=int, default=6, help="n (runs of n and 3n steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision

    from xai.features import Channel, ClassLogit, FeatureVisualization, Inversion

    device = torch.device(args.device)
    model = torchvision.models.mobilenet_v2().eval().to(device)
    print(f"load average before: {os.getloadavg()}; threads {args.threads}; device {device}")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    rows = []
    for k in (2, 9, 14):
        layer = f"features.{k}"

        def make(n, layer=layer):
            inv = Inversion(model, layer, schedule=[(0.004, n)])
            return lambda: inv(x)

        step = _per_step(make, args.steps, args.repeats)
        trunk = model.features[: k + 1]
        for p in trunk.parameters():
            p.requires_grad_(False)
        floor = _floor(trunk, x, args.repeats, args.steps)
        for p in trunk.parameters():
            p.requires_grad_(True)
        rows.append((f"inversion @ {layer}", f"{args.batch}x{args.size}px", step, floor))

    big = torch.randn(args.batch, 3, 224, 224, generator=gen).to(device)
    for name, objective, net in (
        ("feature vis @ features.9", Channel("features.9", 3), model.features[:10]),
        ("class logit", ClassLogit(285), model),
    ):

        def make(n, objective=objective):
            vis = FeatureVisualization(
                model, objective, size=args.vis_size, batch=args.batch, n_steps=n, device=device
            )
            return vis

        step = _per_step(make, args.steps, args.repeats)
        for p in model.parameters():
            p.requires_grad_(False)
        floor = _floor(net, big, args.repeats, args.steps)
        for p in model.parameters():
            p.requires_grad_(True)
        rows.append((name, f"{args.batch}x{args.vis_size}->224px", step, floor))

    print(f"\n{'setting':<28} {'batch':<16} {'step ms':>9} {'floor ms':>9} {'ratio':>6}")
    for name, shape, step, floor in rows:
        print(f"{name:<28} {shape:<16} {1e3 * step:9.1f} {1e3 * floor:9.1f} {step / floor:6.2f}")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
