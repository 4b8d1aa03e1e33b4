"""Concept figures: gallery rows = concepts with the top crops, overlays, cluster graph."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.concepts._planted import PlantedNet, planted_bank, planted_images
from xai.concepts import ConceptExtractor, strategic_clusters
from xai.visualize import to_image
from xai.visualize.concepts import concept_gallery, concept_overlay, strategic_cluster_graph


@pytest.fixture(scope="module")
def fitted():
    x = planted_images(planted_bank(), n=3, size=12)
    return ConceptExtractor(PlantedNet(), "features", n_concepts=3, patch_size=6).fit(x), x


def test_module_import_does_not_import_pyplot():
    code = "import sys, xai.visualize.concepts; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gallery_shows_the_top_crops_of_each_concept(fitted):
    from matplotlib.figure import Figure

    ce, _ = fitted
    imp = torch.tensor([0.1, 0.5, 0.2])
    fig = concept_gallery(ce, importances=imp, n_crops=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 4
    assert "importance 0.5" in fig.axes[0].get_ylabel()  # most important concept first
    # the first crop of row 0 is the crop with the highest coefficient of concept 1
    best = int(torch.argmax(ce.coefficients_[:, 1]))
    crop = ce.crops(ce.patches_[best : best + 1])[0]
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), to_image(crop), atol=1e-6)


def test_gallery_refuses_positions():
    x = planted_images(planted_bank(), n=2)
    ce = ConceptExtractor(PlantedNet(), "features", n_concepts=2, patches="positions").fit(x)
    with pytest.raises(ValueError, match="positions"):
        concept_gallery(ce)


def test_overlay_panels(fitted):
    ce, x = fitted
    maps = ce.concept_maps(x)[0]
    fig = concept_overlay(x[0, :3], maps, importances=torch.tensor([0.3, 0.1, 0.6]), n_concepts=2)
    assert len(fig.axes) == 3
    assert fig.axes[1].get_title() == "concept 2"
    with pytest.raises(ValueError, match="K, H, W"):
        concept_overlay(x[0, :3], maps[0])


def test_strategic_clusters_and_graph():
    gen = torch.Generator().manual_seed(0)
    imp = torch.rand(30, 3, generator=gen) * 0.1
    imp[:12, 0] += 1.0  # 12 images driven by concept 0
    imp[12:20, 1] += 1.0  # only 8 by concept 1: below min_count=10
    imp[20:, 2] += 1.0
    clusters = strategic_clusters(imp, min_count=10)
    assert clusters.labels[:12].eq(0).all() and clusters.labels[12:20].eq(-1).all()
    assert clusters.labels[20:].eq(2).all()
    assert float(clusters.shares.sum()) == pytest.approx(1.0)
    assert clusters.coords.shape == (30, 2)
    fig = strategic_cluster_graph(imp, images=torch.rand(30, 3, 8, 8), min_count=10)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels[0] == "no dominant concept" and len(labels) == 3
