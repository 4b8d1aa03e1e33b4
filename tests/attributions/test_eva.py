"""EVA: hand-derived values, provably irrelevant regions, planted evidence, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests._models import TinyViT, seeded
from xai.attributions import EVA, get
from xai.verify import UnsupportedOperationError


class SpecNet(nn.Module):
    """The spec's 2-input example (section 5.6) read from pixels (0, 0) and (0, 1) of a 2x2
    image; pixels (1, 0) and (1, 1) have zero weight, so they provably cannot matter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 2, bias=False)
        self.fc2 = nn.Linear(2, 2, bias=False)
        self.fc1.weight.data = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]])
        self.fc2.weight.data = torch.eye(2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture
def spec():
    x = torch.tensor([[[[1.0, 0.5], [0.3, -0.7]]]], dtype=torch.float64)
    return SpecNet().double().eval(), x


def test_hand_derived_values_of_the_spec(spec):
    model, x = spec
    # CROWN (adaptive): AO(B) = 1.75; fixing x1 -> 1.0, fixing x2 -> -0.5 (raw)
    raw = EVA(model, 1.0, grid_size=2, bound="crown", monotone=False)(x, target=0)
    expected = torch.tensor([[[0.75, 2.25], [0.0, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(raw, expected, rtol=0, atol=1e-12)
    ibp = EVA(model, 1.0, grid_size=2, bound="ibp")(x, target=0)
    torch.testing.assert_close(
        ibp, torch.tensor([[[1.5, 1.5], [0.0, 0.0]]], dtype=torch.float64), rtol=0, atol=1e-12
    )
    l2 = EVA(model, 1.0, grid_size=2, bound="ibp", norm="l2")(x, target=0)
    v = 2 * math.sqrt(2) - 2
    torch.testing.assert_close(
        l2, torch.tensor([[[v, v], [0.0, 0.0]]], dtype=torch.float64), rtol=0, atol=1e-12
    )
    # monotone clamps AO(B_u) at AO(B): fixing x2 gives -0.5 < 1.75, unchanged here
    mono = EVA(model, 1.0, grid_size=2)(x, target=0)
    torch.testing.assert_close(mono, expected, rtol=0, atol=1e-12)


def test_epsilon_zero_gives_a_zero_map(spec):
    model, x = spec
    for bound in ("ibp", "crown"):
        assert torch.equal(
            EVA(model, 0.0, grid_size=2, bound=bound)(x), torch.zeros(1, 2, 2, dtype=x.dtype)
        )


class Planted(nn.Module):
    """Only the top-left 4x4 quadrant of an 8x8 image reaches the classifier (constant gate)."""

    def __init__(self) -> None:
        super().__init__()
        gate = torch.zeros(1, 1, 8, 8)
        gate[..., :4, :4] = 1.0
        self.register_buffer("gate", gate)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x * self.gate)))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("bound", ["ibp", "crown"])
def test_provably_irrelevant_cells_get_zero_and_the_evidence_is_found(bound):
    model = seeded(Planted())
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for monotone in (True, False):
        maps = EVA(model, 0.1, grid_size=4, bound=bound, monotone=monotone)(x)
        outside = torch.ones(8, 8, dtype=torch.bool)
        outside[:4, :4] = False
        assert torch.equal(maps[:, outside], torch.zeros_like(maps[:, outside]))
        assert (maps[:, :4, :4] > 0).any(dim=(1, 2)).all()
        if monotone or bound == "ibp":
            assert (maps >= 0).all()


def test_batch_size_and_chunking_do_not_change_the_map():
    model = seeded(Planted())
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = EVA(model, 0.05, grid_size=4)(x)
    torch.testing.assert_close(
        EVA(model, 0.05, grid_size=4, batch_size=3)(x), ref, rtol=1e-12, atol=1e-12
    )
    # a smaller backward budget stops the CROWN pass early: still sound, only looser, and the
    # full-ball bound can only grow
    loose = EVA(model, 0.05, grid_size=4, backward_budget=10)
    assert torch.isfinite(loose(x)).all()


def test_hybrid_mode_bounds_its_own_samples():
    from xai.verify import BoundedModel, make_ball, margin_rows

    model = seeded(Planted())
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    bm = BoundedModel(model, x)
    split = bm.graph.split_index("pool")
    noise = torch.rand(1, 64, 1, 8, 8, dtype=torch.float64) * 2 - 1
    noise[:, 0] = 0
    ball = make_ball(x, 0.2)
    rows = margin_rows(bm.forward(x).argmax(1), 3, torch.float64)
    upper = bm.hybrid_upper(ball, rows, split, noise)
    with torch.no_grad():
        out = bm.forward(x + 0.2 * noise[0])
    margins = out - out[:, rows[0, 0].argmin()][:, None]
    c = int(bm.forward(x).argmax())
    others = [j for j in range(3) if j != c]
    assert (margins[:, others] <= upper[0] + 1e-12).all()
    maps = EVA(model, 0.2, grid_size=4, split="pool", n_samples=8, seed=3)(x)
    assert maps.shape == (1, 8, 8) and torch.isfinite(maps).all() and (maps >= 0).all()
    with pytest.raises(ValueError, match="no traced operation comes from layer 'nope'"):
        EVA(model, 0.2, split="nope")(x)


def test_registry_uses_cheap_settings():
    small = get("eva").create(seeded(Planted()), layer="pool")
    assert (small.grid_size, small.top_k, small.split) == (4, 3, None)
    big = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 400), nn.ReLU(), nn.Linear(400, 5))
    hybrid = get("eva").create(big, layer="2")
    assert hybrid.split == "2" and hybrid.n_samples == 8


def test_unsupported_models_and_bad_arguments_raise_clear_errors():
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    vit = seeded(TinyViT())
    with pytest.raises(UnsupportedOperationError, match="Supported:"):
        EVA(vit, 0.1, grid_size=2)(x)
    model = seeded(Planted())
    img = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="grid_size=9 exceeds"):
        EVA(model, 0.1, grid_size=9)(img)
    with pytest.raises(ValueError, match="epsilon"):
        EVA(model, -0.1)
    with pytest.raises(ValueError, match="norm"):
        EVA(model, 0.1, norm="l1")
    with pytest.raises(ValueError, match="margin of one class"):
        EVA(model, 0.1, grid_size=2)(img, target=lambda out: out.sum(1))
    with pytest.raises(ValueError, match="NaN"):
        EVA(model, 0.1, grid_size=2)(img * torch.nan)
