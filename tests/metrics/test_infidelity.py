"""Infidelity: captum.metrics.infidelity on identical perturbations, closed forms on a linear
model, the default noise's independence of batching, and errors."""

from __future__ import annotations

import pytest
import torch

from tests.metrics._nets import Linear, gray
from xai.adapter import ProbabilityTarget
from xai.metrics import Infidelity

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Replay:
    """Hands out precomputed perturbation rows in order, chunk after chunk (as both libraries
    consume rows in sample-major order)."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.pos = 0

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        out = self.table[self.pos : self.pos + rows.shape[0]]
        self.pos += rows.shape[0]
        assert out.shape == rows.shape
        return out


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("batch_size", [None, 4])
def test_matches_captum_on_identical_perturbations(normalize, batch_size):
    from captum.metrics import infidelity

    model = gray(dtype=F64)
    x = torch.rand(3, 1, 8, 8, generator=_gen(0), dtype=F64)
    maps = torch.randn(3, 8, 8, generator=_gen(1), dtype=F64)
    n = 5
    noise = 0.1 * torch.randn(3 * n, 1, 8, 8, generator=_gen(2), dtype=F64)
    classes = torch.tensor([0, 2, 1])

    replay = Replay(noise)

    def perturb_func(inputs):
        pert = replay(inputs)
        return pert, inputs - pert

    expected = infidelity(
        model,
        perturb_func,
        x,
        maps[:, None],
        target=classes,
        n_perturb_samples=n,
        normalize=normalize,
    )
    ours = Infidelity(Replay(noise), n_samples=n, normalize=normalize, batch_size=batch_size)
    result = ours(model, x, maps, classes.tolist())
    torch.testing.assert_close(result.scores, expected, rtol=1e-10, atol=1e-12)


def test_matches_captum_with_three_channels_and_probabilities():
    """The (H, W) map is broadcast over channels (captum gets maps[:, None].expand_as(x))."""
    from captum.metrics import infidelity

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5)
    ).to(F64)
    x = torch.rand(2, 3, 6, 6, generator=_gen(3), dtype=F64)
    net(x)
    net.eval()
    maps = torch.rand(2, 6, 6, generator=_gen(4), dtype=F64)
    noise = 0.05 * torch.randn(2 * 4, 3, 6, 6, generator=_gen(5), dtype=F64)
    replay = Replay(noise)

    def perturb_func(inputs):
        pert = replay(inputs)
        return pert, inputs - pert

    def probs(inp):
        return net(inp).softmax(1)

    expected = infidelity(
        probs, perturb_func, x, maps[:, None].expand_as(x), target=[1, 3], n_perturb_samples=4
    )
    result = Infidelity(Replay(noise), n_samples=4)(net, x, maps, ProbabilityTarget([1, 3]))
    torch.testing.assert_close(result.scores, expected, rtol=1e-10, atol=1e-14)


def test_linear_model_closed_forms():
    """f(x) = sum W x (one channel): the map W is exact (INFD 0); the map 2W leaves
    INFD = E[(I^T W)^2] unnormalized and 0 once normalized; beta = 0 for a zero map."""
    w = torch.randn(2, 1, 5, 5, generator=_gen(6), dtype=F64)
    model = Linear(w).eval()
    x = torch.rand(2, 1, 5, 5, generator=_gen(7), dtype=F64)
    exact = w[0, 0].expand(2, 5, 5)
    assert Infidelity(n_samples=6, noise_std=0.5)(model, x, exact, 0).scores.abs().max() < 1e-20
    noise = 0.3 * torch.randn(2 * 6, 1, 5, 5, generator=_gen(8), dtype=F64)
    doubled = Infidelity(Replay(noise), n_samples=6)(model, x, 2 * exact, 0).scores
    dots = (noise[:, 0] * w[0, 0]).sum((1, 2)).view(2, 6)
    torch.testing.assert_close(doubled, dots.pow(2).mean(1))
    normed = Infidelity(Replay(noise), n_samples=6, normalize=True)(model, x, 2 * exact, 0)
    assert normed.scores.abs().max() < 1e-20
    zero = Infidelity(Replay(noise), n_samples=6, normalize=True)(model, x, 0 * exact, 0)
    torch.testing.assert_close(zero.scores, dots.pow(2).mean(1))


def test_default_noise_is_seeded_and_independent_of_batching():
    model = gray(dtype=F64)
    x = torch.rand(3, 1, 8, 8, generator=_gen(9), dtype=F64)
    maps = torch.randn(3, 8, 8, generator=_gen(10), dtype=F64)
    full = Infidelity(n_samples=7, noise_std=0.2, seed=3)(model, x, maps).scores
    chunked = Infidelity(n_samples=7, noise_std=0.2, seed=3, batch_size=5)(model, x, maps).scores
    torch.testing.assert_close(full, chunked, rtol=1e-12, atol=0)
    other = Infidelity(n_samples=7, noise_std=0.2, seed=4)(model, x, maps).scores
    assert not torch.equal(full, other)
    assert (full >= 0).all()


def test_errors():
    model = gray()
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(TypeError, match="perturbation must be None"):
        Infidelity("noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        Infidelity(noise_std=-1.0)
    with pytest.raises(ValueError, match="shaped like its rows"):
        Infidelity(lambda rows: rows[:, :, :2], n_samples=2)(model, x, torch.rand(1, 4, 4))
