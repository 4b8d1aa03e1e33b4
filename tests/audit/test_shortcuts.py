"""Ground-truth sets: exact background-swap masks, planted patch geometry, clear errors."""

from __future__ import annotations

import pytest
import torch

from xai.data.shortcuts import (
    background_swap_set,
    load_fashion_mnist,
    planted_shortcut_set,
    train_background_probe,
    tuxpaint_available,
)

needs_tux = pytest.mark.skipif(
    not tuxpaint_available(), reason="apt-get install -y tuxpaint-stamps-default"
)


@needs_tux
def test_background_swap_masks_are_exact():
    data = background_swap_set(16, size=64, keep_backgrounds=True, seed=3)
    assert data.inputs.shape == (16, 3, 64, 64) and data.masks.dtype == torch.bool
    outside = ~data.masks[:, None].expand_as(data.inputs)
    # every pixel outside the mask is the texture's, bit for bit
    assert torch.equal(data.inputs[outside], data.backgrounds[outside])
    # inside, the pixels are the cut-out's: they differ from the texture almost everywhere
    changed = (data.inputs != data.backgrounds).any(1)
    inside = data.masks
    assert (changed & inside).sum() >= 0.95 * inside.sum()
    assert not (changed & ~inside).any()
    area = inside.flatten(1).float().mean(1)
    assert (area > 0.005).all() and (area < 0.6).all()


@needs_tux
def test_background_correlation_and_determinism():
    a = background_swap_set(40, size=48, correlation=1.0, seed=0)
    assert torch.equal(a.groups, a.labels)
    reversed_ = background_swap_set(40, size=48, correlation=0.0, seed=0)
    assert torch.equal(reversed_.groups, 1 - reversed_.labels)
    again = background_swap_set(40, size=48, correlation=1.0, seed=0)
    assert torch.equal(a.inputs, again.inputs) and torch.equal(a.masks, again.masks)


@needs_tux
@pytest.mark.real_model
def test_background_probe_learns_the_training_set(mobilenet):
    train = background_swap_set(24, size=64, seed=0)
    probe = train_background_probe(train, mobilenet)
    with torch.no_grad():
        acc = (probe(train.inputs).argmax(1) == train.labels).float().mean()
    assert acc > 0.9
    assert probe.features is mobilenet.features and not mobilenet.training


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_fashion_mnist("validation")
    with pytest.raises(FileNotFoundError, match="tuxpaint-stamps-default"):
        background_swap_set(root=tmp_path)
    with pytest.raises(ValueError, match="inside the 28x28"):
        planted_shortcut_set(100, patch_size=4, position=(26, 0), root=tmp_path)
    with pytest.raises(ValueError, match="fraction"):
        planted_shortcut_set(100, fraction=1.5, root=tmp_path)
    with pytest.raises(ValueError, match="class 0..9"):
        planted_shortcut_set(100, shortcut_class=10, root=tmp_path)


@needs_tux
def test_background_errors():
    with pytest.raises(ValueError, match="unknown background"):
        background_swap_set(4, backgrounds=("grass", "water"))
    with pytest.raises(ValueError, match="no stamp category"):
        background_swap_set(4, categories=("animals/birds", "dragons"))
