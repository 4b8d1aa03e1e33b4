"""Concepts of a class on the real ImageNet MobileNetV2 (skipped without its offline weights).

Offline there is one photo of a cat (scikit-image's chelsea, predicted 'Egyptian cat'), so the
class's "images" are random crops of it (48 px of the 112 px image, resized back to 112 px).
Stability threshold: fitting 5 NMF concepts at ``features.18`` on two random halves of 96
such crops gave matched cosines 0.84-0.88 (3 splits; 0.90-0.93 for 3 concepts, 0.86-0.91 for
8), while a bank fitted on coffee crops or on channel-shuffled activations matches at only
0.36-0.45. The test asserts >= 0.75 and a margin of 0.25 over the shuffled baseline.
"""

from __future__ import annotations

import pytest
import torch

from xai.concepts import ConceptExtractor, NMFFactorizer, stability

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def cat_concepts(mobilenet):
    from xai.data import preprocess, sample_photos_raw

    image = preprocess(dict(sample_photos_raw(include_foolbox=False))["chelsea"], 112)
    ce = ConceptExtractor(
        mobilenet,
        "features.18",
        n_concepts=5,
        patches="random",
        n_patches=64,
        patch_size=48,
        seed=0,
    )
    return ce.fit(image), image


def test_predicted_class_is_a_cat(cat_concepts):
    ce, _ = cat_concepts
    from xai.data import imagenet_categories

    assert "cat" in imagenet_categories()[ce.target_]


def test_concepts_are_stable_across_random_halves(cat_concepts):
    ce, _ = cat_concepts
    acts = ce.activations_
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(acts), generator=gen)
    half = len(acts) // 2
    banks = []
    for rows in (
        acts[perm[:half]],
        acts[perm[half:]],
        acts[perm[half:]][:, torch.randperm(acts.shape[1], generator=gen)],
    ):
        f = NMFFactorizer(5, seed=0)
        f.fit(rows)
        banks.append(f.components)
    same, shuffled = stability(banks[0], banks[1]), stability(banks[0], banks[2])
    assert same >= 0.75, same
    assert same > shuffled + 0.25, (same, shuffled)


def test_gradient_input_sums_to_the_logit_change(cat_concepts):
    """MobileNetV2 after features.18 is pooling + linear, so F(m) is affine in the mask:
    gradient x input, occlusion and IG coincide and sum to F(1) - F(0)."""
    ce, image = cat_concepts
    gi = ce.local_importance(image, method="gradient_input")
    occ = ce.local_importance(image, method="occlusion")
    torch.testing.assert_close(gi, occ, rtol=1e-3, atol=1e-3)
    u = ce.encode(image)
    ends = ce.scores(u, torch.stack([torch.ones(5), torch.zeros(5)]))
    torch.testing.assert_close(gi.sum(1), ends[0] - ends[1], rtol=1e-3, atol=1e-3)
    maps = ce.concept_maps(image)
    assert maps.shape == (1, 5, 112, 112) and bool((maps >= 0).all())
