"""The hook-based model split of xai.adapter.split: g, h and replace_output on any module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests._models import RaisingNet, TinyConvNet, seeded
from tests.conftest import hook_count
from xai.adapter import ModelAdapter
from xai.adapter.split import head, layer_output, replace_output


class SkipAround(nn.Module):
    """A skip connection around ``block``: the output is not a function of block's output."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc((self.block(x) + x).mean((2, 3)))


def test_layer_output_matches_capture_and_skips_the_rest():
    model = seeded(RaisingNet())
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with ModelAdapter(model).capture(["features"]) as cap:
        model(x)
        expected = cap.activations["features"].clone()
    model.trap.armed = True  # layers after "features" would raise if they ran
    got = layer_output(model, "features", x)
    torch.testing.assert_close(got, expected)
    assert hook_count(model) == 0


def test_replace_output_is_h_with_closed_form_and_gradients():
    model = seeded(TinyConvNet())
    acts = torch.rand(4, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    probe = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    out = head(model, "features", acts, probe)
    expected = model.fc(acts.mean((2, 3)))  # h = GAP + linear
    torch.testing.assert_close(out, expected)
    (grad,) = torch.autograd.grad(out[:, 1].sum(), acts)
    torch.testing.assert_close(grad, model.fc.weight[1][None, :, None, None].expand_as(acts) / 25)
    assert hook_count(model) == 0


def test_h_of_g_is_the_model():
    model = seeded(TinyConvNet())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            head(model, "features", layer_output(model, "features", x), x), model(x)
        )


def test_hooks_removed_after_an_exception():
    model = seeded(RaisingNet())
    model.trap.armed = True
    acts = torch.zeros(1, 8, 8, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="boom"), replace_output(model, "features", acts):
        model(torch.zeros(1, 3, 16, 16, dtype=torch.float64))
    assert hook_count(model) == 0


def test_errors_layer_not_called_and_unknown_layer():
    model = seeded(TinyConvNet())
    model.unused = nn.Identity()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="not called"):
        layer_output(model, "unused", x)
    with pytest.raises(RuntimeError, match="not called"):
        head(model, "unused", torch.zeros(1, 8, 4, 4, dtype=torch.float64), x)
    with pytest.raises(ValueError):
        layer_output(model, "featurez", x)
    assert hook_count(model) == 0


def test_state_restored():
    model = seeded(TinyConvNet()).train()
    layer_output(model, "features", torch.zeros(2, 3, 8, 8, dtype=torch.float64))
    assert all(m.training for m in model.modules())
