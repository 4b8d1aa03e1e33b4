"""Salient Relevance: a literal replica of the context-aware saliency step, planted blobs vs
isolated pixels, the colour and distance-transform building blocks, and the wrapper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._models import TinyConvNet, seeded
from tests.conftest import has
from xai.attributions.lrp import LRP, SalientRelevance, context_aware_saliency, salient_relevance
from xai.attributions.lrp.salient_relevance import (
    _distance_to_mask,
    relevance_to_rgb,
    rgb_to_lab,
)


def _resize(img: torch.Tensor, size, mode="bilinear"):
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    shrink = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    return F.interpolate(img, size=size, mode=mode, align_corners=False, antialias=shrink)


def slow_context_aware_saliency(
    rgb, *, scales, patch_sizes, search_scales, min_search_scale, k, c, foci_threshold
):
    """Literal, loop-per-pixel replica of the spec (working resolution = input resolution).

    ``rgb`` is one ``(3, H, W)`` float64 image in [0, 1]. Colours: skimage's L*a*b*, each
    channel min-max normalized (+ machine eps in the span, as the MATLAB code).
    """
    from skimage.color import rgb2lab

    lab = rgb2lab(rgb.permute(1, 2, 0).numpy()).transpose(2, 0, 1)
    lab = torch.from_numpy(np.ascontiguousarray(lab))
    flat = lab.reshape(3, -1)
    lo, hi = flat.min(1).values, flat.max(1).values
    img = (lab - lo[:, None, None]) / (hi - lo + torch.finfo(torch.float64).eps)[:, None, None]
    h0, w0 = img.shape[-2:]
    per_scale = []
    for r, size in zip(scales, patch_sizes, strict=True):
        half = size // 2
        factor = 49 / size**2
        level = img if r == 1 else _resize(img[None], (math.ceil(h0 * r), math.ceil(w0 * r)))[0]
        h, w = level.shape[-2:]
        longest = max(h, w)
        candidates = []  # (vector, x, y)
        for s in search_scales:
            if r * s < min_search_scale:
                break
            src = (
                level
                if s == 1
                else _resize(level[None], (math.ceil(h * s), math.ceil(w * s)), "bicubic")[0]
            )
            for row in range(half, src.shape[-2] - half, max(1, half)):
                for col in range(half, src.shape[-1] - half, max(1, half)):
                    patch = src[:, row - half : row + half + 1, col - half : col + half + 1]
                    candidates.append(
                        (patch.reshape(-1), (col + 1) / (longest * s), (row + 1) / (longest * s))
                    )
        sal = torch.zeros(h, w, dtype=torch.float64)
        kk = min(k, len(candidates))
        for row in range(half, h - half):
            for col in range(half, w - half):
                p = level[:, row - half : row + half + 1, col - half : col + half + 1].reshape(-1)
                x, y = (col + 1) / longest, (row + 1) / longest
                dists = sorted(
                    float((p - q).norm()) / (1 + c * math.hypot(x - qx, y - qy))
                    for q, qx, qy in candidates
                )
                sal[row, col] = 1 - math.exp(-factor * sum(dists[:kk]) / kk)
        per_scale.append(_resize(sal[None, None], (h0, w0))[0, 0])
    mean = torch.stack(per_scale).mean(0)
    peak = float(mean.max())
    if peak == 0:
        return mean
    foci = [(i, j) for i in range(h0) for j in range(w0) if mean[i, j] > foci_threshold * peak]
    dist = torch.tensor(
        [[min(math.hypot(i - a, j - b) for a, b in foci) for j in range(w0)] for i in range(h0)],
        dtype=torch.float64,
    )
    far = float(dist.max())
    return mean * (1 - dist / far) if far > 0 else mean


@pytest.mark.skipif(not has("skimage"), reason="scikit-image provides the L*a*b* reference")
def test_matches_the_literal_replica_on_a_tiny_map():
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(1, 3, 14, 12, generator=gen, dtype=torch.float64)
    rgb[:, :, 3:8, 4:9] = torch.tensor([0.9, 0.2, 0.1], dtype=torch.float64)[:, None, None]
    options = {
        "scales": (1.0, 0.5),
        "patch_sizes": (5, 3),
        "search_scales": (1.0, 0.5, 0.25),
        "min_search_scale": 0.2,
        "k": 8,
        "c": 3.0,
        "foci_threshold": 0.8,
    }
    fast = context_aware_saliency(rgb, longest_side=None, **options)
    slow = slow_context_aware_saliency(rgb[0], **options)
    # the fast path computes patch distances as |p|^2 + |q|^2 - 2<p, q> (cancellation ~1e-8)
    torch.testing.assert_close(fast[0], slow, rtol=1e-6, atol=1e-7)
    assert slow.max() > 0.1  # a non-trivial map


def _brute_force_mean_nearest(query, qpos, cand, cand_pos, *, k, c, chunk_size):
    """Every pair's d from direct differences (no |p|^2 + |q|^2 - 2pq), one full sort per query."""
    del chunk_size
    colour = torch.cdist(query, cand, compute_mode="donot_use_mm_for_euclid_dist")
    where = torch.cdist(qpos, cand_pos, compute_mode="donot_use_mm_for_euclid_dist")
    d = colour / (1 + c * where)
    return d.sort(-1).values[..., :k].mean(-1)


