"""CRAFT / holistic extras: implicit-differentiation concept attribution maps, recursion,
FID / OOD, the reference presets and the reference order of concept maps."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.optimize import nnls
from scipy.stats import qmc
from torch import nn

from tests.concepts._planted import FixedBank, PlantedNet, planted_bank, planted_images
from tests.conftest import hook_count
from xai.attributions.sobol import SobolAttribution
from xai.concepts import ConceptExtractor, fid, match_concepts, ood_score

TARGET = 1


@pytest.fixture(scope="module")
def fitted():
    bank = planted_bank()
    x = planted_images(bank, n=12)
    ce = ConceptExtractor(PlantedNet(), "features", n_concepts=4, patches="positions").fit(
        x, target=TARGET
    )
    return ce, x


def _nnls_codes(bank: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Reference: exact NNLS (scipy) of the image's pooled ReLU activation."""
    row = np.maximum(x, 0).mean((1, 2))
    return nnls(bank.T, row)[0]


def test_implicit_gradient_equals_finite_differences_of_resolved_nnls(fitted):
    ce, x = fitted
    bank = ce.concepts_.numpy()
    image = x[:1].clone()
    maps = ce.concept_attribution_maps(image)  # (1, K, H, W) gradient x input
    assert maps.shape == (1, 4, 4, 4) and maps.dtype == torch.float64
    base = image[0].numpy()
    u0 = _nnls_codes(bank, base)
    assert (u0 > 1e-6).sum() >= 2, "the planted image should use several concepts"
    # forward value: the solver's codes polished on the active set equal the exact NNLS
    from xai.concepts import differentiable_encode

    rows = torch.relu(image).mean((2, 3))
    torch.testing.assert_close(
        differentiable_encode(ce.factorizer_, rows)[0], torch.as_tensor(u0), atol=1e-9, rtol=0
    )
    step = 1e-6
    grad = np.zeros((4,) + base.shape)
    for idx in np.ndindex(*base.shape):
        up, down = base.copy(), base.copy()
        up[idx] += step
        down[idx] -= step
        grad[(slice(None),) + idx] = (_nnls_codes(bank, up) - _nnls_codes(bank, down)) / (2 * step)
    expected = (grad * base[None]).sum(1)  # (K, H, W)
    torch.testing.assert_close(maps[0], torch.as_tensor(expected), atol=1e-6, rtol=1e-5)


def test_grad_cam_concept_map_closed_form(fitted):
    ce, x = fitted
    bank = ce.concepts_.numpy()
    image = x[1:2]
    maps = ce.concept_attribution_maps(image, [0, 2], method="grad_cam")
    acts = np.maximum(image[0].numpy(), 0)  # (C, h, w): g is a ReLU
    u = _nnls_codes(bank, image[0].numpy())
    active = u > 1e-9
    ws = bank[active]
    jac = np.zeros((4, bank.shape[1]))
    jac[active] = np.linalg.solve(ws @ ws.T, ws)  # du/d(mean activation)
    hw = acts.shape[1] * acts.shape[2]
    for j, c in enumerate([0, 2]):
        weights = jac[c] / hw  # mean over positions of du_c/dA(position)
        expected = np.maximum((weights[:, None, None] * acts).sum(0), 0)
        torch.testing.assert_close(maps[0, j], torch.as_tensor(expected), atol=1e-9, rtol=1e-6)


def test_pca_concept_attribution_is_the_linear_projection():
    bank = planted_bank()
    x = planted_images(bank, n=12)
    ce = ConceptExtractor(
        PlantedNet(), "features", n_concepts=3, factorizer="pca", patches="positions"
    ).fit(x, target=TARGET)
    maps = ce.concept_attribution_maps(x[:2])
    v = ce.concepts_.numpy()
    xs = x[:2].numpy()
    hw = xs.shape[2] * xs.shape[3]
    expected = np.einsum("kc,bchw->bkhw", v, xs * (xs > 0)) / hw
    torch.testing.assert_close(maps, torch.as_tensor(expected), atol=1e-10, rtol=1e-8)


