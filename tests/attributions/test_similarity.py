"""SimilarityMaps (Stylianou et al., WACV 2019): decompositions checked against closed forms,
a literal replica of the paper's reference code, planted ground truth and error behaviour."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._models import Raising, TinyConvNet, seeded
from tests.conftest import hook_count
from xai.attributions.similarity import SimilarityMaps, region_weights

DT = torch.float64


class GeM(nn.Module):
    """Generalized-mean pooling as in Radenović et al.'s code: clamp, power, mean, root."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x):
        return x.clamp(min=self.eps).pow(self.p).mean((2, 3)).pow(1.0 / self.p)


class L2Normalize(nn.Module):
    def forward(self, x):
        return F.normalize(x, dim=1)


def embedder(pool: str = "avg", *, extra: list[nn.Module] | None = None) -> nn.Module:
    """TinyConvNet features (layer "0", 8 channels, stride 2) -> pooling -> (B, 8)."""
    features = seeded(TinyConvNet()).features
    pools = {"avg": nn.AdaptiveAvgPool2d(1), "max": nn.AdaptiveMaxPool2d(1)}
    tail = [pools[pool], nn.Flatten()] if pool in pools else [GeM(3.0)]
    return nn.Sequential(features, *tail, *(extra or [])).to(DT).eval()


def identity_embedder(pool: nn.Module) -> nn.Module:
    """Layer "0" is the input itself: hand-made feature maps."""
    return nn.Sequential(nn.Identity(), pool, nn.Flatten()).to(DT).eval()


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen, dtype=DT)


def similarity(model: nn.Module, q: torch.Tensor, refs: torch.Tensor, metric: str):
    with torch.no_grad():
        e_q, e_r = model(q), model(refs)
    if metric == "cosine":
        return F.cosine_similarity(e_q, e_r, dim=1)
    return e_r @ e_q[0]


