"""Sobol attribution: estimators against closed forms and SALib, planted image ground truth,
chunking/seed invariants, perturbation formulas (blur against OpenCV) and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xai.attributions import SobolAttribution, sobol_indices
from xai.attributions.sobol import design_matrix, estimate, sample
from xai.attributions.sobol.estimators import ESTIMATORS, split_outputs
from xai.attributions.sobol.perturbations import Amplitude, Blur, Inpainting, box_blur

ESTIMATOR_NAMES = ["jansen", "homma", "janon", "glen_isaacs"]


# closed forms ------------------------------------------------------------------------------
def ishigami(x: torch.Tensor, a: float = 7.0, b: float = 0.1) -> torch.Tensor:
    """Ishigami function of (n, 3) points in [0, 1]^3, mapped to [-pi, pi]^3."""
    x = 2 * math.pi * x - math.pi
    return torch.sin(x[:, 0]) + a * torch.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * torch.sin(x[:, 0])


def ishigami_indices(a: float = 7.0, b: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytic first- and total-order indices (Ishigami & Homma 1990; Sobol' & Levitan 1999)."""
    pi = math.pi
    v1 = 0.5 * (1 + b * pi**4 / 5) ** 2
    v2 = a**2 / 8
    v13 = b**2 * pi**8 * (1 / 18 - 1 / 50)
    v = v1 + v2 + v13
    first = torch.tensor([v1 / v, v2 / v, 0.0], dtype=torch.float64)
    total = torch.tensor([(v1 + v13) / v, v2 / v, v13 / v], dtype=torch.float64)
    return first, total


