"""Similarity figures: they return Figures with the expected panels and graph edges, never show
anything, and do not import matplotlib at module import time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from xai.visualize.similarity import retrieval_strip, similarity_graph, similarity_pair


def _images(n: int, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_module_import_does_not_import_pyplot():
    code = "import sys, xai.visualize.similarity; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pair_figure_has_both_overlays_and_the_score():
    from matplotlib.figure import Figure

    imgs = _images(2)
    maps = torch.rand(2, 8, 8)  # layer-resolution maps are resized to the images
    fig = similarity_pair(imgs[0], imgs[1], maps[0], maps[1], 0.734, metric="cosine")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    assert "cosine = 0.734" in fig._suptitle.get_text()
    assert all(len(ax.images) == 2 for ax in fig.axes)  # the image and its heatmap

    # shared scale: a map half as strong is drawn half as bright; separate scales hide that
    strong = torch.rand(16, 16, generator=torch.Generator().manual_seed(1)) + 0.1
    for shared, ratio in ((True, 0.5), (False, 1.0)):
        fig = similarity_pair(imgs[0], imgs[1], strong, strong / 2, shared_scale=shared)
        q_shown, r_shown = (np.asarray(ax.images[1].get_array()) for ax in fig.axes)
        keep = q_shown < 0.99  # below the clipping percentile
        np.testing.assert_allclose(r_shown[keep], ratio * q_shown[keep], rtol=1e-4, atol=1e-5)


def test_retrieval_strip_has_query_plus_hits():
    imgs = _images(4)
    maps = torch.rand(3, 16, 16)
    fig = retrieval_strip(
        imgs[0],
        imgs[1:],
        maps,
        torch.tensor([0.9, 0.5, 0.1]),
        region=(2, 2, 8, 8),
        labels=["a", "b", "c"],
    )
    assert len(fig.axes) == 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1].startswith("#1 a") and "0.900" in titles[1]
    assert len(fig.axes[0].patches) == 1  # the region's box
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:10, 3:9] = True
    fig = retrieval_strip(imgs[0], imgs[1:2], maps[:1], [0.5], region=mask)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="as many"):
        retrieval_strip(imgs[0], imgs[1:], maps[:2], [0.1, 0.2, 0.3])


def test_similarity_graph_draws_the_top_k_edges_and_places_similar_images_close():
    # two clusters: {0, 1, 2} and {3, 4}
    emb = torch.tensor([[1.0, 0.0], [0.95, 0.1], [0.9, 0.2], [0.0, 1.0], [0.1, 0.95]])
    emb = torch.nn.functional.normalize(emb, dim=1)
    sims = emb @ emb.T
    fig = similarity_graph(_images(5), sims, k=1, labels=list("abcde"))
    edges = {line.get_gid() for line in fig.axes[0].lines}
    # each node's nearest neighbour: 0-1, 1-0 or 1-2, 2-1, 3-4, 4-3
    expected = set()
    off = sims.clone().fill_diagonal_(-2)
    for i in range(5):
        j = int(off[i].argmax())
        expected.add(f"{min(i, j)}-{max(i, j)}")
    assert edges == expected
    assert len(fig.axes) == 6  # edges + one thumbnail per node
    centers = [np.mean(ax.get_position().get_points(), 0) for ax in fig.axes[1:]]
    within = np.linalg.norm(centers[0] - centers[1])
    across = np.linalg.norm(centers[0] - centers[3])
    assert within < across
    circle = similarity_graph(_images(5), sims, k=2, layout="circle")
    assert len(circle.axes[0].lines) >= 5
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        similarity_graph(_images(5), sims[:4, :4])
    with pytest.raises(ValueError, match="k must be"):
        similarity_graph(_images(5), sims, k=5)
