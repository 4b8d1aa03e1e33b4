"""Integrated Gradients and SmoothGrad bound their passes by ``batch_size`` (default 16), so
memory does not grow with the steps or the noisy copies, and give the one-pass numbers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from tests._models import TinyConvNet, seeded
from xai.attributions import IntegratedGradients, SmoothGrad


class Recording(nn.Module):
    """A model that records the batch size of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = seeded(TinyConvNet())
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize(
    ("make", "copies"),
    [
        (lambda m, **kw: IntegratedGradients(m, n_steps=50, **kw), 50),
        (lambda m, **kw: SmoothGrad(m, n_samples=50, **kw), 50),
    ],
)
def test_default_batch_bounds_each_pass_and_keeps_the_numbers(make, copies):
    model = Recording()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bounded = make(model)(x, target=[0, 1])
    assert max(model.sizes) <= 16 and sum(model.sizes) >= copies * 2
    model.sizes.clear()
    whole = make(model, batch_size=None)(x, target=[0, 1])
    assert max(model.sizes) == copies * 2  # one pass: the old default
    torch.testing.assert_close(bounded, whole, rtol=1e-9, atol=1e-12)


def test_a_batch_larger_than_batch_size_runs_whole_steps_without_warning():
    model = Recording()
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IntegratedGradients(model, n_steps=4)(x, target=0)  # 40 rows > 16
    assert set(model.sizes) == {40}
