"""Robustness metrics against captum.metrics.sensitivity_max and closed forms."""

from __future__ import annotations

import pytest
import torch

from tests.metrics._nets import Linear, gray
from xai.attributions import Saliency
from xai.metrics import AvgSensitivity, MaxSensitivity

F64 = torch.float64


class FixedNoise:
    """Perturbation replaying precomputed noise draws ``(K, B, C, H, W)`` in order."""

    def __init__(self, noise):
        self.noise = noise
        self.calls = 0

    def __call__(self, inputs, generator):
        out = inputs + self.noise[self.calls]
        self.calls += 1
        return out


def test_max_sensitivity_matches_captum():
    from captum.metrics import sensitivity_max

    model = gray()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=gen)
    y = model(x).argmax(1)
    k = 5
    noise = (torch.rand(k, *x.shape, generator=gen) * 2 - 1) * 0.05
    explainer = Saliency(model)

    def explanation_func(inputs, target):
        inputs = inputs[0] if isinstance(inputs, tuple) else inputs
        return (explainer(inputs, target=target)[:, None],)  # captum iterates over a tuple

    # captum expands inputs with repeat_interleave: row b * K + j is sample b, draw j
    flat_noise = noise.transpose(0, 1).reshape(-1, *x.shape[1:])
    ref = sensitivity_max(
        explanation_func,
        x,
        perturb_func=lambda inp: inp + flat_noise,
        n_perturb_samples=k,
        target=y,
    )
    ours = MaxSensitivity(n_samples=k, perturbation=FixedNoise(noise))(model, x, explainer, y)
    torch.testing.assert_close(ours.scores, ref.detach(), rtol=1e-5, atol=1e-6)
    avg = AvgSensitivity(n_samples=k, perturbation=FixedNoise(noise), batch_size=4)
    assert bool((avg(model, x, explainer, y).scores <= ours.scores + 1e-7).all())


def _linear():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(2, 3, 8, 8, generator=gen, dtype=F64)
    return Linear(w), torch.randn(2, 3, 8, 8, generator=gen, dtype=F64)


def test_gradient_of_linear_model_is_insensitive():
    model, x = _linear()
    res = MaxSensitivity(n_samples=4, radius=0.3)(model, x, Saliency(model), 0)
    torch.testing.assert_close(res.scores, torch.zeros(2, dtype=F64))


def test_gradient_times_input_closed_form():
    """phi(x) = (w * x).sum(1) is linear in x: the change is (w * delta).sum(1)."""
    model, x = _linear()

    def grad_x_input(inputs, target=None):
        return (model.weight[0].detach() * inputs).sum(1)

    noise = (
        torch.rand(6, *x.shape, generator=torch.Generator().manual_seed(2), dtype=F64) * 2 - 1
    ) * 0.1
    res = MaxSensitivity(n_samples=6, perturbation=FixedNoise(noise))(model, x, grad_x_input, 0)
    diffs = torch.stack(
        [(model.weight[0].detach() * n).sum(1).flatten(1).norm(dim=1) for n in noise]
    )
    base = grad_x_input(x).flatten(1).norm(dim=1)
    torch.testing.assert_close(res.scores, (diffs / base).amax(0))
    unnorm = AvgSensitivity(n_samples=6, normalize=False, perturbation=FixedNoise(noise))
    torch.testing.assert_close(unnorm(model, x, grad_x_input, 0).scores, diffs.mean(0))


def test_batching_and_seed():
    model = gray().double()
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    explainer = Saliency(model)
    full = MaxSensitivity(n_samples=4, seed=1)(model, x, explainer)
    for bs in (1, 5):
        torch.testing.assert_close(
            MaxSensitivity(n_samples=4, seed=1, batch_size=bs)(model, x, explainer).scores,
            full.scores,
        )
    assert not torch.equal(
        MaxSensitivity(n_samples=4, seed=2)(model, x, explainer).scores, full.scores
    )


def test_errors():
    with pytest.raises(ValueError, match="radius"):
        MaxSensitivity(radius=-1)
    with pytest.raises(ValueError, match="n_samples"):
        AvgSensitivity(n_samples=0)
