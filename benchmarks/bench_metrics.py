"""The perturbation-curve metrics on the real MobileNetV2: ``batch_size="auto"`` (first call and
repeated call) vs a per-step loop (one forward per perturbed image) vs the bare forwards of the
very same perturbed inputs (the floor, measured in the same run).

Metrics: Deletion, Insertion, PixelFlipping (``n / steps`` pixels per step) and ROAD (its nine
default fractions), each on the same two photos and Grad-CAM maps. For every metric the rows are:

- ``bare, <k>/forward``: the model alone on the metric's own perturbed inputs (recorded from
  one run of the metric), ``k`` per forward, for ``k`` = 1, 2, 4, the size ``"auto"`` chose
  on a first call and ``--fixed`` (the other metrics: its last); the fastest is the
  **floor** (issue #24: the engine at most 1.15x the floor, never slower than the per-step
  loop).
- ``per-step loop``: Deletion: a hand-written loop (build one image, run it, read the
  probability); the others: the engine with ``batch_size=1``.
- ``auto, first call``: the tuner's memory is cleared before the call, so it times sizes.
- ``auto, 2nd call``: the same call again, reusing (or continuing) what the first learned.
- ``auto, steady (never cleared)``: the call on a copy of the model whose memory is kept over
  all rounds (what every call after the first few gets).
- Deletion only: the engine with the fixed chunks ``--fixed`` (default 8 and 32).

ROAD's noisy linear imputation (sparse solves, about 10x the forwards at 224 px) is the same
work in every ROAD variant and no forward; it is computed once and replayed, so that the ROAD
rows compare the scoring engine with the floor. Its own time is printed. With the argmax
target every metric runs the clean batch once to fix the class; the curve metrics reuse those
scores for their clean step, ROAD (no clean step) cannot: ``auto, steady, class given`` shows
ROAD without that forward.

Variants run interleaved (round-robin, after one warm-up round); the **median** wall time and
the median process CPU time (all threads) per variant are reported, since the machine may be
shared; the load average is printed before and after. Curves are checked against the loop's.
Not collected by pytest. Run::

    python benchmarks/bench_metrics.py [--size 224] [--steps 20] [--repeat 5] [--device cpu]
        [--threads 1] [--metrics deletion,insertion,pixel_flipping,road] [--fixed 8,32]

On an overloaded CPU (load average far above the core count) two OpenMP threads can cost
seconds per forward in barrier waits whatever the batch size, so that large chunks win by far;
with ``--threads 1`` the per-image cost is nearly flat in the chunk size. ``"auto"`` measures
whichever regime the run is in.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import xai.metrics.faithfulness.road as road_module
from xai.adapter import ProbabilityTarget, auto_batch_sizes, reset_auto_batch_sizes
from xai.attributions import GradCAM
from xai.data import load_mobilenet_v2, sample_batch
from xai.metrics import ROAD, Deletion, Insertion, PixelFlipping
from xai.metrics.base import ExplanationMetric


def per_step_loop(model: nn.Module, x: Tensor, maps: Tensor, n_steps: int) -> Tensor:
    """Reference Deletion: for each sample and step, build one perturbed image and run it alone."""
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


class Recorder(nn.Module):
    """``model`` that keeps every input it sees (to replay a metric's perturbed inputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.clone())
        return self.model(x)


class Replay:
    """ROAD's imputation, computed on the first pass and replayed in the same order after."""

    def __init__(self, impute: Callable[..., Tensor]) -> None:
        self.impute = impute
        self.done: list[Tensor] = []
        self.calls = 0
        self.seconds = 0.0
        self.recording = True

    def __call__(self, *args: Any) -> Tensor:
        if self.recording:
            start = time.perf_counter()
            out = self.impute(*args)
            self.seconds += time.perf_counter() - start
            self.done.append(out)
            return out
        out = self.done[self.calls % len(self.done)]
        self.calls += 1
        return out.clone()


def curve_of(
    metric: ExplanationMetric, model: nn.Module, x: Tensor, maps: Tensor, target: Any
) -> Tensor:
    """The metric's curve."""
    curve = metric(model, x, maps, target).curve
    assert curve is not None
    return curve


def first_call(
    metric: ExplanationMetric, model: nn.Module, x: Tensor, maps: Tensor, target: Any
) -> object:
    """The metric as on its first call: what ``"auto"`` learned for ``model`` is forgotten."""
    reset_auto_batch_sizes(model)
    return metric(model, x, maps, target)


def sync() -> None:
    """Wait for queued CUDA work before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(
    variants: dict[str, Callable[[], object]], repeat: int
) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds per run of each variant, round-robin over ``repeat`` rounds after a
    warm-up round."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for rnd in range(repeat + 1):
        for name, fn in variants.items():
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync()
            if rnd:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def metrics_of(steps: int, n_pixels: int) -> dict[str, Callable[..., ExplanationMetric]]:
    """Factories ``batch_size -> metric`` of the benchmarked metrics."""
    return {
        "deletion": lambda bs: Deletion(n_steps=steps, batch_size=bs),
        "insertion": lambda bs: Insertion(n_steps=steps, batch_size=bs),
        "pixel_flipping": lambda bs: PixelFlipping(max(1, n_pixels // steps), batch_size=bs),
        "road": lambda bs: ROAD(batch_size=bs),
    }


def main() -> None:
    """Time every variant interleaved and print one table (medians, ratios to loop and floor)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--metrics", default="deletion,insertion,pixel_flipping,road")
    parser.add_argument("--fixed", default="8,32", help="Deletion's fixed chunk sizes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_mobilenet_v2().to(device)
    x, _ = sample_batch(["chelsea", "coffee"], size=args.size)
    x = x.to(device)
    maps = GradCAM(model, "features.18")(x)
    target = ProbabilityTarget(None)
    with torch.no_grad():
        classes = model(x).argmax(1)
    replay = Replay(road_module.noisy_linear_imputation)
    road_module.noisy_linear_imputation = replay  # type: ignore[assignment]
    factories = metrics_of(args.steps, args.size * args.size)
    names = [m for m in args.metrics.split(",") if m]
    fixed = [int(k) for k in args.fixed.split(",") if k]
    variants: dict[str, Callable[[], object]] = {}
    group: dict[str, str] = {}
    loops: dict[str, Callable[[], Tensor]] = {}
    engines: dict[str, Callable[[], Tensor]] = {}
    chosen: dict[str, int] = {}
    steady_model = copy.deepcopy(model)  # its own "auto" memory, never cleared
    for name in names:
        make = factories[name]
        recorder = Recorder(model)
        make(None)(recorder, x, maps, classes)  # class indices: every step is a forward
        replay.recording = replay.recording and name != "road"
        images = torch.cat(recorder.inputs)
        auto = make("auto")
        reset_auto_batch_sizes(model)
        auto(model, x, maps, target)  # what "auto" chooses here, for the bare row at that size
        (choice,) = auto_batch_sizes(model).values()
        chosen[name] = choice.size
        rows: dict[str, Callable[[], object]] = {}
        sizes = {1, 2, 4, choice.size, *(fixed if name == "deletion" else fixed[-1:])}
        for k in sorted(sizes):
            rows[f"bare, {k}/forward"] = functools.partial(bare, model, images, k)
        if name == "deletion":
            loops[name] = functools.partial(per_step_loop, model, x, maps, args.steps)
            rows["per-step loop (hand-written)"] = loops[name]
            for k in fixed:
                rows[f"engine, batch_size={k}"] = functools.partial(make(k), model, x, maps, target)
        else:
            loops[name] = functools.partial(curve_of, make(1), model, x, maps, target)
            rows["per-step loop (engine, batch_size=1)"] = loops[name]
        rows["auto, first call"] = functools.partial(first_call, auto, model, x, maps, target)
        rows["auto, 2nd call"] = functools.partial(auto, model, x, maps, target)
        rows["auto, steady (never cleared)"] = functools.partial(
            auto, steady_model, x, maps, target
        )
        if name == "road":  # no clean forward: the class is given, not the argmax
            rows["auto, steady, class given"] = functools.partial(
                auto, steady_model, x, maps, ProbabilityTarget(classes)
            )
        engines[name] = functools.partial(curve_of, auto, model, x, maps, target)
        for row, fn in rows.items():
            variants[f"{name}: {row}"] = fn
            group[f"{name}: {row}"] = name
    load_before = os.getloadavg()
    times = interleaved(variants, args.repeat)
    load_after = os.getloadavg()
    print(
        f"device={device} inputs={tuple(x.shape)} steps={args.steps} "
        f"threads={torch.get_num_threads()} rounds={args.repeat} (+1 warm-up); load average "
        f"(1/5/15 min) {'/'.join(f'{v:.1f}' for v in load_before)} -> "
        f"{'/'.join(f'{v:.1f}' for v in load_after)}"
    )
    if "road" in names:
        print(f"ROAD imputation (replayed in every ROAD row): {replay.seconds:.2f} s per call")
    print(f"'auto' chose on a first call: {chosen}")
    steady = {k[0]: c.size for k, c in auto_batch_sizes(steady_model).items()}
    print(f"'auto' steady choices by input shape: {steady}")
    header = (
        f"{'variant':46s} {'wall (s)':>9s} {'cpu (s)':>8s} {'/ floor':>8s} {'cpu/floor':>9s} "
        f"{'x loop':>7s} {'cpu x loop':>10s} {'max |curve diff|':>17s}"
    )
    print(header)
    for name in names:
        med = {
            v: (statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts))
            for v, ts in times.items()
            if group[v] == name
        }
        floor = {
            i: min(t[i] for v, t in med.items() if v.startswith(f"{name}: bare")) for i in (0, 1)
        }
        loop = next(t for v, t in med.items() if "per-step loop" in v)
        reference = loops[name]().double().cpu()
        diff = (engines[name]().double().cpu() - reference).abs().max().item()
        for v, (wall, cpu) in med.items():
            note = f"{diff:17.2e}" if v.endswith("auto, 2nd call") else ""
            print(
                f"{v:46s} {wall:9.3f} {cpu:8.3f} {wall / floor[0]:8.2f} {cpu / floor[1]:9.2f} "
                f"{loop[0] / wall:7.2f} {loop[1] / cpu:10.2f} {note:>17s}"
            )


if __name__ == "__main__":
    main()
