"""Peak memory (RSS) of the methods that multiply the batch, at a fixed ``batch_size``.

Each configuration runs in its own subprocess and reports ``ru_maxrss`` (the peak resident set of
that process: every allocation counts, torch's and NumPy's, not only what ``tracemalloc`` sees).
Each method's ``floor`` row is a subprocess that imports the same modules, builds the same model
(the largest of the sweep) and data and runs one forward of ``batch_size`` inputs: the peak a method
cannot go below. A method whose memory is bounded by ``batch_size`` shows a flat ``over floor``
column as its count (channels, windows, designs, samples, steps) grows.

Settings: Score-CAM on a layer of 256 / 512 / 1,024 channels at 224 px (2 images; the layer is
a cheap 1x1 convolution after 16x16 pooling, so the cost is the B x K masked inputs, not the
model); Occlusion (16 px windows, stride 16 / 8 / 4), Sobol (grid 4, 16 / 64 / 256 designs),
SmoothGrad (16 / 64 / 256 samples), Integrated Gradients (16 / 64 / 256 steps) and Deletion
(16 / 64 / 256 steps) on a small CNN at 112 px (2 images). ``batch_size`` 32 everywhere.

With glibc's default (dynamic) mmap threshold, freed buffers of up to 32 MB stay in the heap,
so the peak RSS also grows with the number of chunks a long run allocates; add
``--fixed-mmap-threshold`` to see the live memory only.

Run: ``python benchmarks/bench_memory.py [--only score_cam ...] [--fixed-mmap-threshold]``
(several minutes on 2 cores: Score-CAM at 1,024 channels is 2,048 forward passes). Compare with the
code before a change by putting its tree first: ``PYTHONPATH=/path/to/old python ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

BATCH_SIZE = 32
N_IMAGES = 2
SWEEPS = {
    "score_cam": ("channels", [256, 512, 1024]),
    "occlusion": ("stride", [16, 8, 4]),
    "sobol_attribution": ("n_designs", [16, 64, 256]),
    "smooth_grad": ("n_samples", [16, 64, 256]),
    "integrated_gradients": ("n_steps", [16, 64, 256]),
    "deletion": ("n_steps", [16, 64, 256]),
}


def _model(name: str, value: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "score_cam":
        model = nn.Sequential(
            nn.AvgPool2d(16), nn.Conv2d(3, value, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(value, 10),
        )  # fmt: skip
        size = 224
    else:
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip
        size = 112
    x = torch.rand(N_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model.eval(), x


def child(name: str, value: int) -> dict:
    """Run one configuration in this process; return its peak RSS in MiB and its time."""
    import resource

    import torch

    from xai import attributions
    from xai.metrics import Deletion

    torch.set_num_threads(2)
    floor = name.startswith("floor:")
    model, x = _model(name.removeprefix("floor:"), value)
    start = time.perf_counter()
    if floor:
        with torch.no_grad():
            model(x.repeat(BATCH_SIZE // N_IMAGES, 1, 1, 1))
    elif name == "deletion":
        maps = torch.rand(x.shape[0], *x.shape[-2:])
        Deletion(n_steps=value, batch_size=BATCH_SIZE)(model, x, maps, target=0)
    else:
        options = {
            "score_cam": {"layer": "2"},
            "occlusion": {"window_size": 16, "stride": value},
            "sobol_attribution": {"grid_size": 4, "n_designs": value},
            "smooth_grad": {"n_samples": value},
            "integrated_gradients": {"n_steps": value},
        }[name]
        attributions.get(name).create(model, batch_size=BATCH_SIZE, **options)(x, target=0)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"peak_mib": peak_kib / 1024, "seconds": seconds}


def run(name: str, value: int, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, str(value)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("NAME", "VALUE"), help=argparse.SUPPRESS)
    parser.add_argument("--only", nargs="*", default=None, help="methods to run (default all)")
    parser.add_argument(
        "--fixed-mmap-threshold", action="store_true",
        help="run the children with MALLOC_MMAP_THRESHOLD_=131072: glibc then returns every "
        "large buffer to the OS when freed, so the peak shows live memory, not heap retention",
    )  # fmt: skip
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    import os

    import xai

    env = dict(os.environ)
    if args.fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    print(
        f"xai from {xai.__file__}; batch_size={BATCH_SIZE}, {N_IMAGES} images per call; "
        f"malloc: {'fixed mmap threshold' if args.fixed_mmap_threshold else 'default'}"
    )
    print(f"{'method':22s} {'setting':>16s} {'peak RSS MiB':>13s} {'over floor':>11s} {'s':>7s}")
    for name, (param, values) in SWEEPS.items():
        if args.only and name not in args.only:
            continue
        # the floor: same imports, model and data, one forward of batch_size inputs
        floor = run(f"floor:{name}", values[-1], env)["peak_mib"]
        print(f"{name:22s} {'floor (1 fwd)':>16s} {floor:13.0f} {0:11.0f} {'':>7s}")
        for value in values:
            res = run(name, value, env)
            print(
                f"{name:22s} {param + '=' + str(value):>16s} {res['peak_mib']:13.0f} "
                f"{res['peak_mib'] - floor:11.0f} {res['seconds']:7.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