# --- exactness ----------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("size", [32, 30])  # 30 px: the 15x15 grid does not divide evenly
def test_avg_maps_sum_to_similarity(metric, size):
    model = embedder("avg")
    q, refs = images(1, size, seed=1), images(4, size, seed=2)
    expected = similarity(model, q, refs, metric)
    for upsample in (False, True):
        q_maps, r_maps = SimilarityMaps(model, "0", metric=metric, upsample=upsample)(q, refs)
        side = size if upsample else (size + 1) // 2
        assert q_maps.shape == (4, side, side) and r_maps.shape == (4, side, side)
        torch.testing.assert_close(q_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(r_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)


def _reference_code(conv_a: torch.Tensor, conv_b: torch.Tensor):
    """A literal replica of the paper's ``compute_spatial_similarity`` (cosine, avg pooling):
    rows = locations, divide by N and the pooled norm, build the N x N table, sum rows/cols."""
    a = conv_a.flatten(1).T  # (N, C)
    b = conv_b.flatten(1).T
    pool_a, pool_b = a.mean(0), b.mean(0)
    a = a / pool_a.norm() / a.shape[0]
    b = b / pool_b.norm() / b.shape[0]
    table = torch.zeros(a.shape[0], b.shape[0], dtype=a.dtype)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            table[i, j] = (a[i] * b[j]).sum()
    return table.sum(1).view(conv_a.shape[1:]), table.sum(0).view(conv_b.shape[1:]), table


def test_avg_cosine_matches_the_papers_reference_code():
    model = embedder("avg")
    q, r = images(1, 16, seed=3), images(1, 16, seed=4)
    with torch.no_grad():
        conv_q, conv_r = model[0](q.clone())[0], model[0](r.clone())[0]
    heat_q, heat_r, table = _reference_code(conv_q, conv_r)
    sim = SimilarityMaps(model, "0", metric="cosine", upsample=False)
    q_maps, r_maps = sim(q, r)
    torch.testing.assert_close(q_maps[0], heat_q, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(r_maps[0], heat_r, atol=1e-12, rtol=1e-9)
    pair = sim.pair_table(q, r)
    torch.testing.assert_close(pair.flatten(0, 1).flatten(1), table, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(pair.sum((2, 3)), q_maps[0], atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(pair.sum((0, 1)), r_maps[0], atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_max_pooling_credits_each_channel_at_its_argmax(metric):
    model = embedder("max")
    q, r = images(1, 16, seed=5), images(1, 16, seed=6)
    with torch.no_grad():
        conv_q, conv_r = model[0](q.clone())[0], model[0](r.clone())[0]
    f_q, f_r = conv_q.amax((1, 2)), conv_r.amax((1, 2))
    z = f_q.norm() * f_r.norm() if metric == "cosine" else 1.0
    expected_q = torch.zeros(conv_q.shape[1:], dtype=DT)
    expected_r = torch.zeros(conv_r.shape[1:], dtype=DT)
    for c in range(conv_q.shape[0]):
        term = f_q[c] * f_r[c] / z
        if term == 0:  # a channel that is zero everywhere contributes nothing
            continue
        expected_q.view(-1)[conv_q[c].argmax()] += term
        expected_r.view(-1)[conv_r[c].argmax()] += term
    q_maps, r_maps = SimilarityMaps(model, "0", pooling="max", metric=metric, upsample=False)(q, r)
    torch.testing.assert_close(q_maps[0], expected_q, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(r_maps[0], expected_r, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(q_maps.sum(), similarity(model, q, r, metric)[0], atol=1e-5, rtol=0)


def test_max_pooling_splits_ties_evenly():
    model = identity_embedder(nn.AdaptiveMaxPool2d(1))
    q = torch.zeros(1, 3, 2, 2, dtype=DT)
    q[0, 0] = 2.0  # channel 0: a four-way tie
    q[0, 1, 1, 1] = 3.0  # channel 1: a single maximum
    r = torch.ones(1, 3, 2, 2, dtype=DT)
    q_maps, _ = SimilarityMaps(model, "0", pooling="max", metric="dot", upsample=False)(q, r)
    expected = torch.full((2, 2), 2.0 / 4, dtype=DT)
    expected[1, 1] += 3.0
    torch.testing.assert_close(q_maps[0], expected)


def test_gem_is_complete_and_interpolates_avg_and_max():
    model = embedder("gem")
    q, refs = images(1, 16, seed=7), images(3, 16, seed=8)
    q_maps, r_maps = SimilarityMaps(model, "0", pooling="gem", upsample=False)(q, refs)
    expected = similarity(model, q, refs, "cosine")
    torch.testing.assert_close(q_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(r_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)
    # p = 1 is average pooling, large p tends to max pooling (hand-made positive features)
    q2, r2 = images(1, 4, seed=9) + 0.1, images(2, 4, seed=10) + 0.1
    avg = SimilarityMaps(identity_embedder(nn.AdaptiveAvgPool2d(1)), "0", upsample=False)
    gem1 = SimilarityMaps(identity_embedder(GeM(1.0)), "0", pooling="gem", p=1.0, upsample=False)
    for got, want in zip(gem1(q2, r2), avg(q2, r2), strict=True):
        torch.testing.assert_close(got, want)
    mx = SimilarityMaps(
        identity_embedder(nn.AdaptiveMaxPool2d(1)), "0", pooling="max", upsample=False
    )
    gem = SimilarityMaps(identity_embedder(GeM(400.0)), "0", pooling="gem", p=400.0, upsample=False)
    for got, want in zip(gem(q2, r2), mx(q2, r2), strict=True):
        torch.testing.assert_close(got, want, atol=0.02, rtol=0)


def test_linear_head_decomposes_the_real_embedding():
    model = seeded(TinyConvNet())  # features -> GAP -> fc: the 5-d output is the embedding
    q, refs = images(1, seed=11), images(3, seed=12)
    for metric in ("cosine", "dot"):
        sim = SimilarityMaps(model, "features", head=model.fc, metric=metric, upsample=False)
        q_maps, r_maps = sim(q, refs)
        expected = similarity(model, q, refs, metric)
        torch.testing.assert_close(q_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(r_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)


def test_l2_normalizing_model_works_with_cosine_not_dot():
    model = embedder("avg", extra=[L2Normalize()])
    q, refs = images(1, seed=13), images(2, seed=14)
    q_maps, _ = SimilarityMaps(model, "0", metric="cosine")(q, refs)
    torch.testing.assert_close(
        q_maps.sum((1, 2)), similarity(model, q, refs, "cosine"), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="metric='cosine'"):
        SimilarityMaps(model, "0", metric="dot")(q, refs)


# --- invariants -------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_swapping_query_and_reference_swaps_the_maps(pooling):
    model = embedder(pooling)
    a, b = images(1, seed=15), images(1, seed=16)
    sim = SimilarityMaps(model, "0", pooling=pooling)
    a_maps, b_maps = sim(a, b)
    b_maps2, a_maps2 = sim(b, a)
    torch.testing.assert_close(a_maps, a_maps2)
    torch.testing.assert_close(b_maps, b_maps2)


def test_batched_references_equal_pairs_one_by_one_and_batch_size_is_a_bound():
    model = embedder("avg")
    q, refs = images(1, seed=17), images(5, seed=18)
    full = SimilarityMaps(model, "0").explain(q, refs)
    chunked = SimilarityMaps(model, "0", batch_size=2).explain(q, refs)
    for i in range(5):
        q_i, r_i = SimilarityMaps(model, "0")(q, refs[i : i + 1])
        torch.testing.assert_close(full.query_maps[i], q_i[0])
        torch.testing.assert_close(full.reference_maps[i], r_i[0])
    torch.testing.assert_close(chunked.query_maps, full.query_maps)
    torch.testing.assert_close(chunked.reference_maps, full.reference_maps)
    torch.testing.assert_close(chunked.scores, full.scores)
    torch.testing.assert_close(full.scores, SimilarityMaps(model, "0").similarity(q, refs))


def test_dtype_follows_the_inputs():
    model = embedder("avg").float()
    q, refs = images(1).float(), images(2).float()
    q_maps, r_maps = SimilarityMaps(model, "0")(q, refs)
    assert q_maps.dtype == r_maps.dtype == torch.float32
    q_maps64, _ = SimilarityMaps(embedder("avg"), "0")(q.double(), refs.double())
    assert q_maps64.dtype == torch.float64


# --- planted ground truth ---------------------------------------------------------------
class LocalNet(nn.Module):
    """Non-overlapping 8x8 receptive fields (kernel = stride = 8): each cell sees one patch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 256, 8, stride=8, bias=False)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)).mean((2, 3))


def _noise(gen, *shape):
    return torch.rand(*shape, generator=gen, dtype=DT) * 2 - 1


@pytest.mark.parametrize("seed", range(4))
def test_a_shared_patch_gets_the_peaks_of_both_maps(seed):
    # faint background; one patch planted in both images at different places, and one
    # distractor patch of the same statistics in each image that the other does not share
    gen = torch.Generator().manual_seed(seed)
    a, b = 0.1 * _noise(gen, 1, 3, 32, 32), 0.1 * _noise(gen, 1, 3, 32, 32)
    patch = _noise(gen, 3, 8, 8)
    a[0, :, 8:16, 16:24] = patch  # cell (1, 2)
    b[0, :, 24:32, 0:8] = patch  # cell (3, 0)
    a[0, :, 24:32, 24:32] = _noise(gen, 3, 8, 8)
    b[0, :, 0:8, 8:16] = _noise(gen, 3, 8, 8)
    net = LocalNet().to(DT).eval()
    a_map, b_map = SimilarityMaps(net, "act", upsample=False)(a, b)
    assert divmod(int(a_map[0].argmax()), 4) == (1, 2)
    assert divmod(int(b_map[0].argmax()), 4) == (3, 0)
    # at input resolution the peak lies inside the planted patch as well
    a_up, b_up = SimilarityMaps(net, "act")(a, b)
    y, x = divmod(int(a_up[0].argmax()), 32)
    assert 8 <= y < 16 and 16 <= x < 24


def test_region_search_finds_the_gallery_image_with_the_region():
    gen = torch.Generator().manual_seed(0)
    query = 0.1 * _noise(gen, 1, 3, 32, 32)
    patch, other = _noise(gen, 3, 8, 8), _noise(gen, 3, 8, 8)
    query[0, :, 8:16, 8:16] = patch  # the selected region
    query[0, :, 16:24, 24:32] = other  # elsewhere in the query
    gallery = 0.1 * _noise(gen, 6, 3, 32, 32)
    for i in range(6):
        gallery[i, :, 0:8, 0:8] = _noise(gen, 3, 8, 8)
    gallery[4, :, 16:24, 0:8] = patch  # the only image that contains the region's content
    gallery[2, :, 24:32, 8:16] = other  # matches the query, but outside the region
    net = LocalNet().to(DT).eval()
    sim = SimilarityMaps(net, "act", upsample=False, batch_size=4)
    result = sim.search(query, (8, 8, 16, 16), gallery, top_k=3)
    assert int(result.indices[0]) == 4
    assert divmod(int(result.maps[0].argmax()), 4) == (2, 0)
    torch.testing.assert_close(result.maps.sum((1, 2)), result.scores)
    torch.testing.assert_close(result.all_scores[result.indices], result.scores)
    assert result.region.shape == (4, 4) and float(result.region.sum()) == 1.0
    # the whole image as the region is plain full-image retrieval
    whole = sim.search(query, (0, 0, 32, 32), gallery, top_k=6)
    torch.testing.assert_close(whole.all_scores, sim.similarity(query, gallery))
    _, ref_maps = sim(query, gallery)
    torch.testing.assert_close(whole.maps, ref_maps[whole.indices])
    # a mask gives the same region as the box
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:16, 8:16] = True
    by_mask = sim.search(query, mask, gallery, top_k=3)
    torch.testing.assert_close(by_mask.all_scores, result.all_scores)


def test_region_weights_are_area_fractions():
    weights = region_weights((4, 0, 12, 8), (16, 16), (2, 2))
    torch.testing.assert_close(weights, torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=DT))


# --- gradient-based fallback -------------------------------------------------------------
def test_grad_cam_fallback_equals_relu_of_the_decomposition_for_avg_dot():
    model = embedder("avg")
    q, refs = images(1, seed=19), images(3, seed=20)
    exact = SimilarityMaps(model, "0", metric="dot", upsample=False).explain(q, refs)
    grad = SimilarityMaps(
        model, "0", pooling="grad_cam", metric="dot", upsample=False, batch_size=2
    ).explain(q, refs)
    # Grad-CAM weights = spatially averaged gradient = e_other / N, so L = ReLU(H)
    torch.testing.assert_close(grad.query_maps, exact.query_maps.clamp_min(0))
    torch.testing.assert_close(grad.reference_maps, exact.reference_maps.clamp_min(0))
    torch.testing.assert_close(grad.scores, exact.scores)


def test_grad_cam_serves_a_model_whose_head_does_not_decompose():
    torch.manual_seed(0)
    mlp = [nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)]
    model = embedder("avg", extra=mlp)
    q, refs = images(1, seed=21), images(2, seed=22)
    with pytest.raises(ValueError, match="grad_cam"):
        SimilarityMaps(model, "0")(q, refs)
    result = SimilarityMaps(model, "0", pooling="grad_cam").explain(q, refs)
    assert result.query_maps.shape == (2, 32, 32) and result.reference_maps.shape == (2, 32, 32)
    assert torch.isfinite(result.query_maps).all() and bool((result.query_maps >= 0).all())
    torch.testing.assert_close(result.scores, similarity(model, q, refs, "cosine"))
    hits = SimilarityMaps(model, "0", pooling="grad_cam").search(q, (0, 0, 16, 16), refs, 1)
    assert hits.maps.shape == (1, 32, 32)


# --- bad input ---------------------------------------------------------------------------
def test_layer_without_spatial_output_is_rejected():
    model = embedder("avg")  # "2" is the Flatten: (B, 8)
    with pytest.raises(ValueError, match="spatial"):
        SimilarityMaps(model, "2")(images(1), images(1))


def test_model_with_non_2d_output_is_rejected():
    model = nn.Sequential(seeded(TinyConvNet()).features).eval()  # returns (B, C, h, w)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        SimilarityMaps(model, "0")(images(1), images(1))


@pytest.mark.parametrize("box", [(-1, 0, 8, 8), (0, 0, 40, 8), (8, 8, 8, 16), (0, 30, 8, 20)])
def test_box_outside_the_image_or_empty_is_rejected(box):
    sim = SimilarityMaps(embedder("avg"), "0")
    with pytest.raises(ValueError, match="outside"):
        sim.search(images(1), box, images(2), top_k=1)


def test_other_bad_inputs():
    model = embedder("avg")
    q, refs = images(1), images(2)
    with pytest.raises(ValueError, match="one image"):
        SimilarityMaps(model, "0")(images(2), refs)
    with pytest.raises(ValueError, match="unsqueeze"):
        SimilarityMaps(model, "0")(q[0], refs)
    with pytest.raises(ValueError, match="pooling must be"):
        SimilarityMaps(model, "0", pooling="mean")
    with pytest.raises(ValueError, match="metric"):
        SimilarityMaps(model, "0", metric="l2")
    with pytest.raises(ValueError, match="unknown layer"):
        SimilarityMaps(model, "O")
    with pytest.raises(TypeError, match="nn.Linear"):
        SimilarityMaps(model, "0", head=nn.ReLU())
    with pytest.raises(ValueError, match="max pooling"):  # the model average-pools
        SimilarityMaps(model, "0", pooling="max")(q, refs)
    with pytest.raises(ValueError, match="mask"):
        SimilarityMaps(model, "0").search(q, torch.ones(16, 16), refs)
    with pytest.raises(ValueError, match="mask"):
        SimilarityMaps(model, "0").search(q, torch.zeros(32, 32), refs)
    with pytest.raises(ValueError, match="grad_cam"):
        SimilarityMaps(model, "0", pooling="grad_cam").pair_table(q, refs[:1])


# --- the model is left as it was ---------------------------------------------------------
def test_hooks_removed_and_model_unchanged():
    model = embedder("avg").train()
    model[0][0].bias.requires_grad_(False)
    state = copy.deepcopy(model.state_dict())
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    q, refs = images(1), images(3)
    q0, refs0 = q.clone(), refs.clone()
    for pooling in ("avg", "grad_cam"):
        sim = SimilarityMaps(model, "0", pooling=pooling)
        with torch.no_grad():  # an outer no_grad is fine, also for the gradient fallback
            sim(q, refs)
        sim.search(q, (0, 0, 16, 16), refs, top_k=2)
        assert hook_count(model) == 0
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    torch.testing.assert_close(q, q0, rtol=0, atol=0)
    torch.testing.assert_close(refs, refs0, rtol=0, atol=0)


def test_hooks_removed_after_an_exception():
    trap = Raising()
    model = (
        nn.Sequential(seeded(TinyConvNet()).features, trap, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        .to(DT)
        .train()
    )
    trap.armed = True
    for pooling in ("avg", "grad_cam"):
        with pytest.raises(RuntimeError, match="boom"):
            SimilarityMaps(model, "0", pooling=pooling)(images(1), images(2))
        assert hook_count(model) == 0
        assert all(m.training for m in model.modules())


# --- the real network --------------------------------------------------------------------
class PooledFeatures(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.features = backbone.features

    def forward(self, x):
        return self.features(x).mean((2, 3))


@pytest.mark.real_model
def test_mobilenet_maps_sum_to_the_cosine_of_pooled_features(mobilenet):
    from xai.data import preprocess, sample_photos_raw

    photos = sample_photos_raw(include_foolbox=False)[:3]  # chelsea, coffee, grace_hopper
    batch = torch.cat([preprocess(image, size=96) for _, image in photos])
    model = PooledFeatures(mobilenet)
    result = SimilarityMaps(model, "features.18").explain(batch[:1], batch[1:])
    with torch.no_grad():
        emb = model(batch)
    expected = F.cosine_similarity(emb[:1], emb[1:])
    assert result.query_maps.shape == (len(photos) - 1, 96, 96)
    torch.testing.assert_close(result.scores, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.query_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.reference_maps.sum((1, 2)), expected, atol=1e-5, rtol=0)
