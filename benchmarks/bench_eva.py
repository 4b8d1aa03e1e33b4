"""Cost and tightness of EVA and of the bound engine on the real MobileNetV2.

Tables:

1. **Time per image** at ``--size`` px (default 224): one forward pass (the floor, measured in
   the same run), EVA in the registry's hybrid mode (grid 4, 8 samples per set: 136 head
   forwards + 17 tail bounds), SobolAttribution (grid ``--sobol-grid``, ``--sobol-designs``
   designs), and one exact bound computation (IBP; CROWN-IBP on the 3 strongest competitors):
   the cost of one verified set as a multiple of a forward pass. Exact EVA costs
   ``grid_size**2 + 1`` such computations per image (the table extrapolates; ``--full`` runs
   exact EVA at grid 4 for real, several minutes on 2 cores).
2. **Bound width vs epsilon and depth**: IBP width (mean ``upper - lower``) of the output of
   several MobileNetV2 blocks, and the IBP / CROWN-IBP upper bound of the adversarial overlap
   ``max_j f_j - f_c`` against the clean value and a sampled lower estimate, at ``--width-size``
   px (default 64).

Run: ``python benchmarks/bench_eva.py [--size 224] [--full]``. The CPU is shared: compare
ratios within one run, not absolute times (the header prints ``uptime``).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from bench_sobol import load_image, load_model  # the same model and photo as the Sobol bench


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def cost_table(model, size: int, args) -> None:
    from xai.attributions import EVA, SobolAttribution, get
    from xai.verify import BoundedModel, make_ball, margin_rows

    x = load_image(size)
    with torch.no_grad():
        target = int(model(x).argmax())
    forward = timed(lambda: model(x), repeats=3)
    rows = []
    eva = get("eva").create(model, layer="features.18", batch_size=64)
    rows.append(
        ("EVA hybrid (registry: grid 4, 8 samples, eps 0.05)", timed(lambda: eva(x, target=target)))
    )
    sobol = SobolAttribution(
        model, grid_size=args.sobol_grid, n_designs=args.sobol_designs, batch_size=64
    )
    n_sobol = args.sobol_designs * (args.sobol_grid**2 + 2)
    label = f"Sobol (grid {args.sobol_grid}, {args.sobol_designs} designs: {n_sobol} forwards)"
    rows.append((label, timed(lambda: sobol(x, target=target))))
    bm = BoundedModel(model, x)
    ball = make_ball(x, 1e-3)
    c = margin_rows(torch.tensor([target]), bm.n_outputs, x.dtype)
    one_ibp = timed(lambda: bm.upper(ball, c, bound="ibp"))
    one_crown = timed(lambda: bm.upper(ball, c, bound="crown", top_k=3))
    rows.append(("one exact bound, IBP", one_ibp))
    rows.append(("one exact bound, CROWN-IBP top_k=3", one_crown))
    rows.append(("exact EVA grid 4 (17 bounds), CROWN-IBP, extrapolated", 17 * one_crown))
    rows.append(("exact EVA grid 8 (65 bounds), CROWN-IBP, extrapolated", 65 * one_crown))
    if args.full:
        exact = EVA(model, 1e-3, grid_size=4, top_k=3, batch_size=4)
        rows.append(("exact EVA grid 4, CROWN-IBP, measured", timed(lambda: exact(x, target))))
    print(f"\n## Time per image, MobileNetV2 at {size} px (one forward = {forward * 1e3:.1f} ms)")
    print(f"{'method':<62} {'seconds':>9} {'x forward':>10}")
    print(f"{'one forward pass (floor)':<62} {forward:>9.3f} {1.0:>10.1f}")
    for name, sec in rows:
        print(f"{name:<62} {sec:>9.3f} {sec / forward:>10.1f}")


def width_table(model, size: int) -> None:
    from xai.verify import BoundedModel, make_ball, margin_rows

    x = load_image(size)
    bm = BoundedModel(model, x)
    ops = bm.graph.ops
    blocks = ["features.1", "features.3", "features.6", "features.10", "features.14", "features.18"]
    # the last layer inside each block (before a residual addition, if any)
    idx = [
        max(i for i, op in enumerate(ops) if (op.module or "").startswith(b + ".")) for b in blocks
    ] + [len(ops) - 1]
    names = blocks + ["logits"]
    with torch.no_grad():
        logits = bm.forward(x)
    c = logits.argmax(1)
    rows = margin_rows(c, bm.n_outputs, x.dtype)
    clean = float((logits - logits[:, c]).scatter(1, c[:, None], -torch.inf).amax())
    print(f"\n## IBP width (mean upper - lower) by depth, MobileNetV2 at {size} px, L-inf")
    print(f"{'epsilon':>8} " + " ".join(f"{n:>12}" for n in names))
    epsilons = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
    for eps in epsilons:
        nb = bm.node_bounds(make_ball(x, eps))
        widths = [float((nb[i][1] - nb[i][0]).mean()) for i in idx]
        print(f"{eps:>8.0e} " + " ".join(f"{w:>12.3g}" for w in widths))
    print(f"\n## Adversarial-overlap bound vs epsilon (clean max_j f_j - f_c = {clean:.3f})")
    print(f"{'epsilon':>8} {'IBP':>12} {'CROWN-IBP':>12} {'sampled max':>12}")
    gen = torch.Generator().manual_seed(0)
    for eps in epsilons:
        ball = make_ball(x, eps)
        ibp, crown = bm.upper(ball, rows, top_k=3, parts=True)
        noise = (torch.rand(32, *x.shape[1:], generator=gen) * 2 - 1) * eps
        with torch.no_grad():
            out = bm.forward(x + noise)
        sampled = float((out - out[:, c]).scatter(1, c.expand(32)[:, None], -torch.inf).amax())
        print(
            f"{eps:>8.0e} {float(ibp.amax()):>12.4g} "
            f"{float(torch.nan_to_num(crown, -torch.inf).amax()):>12.4g} {sampled:>12.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width-size", type=int, default=64)
    parser.add_argument("--sobol-grid", type=int, default=8)
    parser.add_argument("--sobol-designs", type=int, default=8)
    parser.add_argument("--full", action="store_true", help="also run exact EVA (minutes)")
    parser.add_argument("--skip-cost", action="store_true", help="only the width tables")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("XAI_BENCH_THREADS", "2")))
    model, weights = load_model()
    load = os.getloadavg()
    print(
        f"MobileNetV2 ({weights}); torch {torch.__version__}; threads "
        f"{torch.get_num_threads()}; load average {load[0]:.1f} {load[1]:.1f}"
    )
    if not args.skip_cost:
        cost_table(model, args.size, args)
    width_table(model, args.width_size)


if __name__ == "__main__":
    main()
