"""Network Dissection of 4 MobileNetV2 layers vs the bare forward passes of the same images,
and peak memory vs the number of images (measured in fresh subprocesses).

    python benchmarks/bench_dissect.py                 # 2,000 images at 112 px
    python benchmarks/bench_dissect.py --n 400 --mem 100,200,400

Time: the images (Broden-lite, rendered once, kept in memory) go through the model in batches
of ``--batch-size`` under ``torch.no_grad()`` (the floor), then through
``NetworkDissection(model, 4 layers).fit`` (one forward per image, activations and masks
cached on disk, exact thresholds and IoU counts read back); rounds alternate the two and the
best of each is kept. Wall time and process CPU time are both printed: on a shared machine
the CPU-time ratio is the steadier one. Target: ratio <= 1.3.

Memory: each size runs in its own process over a lazily rendered ``BrodenLite`` (nothing is
held per image), and reports its peak RSS (``ru_maxrss``); flat means the dissection's memory
does not grow with the data (its disk cache does).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import warnings

import torch

LAYERS = ["features.3", "features.6", "features.10", "features.14"]


def _model():
    from xai.data import load_mobilenet_v2

    return load_mobilenet_v2()


def _render(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from xai.data.broden_lite import BrodenLite

    data = BrodenLite(n, size=size, seed=0)
    items = [data[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.stack([m for _, m in items])


def _forward(model, x: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of the bare forward passes."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    return time.perf_counter() - start, time.process_time() - cpu


def _dissect(model, data, batch_size: int) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of the dissection."""
    from xai.concepts import NetworkDissection

    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dead filters warn
        NetworkDissection(model, LAYERS, batch_size=batch_size).fit(data)
    return time.perf_counter() - start, time.process_time() - cpu


def _rounded(pairs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(round(a, 1), round(b, 1)) for a, b in pairs]


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _child(n: int, size: int, batch_size: int, mode: str) -> None:
    """Run in a fresh process: dissect (or only forward) a lazily rendered set; print the peak
    RSS of the whole process and the peak growth over the RSS after setup (model and stamps
    loaded, one batch run), sampled every 5 ms."""
    from torch.utils.data import DataLoader

    from xai.data.broden_lite import BrodenLite

    model = _model()
    data = BrodenLite(n, size=size, seed=0)
    with torch.no_grad():
        model(next(iter(DataLoader(data, batch_size=batch_size)))[0])
    base = _rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if mode == "dissect":
        _dissect(model, data, batch_size)
    else:
        with torch.no_grad():
            for x, _ in DataLoader(data, batch_size=batch_size):
                model(x)
    done.set()
    thread.join()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "mode": mode, "peak_rss_mb": peak_mb,
                      "growth_mb": max(peak[0], _rss_mb()) - base}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images for the timing")
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved timing rounds (0: skip the timing)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--mem", default="250,500,1000", help="sizes for the memory curve")
    parser.add_argument("--child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _child(int(args.child[0]), args.size, args.batch_size, args.child[1])
        return

    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    if args.rounds > 0:  # --rounds 0: only the memory curve
        import tqdm.auto  # noqa: F401  (imports are not what is timed)

        import xai.concepts  # noqa: F401

        model = _model()
        t0 = time.perf_counter()
        x, masks = _render(args.n, args.size)
        print(f"rendered {args.n} Broden-lite images at {args.size} px in "
              f"{time.perf_counter() - t0:.1f} s (not timed below)")  # fmt: skip
        _forward(model, x[: args.batch_size], args.batch_size)  # warm-up
        floors, dissects = [], []
        for _ in range(args.rounds):  # interleaved, so a load change hits both alike
            floors.append(_forward(model, x, args.batch_size))
            dissects.append(_dissect(model, (x, masks), args.batch_size))
        (floor, floor_cpu), (dissect, dissect_cpu) = min(floors), min(dissects)
        print()
        print(f"| {args.n} images, {args.size} px, 4 layers (best of {args.rounds}) "
              "| wall s | vs floor | CPU s | vs floor |")  # fmt: skip
        print("|---|---|---|---|---|")
        print(f"| bare forward passes (floor) | {floor:.1f} | 1.00x | {floor_cpu:.1f} | 1.00x |")
        print(f"| NetworkDissection.fit | {dissect:.1f} | {dissect / floor:.2f}x "
              f"| {dissect_cpu:.1f} | {dissect_cpu / floor_cpu:.2f}x |")  # fmt: skip
        print(
            f"layers: {LAYERS}; all rounds (wall, CPU): forward {_rounded(floors)}, "
            f"dissection {_rounded(dissects)}"
        )

    sizes = [int(v) for v in args.mem.split(",") if v.strip()]  # --mem '': no curve
    if sizes:
        print()
        print("| images | peak RSS MB, forward only (growth after setup) "
              "| peak RSS MB, dissection (growth after setup) |")  # fmt: skip
        print("|---|---|---|")
    for n in sizes:
        rss = {}
        for mode in ("forward", "dissect"):
            cmd = [sys.executable, __file__, "--child", str(n), mode, "--size", str(args.size),
                   "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads or 0)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rss[mode] = json.loads(out.strip().splitlines()[-1])
        f, d = rss["forward"], rss["dissect"]
        print(f"| {n} | {f['peak_rss_mb']:.0f} (+{f['growth_mb']:.0f}) "
              f"| {d['peak_rss_mb']:.0f} (+{d['growth_mb']:.0f}) |", flush=True)  # fmt: skip
    print(f"\nload average at the end {os.getloadavg()} (2 cores shared with other jobs)")


if __name__ == "__main__":
    main()
