"""Randomization sanity checks and class sensitivity against scipy / skimage / Quantus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

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
    gen = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)


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


def _quantus_explain(model, inputs, targets, **kw):
    maps = Saliency(model)(torch.as_tensor(inputs), target=torch.as_tensor(targets))
    return maps.detach()[:, None].numpy()


def test_parameter_randomization_matches_quantus_mprt():
    """Same randomized models and Spearman on absolute maps as Quantus' MPRT. (Quantus applies
    its similarity to flattened maps, so its SSIM is a 1-D SSIM; ours is the 2-D SSIM of
    skimage, checked in test_ssim_matches_skimage and test_ssim_curve_replica.)"""
    quantus = pytest.importorskip("quantus")
    from tests.metrics._nets import gray

    model = gray()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    ref = quantus.MPRT(
        layer_order="top_down",
        seed=42,
        abs=True,
        normalise=False,
        disable_warnings=True,
        display_progressbar=False,
    )(
        model=model,
        x_batch=x.numpy(),
        y_batch=y.numpy(),
        a_batch=_quantus_explain(model, x.numpy(), y.numpy()),
        explain_func=_quantus_explain,
        device="cpu",
    )
    # Quantus seeds every layer with seed + 1; the same reset sequence gives the same models.
    ours = ModelParameterRandomization(seed=43)(model, x, Saliency(model), target=y)
    assert ours.labels == ("fc", "conv2", "conv1")
    expected = np.stack([np.asarray(ref[name]) for name in ours.labels], 1)
    # float32 maps, identical ranks: agreement to 1e-5
    np.testing.assert_allclose(ours.curve.numpy(), expected, atol=1e-5)
    torch.testing.assert_close(ours.scores, ours.curve.mean(1))


def test_randomization_leaves_model_and_rng_untouched(net, x):
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    result = ModelParameterRandomization(reduce="last")(net, x, Saliency(net))
    assert torch.rand(1) == expected_next
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert hook_count(net) == 0 and not net.training
    torch.testing.assert_close(result.scores, result.curve[:, -1])
    assert result.labels[0] == "fc"  # top-down: the output layer first


def test_weight_independent_explainer_fails_the_check(net, x):
    result = ModelParameterRandomization(order="independent")(net, x, InputOnly(net))
    torch.testing.assert_close(result.curve, torch.ones_like(result.curve))


def test_randomization_errors(net, x):
    with pytest.raises(ValueError, match="similarity"):
        ModelParameterRandomization(similarity="hog")
    with pytest.raises(ValueError, match="unknown layers"):
        ModelParameterRandomization(layers=["nope"])(net, x, Saliency(net))
    with pytest.raises(TypeError, match="explainer must be an Attribution"):
        ClassSensitivity()(net, x, "saliency")


def test_ssim_curve_replica(net, x):
    """The SSIM curve equals skimage's SSIM between the original and the randomized maps,
    recomputed here on a copy randomized the same way (cascading, seed per layer)."""
    import copy

    from skimage.metrics import structural_similarity

    method = Saliency(net)
    result = ModelParameterRandomization(similarity="ssim", abs=False, seed=5)(net, x, method)
    original = method(x)
    clone = copy.deepcopy(net)
    for j, name in enumerate(result.labels):
        torch.manual_seed(5)
        clone.get_submodule(name).reset_parameters()
        maps = Saliency(clone)(x, target=net(x).argmax(1))
        for i in range(x.shape[0]):
            a, b = original[i].detach().numpy(), maps[i].detach().numpy()
            rng = float(max(a.max(), b.max()) - min(a.min(), b.min()))
            ref = structural_similarity(a, b, data_range=rng)
            assert result.curve[i, j].item() == pytest.approx(ref, abs=1e-10)
