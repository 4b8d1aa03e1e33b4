"""xai.adapter.split.recorder / layer_outputs: several layers in one pass, with gradients to the
input, stopping after the last layer; hooks removed and state restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from xai.adapter.split import layer_outputs, recorder


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        Counting(),
    ).double()


def test_recorder_gives_input_gradients_of_the_truncated_network_and_stops_early():
    model = net()
    model.train()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad(), recorder(model, ["0", "2"], grad=True) as run:
        for _ in range(2):  # hooks registered once, several passes
            xr = x.clone().requires_grad_(True)
            values, out = run(xr)
            (got,) = torch.autograd.grad(values["0"].sum() + values["2"].square().sum(), xr)
    assert out is None and model[4].calls == 0  # the pass stopped after layer "2"
    xr = x.clone().requires_grad_(True)
    a = model[0](xr)
    b = model[2](torch.relu(a))
    (expected,) = torch.autograd.grad(a.sum() + b.square().sum(), xr)
    torch.testing.assert_close(got, expected)
    assert hook_count(model) == 0 and model.training


def test_layer_outputs_with_the_model_output_and_errors():
    model = net()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    values, out = layer_outputs(model, ["1"], x, output=True)
    torch.testing.assert_close(out, model(x))
    assert not values["1"].requires_grad
    with pytest.raises(ValueError, match="twice"):
        layer_outputs(model, ["1", model[1]], x)
    with pytest.raises(ValueError, match="nothing"):
        layer_outputs(model, [], x)
    assert hook_count(model) == 0
