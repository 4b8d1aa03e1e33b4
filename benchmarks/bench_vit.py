"""Vision transformer speed: Grad-CAM, attention rollout, Chefer relevance and LRP (AttnLRP,
CP-LRP) on a timm ViT-B/16 vs one forward+backward and pytorch-grad-cam, in the same run.

ViT-B/16 (random init, eval; nothing downloaded), batch 8, 224 px by default. The floor is one
forward of the model and one ``torch.autograd.grad`` of the per-sample target logits back to
the input, with no hooks. pytorch-grad-cam runs its ViT recipe (``blocks[-1].norm1``, class
token dropped, 14x14 reshape). Variants are interleaved round by round; the median is reported.

Run:  python benchmarks/bench_vit.py [--batch 8] [--size 224] [--depth 12] [--rounds 3]
      [--threads N] [--device cpu|cuda]
Smaller runs on a busy machine: --batch 2 --size 112 --depth 4.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--depth", type=int, default=12, help="transformer blocks (ViT-B: 12)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import timm

    from xai.attributions import AttentionRollout, CheferRelevance, GradCAM
    from xai.attributions.lrp import LRP

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = (
        timm.create_model(
            "vit_base_patch16_224", pretrained=False, img_size=args.size, depth=args.depth
        )
        .eval()
        .to(device)
    )
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    targets = torch.arange(args.batch, device=device) % 1000
    grid = args.size // 16

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def floor():
        inp = x.clone().requires_grad_(True)
        out = model(inp)
        torch.autograd.grad(out.gather(1, targets[:, None]).sum(), inp)

    layer = f"blocks.{args.depth - 1}.norm1"
    methods = {
        "xai GradCAM (blocks[-1].norm1)": GradCAM(model, layer),
        "xai AttentionRollout": AttentionRollout(model),
        "xai CheferRelevance": CheferRelevance(model),
        "xai LRP attn_lrp": LRP(model, "attn_lrp"),
        "xai LRP cp_lrp": LRP(model, "cp_lrp"),
    }
    variants = {"floor: forward + backward to the input": floor}
    for name, method in methods.items():
        variants[name] = functools.partial(method, x, target=targets)
    try:
        from pytorch_grad_cam import GradCAM as PGC
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def reshape_transform(t):
            return t[:, 1:, :].reshape(t.size(0), grid, grid, t.size(2)).permute(0, 3, 1, 2)

        pgc = PGC(
            model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape_transform
        )
        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
        variants["pytorch-grad-cam GradCAM (ViT recipe)"] = lambda: pgc(
            input_tensor=x, targets=pgc_targets
        )
    except ImportError:
        print("pytorch-grad-cam not installed: skipped")

    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)

    floor_t = statistics.median(times["floor: forward + backward to the input"])
    print(
        f"\ntimm ViT-B/16 (depth {args.depth}), batch {args.batch}, {args.size} px, "
        f"{device.type}, {torch.get_num_threads()} threads, median of {args.rounds} "
        "interleaved rounds"
    )
    print(f"{'variant':<42} {'median s':>9} {'x floor':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<42} {med:>9.3f} {med / floor_t:>8.3f}")


if __name__ == "__main__":
    main()
