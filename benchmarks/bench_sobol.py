"""Speed of SobolAttribution against bare forward passes and a reference-style implementation.

Setting (Fel et al. 2021 / xplique defaults): MobileNetV2 at 224 px, one image, grid 8,
n_designs 32 -> 32 * (64 + 2) = 2,112 forward passes, batch size 64. Rows:

- ``bare forwards``: the same number of forward passes of one prebuilt batch, same batch size
  (the floor: what the model alone costs);
- ``xai SobolAttribution``: the full call (design, perturbation on the fly, estimator, upsampling);
- ``reference-style``: the approach described for xplique / the original code, re-written here
  from its description (not copied): NumPy masks from an unscrambled SciPy Sobol sequence,
  NumPy nearest upsampling and inpainting per batch, one model call per batch, NumPy Jansen
  estimator, OpenCV bicubic resize.

Run: ``python benchmarks/bench_sobol.py [--repeats 1] [--grid-size 8] [--n-designs 32]``.
The CPU is shared: run it once, and compare ratios rather than absolute times.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch


def load_model() -> tuple[torch.nn.Module, str]:
    from xai.data import load_mobilenet_v2

    try:
        return load_mobilenet_v2(), "ImageNet weights"
    except FileNotFoundError:
        import torchvision

        return torchvision.models.mobilenet_v2().eval(), "random init (weights missing)"


def load_image(size: int) -> torch.Tensor:
    try:
        from xai.data import sample_batch

        return sample_batch(["chelsea"], size=size)[0]
    except Exception:  # no offline photos: a fixed random image is as good for timing
        return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def bare_forwards(model, x, n_forwards: int, batch_size: int) -> None:
    batch = x.expand(batch_size, -1, -1, -1).contiguous()
    with torch.no_grad():
        done = 0
        while done < n_forwards:
            n = min(batch_size, n_forwards - done)
            model(batch[:n])
            done += n


def reference_style(model, x, target: int, grid: int, n_designs: int, batch_size: int):
    """Reference-style Sobol: NumPy masks and estimator, per-batch model calls (own code)."""
    import cv2
    from scipy.stats import qmc

    d = grid * grid
    points = qmc.Sobol(2 * d, scramble=False).random_base2(int(math.log2(n_designs)))
    a, b = points[:, :d], points[:, d:]
    c = np.repeat(a[None], d, axis=0)
    for i in range(d):
        c[i, :, i] = b[:, i]
    masks = np.concatenate([a, b, c.reshape(-1, d)]).reshape(-1, grid, grid).astype(np.float32)
    h, w = x.shape[-2:]
    rows = (np.arange(h) * grid // h)[:, None]
    cols = (np.arange(w) * grid // w)[None, :]
    image = x[0].numpy()
    scores = []
    with torch.no_grad():
        for start in range(0, len(masks), batch_size):
            up = masks[start : start + batch_size][:, rows, cols][:, None]  # nearest upsampling
            perturbed = image[None] * up + (1 - up) * 0.0  # inpainting towards 0
            out = model(torch.from_numpy(np.ascontiguousarray(perturbed)))
            scores.append(out[:, target].numpy())
    y = np.concatenate(scores).astype(np.float64)
    f_a, f_c = y[:n_designs], y[2 * n_designs :].reshape(d, n_designs)
    total = ((f_a[None] - f_c) ** 2).sum(1) / (2 * n_designs * f_a.var(ddof=1))
    return cv2.resize(
        total.reshape(grid, grid).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )


class TimedModel(torch.nn.Module):
    """Wraps the model and accumulates the wall time spent inside its forward passes, so that
    each implementation's own overhead (total - model time) is measured within the same run:
    robust to load changes on a shared CPU, unlike comparing separate runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seconds = 0.0

    def forward(self, x):
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        return out


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds, the functions interleaved in each
    round so that load changes on a shared CPU hit them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs (default 1)")
    parser.add_argument("--grid-size", type=int, default=8)
    parser.add_argument("--n-designs", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from xai.attributions import SobolAttribution

    model, weights = load_model()
    timed_model = TimedModel(model).eval()
    x = load_image(args.size)
    with torch.no_grad():
        target = int(model(x).argmax())
    explainer = SobolAttribution(
        timed_model, grid_size=args.grid_size, n_designs=args.n_designs, batch_size=args.batch_size
    )
    n_forwards = explainer.n_forwards
    bare_forwards(model, x, args.batch_size, args.batch_size)  # warm-up

    model_time: dict[str, float] = {}

    def run(name, fn):
        def go():
            timed_model.seconds = 0.0
            fn()
            model_time[name] = timed_model.seconds  # of the last round

        return go

    times = timed(
        {
            "bare forwards": run(
                "bare forwards", lambda: bare_forwards(timed_model, x, n_forwards, args.batch_size)
            ),
            "xai SobolAttribution": run(
                "xai SobolAttribution", lambda: explainer(x, target=target)
            ),
            "reference-style (NumPy)": run(
                "reference-style (NumPy)",
                lambda: reference_style(
                    timed_model, x, target, args.grid_size, args.n_designs, args.batch_size
                ),
            ),
        },
        args.repeats,
    )
    print(
        f"MobileNetV2 ({weights}), {args.size} px, 1 image, grid {args.grid_size}, "
        f"n_designs {args.n_designs}: {n_forwards} forward passes, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    base = times["bare forwards"]
    print(
        f"{'implementation':<26}{'time (s)':>10}{'ms/forward':>12}{'vs bare':>10}"
        f"{'in model (s)':>14}{'own overhead':>14}"
    )
    overhead = {}
    for name, seconds in times.items():
        inside = model_time[name]
        overhead[name] = (seconds - inside) / inside
        print(
            f"{name:<26}{seconds:>10.2f}{1000 * seconds / n_forwards:>12.2f}"
            f"{seconds / base:>10.3f}{inside:>14.2f}{100 * overhead[name]:>13.1f}%"
        )
    ours, ref = times["xai SobolAttribution"], times["reference-style (NumPy)"]
    print(
        f"xai vs bare forwards: {100 * (ours / base - 1):+.1f}% wall time, "
        f"{100 * overhead['xai SobolAttribution']:.1f}% own overhead (target <= 10%); "
        f"xai / reference-style: {ours / ref:.3f} wall time, own overhead "
        f"{100 * overhead['xai SobolAttribution']:.1f}% vs "
        f"{100 * overhead['reference-style (NumPy)']:.1f}%"
    )
    print(
        "'own overhead' = (time - time inside the model's forward) / time inside it, "
        "measured in the same run (robust to CPU load changes between rows)"
    )


if __name__ == "__main__":
    main()