def test_concept_attribution_errors_and_no_side_effects(fitted):
    ce, x = fitted
    model = ce.model
    state = copy.deepcopy(model.state_dict())
    before = x.clone()
    ce.concept_attribution_maps(x[:2], [1])
    assert torch.equal(x, before)
    assert hook_count(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="out of range"):
        ce.concept_attribution_maps(x[:1], [7])
    with pytest.raises(ValueError, match="method must be"):
        ce.concept_attribution_maps(x[:1], method="saliency")
    km = ConceptExtractor(
        PlantedNet(), "features", n_concepts=3, factorizer="kmeans", patches="positions"
    ).fit(x, target=TARGET)
    with pytest.raises(ValueError, match="differentiable encoding"):
        km.concept_attribution_maps(x[:1])


def test_reference_order_of_concept_maps_matches_the_notebook_port(fitted):
    ce, x = fitted
    big = torch.nn.functional.interpolate(x[:2], size=(8, 8), mode="nearest")
    coeffs = ce.transform(big).numpy()  # (B, K, h, w)
    got = ce.concept_maps(big, percentile=90, order="threshold")
    for b in range(2):
        for k in range(coeffs.shape[1]):
            m = coeffs[b, k]
            kept = np.where(m >= np.percentile(m, 90), m, 0.0)
            ref = cv2.resize(kept, (8, 8), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(got[b, k].numpy(), ref, atol=1e-9)
    from xai.concepts import filter_maps

    torch.testing.assert_close(
        ce.concept_maps(big, percentile=90), filter_maps(ce.concept_maps(big), percentile=90)
    )
    with pytest.raises(ValueError, match="order must be"):
        ce.concept_maps(big, percentile=90, order="later")


# ------------------------------------------------------------------ recursion
_SUB = torch.zeros(4, 8, dtype=torch.float64)
for _i in range(4):
    _SUB[_i, 2 * _i : 2 * _i + 2] = 2**-0.5  # four sub-patterns with disjoint supports


class TreeNet(nn.Module):
    """early (ReLU) -> 1x1 conv mapping sub-patterns {0, 1} -> channel 0 and {2, 3} -> 1."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.ReLU()
        self.mix = nn.Conv2d(8, 2, 1, bias=False)
        self.late = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.mix.weight.zero_()
            self.mix.weight[0, :4] = 1.0
            self.mix.weight[1, 4:] = 1.0
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
            self.fc.bias.zero_()
        self.double()

    def forward(self, x):
        return self.fc(self.late(self.mix(self.early(x))).mean((2, 3)))


def test_refine_splits_a_concept_into_its_planted_sub_concepts():
    gen = torch.Generator().manual_seed(0)
    which = torch.arange(16) % 4
    scale = 0.5 + torch.rand(16, generator=gen, dtype=torch.float64)
    x = (scale[:, None] * _SUB[which])[:, :, None, None].expand(16, 8, 8, 8).contiguous()
    parent = ConceptExtractor(TreeNet(), "late", n_concepts=2, patch_size=4).fit(x, target=0)
    # the parent concept that carries channel 0 (sub-patterns 0 and 1)
    concept = int(parent.concepts_[:, 0].argmax())
    child = parent.refine(concept, "early", n_concepts=2, top_fraction=0.5)
    assert child.parent_ == (parent, concept) and child.layer == "early"
    rows = child.parent_rows_
    torch.testing.assert_close(
        rows.sort().values, parent.coefficients_[:, concept].topk(len(rows)).indices.sort().values
    )
    _, cos = match_concepts(_SUB[:2], child.concepts_)
    assert float(cos.min()) >= 0.95, cos
    _, cos_other = match_concepts(_SUB[2:], child.concepts_)
    assert float(cos_other.max()) < 0.1
    from xai.visualize import concept_tree

    fig = concept_tree(child, n_images=3)
    assert len(fig.axes) == 3 * 3
    with pytest.raises(ValueError, match="concept must be"):
        parent.refine(5, "early")
    with pytest.raises(ValueError, match="refine"):
        concept_tree(parent)


# ------------------------------------------------------------------ FID / OOD
def test_fid_equals_the_scipy_sqrtm_formula_and_the_mean_shift_closed_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(300, 6, generator=gen, dtype=torch.float64) ** 2
    b = torch.rand(200, 6, generator=gen, dtype=torch.float64) * 1.5
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = scipy.linalg.sqrtm(ca @ cb).real
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(ca + cb - 2 * root)
    assert fid(a, b) == pytest.approx(ref, rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    assert fid(a, a + shift) == pytest.approx(float((shift**2).sum()), rel=1e-9)
    with pytest.raises(ValueError, match="same C"):
        fid(a, b[:, :3])


def test_ood_score_closed_forms(fitted):
    eye = torch.eye(3, dtype=torch.float64)
    assert ood_score(eye[:2], eye[:2]) == pytest.approx(0.0, abs=1e-12)
    assert ood_score(eye[:2], 5 * eye[:2]) == pytest.approx(0.0, abs=1e-12)  # scale-free
    assert ood_score(eye[:2], eye[2:]) == pytest.approx(1.0)  # orthogonal to every real row
    diag = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    assert ood_score(eye[:2], diag) == pytest.approx(1 - 2**-0.5)
    with pytest.raises(ValueError, match="k must be"):
        ood_score(eye[:2], eye[:2], k=3)
    ce, _ = fitted  # a good extraction reconstructs in-distribution
    rec = ce.factorizer_.decode(ce.coefficients_)
    assert ood_score(ce.activations_, rec) < 0.01
    assert fid(ce.activations_, rec) < 0.05 * float(ce.activations_.var(0).sum())


# ------------------------------------------------------------------ reference presets
def _jansen_a(scores: np.ndarray, n: int, d: int) -> np.ndarray:
    """The reference codes' Jansen total index, variance of block A (ddof 1)."""
    a = scores[:n]
    c = scores[2 * n :].reshape(d, n)
    return ((a[None] - c) ** 2).sum(1) / (2 * n * a.var(ddof=1))


def _replicated(points: np.ndarray, d: int) -> np.ndarray:
    a, b = points[:, :d], points[:, d:]
    cs = []
    for i in range(d):
        c = a.copy()
        c[:, i] = b[:, i]
        cs.append(c)
    return np.concatenate([a, b, *cs])


def test_sobol_reference_preset_equals_a_port_of_the_reference_code():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        .double()
        .eval()
    )
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    grid, n = 4, 16
    got = SobolAttribution(model, grid_size=grid, n_designs=n, reference=True, upsample=False)(
        x, target=2
    )
    masks = _replicated(qmc.Sobol(2 * grid * grid, scramble=False).random(n), grid * grid)
    up = np.kron(masks.reshape(-1, grid, grid), np.ones((2, 2)))  # nearest, 8 / 4 = 2
    with torch.no_grad():
        scores = model(x * torch.as_tensor(up)[:, None])[:, 2].numpy()
    ref = _jansen_a(scores, n, grid * grid).reshape(grid, grid)
    torch.testing.assert_close(got[0], torch.as_tensor(ref), atol=1e-10, rtol=1e-10)


