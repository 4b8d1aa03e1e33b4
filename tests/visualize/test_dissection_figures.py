"""Dissection figures: they draw what the results say, and reject bad input."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.concepts._planted_dissect import Planted, planted_inputs, rect_masks
from xai.concepts import NetworkDissection
from xai.visualize import concept_histogram, save, similarity_matrix, top_patches


@pytest.fixture(scope="module")
def fitted():
    masks = rect_masks(40, 4, 32)
    data = TensorDataset(planted_inputs(masks, n_noise=0)[:, :3], masks)
    data.concepts = ["a", "b", "c", "d"]
    data.kinds = ["object", "object", "color", "texture"]
    nd = NetworkDissection(Planted(), "features", quantile=0.05, n_top=4).fit(data)
    return nd, data, masks


def test_top_patches_title_and_masks(fitted, tmp_path):
    nd, data, masks = fitted
    fig = top_patches(nd, data, 1, n=3)
    assert len(fig.axes) == 3
    assert "unit 1: b (IoU 1.000)" in fig._suptitle.get_text()
    # the highlighted region is the concept's mask: dimmed pixels outside, bright inside
    shown = fig.axes[0].images[0].get_array()
    i = int(nd.results_["features"].top_images[1, 0])
    inside = masks[i, 1].numpy()
    raw = data[i][0].permute(1, 2, 0).numpy()
    assert abs(shown[inside] - raw[inside].clip(0, 1)).max() < 1e-6
    assert abs(shown[~inside] - 0.25 * raw[~inside].clip(0, 1)).max() < 1e-6
    assert save(fig, tmp_path / "top.png").stat().st_size > 0
    with pytest.raises(ValueError, match="unit"):
        top_patches(nd, data, 9)


def test_concept_histogram_counts(fitted):
    nd, _, _ = fitted
    fig = concept_histogram(nd)
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert bars == [1, 1, 1, 0]  # three filters (the images' 3 channels: a, b, c), none for d
    assert "3/3 filters" in fig.axes[0].get_title()


def test_similarity_matrix(tmp_path):
    sim = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    fig = similarity_matrix(sim, ["x", "y"])
    assert fig.axes[0].images[0].get_array().shape == (2, 2)
    assert save(fig, tmp_path / "sim.png").stat().st_size > 0
    with pytest.raises(ValueError, match="square"):
        similarity_matrix(torch.ones(2, 3))
    with pytest.raises(ValueError, match="names"):
        similarity_matrix(sim, ["x"])
