"""ConceptExtractor: planted concepts, closed-form importance of a linear head, errors, state."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.concepts._planted import FixedBank, PlantedNet, planted_bank, planted_images
from tests.concepts.test_split import SkipAround
from tests.conftest import hook_count
from xai.attributions.sobol import SobolAttribution
from xai.concepts import (
    ConceptExtractor,
    c_deletion,
    c_insertion,
    c_mufidelity,
    match_concepts,
    relative_reconstruction_error,
)

TARGET = 1


def _closed_form(model: PlantedNet, coefficients: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """c_k = mean over positions of u_k times (W_k . w_target): F(m) = sum_k m_k c_k + b."""
    per_concept = bank @ model.fc.weight[TARGET].detach()
    return coefficients.mean((1, 2)) * per_concept


def test_nmf_recovers_planted_concepts():
    bank = planted_bank()
    x = planted_images(bank)
    ce = ConceptExtractor(PlantedNet(), "features", n_concepts=4, patches="positions").fit(x)
    _, cos = match_concepts(bank, ce.concepts_)
    assert float(cos.min()) >= 0.95
    err = relative_reconstruction_error(ce.activations_, ce.coefficients_, ce.concepts_)
    assert err < 0.05
    assert ce.transform(x).shape == (24, 4, 4, 4)


def test_importance_of_a_linear_head_equals_the_closed_form():
    bank = planted_bank()
    model = PlantedNet()
    x = planted_images(bank, n=3)
    ce = ConceptExtractor(
        model,
        "features",
        n_concepts=4,
        factorizer=FixedBank(bank),
        patches="positions",
        batch_size=2048,
    ).fit(x, target=TARGET)
    u = ce.encode(x)
    exact = _closed_form(model, u, bank)
    for method in ("gradient_input", "integrated_gradients", "occlusion"):
        torch.testing.assert_close(
            ce.local_importance(x, method=method), exact, rtol=1e-7, atol=1e-9, msg=method
        )
    # Sobol of a linear function of independent uniform masks: c_k^2 / sum_j c_j^2.
    sobol = ce.local_importance(x, method="sobol", n_designs=1024)
    torch.testing.assert_close(sobol, exact**2 / (exact**2).sum(1, keepdim=True), atol=0.02, rtol=0)
    torch.testing.assert_close(ce.importance(x, method="occlusion"), exact.mean(0))


def test_gradient_input_is_equal_to_ig_and_occlusion_with_nmf():
    bank = planted_bank()
    x = planted_images(bank, n=6)
    ce = ConceptExtractor(PlantedNet(), "features", n_concepts=4, patches="positions").fit(x, 0)
    gi = ce.local_importance(x, method="gradient_input")
    torch.testing.assert_close(ce.local_importance(x, method="occlusion"), gi)
    torch.testing.assert_close(ce.local_importance(x, method="integrated_gradients"), gi)


def test_gradient_input_is_optimal_for_c_deletion_and_insertion_sobol_is_not():
    """Holistic paper, theorem: with a linear h, ordering concepts by gradient x input gives the
    lowest C-Deletion and highest C-Insertion of all orders; Sobol loses the sign."""
    bank = planted_bank(k=4, channels=16, seed=3)
    model = PlantedNet(channels=16, seed=4)
    x = planted_images(bank, n=3, seed=5)
    ce = ConceptExtractor(
        model, "features", n_concepts=4, factorizer=FixedBank(bank), patches="positions"
    ).fit(x, target=TARGET)
    gi = ce.local_importance(x, method="gradient_input")
    assert bool((gi < 0).any()) and bool((gi > 0).any())  # mixed signs: the interesting case
    deletion, insertion = c_deletion(ce, x, gi).scores, c_insertion(ce, x, gi).scores
    for perm in itertools.permutations(range(4)):
        order_scores = torch.zeros(3, 4, dtype=torch.float64)
        order_scores[:, list(perm)] = torch.arange(4, 0, -1, dtype=torch.float64)
        assert bool((deletion <= c_deletion(ce, x, order_scores).scores + 1e-9).all())
        assert bool((insertion >= c_insertion(ce, x, order_scores).scores - 1e-9).all())
    sobol = ce.local_importance(x, method="sobol", n_designs=256)
    assert c_deletion(ce, x, sobol).mean() > c_deletion(ce, x, gi).mean() + 1e-3
    torch.testing.assert_close(c_mufidelity(ce, x, gi).scores, torch.ones(3, dtype=torch.float64))
    # the plain gradient (no "x input") is not faithful either
    grad = gi / ce.encode(x).mean((1, 2)).clamp_min(1e-12)
    assert c_mufidelity(ce, x, grad).mean() < 0.999


def test_concept_sobol_equals_pixel_sobol_on_the_same_function():
    """Concept k sits alone in grid cell k: masking cell k of the image (SobolAttribution,
    grid 2x2, inpainting to 0) is masking coefficient k, so both Sobol analyses see the same
    function and (same design) give the same total indices."""
    bank = planted_bank()
    model = PlantedNet()
    scale = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    image = (scale[:, None] * bank).T.reshape(1, 16, 2, 2)  # cell (i, j) holds concept 2i + j
    train = planted_images(bank, n=4, size=2)
    ce = ConceptExtractor(
        model, "features", n_concepts=4, factorizer=FixedBank(bank), patches="positions", seed=0
    ).fit(train, target=TARGET)
    concept = ce.local_importance(image, method="sobol", n_designs=64)
    pixel = SobolAttribution(model, grid_size=2, n_designs=64, seed=0, upsample=False)(
        image, target=TARGET
    )
    torch.testing.assert_close(concept, pixel.reshape(1, 4), rtol=1e-6, atol=1e-9)


def test_concept_maps_locate_planted_concepts():
    bank = planted_bank()
    image = torch.zeros(1, 16, 4, 4, dtype=torch.float64)
    image[0, :, 0, 0] = bank[2]  # concept 2 only in the top-left cell
    image[0, :, 3, 3] = 2 * bank[0]
    train = planted_images(bank, n=4)
    ce = ConceptExtractor(
        PlantedNet(), "features", n_concepts=4, factorizer=FixedBank(bank), patches="positions"
    ).fit(train, target=0)
    coeffs = ce.transform(image)
    torch.testing.assert_close(coeffs[0, 2, 0, 0], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(coeffs[0, 0, 3, 3], torch.tensor(2.0, dtype=torch.float64))
    assert float(coeffs.abs().sum()) == pytest.approx(3.0)
    maps = ce.concept_maps(image)
    assert maps.shape == (1, 4, 4, 4)
    big = F.interpolate(image, size=(8, 8))
    torch.testing.assert_close(
        ce.concept_maps(big), F.interpolate(ce.transform(big), size=(8, 8), mode="bilinear")
    )


def test_grid_and_random_patches_and_crops():
    bank = planted_bank()
    x = planted_images(bank, n=2, size=10)
    model = PlantedNet()
    ce = ConceptExtractor(model, "features", n_concepts=3, patch_size=5).fit(x)
    assert ce.patches_.shape == (2 * 2 * 2, 3)  # stride int(0.8 * 5) = 4: tops 0, 4
    i, t, left = ce.patches_[3].tolist()
    crop = F.interpolate(
        x[i : i + 1, :, t : t + 5, left : left + 5], size=(10, 10), mode="bilinear"
    )
    torch.testing.assert_close(ce.activations_[3], crop.clamp_min(0).mean((0, 2, 3)))
    ce2 = ConceptExtractor(
        model, "features", n_concepts=3, patch_size=5, patches="random", n_patches=20, seed=3
    ).fit(x)
    ce3 = ConceptExtractor(
        model, "features", n_concepts=3, patch_size=5, patches="random", n_patches=20, seed=3
    ).fit(x)
    assert ce2.patches_.shape == (20, 3)
    torch.testing.assert_close(ce2.concepts_, ce3.concepts_)


class Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.ReLU()
        self.flat = nn.Flatten(2)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.flat(self.features(x)).mean(2))


class Linear(PlantedNet):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Identity(), nn.ReLU())

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_errors():
    bank = planted_bank()
    x = planted_images(bank, n=2)
    with pytest.raises(ValueError, match="negative activations.*layer='features.1'"):
        ConceptExtractor(Linear(), "features.0", n_concepts=2, patches="positions").fit(x - 0.5)
    with pytest.raises(ValueError, match="activation rows for n_concepts=50"):
        ConceptExtractor(PlantedNet(), "features", n_concepts=50, patches="positions").fit(x)
    with pytest.raises(ValueError, match="channel axis"):
        ConceptExtractor(Flat().double(), "flat", n_concepts=2, patches="positions").fit(x)
    with pytest.raises(ValueError, match="does not factor through layer"):
        ConceptExtractor(
            SkipAround().double(), "block", n_concepts=2, factorizer="pca", patches="positions"
        ).fit(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="larger than the images"):
        ConceptExtractor(PlantedNet(), "features", n_concepts=2, patch_size=9).fit(x)
    with pytest.raises(ValueError, match="unknown factorizer"):
        ConceptExtractor(PlantedNet(), "features", factorizer="svd").fit(x)
    with pytest.raises(RuntimeError, match="not fitted"):
        ConceptExtractor(PlantedNet(), "features").transform(x)
    ce = ConceptExtractor(PlantedNet(), "features", n_concepts=2, patches="positions").fit(x)
    with pytest.raises(ValueError, match="unknown importance method"):
        ce.importance(method="saliency")
    with pytest.raises(ValueError, match="unsqueeze"):
        ce.transform(x[0])


def test_model_and_inputs_unchanged():
    bank = planted_bank()
    x = planted_images(bank, n=3)
    before = x.clone()
    model = PlantedNet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ce = ConceptExtractor(model, "features", n_concepts=3, patches="positions").fit(x)
        for method in ("sobol", "gradient_input", "integrated_gradients", "occlusion"):
            ce.importance(method=method, n_designs=8) if method == "sobol" else ce.importance(
                method=method
            )
        ce.concept_maps(x)
    assert hook_count(model) == 0
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(x, before)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
