"""Deletion on the real MobileNetV2: the batched engine vs a per-step loop (one forward per step).

Prints a table of wall-clock times and checks that both give the same curves. Not collected by
pytest. Run: ``python benchmarks/bench_metrics.py [--size 224] [--steps 20] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from xai.adapter import ProbabilityTarget
from xai.attributions import GradCAM
from xai.data import load_mobilenet_v2, sample_batch
from xai.metrics import Deletion


def per_step_loop(model, x, maps, target, n_steps):
    """Reference: for each sample and each step, build one perturbed image and run it alone."""
    batch, _, height, width = x.shape
    n = height * width
    counts = torch.linspace(0, n, n_steps + 1, dtype=torch.float64).round().long()
    curves = torch.empty(batch, n_steps + 1, dtype=torch.float64)
    with torch.no_grad():
        classes = model(x).argmax(1)
        for b in range(batch):
            order = torch.sort(maps[b].flatten(), descending=True, stable=True).indices
            for s, k in enumerate(counts.tolist()):
                mask = torch.zeros(n, dtype=torch.bool, device=x.device)
                mask[order[:k]] = True
                xb = torch.where(mask.view(1, 1, height, width), 0.0, x[b : b + 1])
                curves[b, s] = model(xb).softmax(1)[0, classes[b]].double().cpu()
    return curves


def timed(fn, repeat):
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    """Time both variants and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = load_mobilenet_v2().to(device)
    x, names = sample_batch(["chelsea", "coffee"], size=args.size)
    x = x.to(device)
    maps = GradCAM(model, "features.18")(x)
    target = ProbabilityTarget(None)
    rows = []
    loop_t, loop_curve = timed(
        lambda: per_step_loop(model, x, maps, target, args.steps), args.repeat
    )
    rows.append(("per-step loop (1 image / forward)", loop_t, loop_curve))
    for bs in (None, 32, 8):
        metric = Deletion(n_steps=args.steps, batch_size=bs)
        t, res = timed(lambda m=metric: m(model, x, maps, target), args.repeat)
        rows.append((f"Deletion batched, batch_size={bs}", t, res.curve.double().cpu()))
    n_forwards = x.shape[0] * (args.steps + 1)
    print(
        f"device={device} inputs={tuple(x.shape)} steps={args.steps} "
        f"forwards per method={n_forwards} threads={torch.get_num_threads()}"
    )
    print(
        f"{'variant':40s} {'best of ' + str(args.repeat) + ' (s)':>16s} {'speed-up':>9s} "
        f"{'max |curve diff|':>17s}"
    )
    for name, t, curve in rows:
        diff = (curve - loop_curve).abs().max().item()
        print(f"{name:40s} {t:16.3f} {loop_t / t:9.2f} {diff:17.2e}")


if __name__ == "__main__":
    main()
