"""Deletion + Insertion (ours) against Quantus 0.6 pixel flipping at the same number of forwards.

Setting (issue 4): torchvision ResNet-18 (random init, fixed seed, eval), ``--images`` random
images (default 16) at 224 px, Grad-CAM maps (``layer4``), ``--steps`` perturbation steps
(default 50), logits of each image's clean argmax class, baseline = each image's minimum
(Quantus' ``"black"``, our ``"min"``).

Quantus' pixel flipping is a deletion curve only, so its time is **counted twice** (deletion +
an insertion of the same cost; Quantus 0.6 has no insertion metric). Quantus flattens the map
broadcast to ``(C, H, W)``, so ``features_in_step = C * ceil(H * W / steps)`` channel values
flips ``ceil(H * W / steps)`` whole pixels per step in ``ceil(H * W / that)`` steps (50 steps of
1004 pixels at 224 px; the last step flips 980). Its assertion that ``H * W`` be divisible by
``features_in_step`` (it checks H*W but steps over C*H*W values) is switched off by a subclass.

"Same numbers" is checked twice, on maps whose ties are broken beforehand by a fixed random
permutation (Quantus' ``np.argsort`` is not stable, ours breaks ties by the lower pixel index;
Grad-CAM maps have many exact zeros after the ReLU):

1. ``PixelFlipping(features_per_step=ceil(H*W/steps))`` flips exactly Quantus' pixel counts:
   its curve without the first point (the clean input, which Quantus does not record) must
   equal Quantus' curve to ``--atol`` (float32 logits, different batch compositions).
2. ``Deletion(n_steps)`` flips ``round(k * H * W / steps)`` pixels after step ``k`` (a
   linspace, not a fixed step): its curve is compared with Quantus' at the same step index,
   which differ by the up to ``k * ceil(HW/steps) - round(k * HW/steps)`` pixels; the maximum
   difference is printed, not asserted.

Model evaluations: ours ``B * (steps + 1)`` per curve (both endpoints) and Quantus
``B * steps`` per curve. The "bare forwards" row runs the model alone on as many images (``B``
per forward): the time neither engine can go below. On a CPU the forwards of ResNet-18 at
224 px are nearly all of both engines' time, so at equal evaluations the ratio stays near 1
(measured 1.12x on a loaded 2-core CPU, our perturbation building ~3 % of our time); a large
ratio needs a setting where Quantus' per-step NumPy work and host/device copies dominate
(``--device cuda``). Not collected by pytest. Quick check::

    python benchmarks/bench_deletion_vs_quantus.py --images 2 --steps 5 --size 64
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from xai.attributions import GradCAM
from xai.metrics import Deletion, Insertion, PixelFlipping


def quantus_pixel_flipping(features_in_step: int):
    """Quantus' PixelFlipping without its ``H*W % features_in_step`` assertion."""
    import quantus

    class PixelFlippingAnyStep(quantus.PixelFlipping):
        def custom_preprocess(self, x_batch, **kwargs):
            return None

    return PixelFlippingAnyStep(
        features_in_step=features_in_step,
        perturb_baseline="black",
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )


