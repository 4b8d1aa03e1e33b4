"""Inversion strips and visualization grids: panels, titles, the displayed pixels, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xai.visualize.features import inversion_strip, visualization_grid

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_inversion_strip_shows_the_original_then_each_layer_unnormalized():
    pixels = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    x = (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    recs = {"a": x, "b": torch.zeros_like(x)}
    fig = inversion_strip(x, recs, errors={"a": 0.125}, mean=MEAN, std=STD, title="t")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["original", "a\nerror 0.125", "b"]
    np.testing.assert_allclose(
        axes[0].images[0].get_array(), pixels.permute(1, 2, 0).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(axes[2].images[0].get_array()[0, 0], MEAN, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        inversion_strip(x, {})


def test_visualization_grid_layout_and_errors():
    images = torch.rand(5, 3, 8, 8)
    fig = visualization_grid(images, titles=list("abcde"), n_cols=3)
    visible = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(visible) == 5
    assert [ax.get_title() for ax in visible] == list("abcde")
    with pytest.raises(ValueError, match="titles"):
        visualization_grid(images, titles=["a"])