def test_blocked_search_equals_brute_force_on_a_96px_heatmap(monkeypatch):
    """The whole map at a moderate working size (4 scales, K = 64, candidates from 3 levels):
    the blocked matrix-product search against every pair computed directly."""
    gen = torch.Generator().manual_seed(6)
    relevance = torch.randn(1, 3, 80, 72, generator=gen, dtype=torch.float64) ** 3
    relevance[:, :, 20:50, 10:40] += 5.0  # a dense region among heavy-tailed noise
    image = relevance_to_rgb(relevance)
    fast = context_aware_saliency(image, longest_side=96, chunk_size=1000)
    monkeypatch.setattr(salient_relevance, "_mean_nearest", _brute_force_mean_nearest)
    slow = context_aware_saliency(image, longest_side=96)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    assert slow.max() > 0.3  # a non-trivial map


@pytest.mark.parametrize(
    ("n", "k"), [(n, k) for n in (7, 511, 512, 513, 2050, 9001) for k in (1, 16, 64) if k <= n]
)
def test_grouped_selection_finds_the_k_smallest(n, k):
    """The grouped selection against a full sort: same K smallest values (ties included)."""
    gen = torch.Generator().manual_seed(n + k)
    x = torch.rand(3, 5, n, generator=gen, dtype=torch.float64) ** 4
    x[0, 0] = torch.randint(0, 3, (n,), generator=gen).double()  # heavy ties
    x[1, 1, : n // 2] = math.inf
    picked = x.gather(-1, salient_relevance._smallest(x, k))
    expected = x.sort(-1).values[..., :k]
    torch.testing.assert_close(picked.sort(-1).values, expected, rtol=0, atol=0)


@pytest.mark.parametrize("n_cand", [64, 65, 66, 67, 600, 601])
def test_padding_candidates_are_never_selected(n_cand):
    """With K equal to the candidate count every real candidate is used and none of the dummy
    ones that fill the last selection group; the mean equals the direct computation."""
    gen = torch.Generator().manual_seed(n_cand)
    query = torch.rand(2, 40, 12, generator=gen, dtype=torch.float64)
    cand = torch.rand(2, n_cand, 12, generator=gen, dtype=torch.float64)
    qpos, cpos = torch.rand(40, 2, generator=gen), torch.rand(n_cand, 2, generator=gen)
    qpos, cpos = qpos.double(), cpos.double()
    for k in (n_cand, 64):
        fast = salient_relevance._mean_nearest(query, qpos, cand, cpos, k=k, c=3.0, chunk_size=7)
        slow = _brute_force_mean_nearest(query, qpos, cand, cpos, k=k, c=3.0, chunk_size=None)
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not has("skimage"), reason="scikit-image provides the L*a*b* reference")
def test_lab_matches_skimage():
    from skimage.color import rgb2lab

    rgb = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.0  # black and white hit both branches
    rgb[0, :, 0, 1] = 1.0
    expected = np.stack([rgb2lab(im.permute(1, 2, 0).numpy()).transpose(2, 0, 1) for im in rgb])
    torch.testing.assert_close(rgb_to_lab(rgb), torch.from_numpy(expected), rtol=1e-6, atol=1e-6)


