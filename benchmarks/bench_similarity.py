"""Cost of similarity maps relative to computing the embeddings alone.

One query against ``N`` references (default 256) at 224 px on MobileNetV2 pooled features
(``features.18`` + global average pooling): the time of ``SimilarityMaps(...)(query, refs)``
divided by the time of computing the ``N + 1`` embeddings with ``torch.no_grad()`` in the same
chunks. Target: ratio <= 1.2 for the decomposable poolings (the maps need no extra forward and
no backward). Measurements are interleaved and the minimum of ``--repeats`` runs is kept, since
the CPU may be shared.

Usage:
    python benchmarks/bench_similarity.py [--references 256] [--size 224] [--batch-size 64]
        [--repeats 2] [--grad-cam] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from xai._demos.similarity import PooledFeatures
from xai.attributions.similarity import SimilarityMaps
from xai.data import load_mobilenet_v2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embeddings_only(model: nn.Module, query, refs, batch_size: int) -> None:
    with torch.no_grad():
        model(query)
        for i in range(0, refs.shape[0], batch_size):
            model(refs[i : i + batch_size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--grad-cam", action="store_true", help="also time pooling='grad_cam'")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = PooledFeatures(load_mobilenet_v2()).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(1, 3, args.size, args.size, generator=gen).to(device)
    refs = torch.randn(args.references, 3, args.size, args.size, generator=gen).to(device)

    variants: dict[str, SimilarityMaps] = {
        "avg, cosine (maps at 224 px)": SimilarityMaps(
            model, "features.18", batch_size=args.batch_size
        ),
        "avg, cosine (grid maps)": SimilarityMaps(
            model, "features.18", upsample=False, batch_size=args.batch_size
        ),
    }
    if args.grad_cam:
        variants["grad_cam, cosine (2 fwd+bwd/pair)"] = SimilarityMaps(
            model, "features.18", pooling="grad_cam", batch_size=args.batch_size
        )

    def timed(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    embeddings_only(model, query, refs[: args.batch_size], args.batch_size)  # warm-up
    base = float("inf")
    best = {name: float("inf") for name in variants}
    for _ in range(args.repeats):
        base = min(base, timed(lambda: embeddings_only(model, query, refs, args.batch_size)))
        for name, sim in variants.items():
            best[name] = min(best[name], timed(lambda sim=sim: sim(query, refs)))

    print(
        f"\none query vs {args.references} references, {args.size} px, MobileNetV2 "
        f"features.18 + GAP, batch_size={args.batch_size}, device={device}, "
        f"threads={torch.get_num_threads()}, min of {args.repeats}"
    )
    print(f"{'variant':<36} {'seconds':>9} {'ratio':>7}")
    print(f"{'embeddings only (N+1 forwards)':<36} {base:>9.2f} {1.0:>7.2f}")
    for name, seconds in best.items():
        print(f"{name:<36} {seconds:>9.2f} {seconds / base:>7.2f}")


if __name__ == "__main__":
    main()
