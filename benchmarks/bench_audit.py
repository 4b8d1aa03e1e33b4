"""Audit throughput: images per second of ``xai.audit.audit`` against the bare explainer calls.

Rows: the bare explainer calls on the same batches (the floor), the in-process engine on
tensors, on the ``GroundTruthSet`` (a ``Dataset`` of tensor rows: sliced), on the same samples
behind a plain ``__getitem__`` (read by a DataLoader with auto workers), and the Ray engine
with 1 and 2 actors (a local Ray instance with as many CPUs as actors; its start-up is not
timed, the actors' is). Prints a table with the overhead against the floor, in wall time and
in CPU time (the load-robust column on a shared machine; Ray actors' CPU is not counted). Not
collected by pytest. Needs Debian ``dataset-fashion-mnist`` (and Ray for the Ray rows).

    python benchmarks/bench_audit.py [--n-images 10000] [--threads 1] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from statistics import median
from typing import Any

import torch

from xai.attributions import get
from xai.audit import audit
from xai.data.shortcuts import planted_shortcut_set, train_small_cnn


class _Opaque(torch.utils.data.Dataset):
    """The same samples behind a plain ``__getitem__``: what a DataLoader reads item by item."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


def _clocks() -> tuple[float, float]:
    """Wall seconds and CPU seconds of this process plus its finished children (the
    DataLoader workers are joined at the end of each audit)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return time.perf_counter(), cpu


def _interleaved(fns: list, repeat: int) -> list[tuple[float, float]]:
    """Median ``(wall, cpu)`` seconds of each function, the runs interleaved (one round runs
    every function once) so that a change of the machine's load hits every row alike."""
    runs: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            wall0, cpu0 = _clocks()
            fn()
            wall1, cpu1 = _clocks()
            runs[k].append((wall1 - wall0, cpu1 - cpu0))
    return [(median(w for w, _ in r), median(c for _, c in r)) for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-images", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--explainers", default="saliency,grad_cam")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds (median)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = train_small_cnn(planted_shortcut_set(3000))
    data = planted_shortcut_set(args.n_images, split="test", seed=1)
    tensors: dict[str, Any] = {"labels": data.labels, "masks": data.masks, "groups": data.groups}
    bs = args.batch_size

    ray: Any = None
    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("(Ray not installed: no Ray rows)")
    print(
        f"{args.n_images} Fashion-MNIST images 28x28, batch {bs}, {args.threads} thread(s) per "
        f"process, load avg {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores; medians of "
        f"{args.repeat} interleaved rounds; CPU: this process and its DataLoader workers"
    )
    print(f"{'explainer':<12}{'engine':<34}{'img/s':>9}{'x bare':>9}{'CPU x bare':>12}")
    for name in args.explainers.split(","):
        method = get(name).create(model, layer="features")
        method(data.inputs[:8], target=data.labels[:8])  # warm-up

        def bare(method=method):
            for i in range(0, len(data), bs):
                method(data.inputs[i : i + bs], target=data.labels[i : i + bs])

        local = {
            "bare explainer calls (floor)": bare,
            "local, tensors": lambda m=method: audit(
                model, data.inputs, explainer=m, batch_size=bs, progress=False, **tensors
            ),
            "local, GroundTruthSet (sliced)": lambda m=method: audit(
                model, data, explainer=m, batch_size=bs, progress=False
            ),
            "local, Dataset (auto workers)": lambda m=method: audit(
                model, _Opaque(data), explainer=m, batch_size=bs, progress=False
            ),
        }
        rows = list(zip(local, _interleaved(list(local.values()), args.repeat), strict=True))
        if ray is not None:
            for workers in (1, 2):
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads)}},
                )
                (timing,) = _interleaved(
                    [
                        lambda m=method, w=workers: audit(
                            model,
                            data.inputs,
                            explainer=m,
                            batch_size=bs,
                            progress=False,
                            engine="ray",
                            num_workers=w,
                            ray_options={"shard_size": max(bs, args.n_images // (4 * w))},
                            **tensors,
                        )
                    ],
                    args.repeat,
                )
                rows.append((f"ray, {workers} actor(s)", (timing[0], float("nan"))))
                ray.shutdown()
        wall0, cpu0 = rows[0][1]
        for engine, (wall, cpu) in rows:
            cpu_ratio = f"{cpu / cpu0:>11.2f}x" if cpu == cpu else f"{'-':>12}"
            print(f"{name:<12}{engine:<34}{len(data) / wall:>9.0f}{wall / wall0:>8.2f}x{cpu_ratio}")


if __name__ == "__main__":
    main()
