"""Step-like options (steps, features per step, regions, samples, subset sizes) reject zero,
negative, fractional and boolean values at construction with a ValueError naming the option."""

from __future__ import annotations

import pytest
import torch

from tests.metrics._nets import gray
from xai.metrics import (
    ROAD,
    AvgSensitivity,
    Deletion,
    FaithfulnessCorrelation,
    Infidelity,
    Insertion,
    MaxSensitivity,
    MuFidelity,
    PixelFlipping,
    RegionPerturbation,
)

BAD_COUNTS = [0, -1, -50, 2.5, True, "10", None]

# (factory taking the bad value, the option's name in the message)
STEP_OPTIONS = [
    (lambda v: Deletion(v), "n_steps"),
    (lambda v: Deletion(n_steps=v), "n_steps"),
    (lambda v: Insertion(v), "n_steps"),
    (lambda v: Insertion(n_steps=v), "n_steps"),
    (lambda v: PixelFlipping(v), "features_per_step"),
    (lambda v: PixelFlipping(features_per_step=v), "features_per_step"),
    (lambda v: Deletion(patch_size=v), "patch_size"),
    (lambda v: PixelFlipping(patch_size=v), "patch_size"),
    (lambda v: RegionPerturbation(v), "patch_size"),
    (lambda v: RegionPerturbation(n_regions=v), "n_regions"),
    (lambda v: MuFidelity(n_samples=v), "n_samples"),
    (lambda v: MuFidelity(grid_size=v), "grid_size"),
    (lambda v: FaithfulnessCorrelation(n_samples=v), "n_samples"),
    (lambda v: FaithfulnessCorrelation(subset_size=v), "subset_size"),
    (lambda v: AvgSensitivity(n_samples=v), "n_samples"),
    (lambda v: MaxSensitivity(n_samples=v), "n_samples"),
    (lambda v: Infidelity(n_samples=v), "n_samples"),
    (lambda v: Deletion(batch_size=v), "batch_size"),
]


@pytest.mark.parametrize("factory,option", STEP_OPTIONS)
@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
def test_bad_step_counts_raise(factory, option, value):
    allows_none = option in ("grid_size", "batch_size")
    if value is None and allows_none:
        factory(value)  # None is a documented value there (pixels / all at once)
        return
    with pytest.raises(ValueError, match=option) as err:
        factory(value)
    assert "must be a positive integer" in str(err.value)


@pytest.mark.parametrize("cls", [MuFidelity, FaithfulnessCorrelation])
def test_one_sample_is_too_few_for_a_correlation(cls):
    with pytest.raises(ValueError, match="n_samples must be at least 2"):
        cls(n_samples=1)


@pytest.mark.parametrize("fractions", [[], [0.0], [1.0], [-0.1], [0.5, 1.5]])
def test_road_fractions_must_lie_in_the_open_unit_interval(fractions):
    with pytest.raises(ValueError, match="fraction"):
        ROAD(fractions)


def test_one_step_is_the_smallest_valid_curve():
    """n_steps=1 works: the curve holds only the two endpoints (clean input, all deleted)."""
    model = gray()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(1))
    result = Deletion(1)(model, x, maps)
    assert result.curve.shape == (2, 2)
    with torch.no_grad():
        clean = model(x)
        cls = clean.argmax(1)
        empty = model(torch.zeros_like(x))
    torch.testing.assert_close(result.curve[:, 0], clean[torch.arange(2), cls])
    torch.testing.assert_close(result.curve[:, 1], empty[torch.arange(2), cls])


def test_more_steps_than_features_are_clipped():
    """n_steps larger than the pixel count flips one pixel per step (documented clipping)."""
    model = gray()
    x = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(1))
    assert Deletion(1000)(model, x, maps).curve.shape == (1, 10)