def test_concept_importance_reference_preset_equals_a_port_of_craft():
    bank = planted_bank()
    model = PlantedNet()
    x = planted_images(bank, n=2)
    ce = ConceptExtractor(
        model, "features", n_concepts=4, factorizer=FixedBank(bank), patches="positions"
    ).fit(x, target=TARGET)
    got = ce.local_importance(x, method="sobol", reference=True)
    u = ce.encode(x).numpy()  # (B, h, w, K)
    k = bank.shape[0]
    masks = _replicated(qmc.Halton(2 * k, scramble=False).random(32), k)
    w = model.fc.weight.detach().numpy()[TARGET]
    bias = model.fc.bias.detach().numpy()[TARGET]
    for b in range(2):
        perturbed = u[b][None] * masks[:, None, None, :]  # (M, h, w, K)
        acts = perturbed @ bank.numpy()  # (M, h, w, C)
        scores = np.maximum(acts, 0).mean((1, 2)) @ w + bias
        ref = _jansen_a(scores, 32, k)
        torch.testing.assert_close(got[b], torch.as_tensor(ref), atol=1e-10, rtol=1e-9)
    pooled = ce.local_importance(
        x, method="sobol", sampler="halton", scramble=False, variance="pooled"
    )
    assert not torch.allclose(pooled, got)  # the variance choice is really passed through