def test_distance_transform_matches_scipy():
    from scipy.ndimage import distance_transform_edt

    mask = torch.rand(2, 9, 13, generator=torch.Generator().manual_seed(2)) > 0.9
    expected = np.stack([distance_transform_edt(~m.numpy()) for m in mask])
    torch.testing.assert_close(_distance_to_mask(mask), torch.from_numpy(expected))


def test_dense_blob_is_kept_and_isolated_pixels_are_suppressed():
    gen = torch.Generator().manual_seed(3)
    relevance = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    relevance[:, :, 38:54, 8:24] = 1.0 + 0.1 * torch.rand(
        1, 3, 16, 16, generator=gen, dtype=torch.float64
    )
    isolated = [(5, 40), (12, 55), (20, 33), (30, 58), (50, 45), (58, 60), (8, 10), (22, 5)]
    for i, j in isolated:
        relevance[:, :, i, j] = 1.0
    sr = context_aware_saliency(relevance_to_rgb(relevance), longest_side=None)
    blob = sr[0, 40:52, 10:22]
    dots = torch.stack([sr[0, i, j] for i, j in isolated])
    assert blob.mean() > 0.5
    assert dots.max() < 0.25 * blob.mean()
    # the raw map treats blob and dots alike; SR separates them
    assert sr.shape == (1, 64, 64) and sr.min() >= 0 and sr.max() <= 1


def test_constant_image_gives_zeros_without_nan():
    sr = context_aware_saliency(torch.full((2, 3, 20, 16), 0.3), longest_side=None)
    assert torch.isfinite(sr).all() and (sr == 0).all()


def test_global_brightness_does_not_matter():
    rgb = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = context_aware_saliency(rgb, longest_side=None, lab=False, k=16)
    b = context_aware_saliency(0.5 * rgb, longest_side=None, lab=False, k=16)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_salient_relevance_is_saliency_of_the_lrp_heatmap():
    model = seeded(TinyConvNet())
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lrp = LRP(model, "epsilon_plus_flat")
    sr = SalientRelevance(lrp, longest_side=32, k=16)
    maps = sr(x, target=[0, 3])
    expected = context_aware_saliency(
        relevance_to_rgb(lrp.relevance(x, [0, 3])), longest_side=32, k=16
    )
    torch.testing.assert_close(maps, expected)
    assert maps.shape == (2, 24, 24) and maps.dtype == torch.float64


def test_wrapper_errors():
    model = seeded(TinyConvNet())
    with pytest.raises(TypeError, match="wraps an LRP"):
        SalientRelevance(model)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rgb_mode"):
        SalientRelevance(LRP(model), rgb_mode="jet")
    with pytest.raises(ValueError, match="odd"):
        SalientRelevance(LRP(model), patch_sizes=(7, 4, 3, 3))
    with pytest.raises(ValueError, match="3-channel"):
        relevance_to_rgb(torch.rand(1, 2, 4, 4))
    # a grey (1-channel) relevance is shown as a grey image: the same as "sum_abs"
    grey = torch.randn(1, 1, 4, 4)
    torch.testing.assert_close(relevance_to_rgb(grey), relevance_to_rgb(grey, "sum_abs"))