def test_ishigami_closed_form_matches_spec_numbers():
    first, total = ishigami_indices()
    torch.testing.assert_close(
        first, torch.tensor([0.3139, 0.4424, 0.0], dtype=torch.float64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        total, torch.tensor([0.5576, 0.4424, 0.2437], dtype=torch.float64), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("estimator", ESTIMATOR_NAMES)
def test_ishigami_indices_match_closed_form(estimator):
    # N = 2^14 scrambled Sobol points (82k cheap evaluations). Over 20 seeds the worst
    # absolute error of any index was 2.5e-3 (first order) and 1.3e-3 (total order) for every
    # estimator, while plain Monte Carlo at the same N has a mean error of 1.4e-2 (its CLT
    # standard error); 1e-2 is 4x the worst randomized-QMC error seen.
    n = 2**14
    first, total = ishigami_indices()
    a, b = sample(3, n, seed=0)
    indices = estimate(ishigami(design_matrix(a, b)), n, 3, estimator=estimator)
    torch.testing.assert_close(indices.first, first, atol=1e-2, rtol=0)
    torch.testing.assert_close(indices.total, total, atol=1e-2, rtol=0)


@pytest.mark.parametrize("estimator", ESTIMATOR_NAMES)
def test_additive_function_indices_match_closed_form(estimator):
    # f = sum c_i x_i + 10 (the shift checks the centering): S_i = S_Ti = c_i^2 / sum c^2.
    # Scrambled Sobol nets integrate linear functions almost exactly: over 20 seeds at
    # N = 2^12 the worst error was 9.3e-4 (typical 1e-5); tolerance 5e-3.
    n = 2**12
    c = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    truth = c**2 / (c**2).sum()
    a, b = sample(4, n, seed=1)
    indices = estimate(design_matrix(a, b) @ c + 10.0, n, 4, estimator=estimator)
    torch.testing.assert_close(indices.first, truth, atol=5e-3, rtol=0)
    torch.testing.assert_close(indices.total, truth, atol=5e-3, rtol=0)


def test_pure_interaction_has_zero_first_and_full_total_order():
    # f = (x1 - 1/2)(x2 - 1/2), x3 unused: S = (0, 0, 0), S_T = (1, 1, 0) analytically.
    n = 2**12
    a, b = sample(3, n, seed=2)
    x = design_matrix(a, b)
    indices = estimate((x[:, 0] - 0.5) * (x[:, 1] - 0.5), n, 3)
    torch.testing.assert_close(
        indices.first, torch.zeros(3, dtype=torch.float64), atol=2e-2, rtol=0
    )
    torch.testing.assert_close(
        indices.total, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), atol=2e-2, rtol=0
    )


# SALib -------------------------------------------------------------------------------------
def test_same_saltelli_samples_give_salib_indices():
    """SALib's sampler and analyzer against our estimators on the same evaluations.

    SALib's rows are interleaved per design j: [A_j, AB_1j .. AB_dj, B_j]; its analyzer
    standardizes Y by the grand mean/std and uses Jansen (ST) and Saltelli 2010 (S1) with the
    pooled A/B variance (ddof 0), exactly our ``jansen`` total and ``homma`` first order with
    ``variance="pooled"``. Same formulas on the same numbers: agreement to float64 rounding.
    """
    from SALib.analyze import sobol as salib_analyze
    from SALib.sample import sobol as salib_sample

    d, n = 3, 2**10
    problem = {"num_vars": d, "names": ["x1", "x2", "x3"], "bounds": [[0.0, 1.0]] * d}
    x = salib_sample.sample(problem, n, calc_second_order=False, seed=3)
    rows = torch.from_numpy(x).view(n, d + 2, d)
    a, b = rows[:, 0], rows[:, d + 1]
    # our design from SALib's A and B reproduces SALib's AB matrices
    torch.testing.assert_close(
        design_matrix(a, b)[2 * n :].view(d, n, d),
        rows[:, 1 : d + 1].transpose(0, 1),
        rtol=0,
        atol=0,
    )
    y = ishigami(torch.from_numpy(x))
    ref = salib_analyze.analyze(
        problem, y.numpy(), calc_second_order=False, num_resamples=2, seed=1
    )
    per_design = y.view(n, d + 2)
    f_a, f_b, f_c = per_design[:, 0], per_design[:, d + 1], per_design[:, 1 : d + 1].T
    ours_total = ESTIMATORS["jansen"](f_a, f_b, f_c).total
    ours_first = ESTIMATORS["homma"](f_a, f_b, f_c).first
    torch.testing.assert_close(ours_total, torch.from_numpy(ref["ST"]), rtol=0, atol=1e-10)
    torch.testing.assert_close(ours_first, torch.from_numpy(ref["S1"]), rtol=0, atol=1e-10)


def test_reference_code_formulas_replicated():
    """Literal NumPy replicas of the reference codes' Jansen (variance of A, ddof 1) and
    Glen-Isaacs (1 - Pearson correlation) total-order estimators on identical arrays."""
    rng = np.random.default_rng(0)
    n, d = 64, 5
    f_a, f_b, f_c = rng.normal(size=n), rng.normal(size=n), rng.normal(size=(d, n)) + 3.0
    jansen_ref = ((f_a[None] - f_c) ** 2).sum(1) / (2 * n * f_a.var(ddof=1))
    glen_ref = np.array([1 - np.corrcoef(f_a, f_c[i])[0, 1] for i in range(d)])
    t = [torch.from_numpy(v) for v in (f_a, f_b, f_c)]
    torch.testing.assert_close(
        ESTIMATORS["jansen"](*t, variance="a").total,
        torch.from_numpy(jansen_ref),
        rtol=1e-12,
        atol=0,
    )
    torch.testing.assert_close(
        ESTIMATORS["glen_isaacs"](*t).total, torch.from_numpy(glen_ref), rtol=1e-12, atol=1e-12
    )
    assert ESTIMATORS["saltelli"] is ESTIMATORS["homma"]


def test_estimators_batch_over_leading_dims_and_handle_constants():
    n, d = 16, 3
    a, b = sample(d, n, seed=4)
    x = design_matrix(a, b)
    outputs = torch.stack([x[:, 0] + 0.1 * x[:, 2], torch.full((x.shape[0],), 2.5)])  # (2, M)
    for name in ESTIMATOR_NAMES:
        both = estimate(outputs, n, d, estimator=name)
        one = estimate(outputs[0], n, d, estimator=name)
        torch.testing.assert_close(both.total[0], one.total)
        assert torch.equal(both.total[1], torch.zeros(d, dtype=torch.float64)), name
        assert torch.equal(both.first[1], torch.zeros(d, dtype=torch.float64)), name
    f_a, f_b, f_c = split_outputs(outputs, n, d)
    assert f_a.shape == (2, n) and f_b.shape == (2, n) and f_c.shape == (2, d, n)


def test_sobol_indices_helper_chunks_and_multiple_outputs():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return torch.stack([x[:, 0] + 2 * x[:, 1], x[:, 1]], dim=1)  # (n, 2)

    chunked = sobol_indices(fn, d=3, n_designs=256, batch_size=100, dtype=torch.float64, seed=5)
    assert max(calls) <= 100 and sum(calls) == 256 * 5
    whole = sobol_indices(fn, d=3, n_designs=256, dtype=torch.float64, seed=5)
    torch.testing.assert_close(chunked.total, whole.total, rtol=0, atol=0)
    assert chunked.total.shape == (2, 3)
    expected = torch.tensor([[0.2, 0.8, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(chunked.total, expected, atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="one row per design row"):
        sobol_indices(lambda x: x.sum(), d=2, n_designs=4)


# samplers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["sobol", "halton", "latin_hypercube", "random"])
def test_samplers_design_layout_and_determinism(sampler):
    a, b = sample(4, 8, sampler=sampler, seed=3)
    assert a.shape == b.shape == (8, 4) and 0 <= float(a.min()) and float(b.max()) <= 1
    a2, b2 = sample(4, 8, sampler=sampler, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a, sample(4, 8, sampler=sampler, seed=4)[0])
    design = design_matrix(a, b)
    assert design.shape == (8 * 6, 4)
    assert torch.equal(design[:8], a) and torch.equal(design[8:16], b)
    for i in range(4):
        c = design[(2 + i) * 8 : (3 + i) * 8]
        assert torch.equal(c[:, i], b[:, i])
        others = [j for j in range(4) if j != i]
        assert torch.equal(c[:, others], a[:, others])


def test_unscrambled_sobol_starts_at_zero_like_the_reference_codes():
    a, b = sample(3, 4, scramble=False)
    assert torch.equal(a[0], torch.zeros(3)) and torch.equal(b[0], torch.zeros(3))


# perturbations -----------------------------------------------------------------------------
def test_box_blur_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    img = torch.rand(1, 3, 23, 31, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for k in (10, 5):
        ref = cv2.blur(img[0].permute(1, 2, 0).numpy(), (k, k))  # BORDER_REFLECT_101
        ours = box_blur(img, k)[0].permute(1, 2, 0)
        torch.testing.assert_close(ours, torch.from_numpy(ref), rtol=0, atol=1e-12)


def test_perturbation_formulas():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 12, generator=gen, dtype=torch.float64)
    m = torch.rand(2, 1, 12, 12, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(Inpainting()(x, m), x * m)
    torch.testing.assert_close(Inpainting(0.5)(x, m), x * m + (1 - m) * 0.5)
    mean = Inpainting("mean")
    torch.testing.assert_close(
        mean(x, m, mean.reference(x)), x * m + (1 - m) * x.mean((2, 3), keepdim=True)
    )
    blur = Blur(4)
    torch.testing.assert_close(blur(x, m, blur.reference(x)), x * m + (1 - m) * box_blur(x, 4))
    torch.testing.assert_close(Amplitude()(x, m), x * (m - 0.5))
    torch.testing.assert_close(Amplitude(2.0, mode="additive")(x, m), x + (m - 0.5) * 2.0)
    ones = torch.ones_like(m)
    for p in (Inpainting(), Blur(3)):  # a full mask leaves the image unchanged
        torch.testing.assert_close(p(x, ones, p.reference(x)), x)


# images ------------------------------------------------------------------------------------
class RegionScore(nn.Module):
    """Logit 0 = (mean of the image over rows/cols [r0, r1) x [c0, c1)) ** power, logit 1 = 0."""

    def __init__(self, rows: tuple[int, int], cols: tuple[int, int], power: int = 1) -> None:
        super().__init__()
        self.rows, self.cols, self.power = rows, cols, power
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        region = x[:, :, self.rows[0] : self.rows[1], self.cols[0] : self.cols[1]]
        score = region.mean((1, 2, 3)) ** self.power
        return torch.stack([score, torch.zeros_like(score)], dim=1)


@pytest.fixture
def image():
    return 0.5 + torch.rand(
        1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )


def test_single_cell_model_gets_all_the_total_index(image):
    # Grid 4 on 32 px: cell (1, 2) is rows 8..16, cols 16..24. With inpainting towards 0 and
    # nearest masks the score is M_cell * const: F(C_j) == F(A) exactly for every other cell,
    # so their indices are exactly 0. The cell's Jansen index is then
    # mean((A_i - B_i)^2) / (2 Var[A_i; B_i]), a property of the design alone: 1 in
    # expectation, but at N=32 some column pairs (i, d + i) of a 32-point Sobol net are strongly
    # correlated (0.25..1.75 across cells for seed 0); at N=256 every cell is within 1.5e-3 of 1.
    model = RegionScore((8, 16), (16, 24))
    others = torch.ones(4, 4, dtype=torch.bool)
    others[1, 2] = False
    low = SobolAttribution(model, grid_size=4, n_designs=32, upsample=False)(image, target=0)
    assert low.shape == (1, 4, 4)
    assert float(low[0][others].abs().max()) < 1e-12 and float(low[0, 1, 2]) > 0.2
    many = SobolAttribution(model, grid_size=4, n_designs=256, batch_size=512, upsample=False)
    assert float(many(image, target=0)[0][others].abs().max()) < 1e-12
    assert abs(float(many(image, target=0)[0, 1, 2]) - 1) < 1e-2
    first = SobolAttribution(
        model, grid_size=4, n_designs=256, batch_size=512, order="first", upsample=False
    )(image, target=0)
    # first order is 1 - (...) / V: exact zeros up to cancellation
    assert abs(float(first[0, 1, 2]) - 1) < 1e-2 and float(first[0][others].abs().max()) < 1e-9


@pytest.mark.parametrize("perturbation", ["inpainting", "blur"])
def test_map_is_maximal_on_the_region_the_model_reads(image, perturbation):
    # A nonlinear function of a 2x2-cell region (rows 16..32, cols 0..16 with grid 4): its cells
    # get positive indices, every other cell exactly 0 (F(C_j) == F(A) for them).
    model = RegionScore((16, 32), (0, 16), power=3)
    kw = {"kernel_size": 5} if perturbation == "blur" else None
    method = SobolAttribution(model, grid_size=4, perturbation=perturbation, perturbation_kwargs=kw)
    maps = method(image, target=0)
    assert maps.shape == (1, 32, 32)
    peak = int(maps[0].argmax())
    assert peak // 32 >= 16 and peak % 32 < 16
    # bicubic taps reach 2 cells: pixels of the far corner only see zero cells
    assert float(maps[0, :4, 28:].abs().max()) < 1e-12
    method.upsample = False
    low = method(image, target=0)[0]
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[2:, :2] = True
    assert float(low[region].min()) > 1e-3 and float(low[~region].abs().max()) < 1e-12


def test_chunked_equals_one_batch_and_bounded_batches(image):
    model = RegionScore((0, 16), (0, 16), power=2)
    images = torch.cat([image, image.flip(-1)])
    ref = SobolAttribution(model, grid_size=4, n_designs=8, batch_size=None)(images, target=0)
    model.calls.clear()
    chunked = SobolAttribution(model, grid_size=4, n_designs=8, batch_size=7)(images, target=0)
    torch.testing.assert_close(chunked, ref, rtol=1e-12, atol=1e-14)
    assert max(model.calls) <= 7 and sum(model.calls) == 2 * 8 * (16 + 2)
    model.calls.clear()
    SobolAttribution(model, grid_size=4, n_designs=8, batch_size=64)(images, target=None)
    assert sum(model.calls) == 2 + 2 * 8 * 18  # one clean pass fixes the argmax targets


def test_same_seed_same_map_other_seed_other_map(image):
    model = RegionScore((0, 16), (0, 32), power=3)
    first = SobolAttribution(model, grid_size=4, n_designs=8, seed=1)(image, target=0)
    again = SobolAttribution(model, grid_size=4, n_designs=8, seed=1)(image, target=0)
    other = SobolAttribution(model, grid_size=4, n_designs=8, seed=2)(image, target=0)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_options_run_and_callable_perturbation(image):
    model = RegionScore((0, 16), (0, 16))
    for sampler in ("halton", "latin_hypercube", "random"):
        maps = SobolAttribution(model, grid_size=4, n_designs=12, sampler=sampler)(image, 0)
        assert maps.shape == (1, 32, 32) and torch.isfinite(maps).all()
    for estimator in ESTIMATOR_NAMES:
        maps = SobolAttribution(
            model,
            grid_size=4,
            n_designs=8,
            estimator=estimator,
            mask_interpolation="bilinear",
            map_interpolation="bilinear",
        )
        assert torch.isfinite(maps(image, 0)).all()
    # variance="a" (the reference codes' V) rescales each image's map by one factor
    pooled = SobolAttribution(model, grid_size=4, n_designs=8, upsample=False)(image, 0)
    only_a = SobolAttribution(
        model, grid_size=4, n_designs=8, upsample=False, variance="a", progress=True
    )(image, 0)
    ratio = only_a[pooled > 1e-9] / pooled[pooled > 1e-9]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))
    seen = []

    def ignore_mask(x, m):
        seen.append(m.shape)
        return x.clone()

    maps = SobolAttribution(model, grid_size=4, n_designs=4, perturbation=ignore_mask)(image, 0)
    assert seen[0][1:] == (1, 32, 32)
    assert torch.equal(maps, torch.zeros_like(maps))  # constant scores: zeros, no NaN


# errors ------------------------------------------------------------------------------------
def test_errors(image):
    model = RegionScore((0, 16), (0, 16))
    with pytest.raises(ValueError, match="larger than the image"):
        SobolAttribution(model, grid_size=40)(image, 0)
    with pytest.raises(ValueError, match="power of two.*32 or 64"):
        SobolAttribution(model, n_designs=48)
    SobolAttribution(model, n_designs=48, sampler="halton")  # any N without Sobol
    with pytest.raises(ValueError, match="unknown perturbation 'noise'.*'inpainting', 'blur'"):
        SobolAttribution(model, perturbation="noise")
    with pytest.raises(ValueError, match="unknown estimator.*'jansen'"):
        SobolAttribution(model, estimator="sobol")
    with pytest.raises(ValueError, match="unknown sampler.*'latin_hypercube'"):
        SobolAttribution(model, sampler="lhs")
    with pytest.raises(ValueError, match="order must be"):
        SobolAttribution(model, order="second")
    with pytest.raises(ValueError, match="grid_size must be a positive integer"):
        SobolAttribution(model, grid_size=0)
    with pytest.raises(ValueError, match="mask_interpolation"):
        SobolAttribution(model, mask_interpolation="area")
    with pytest.raises(ValueError, match="kernel_size=10 is larger"):
        SobolAttribution(model, perturbation="blur")(image[..., :8, :8], 0)
    with pytest.raises(ValueError, match="shaped like its input"):
        SobolAttribution(model, grid_size=2, n_designs=2, perturbation=lambda x, m: m)(image, 0)


@pytest.mark.real_model
def test_real_mobilenet_map_is_finite(mobilenet):
    from xai.data import sample_batch

    x = sample_batch(["chelsea"], size=64)[0]
    maps = SobolAttribution(mobilenet, grid_size=2, n_designs=4, batch_size=24)(x)
    assert maps.shape == (1, 64, 64) and torch.isfinite(maps).all()
    assert float(maps.max()) > 0
