"""Broden-lite: exact masks, the color rules, determinism (skipped without Tux Paint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai.data.broden_lite import COLOR_NAMES, BrodenLite, color_names
from xai.data.shortcuts.tuxpaint import _paste_stamp, tuxpaint_available

needs_stamps = pytest.mark.skipif(
    not tuxpaint_available(), reason="apt-get install -y tuxpaint-stamps-default"
)


def test_color_rules_on_reference_colors():
    table = {
        (255, 0, 0): "red", (255, 128, 0): "orange", (255, 255, 0): "yellow",
        (0, 255, 0): "green", (0, 0, 255): "blue", (0, 255, 255): "blue",
        (128, 0, 255): "purple", (255, 0, 128): "pink", (128, 64, 0): "brown",
        (0, 0, 0): "black", (255, 255, 255): "white", (128, 128, 128): "grey",
        (200, 10, 30): "red",  # hue 354: the red bin wraps around 0
    }  # fmt: skip
    got = color_names(np.asarray(list(table), dtype=np.float32) / 255)
    assert [COLOR_NAMES[i] for i in got] == list(table.values())


def test_paste_is_exact_on_two_complementary_canvases():
    # the same stamp and position on canvas C and on 1 - C: the pixels equal in both are
    # exactly the mask (C != 1 - C everywhere since C avoids 0.5)
    gen = np.random.default_rng(0)
    canvas = gen.choice([0.1, 0.3, 0.7, 0.9], size=(40, 40, 3)).astype(np.float32)
    rgba = gen.random((30, 20, 4)).astype(np.float32)
    rgba[..., 3] = (gen.random((30, 20)) > 0.4).astype(np.float32)
    a, b = canvas.copy(), 1 - canvas
    mask_a = _paste_stamp(a, rgba, 25, np.random.default_rng(3))
    mask_b = _paste_stamp(b, rgba, 25, np.random.default_rng(3))
    assert np.array_equal(mask_a, mask_b) and mask_a.any() and not mask_a.all()
    assert np.array_equal((a == b).all(-1), mask_a)


@pytest.fixture(scope="module")
def data():
    if not tuxpaint_available():
        pytest.skip("apt-get install -y tuxpaint-stamps-default")
    return BrodenLite(40, size=64, seed=0)


@needs_stamps
def test_items_are_deterministic_and_masks_partition(data):
    image, masks = data[3]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert masks.shape == (24, 32, 32) and masks.dtype == torch.bool
    again = BrodenLite(40, size=64, seed=0)[3]
    assert torch.equal(again[0], image) and torch.equal(again[1], masks)
    assert not torch.equal(BrodenLite(40, size=64, seed=1)[3][0], image)
    kinds = np.asarray(data.kinds)
    for i in range(10):
        _, m = data[i]
        # every pixel: exactly one color; exactly one of (an object, a texture)
        assert bool((m[kinds == "color"].sum(0) == 1).all())
        assert bool((m[(kinds == "object") | (kinds == "texture")].sum(0) == 1).all())
        assert int(m[kinds == "object"].flatten(1).any(1).sum()) >= 1


@needs_stamps
def test_object_pixels_are_the_stamps_and_colors_are_the_pixels(data):
    rgb, labels = data.render(5)
    assert np.array_equal(color_names(rgb), labels[2])
    objects = labels[0] >= 0
    assert objects.any()
    # object masks at label resolution are nearest samples of the full-resolution ones
    _, masks = data[5]
    near = (np.arange(32) * 2 + 1).clip(max=63)
    assert np.array_equal(masks[:10].any(0).numpy(), objects[near[:, None], near[None, :]])


@needs_stamps
def test_splits_are_disjoint_and_cover(data):
    train, val = data.train(), data.val()
    assert len(train) == 32 and len(val) == 8
    assert not set(train.indices) & set(val.indices)
    assert train.concepts == data.concepts


def test_missing_package_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tuxpaint-stamps-default"):
        BrodenLite(10, root=tmp_path)
