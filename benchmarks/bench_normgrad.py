"""NormGrad cost: several layers in one pass against one bare forward + backward.

ResNet-50 (random init, eval mode), a batch of 16 images of 224x224, CPU. NormGrad reads
``layer1``-``layer4`` from one forward and one backward pass, then multiplies the upsampled,
normalized maps (the paper's combination). The baselines are one forward pass followed by one
backward pass of the summed target logits w.r.t. the input (what a vanilla gradient costs) and
w.r.t. the parameters (a training step without the update). The target ratio is <= 1.2 against
the input-gradient baseline.

Methods are timed round-robin (one call of each per round) and the median of the rounds is
reported, which evens out the load of a shared machine.

Usage::

    python benchmarks/bench_normgrad.py [--batch 16] [--size 224] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from xai.attributions.normgrad import NormGrad, SelectiveNormGrad

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.arange(args.batch) % 1000

    def input_grad() -> None:
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xi)

    params = [p for p in model.parameters()]

    def param_grad() -> None:
        out = model(x)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), params)

    normgrad4 = NormGrad(model, LAYERS)
    selective4 = SelectiveNormGrad(model, LAYERS)
    normgrad1 = NormGrad(model, "layer4")
    cases = {
        "bare forward + backward to the input": input_grad,
        "bare forward + backward to the parameters": param_grad,
        "NormGrad, layer1-4 (one pass)": lambda: normgrad4(x, target),
        "selective NormGrad, layer1-4": lambda: selective4(x, target),
        "NormGrad, layer4": lambda: normgrad1(x, target),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["bare forward + backward to the input"])
    print(
        f"ResNet-50 (random init), batch {args.batch}, {args.size}px, CPU, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    print(f"{'case':45s} {'median s':>9s} {'min s':>8s} {'x input bwd':>12s}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:45s} {med:9.3f} {min(values):8.3f} {med / base:12.2f}")


if __name__ == "__main__":
    main()
