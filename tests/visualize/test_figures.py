"""Figures: conversions, NaN-safe normalization, overlays, grids and saving."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import xai.visualize as viz
from xai.visualize import normalize, to_image


def test_to_image_accepts_chw_hwc_uint8_batch_and_undoes_normalization():
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    np.testing.assert_allclose(to_image(chw), rgb, atol=1e-6)
    np.testing.assert_allclose(to_image(chw[None]), rgb, atol=1e-6)
    np.testing.assert_allclose(to_image((rgb * 255).round().astype(np.uint8)), rgb, atol=1 / 255)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.1, 0.3)
    normed = (chw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    np.testing.assert_allclose(to_image(normed, mean=mean, std=std), rgb, atol=1e-5)
    gray = to_image(np.ones((4, 4)))
    assert gray.shape == (4, 4, 3)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        to_image(np.zeros((2, 3, 4, 4)))


def test_normalize_is_nan_safe_and_keeps_sign():
    assert np.array_equal(normalize(np.zeros((3, 3))), np.zeros((3, 3)))
    assert np.array_equal(normalize(np.full((3, 3), 5.0)), np.ones((3, 3)))
    with_nan = np.array([[np.nan, 1.0], [2.0, 4.0]])
    out = normalize(with_nan)
    assert np.isfinite(out).all() and out.max() == 1.0
    signed = normalize(np.array([[-2.0, 1.0], [0.0, 0.5]]))
    assert signed.min() == -1.0 and signed[0, 1] == 0.5
    shared = normalize(np.array([[1.0, 2.0]]), scale=4.0)
    np.testing.assert_allclose(shared, [[0.25, 0.5]])


def test_overlay_grid_and_save(tmp_path):
    images = torch.rand(2, 3, 16, 20)
    maps = {"a": torch.rand(2, 4, 5), "signed": torch.randn(2, 16, 20)}
    fig = viz.grid(images, maps, titles=["x", "y"], shared_scale=True)
    assert len(fig.axes) == 2 * 3
    assert fig.axes[1].get_title() == "a"
    png = viz.save(fig, tmp_path / "sub" / "grid.png", dpi=50)
    pdf = viz.save(fig, tmp_path / "grid.pdf")
    assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="unsupported format"):
        viz.save(fig, tmp_path / "grid.xyz")
    with pytest.raises(ValueError, match="1 maps for 2 images"):
        viz.grid(images, {"bad": torch.rand(1, 4, 4)})
    ax = viz.overlay(images[0], maps["signed"][0], colorbar=True, title="t")
    assert ax.images[-1].get_cmap().name == "RdBu_r"  # diverging for signed maps
    assert viz.overlay(images[0], maps["a"][0]).images[-1].get_cmap().name == "inferno"
    rgb = viz.heatmap_rgb(images[0], maps["a"][0])
    assert rgb.shape == (16, 20, 3) and rgb.dtype == np.uint8


def test_importing_xai_does_not_import_pyplot():
    code = (
        "import sys, xai, xai.attributions, xai.visualize; "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
