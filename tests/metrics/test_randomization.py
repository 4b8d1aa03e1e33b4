"""Randomization sanity checks and class sensitivity against scipy / skimage / Quantus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from tests._models import TinyConvNet, seeded
from tests.conftest import hook_count
from xai.attributions import Saliency
from xai.metrics import ClassSensitivity, ModelParameterRandomization, ssim
from xai.metrics.base import spearman


class InputOnly:
    """A class-insensitive 'explainer': the map is the input's channel sum, whatever the model."""

    def __init__(self, model):
        self.model = model

    def __call__(self, inputs, target=None):
        return inputs.sum(1)

    def rebind(self, model):
        return InputOnly(model)


@pytest.fixture
def net():
    return seeded(TinyConvNet(n_classes=5))


@pytest.fixture
def x():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 5, (4, 50), generator=gen).double()
    b = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    expected = [spearmanr(a[i], b[i]).statistic for i in range(4)]
    torch.testing.assert_close(spearman(a, b), torch.tensor(expected, dtype=torch.float64))


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(3, 16, 20, generator=gen, dtype=torch.float64)
    b = a + 0.5 * torch.randn(3, 16, 20, generator=gen, dtype=torch.float64)
    expected = []
    for i in range(3):
        both = np.concatenate([a[i].numpy(), b[i].numpy()])
        rng = float(both.max() - both.min())
        expected.append(structural_similarity(a[i].numpy(), b[i].numpy(), data_range=rng))
    torch.testing.assert_close(ssim(a, b), torch.tensor(expected, dtype=torch.float64))


def test_class_sensitivity_matches_replica(net, x):
    method = Saliency(net)
    result = ClassSensitivity()(net, x, method)
    with torch.no_grad():
        out = net(x)
    for i in range(x.shape[0]):
        hi = method(x[i : i + 1], target=int(out[i].argmax()))[0] + 1e-6
        lo = method(x[i : i + 1], target=int(out[i].argmin()))[0] + 1e-6
        ref = spearmanr(hi.flatten().numpy(), lo.flatten().numpy()).statistic
        assert result.scores[i].item() == pytest.approx(ref, abs=1e-10)
    assert result.curve is None


def test_class_insensitive_explainer_scores_one(net, x):
    result = ClassSensitivity()(net, x, InputOnly(net))
    torch.testing.assert_close(result.scores, torch.ones(3, dtype=torch.float64))
    assert ClassSensitivity.higher_is_better is False