def break_ties(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """Maps with the same order of distinct values and ties broken by a random permutation."""
    batch, height, width = maps.shape
    flat = maps.flatten(1).double().cpu()
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty_like(flat)
    for b in range(batch):
        perm = torch.randperm(flat.shape[1], generator=gen)
        order = perm[torch.sort(flat[b, perm], stable=True).indices]  # ties in random order
        out[b, order] = torch.arange(flat.shape[1], dtype=flat.dtype)
    return out.to(device=maps.device, dtype=maps.dtype).view(batch, height, width)


def best_time(fn, repeat: int):
    """Best wall-clock time of ``repeat`` runs (no warm-up run: the first run counts too)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64, help="our chunk size")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--atol", type=float, default=1e-3, help="curve tolerance (logits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="e.g. cuda (Quantus gets it too)")
    args = parser.parse_args()
    if args.steps <= 0 or args.images <= 0:
        parser.error("--steps and --images must be positive")

    import torchvision

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(weights=None).eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.images, 3, args.size, args.size, generator=gen)
    device = torch.device(args.device)
    model, x = model.to(device), x.to(device)
    with torch.no_grad():
        classes = model(x).argmax(1)
    maps = break_ties(GradCAM(model, "layer4")(x, target=classes).detach(), args.seed)

    n_pixels = args.size * args.size
    per_step = math.ceil(n_pixels / args.steps)
    q_steps = math.ceil(n_pixels / per_step)
    channels = x.shape[1]
    qmetric = quantus_pixel_flipping(channels * per_step)
    x_np, y_np = x.cpu().numpy(), classes.cpu().numpy()
    a_np = maps[:, None].cpu().numpy()

    def run_quantus():
        return np.asarray(
            qmetric(
                model=model,
                x_batch=x_np,
                y_batch=y_np,
                a_batch=a_np,
                softmax=False,
                device=args.device,
                batch_size=max(64, args.images),
            )
        )

    deletion = Deletion(args.steps, baseline="min", batch_size=args.batch_size)
    insertion = Insertion(args.steps, baseline="min", batch_size=args.batch_size)
    flipping = PixelFlipping(per_step, baseline="min", batch_size=args.batch_size)

    def run_ours():
        return deletion(model, x, maps, classes), insertion(model, x, maps, classes)

    t_quantus, q_curve = best_time(run_quantus, args.repeat)
    t_ours, (del_res, _ins_res) = best_time(run_ours, args.repeat)
    t_flip, flip_res = best_time(lambda: flipping(model, x, maps, classes), 1)
    batch = args.images
    # the floor: the same number of inputs, in the same chunks as ours, forward only
    n_rows = batch * (args.steps + 1)
    sample_of_row = torch.arange(batch, device=device).repeat_interleave(args.steps + 1)
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(2):  # deletion and insertion
            for s in range(0, n_rows, args.batch_size):
                model(x[sample_of_row[s : s + args.batch_size]])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t_forward = time.perf_counter() - start

    q_curve_t = torch.as_tensor(q_curve, dtype=torch.float64)
    flip_diff = (flip_res.curve[:, 1:].double().cpu() - q_curve_t).abs().max().item()
    n_common = min(q_curve_t.shape[1], del_res.curve.shape[1] - 1)
    del_diff = del_res.curve[:, 1 : 1 + n_common].double().cpu() - q_curve_t[:, :n_common]
    del_diff = del_diff.abs().max().item()
    scale = q_curve_t.abs().max().item()

    load = os.getloadavg()
    print(
        f"{device} | resnet18 (random init) | {batch} images {args.size} px | Grad-CAM layer4 | "
        f"steps={args.steps} | baseline=min ('black') | logits | threads="
        f"{torch.get_num_threads()} | load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"Quantus: features_in_step={channels * per_step} channel values = {per_step} px, "
        f"{q_steps} steps; ours: Deletion/Insertion n_steps={args.steps} "
        f"(PixelFlipping features_per_step={per_step} for the exact check)"
    )
    rows = [
        ("Quantus PixelFlipping (deletion)", t_quantus, batch * q_steps),
        ("Quantus x2 (deletion + insertion)*", 2 * t_quantus, 2 * batch * q_steps),
        ("ours Deletion + Insertion", t_ours, 2 * batch * (args.steps + 1)),
        ("bare forwards, same inputs and chunks (floor)", t_forward, 2 * batch * (args.steps + 1)),
    ]
    print(f"{'variant':44s} {'time (s)':>9s} {'images fwd':>10s} {'ms/image':>9s}")
    for name, t, n in rows:
        print(f"{name:44s} {t:9.2f} {n:10d} {1000 * t / n:9.2f}")
    print("* Quantus 0.6 has no insertion metric: its deletion time is counted twice.")
    ratio = 2 * t_quantus / t_ours
    print(
        f"speed ratio Quantus x2 / ours = {ratio:.2f}x; ours / floor = "
        f"{t_ours / t_forward:.2f}x (target <= 1.15x)"
    )
    print(
        f"agreement: PixelFlipping({per_step}) curve[1:] vs Quantus max |diff| = {flip_diff:.2e} "
        f"(atol {args.atol:g}, curve scale {scale:.2f}) -> "
        f"{'OK' if flip_diff <= args.atol else 'FAIL'}"
    )
    print(
        f"           Deletion({args.steps}) curve[1:] vs Quantus (pixel counts differ by "
        f"round(k*HW/steps) vs k*ceil(HW/steps)) max |diff| = {del_diff:.2e}"
    )
    print(f"           (PixelFlipping run took {t_flip:.2f} s)")


if __name__ == "__main__":
    main()
