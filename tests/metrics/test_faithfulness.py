"""Faithfulness metrics: closed forms on linear models, Quantus 0.6 / torchvision references,
batching, determinism and errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from tests.metrics._nets import Linear, gray
from xai.adapter import ProbabilityTarget
from xai.metrics import (
    ROAD,
    Deletion,
    FaithfulnessCorrelation,
    Insertion,
    MuFidelity,
    PixelFlipping,
    RegionPerturbation,
)
from xai.metrics._perturb import gaussian_blur, noisy_linear_imputation, resolve_baseline

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def four_pixel_model():
    """f(x) = 4 x_00 + 3 x_01 + 2 x_10 + 1 x_11 (one channel), x = 1: contributions 4, 3, 2, 1."""
    w = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=F64).view(1, 1, 2, 2)
    return Linear(w), torch.ones(1, 1, 2, 2, dtype=F64)


@pytest.fixture
def linear():
    gen = _gen(0)
    w = torch.randn(2, 3, 12, 12, generator=gen, dtype=F64)
    b = torch.tensor([0.5, -0.25], dtype=F64)
    x = torch.randn(3, 3, 12, 12, generator=gen, dtype=F64)
    return Linear(w, b), x


# --- closed forms ----------------------------------------------------------------------------


def test_deletion_insertion_four_pixel_closed_form():
    model, x = four_pixel_model()
    perfect = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]], dtype=F64)
    res = Deletion(n_steps=4)(model, x, perfect, target=0)
    torch.testing.assert_close(res.curve, torch.tensor([[10.0, 6, 3, 1, 0]], dtype=F64))
    torch.testing.assert_close(res.steps, torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=F64))
    assert res.scores.item() == pytest.approx(3.75)
    assert Deletion(n_steps=4)(model, x, -perfect, target=0).scores.item() == pytest.approx(6.25)
    ins = Insertion(n_steps=4)(model, x, perfect, target=0)
    torch.testing.assert_close(ins.curve, torch.tensor([[0.0, 4, 7, 9, 10]], dtype=F64))
    assert ins.scores.item() == pytest.approx(6.25)
    # The mean over every order is the expected AUC of a random ranking: 5.0.
    aucs = [
        Deletion(n_steps=4)(model, x, torch.tensor(p, dtype=F64).view(1, 2, 2), 0).scores.item()
        for p in itertools.permutations([4.0, 3.0, 2.0, 1.0])
    ]
    assert np.mean(aucs) == pytest.approx(5.0)
    assert min(aucs) == pytest.approx(3.75) and max(aucs) == pytest.approx(6.25)


def _expected_curves(model, x, contributions, counts, cls):
    """Analytic deletion/insertion curves of a linear model with baseline 0."""
    flat = contributions.flatten(1)
    ordered = torch.sort(flat, dim=1, descending=True, stable=True).values
    cum = torch.cat([torch.zeros(len(x), 1, dtype=F64), ordered.cumsum(1)], 1)[:, counts]
    full = model(x)[:, cls].detach()
    bias = model.bias[cls].detach()
    return full[:, None] - cum, bias + cum


@pytest.mark.parametrize("n_steps", [10, 7, 144, 1000])
def test_linear_model_curves_are_analytic(linear, n_steps):
    model, x = linear
    contributions = (model.weight[1] * x).sum(1).detach()  # weight x input, summed over channels
    n = 144
    t = min(n_steps, n)
    counts = torch.linspace(0, n, t + 1, dtype=F64).round().long()
    dele, ins = _expected_curves(model, x, contributions, counts, 1)
    res = Deletion(n_steps=n_steps)(model, x, contributions, target=1)
    torch.testing.assert_close(res.curve, dele)
    torch.testing.assert_close(res.steps, counts.to(F64) / n)
    torch.testing.assert_close(res.scores, torch.trapezoid(dele, counts.to(F64) / n, dim=1))
    res_i = Insertion(n_steps=n_steps)(model, x, contributions, target=1)
    torch.testing.assert_close(res_i.curve, ins)
    # deletion + insertion of the same order = f(x) + bias at every step (baseline scores bias)
    torch.testing.assert_close(
        res.curve + res_i.curve, (model(x)[:, 1] + model.bias[1]).detach()[:, None].expand_as(dele)
    )


def test_channel_attributions_are_summed_and_numpy_accepted(linear):
    model, x = linear
    per_channel = (model.weight[0] * x).detach()  # (B, C, H, W), captum-style
    a = Deletion()(model, x, per_channel, target=0)
    b = Deletion()(model, x, per_channel.sum(1).numpy(), target=0)
    torch.testing.assert_close(a.curve, b.curve)


def test_patch_granularity_is_analytic(linear):
    model, x = linear
    contributions = (model.weight[0] * x).sum(1).detach()
    patches = contributions.view(3, 3, 4, 3, 4).sum((2, 4))  # 4 px patches on a 12 px image
    counts = torch.arange(10)
    dele, _ = _expected_curves(model, x, patches, counts, 0)
    res = Deletion(n_steps=9, patch_size=4)(model, x, contributions, target=0)
    torch.testing.assert_close(res.curve, dele)


def test_perfect_beats_random_beats_reversed(linear):
    model, x = linear
    exact = (model.weight[0] * x).sum(1).detach()
    rand = torch.randn(exact.shape, generator=_gen(5), dtype=F64)
    metric = Deletion(n_steps=20)
    best, mid, worst = (metric(model, x, m, target=0).scores for m in (exact, rand, -exact))
    assert bool((best < mid).all() and (mid < worst).all())
    ins = Insertion(n_steps=20)
    best, mid, worst = (ins(model, x, m, target=0).scores for m in (exact, rand, -exact))
    assert bool((best > mid).all() and (mid > worst).all())


def test_ties_broken_by_lower_pixel_index():
    model, x = four_pixel_model()
    constant = torch.zeros(1, 2, 2, dtype=F64)  # all tied: row-major order = 4, 3, 2, 1
    res = Deletion(n_steps=4)(model, x, constant, target=0)
    torch.testing.assert_close(res.curve, torch.tensor([[10.0, 6, 3, 1, 0]], dtype=F64))
    lerf = PixelFlipping(baseline=0.0, order="lerf")(model, x, constant, target=0)
    torch.testing.assert_close(lerf.curve, torch.tensor([[10.0, 6, 3, 1, 0]], dtype=F64))


@pytest.mark.parametrize("correlation", ["pearson", "spearman"])
@pytest.mark.parametrize("grid_size", [4, None])
def test_mu_fidelity_exact_explanation_scores_one(linear, correlation, grid_size):
    model, x = linear
    exact = (model.weight[0] * x).sum(1).detach()
    metric = MuFidelity(grid_size=grid_size, n_samples=30, correlation=correlation)
    torch.testing.assert_close(metric(model, x, exact, 0).scores, torch.ones(3, dtype=F64))
    torch.testing.assert_close(metric(model, x, -exact, 0).scores, -torch.ones(3, dtype=F64))


def test_mu_fidelity_replica(linear):
    """Drops of a linear model are the summed contributions of the cells: the replica draws
    the same subsets and correlates them with the independently computed drops."""
    model, x = linear
    maps = torch.randn(3, 12, 12, generator=_gen(3), dtype=F64)
    metric = MuFidelity(grid_size=3, n_samples=25, subset_fraction=0.3, seed=7)
    got = metric(model, x, maps, 0).scores
    gen = torch.Generator().manual_seed(7)
    contrib = (model.weight[0] * x).sum(1).detach()
    cell = lambda t: t.view(3, 3, 4, 3, 4).sum((2, 4)).flatten(1)  # noqa: E731
    for b in range(3):
        subsets = torch.rand(25, 9, generator=gen).argsort(1)[:, :3]
        rel = cell(maps)[b][subsets].sum(1)
        drop = cell(contrib)[b][subsets].sum(1)
        ref = np.corrcoef(rel.numpy(), drop.numpy())[0, 1]
        assert got[b].item() == pytest.approx(ref, abs=1e-10)


# --- references ------------------------------------------------------------------------------


def test_blur_baseline_matches_torchvision(linear):
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    _, x = linear
    torch.testing.assert_close(gaussian_blur(x), tv_blur(x, [11, 11], [5.0, 5.0]))
    model, _ = linear
    res = Insertion(baseline="blur")(model, x, torch.randn(3, 12, 12, dtype=F64), target=0)
    blurred = tv_blur(x, [11, 11], [5.0, 5.0])
    torch.testing.assert_close(res.curve[:, 0], model(blurred)[:, 0].detach())
    torch.testing.assert_close(res.curve[:, -1], model(x)[:, 0].detach())


def test_baselines():
    x = torch.randn(2, 3, 4, 4, generator=_gen(1), dtype=F64)
    mean = x.mean((2, 3), keepdim=True).expand_as(x)
    torch.testing.assert_close(resolve_baseline("mean", x), mean)
    torch.testing.assert_close(resolve_baseline("min", x)[:, 0, 0, 0], x.flatten(1).min(1).values)
    torch.testing.assert_close(resolve_baseline(0.5, x), torch.full_like(x, 0.5))
    torch.testing.assert_close(resolve_baseline(lambda t: t * 0, x), torch.zeros_like(x))


def _quantus_inputs(seed=0, batch=3, size=16):
    gen = _gen(seed)
    x = torch.rand(batch, 1, size, size, generator=gen)
    a = torch.randn(batch, 1, size, size, generator=gen)  # continuous: no ties
    return x, a


def test_pixel_flipping_matches_quantus():
    quantus = pytest.importorskip("quantus")
    model = gray()
    x, a = _quantus_inputs()
    y = model(x).argmax(1)
    ref = quantus.PixelFlipping(
        features_in_step=32,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=a.numpy(),
        device="cpu",
        softmax=False,
    )
    ours = PixelFlipping(32, baseline=0.0)(model, x, a, target=y)
    # Quantus' curve omits the unperturbed point; float32 model, same inputs: 1e-5.
    np.testing.assert_allclose(ours.curve[:, 1:].numpy(), np.asarray(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_matches_quantus(order):
    quantus = pytest.importorskip("quantus")
    model = gray(1)
    x, a = _quantus_inputs(1)
    y = model(x).argmax(1)
    ref = quantus.RegionPerturbation(
        patch_size=4,
        regions_evaluation=10,
        order=order,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=a.numpy(),
        device="cpu",
        softmax=False,
    )
    ours = RegionPerturbation(4, n_regions=10, baseline=0.0, order=order)(model, x, a, target=y)
    np.testing.assert_allclose(ours.curve[:, 1:].numpy(), np.asarray(ref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.scores, ours.curve.mean(1))
    assert ours.curve[:, 0].abs().max() == 0


def test_faithfulness_correlation_matches_quantus_on_the_same_subsets(monkeypatch):
    """Quantus draws subsets with np.random; we record them and hand the same ones to ours."""
    quantus = pytest.importorskip("quantus")
    from quantus.functions.perturb_func import batch_baseline_replacement_by_indices

    model = gray(2)
    x, a = _quantus_inputs(2)
    y = model(x).argmax(1)
    drawn = []

    def recording(arr, indices, **kw):
        drawn.append(np.asarray(indices).copy())
        return batch_baseline_replacement_by_indices(arr, indices, **kw)

    ref = quantus.FaithfulnessCorrelation(
        nr_runs=20,
        subset_size=30,
        perturb_baseline=0.0,
        perturb_func=recording,
        normalise=False,
        abs=False,
        return_aggregate=False,
        disable_warnings=True,
        display_progressbar=False,
    )(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=a.numpy(),
        device="cpu",
        softmax=False,
    )
    subsets = torch.as_tensor(np.stack(drawn, 1))  # (B, runs, size)
    metric = FaithfulnessCorrelation(subset_size=30, n_samples=20, baseline=0.0)
    monkeypatch.setattr(metric, "_draw", lambda gen, batch, n, size: subsets)
    ours = metric(model, x, a, target=y)
    # Pearson of float32 predictions: agreement to 1e-4.
    np.testing.assert_allclose(ours.scores.numpy(), np.asarray(ref), atol=1e-4)


def test_road_imputation_matches_quantus():
    pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation as q_impute

    gen = _gen(4)
    image = torch.rand(3, 10, 12, generator=gen, dtype=F64)
    removed = torch.rand(10, 12, generator=gen) < 0.6
    removed[0, 0] = removed[9, 11] = True  # corners: border renormalization
    idx = np.flatnonzero(removed.numpy().ravel())
    ref = q_impute(image.numpy().copy(), idx, noise=0.0)
    ours = noisy_linear_imputation(image, removed, 0.0, None)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
    # each imputed pixel is the weighted mean of its neighbours
    assert torch.equal(ours[:, ~removed], image[:, ~removed])


def test_road_curve_uses_imputed_inputs(linear):
    model, x = linear
    maps = (model.weight[0] * x).sum(1).detach()
    res = ROAD(fractions=[0.25, 0.5], noise=0.0)(model, x, maps, target=0)
    order = torch.sort(maps.flatten(1), dim=1, descending=True, stable=True).indices
    for b in range(3):
        removed = torch.zeros(144, dtype=torch.bool)
        removed[order[b, :36]] = True
        imputed = noisy_linear_imputation(x[b], removed.view(12, 12), 0.0, None)
        assert res.curve[b, 0].item() == pytest.approx(model(imputed[None])[0, 0].item())
    acc = ROAD(fractions=[0.1], accuracy=True)(model, x, maps, target=None)
    assert set(acc.curve.flatten().tolist()) <= {0.0, 1.0}


# --- engine: batching, determinism, targets ----------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [
        Deletion(n_steps=5),
        Insertion(n_steps=5, baseline="blur", patch_size=3),
        PixelFlipping(16),
        RegionPerturbation(4, n_regions=5, order="difference"),
        ROAD(fractions=[0.2, 0.6]),
        MuFidelity(n_samples=12, seed=3),
        FaithfulnessCorrelation(subset_size=20, n_samples=12, seed=3),
    ],
    ids=lambda m: type(m).__name__,
)
def test_batch_size_and_seed_do_not_change_results(metric, linear):
    model, x = linear
    maps = torch.randn(3, 12, 12, generator=_gen(9), dtype=F64)
    target = ProbabilityTarget([0, 1, 0])
    full = metric(model, x, maps, target)
    metric.batch_size = 1
    one = metric(model, x, maps, target)
    metric.batch_size = 7
    seven = metric(model, x, maps, target)
    metric.batch_size = "auto"
    auto = metric(model, x, maps, target)
    metric.batch_size = None
    for other in (one, seven, auto):
        torch.testing.assert_close(full.scores, other.scores)
        if full.curve is not None:
            torch.testing.assert_close(full.curve, other.curve)
    # per-sample targets: the batch equals its samples one by one
    for b in range(3):
        single = metric(model, x[b : b + 1], maps[b : b + 1], ProbabilityTarget([[0, 1, 0][b]]))
        if not hasattr(metric, "seed"):
            torch.testing.assert_close(single.scores, full.scores[b : b + 1])


def test_seed_changes_and_fixes_random_subsets(linear):
    model, x = linear
    maps = torch.randn(3, 12, 12, generator=_gen(9), dtype=F64)
    a = MuFidelity(n_samples=10, seed=1)(model, x, maps, 0).scores
    b = MuFidelity(n_samples=10, seed=1)(model, x, maps, 0).scores
    c = MuFidelity(n_samples=10, seed=2)(model, x, maps, 0).scores
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_argmax_target_frozen_on_clean_input(linear):
    model, x = linear
    maps = torch.randn(3, 12, 12, generator=_gen(9), dtype=F64)
    pred = model(x).argmax(1)
    torch.testing.assert_close(
        Deletion()(model, x, maps).curve, Deletion()(model, x, maps, target=pred).curve
    )


def test_model_and_inputs_untouched(linear):
    model, x = linear
    model.train()
    x0 = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    Deletion(progress=True)(model, x, torch.randn(3, 12, 12, dtype=F64), 0)
    assert model.training and torch.equal(x, x0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_progress_bar_runs(linear, capsys):
    model, x = linear
    MuFidelity(n_samples=4, progress=True, batch_size=2)(model, x, torch.randn(3, 12, 12), 0)


# --- errors ----------------------------------------------------------------------------------


def test_shape_mismatch_is_an_error(linear):
    model, x = linear
    with pytest.raises(ValueError, match=r"expected \(3, 12, 12\)"):
        Deletion()(model, x, torch.zeros(3, 6, 6), 0)
    with pytest.raises(ValueError, match="do not match inputs"):
        Deletion()(model, x, torch.zeros(2, 12, 12), 0)
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        Deletion()(model, x, [[0.0]], 0)


def test_unknown_baseline_and_bad_options():
    with pytest.raises(ValueError, match="unknown baseline 'black'"):
        Deletion(baseline="black")
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        Deletion(n_steps=0)
    with pytest.raises(ValueError, match="order must be"):
        PixelFlipping(order="random")
    with pytest.raises(ValueError, match="subset_fraction"):
        MuFidelity(subset_fraction=1.5)
    with pytest.raises(ValueError, match="each fraction"):
        ROAD(fractions=[1.0])
    with pytest.raises(ValueError, match="correlation"):
        MuFidelity(correlation="kendall")


def test_bad_target_is_an_error(linear):
    model, x = linear
    with pytest.raises(ValueError, match="out of range"):
        Deletion()(model, x, torch.zeros(3, 12, 12), target=5)
    with pytest.raises(ValueError, match="targets for a batch of 3"):
        Deletion()(model, x, torch.zeros(3, 12, 12), target=[0, 1])


def test_baseline_tensor_must_broadcast(linear):
    model, x = linear
    with pytest.raises(ValueError, match="cannot be broadcast"):
        Deletion(baseline=torch.zeros(5, 5))(model, x, torch.zeros(3, 12, 12), 0)
