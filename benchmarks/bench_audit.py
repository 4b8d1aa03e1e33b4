"""Audit throughput: images per second of ``xai.audit.audit`` against the bare explainer calls.

Prints a table. Not collected by pytest. Needs Debian ``dataset-fashion-mnist``.

    python benchmarks/bench_audit.py [--n-images 2000] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from xai.attributions import get
from xai.audit import audit
from xai.data.shortcuts import planted_shortcut_set, train_small_cnn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = train_small_cnn(planted_shortcut_set(3000))
    data = planted_shortcut_set(args.n_images, split="test", seed=1)
    print(
        f"{args.n_images} Fashion-MNIST images, batch {args.batch_size}, {args.threads} thread(s)"
    )
    print(f"{'explainer':<22}{'bare img/s':>12}{'audit img/s':>13}{'overhead':>10}")
    for name in ("saliency", "grad_cam", "integrated_gradients"):
        method = get(name).create(model, layer="features")
        method(data.inputs[:8], target=data.labels[:8])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(data), args.batch_size):
            method(
                data.inputs[i : i + args.batch_size], target=data.labels[i : i + args.batch_size]
            )
        bare = time.perf_counter() - start
        start = time.perf_counter()
        audit(model, data, explainer=method, batch_size=args.batch_size, progress=False)
        full = time.perf_counter() - start
        print(f"{name:<22}{len(data) / bare:>12.0f}{len(data) / full:>13.0f}{full / bare:>9.2f}x")


if __name__ == "__main__":
    main()
