"""Deletion on the real MobileNetV2: the batched engine (chunk 32, 8, ``"auto"``) vs a per-step
loop (one forward per perturbed image) and vs the bare forwards of the same perturbed inputs.

The fastest chunk size depends on hardware and model: on a small CPU one image per forward can
beat 32, on a GPU large chunks win. ``batch_size="auto"`` (the default) times chunks of 1, 2,
4, ... rows on the run's first chunks and keeps the fastest. Variants are run interleaved
(round-robin, one warm-up round) and the **median** per variant is reported, since the machine
may be shared; the load average is printed. Curves are checked against the loop's.

Rows: ``bare forwards`` runs the model alone on the perturbed images built beforehand, one image
per forward (the per-step loop's floor), and 32 at a time; ``/ best bare`` divides by the
faster of the two (issue #24's target for the engine: at most 1.15x). Not collected by pytest. Run::

    python benchmarks/bench_metrics.py [--size 224] [--steps 20] [--repeat 5] [--device cpu]
        [--threads 1]

On an overloaded CPU (load average far above the core count) two OpenMP threads can cost
seconds per forward in barrier waits whatever the batch size, so that large chunks win by far;
with ``--threads 1`` the per-image cost is nearly flat in the chunk size. ``"auto"`` measures
whichever regime the run is in.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from xai.adapter import ProbabilityTarget
from xai.attributions import GradCAM
from xai.data import load_mobilenet_v2, sample_batch
from xai.metrics import Deletion


def perturbed_images(x: Tensor, maps: Tensor, n_steps: int) -> Tensor:
    """The ``(B * (T + 1), C, H, W)`` deleted images of every sample and step (sample-major)."""
    batch, _, height, width = x.shape
    n = height * width
    counts = torch.linspace(0, n, n_steps + 1, dtype=torch.float64).round().long()
    out = []
    for b in range(batch):
        order = torch.sort(maps[b].flatten(), descending=True, stable=True).indices
        for k in counts.tolist():
            mask = torch.zeros(n, dtype=torch.bool, device=x.device)
            mask[order[:k]] = True
            out.append(torch.where(mask.view(1, height, width), 0.0, x[b]))
    return torch.stack(out)


def per_step_loop(model: nn.Module, x: Tensor, maps: Tensor, n_steps: int) -> Tensor:
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


def bare(model: nn.Module, images: Tensor, chunk: int) -> None:
    """The model alone on prebuilt images, ``chunk`` per forward."""
    with torch.no_grad():
        for i in range(0, images.shape[0], chunk):
            model(images[i : i + chunk])


def sync() -> None:
    """Wait for queued CUDA work before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(variants: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds per run of each variant, round-robin over ``repeat`` rounds after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rnd in range(repeat + 1):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if rnd:
                times[name].append(time.perf_counter() - start)
    return times


class ChunkLog(nn.Module):
    """``model`` that records the batch size of every forward (to report what "auto" chose)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


def main() -> None:
    """Time every variant interleaved and print the table (medians, ratios to the loop)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_mobilenet_v2().to(device)
    x, _ = sample_batch(["chelsea", "coffee"], size=args.size)
    x = x.to(device)
    maps = GradCAM(model, "features.18")(x)
    target = ProbabilityTarget(None)
    images = perturbed_images(x, maps, args.steps)
    metrics: dict[int | str, Deletion] = {
        bs: Deletion(n_steps=args.steps, batch_size=bs) for bs in (32, 8, "auto")
    }
    variants: dict[str, Callable[[], object]] = {
        "bare forwards (1 image / forward)": lambda: bare(model, images, 1),
        "bare forwards (32 images / forward)": lambda: bare(model, images, 32),
        "per-step loop (1 image / forward)": lambda: per_step_loop(model, x, maps, args.steps),
    }
    for bs, metric in metrics.items():
        variants[f"engine, batch_size={bs!r}"] = functools.partial(metric, model, x, maps, target)
    load_before = os.getloadavg()[0]
    times = interleaved(variants, args.repeat)
    load_after = os.getloadavg()[0]
    loop_curve = per_step_loop(model, x, maps, args.steps)
    curves = {}
    for bs, metric in metrics.items():
        curve = metric(model, x, maps, target).curve
        assert curve is not None
        curves[f"engine, batch_size={bs!r}"] = curve.double().cpu()
    logged = ChunkLog(model)
    metrics["auto"](logged, x, maps, target)
    print(
        f"device={device} inputs={tuple(x.shape)} steps={args.steps} "
        f"forwards per method={images.shape[0]} threads={torch.get_num_threads()} "
        f"load average (1 min) {load_before:.1f} -> {load_after:.1f}"
    )
    print(f"'auto' chunk sizes in one run (after the clean forward): {logged.sizes[1:]}")
    loop_t = statistics.median(times["per-step loop (1 image / forward)"])
    floor_t = min(statistics.median(ts) for name, ts in times.items() if name.startswith("bare"))
    print(
        f"{'variant':38s} {'median of ' + str(args.repeat) + ' (s)':>16s} "
        f"{'speed vs loop':>14s} {'/ best bare':>12s} {'max |curve diff|':>17s}"
    )
    for name, ts in times.items():
        t = statistics.median(ts)
        diff = ""
        if name in curves:
            diff = f"{(curves[name] - loop_curve).abs().max().item():17.2e}"
        print(f"{name:38s} {t:16.3f} {loop_t / t:14.2f} {t / floor_t:12.2f} {diff:>17s}")


if __name__ == "__main__":
    main()
