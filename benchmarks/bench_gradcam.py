"""Grad-CAM speed: xai vs pytorch-grad-cam vs captum vs the bare forward+backward floor.

resnet50 (random init, eval), batch 32, 224 px, CPU, target layer ``layer4``. Every variant
produces one map per image for a per-sample target; the floor is one forward of the whole
model and one ``torch.autograd.grad`` back to the ``layer4`` output, with no hooks and no
map computation. Variants are interleaved round by round; the median is reported.

Run:  python benchmarks/bench_gradcam.py [--batch 32] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from xai.attributions import GradCAM

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.rand(args.batch, 3, args.size, args.size)
    targets = torch.arange(args.batch) % 1000
    backbone = torch.nn.Sequential(*list(model.children())[:-2])  # conv1 .. layer4
    head = lambda f: model.fc(torch.flatten(model.avgpool(f), 1))  # noqa: E731

    def floor():
        feats = backbone(x)
        out = head(feats)
        torch.autograd.grad(out.gather(1, targets[:, None]).sum(), feats)

    ours_method = GradCAM(model, "layer4")

    def ours():
        ours_method(x, target=targets)

    variants = {"floor: forward + backward to layer4": floor, "xai GradCAM": ours}
    try:
        from pytorch_grad_cam import GradCAM as PGC
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc = PGC(model=model, target_layers=[model.layer4])
        pgc_targets = [ClassifierOutputTarget(int(t)) for t in targets]
        variants["pytorch-grad-cam GradCAM"] = lambda: pgc(input_tensor=x, targets=pgc_targets)
    except ImportError:
        print("pytorch-grad-cam not installed: skipped")
    try:
        from captum.attr import LayerAttribution, LayerGradCam

        cap = LayerGradCam(model, model.layer4)

        def captum_run():
            a = cap.attribute(x, target=targets, relu_attributions=True)
            LayerAttribution.interpolate(a, (args.size, args.size), "bilinear")

        variants["captum LayerGradCam (+ bilinear upsample)"] = captum_run
    except ImportError:
        print("captum not installed: skipped")

    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    floor_t = statistics.median(times["floor: forward + backward to layer4"])
    print(
        f"\nresnet50, batch {args.batch}, {args.size} px, CPU, {torch.get_num_threads()} "
        f"threads, median of {args.rounds} interleaved rounds"
    )
    print(f"{'variant':<44} {'median s':>9} {'x floor':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<44} {med:>9.3f} {med / floor_t:>8.3f}")


if __name__ == "__main__":
    main()
