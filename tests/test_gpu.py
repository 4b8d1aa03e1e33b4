"""CUDA checks (marked ``gpu``; skipped without a CUDA device, e.g. on the 2-core CI machine).

Every registered method and the perturbation metrics are run on CUDA and compared with the same
computation on the CPU (float64, tiny models; the random draws of these methods and metrics come
from CPU generators, so both devices see the same numbers). The hot paths must not synchronize
the device once per sample: with CUDA's sync debug mode on, the number of synchronizing calls of
a batch of 8 must equal that of a batch of 2 (the work fits one chunk either way).

Run on a GPU machine:  python -m pytest -q -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import warnings

import pytest
import torch

import xai.attributions as attributions
from tests._models import seeded
from tests.test_contract import check_contract, family, make
from xai.metrics import Deletion, Insertion, PixelFlipping, RegionPerturbation

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

METHODS = attributions.available()
METRICS = {
    "deletion": lambda: Deletion(8, batch_size=4096),
    "insertion": lambda: Insertion(8, batch_size=4096),
    "pixel_flipping": lambda: PixelFlipping(64, batch_size=4096),
    "region_perturbation": lambda: RegionPerturbation(4, n_regions=8, batch_size=4096),
}
# options that keep one method call in one chunk, whatever the batch (2 or 8 samples)
ONE_CHUNK = {"batch_size": 4096}
# per-sample by definition: meta-saliency fine-tunes a copy of the model for each sample
PER_SAMPLE = {"meta_saliency"}


def _inputs(n: int, device: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=gen, dtype=torch.float64).to(device)


def _syncs(fn) -> int:
    """Number of device synchronizations ``fn()`` causes (CUDA sync debug mode, warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", METHODS)
def test_method_on_cuda_equals_cpu_and_keeps_the_contract(name):
    net = seeded(family(name)[0]())
    expected = make(name, net)(_inputs(3, "cpu"), target=[0, 3, 1])
    net_cuda = net.cuda()
    maps = check_contract(
        make(name, net_cuda), net_cuda, _inputs(3, "cuda"), [0, 3, 1], expected.shape
    )
    torch.testing.assert_close(maps.cpu(), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_on_cuda_equals_cpu(name):
    net = seeded(family("grad_cam")[0]())
    x = _inputs(3, "cpu")
    maps = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = METRICS[name]()(net, x, maps, [0, 3, 1])
    result = METRICS[name]()(net.cuda(), x.cuda(), maps.cuda(), [0, 3, 1])
    torch.testing.assert_close(result.scores.cpu(), expected.scores, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(result.curve.cpu(), expected.curve, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(set(METHODS) - PER_SAMPLE))
def test_no_device_sync_per_sample_in_methods(name):
    net = seeded(family(name)[0]()).cuda()
    try:
        method = make(name, net, **ONE_CHUNK)
    except TypeError:  # a method without batch_size works in one pass anyway
        method = make(name, net)
    method(_inputs(2, "cuda"), target=[0, 1])  # warm-up (lazy allocations, cuDNN)
    small = _syncs(lambda: method(_inputs(2, "cuda"), target=[0, 1]))
    large = _syncs(lambda: method(_inputs(8, "cuda"), target=[0, 1] * 4))
    assert large == small, f"{name}: {small} syncs for 2 samples, {large} for 8"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_no_device_sync_per_sample_in_metrics(name):
    net = seeded(family("grad_cam")[0]()).cuda()
    metric = METRICS[name]()

    def run(n: int) -> None:
        maps = torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(2)).double()
        metric(net, _inputs(n, "cuda"), maps.cuda(), [0] * n)

    run(2)
    small, large = _syncs(lambda: run(2)), _syncs(lambda: run(8))
    assert large == small, f"{name}: {small} syncs for 2 samples, {large} for 8"
