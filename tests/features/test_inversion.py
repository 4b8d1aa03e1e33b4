"""Representation inversion (Mahendran & Vedaldi, CVPR 2015): closed forms, a literal replica of
the authors' update loop, and properties of the regularizers. Float64 on CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from xai.features import (
    SCHEDULES,
    Inversion,
    alpha_norm,
    auto_lambda_tv,
    image_error,
    reconstruction_error,
    set_normalized_error,
    total_variation,
)
from xai.features.inversion import SIGMA_227

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def photo(size: int = 64) -> torch.Tensor:
    """A real photo (scikit-image's astronaut) as a normalized (1, 3, size, size) model input."""
    skimage = pytest.importorskip("skimage")
    img = torch.from_numpy(np.ascontiguousarray(skimage.data.astronaut())).permute(2, 0, 1)
    img = nn.functional.interpolate(
        img[None].double() / 255,
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return (img - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def orthogonal_net() -> nn.Module:
    """Pixel-unshuffle by 2 then a random 12x12 orthogonal 1x1 mix: an isometry of the input."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))
    mix = nn.Conv2d(12, 12, 1, bias=False).double()
    with torch.no_grad():
        mix.weight.copy_(q.view(12, 12, 1, 1))
    return nn.Sequential(nn.PixelUnshuffle(2), mix)


def random_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
    ).double()


def heavy_ball_gain(k: float, momentum: float, segments) -> float:
    """|e_T / e_0| of momentum gradient descent on a quadratic whose gradient is k e (per unit
    step size): v' = m v - k eta e, e' = e + v', with the velocity reset at each segment."""
    gain = 1.0
    for eta, n in segments:
        step = np.array([[1 - k * eta, momentum], [-k * eta, momentum]])
        gain *= np.linalg.matrix_power(step, n)[0, 0]
    return abs(gain)


@pytest.mark.parametrize(
    "net,layer",
    [(nn.Sequential(nn.Identity()), "0"), (orthogonal_net(), "1")],
    ids=["identity", "orthogonal"],
)
def test_isometric_representation_is_inverted_to_the_image(net, layer):
    # With Phi an isometry of the model input x = y / s_c (y: 0-255 mean-subtracted units,
    # s_c = 255 std_c) and no regularizer, E(y) = sum_c ||y_c / s_c - x0_c||^2 / ||x0||^2, so the
    # error e = y - y0 of channel c follows the scalar heavy-ball recurrence with curvature
    # k_c = 2 sigma^2 / (s_c^2 ||x0||^2) per unit step size: ||e_T|| <= max_c |G_c| ||e_0||, and
    # ||e_0|| <= ||y_start|| + ||y0|| = sigma + ||y0||.
    x0 = photo(64)
    result = Inversion(net.double(), layer, lambda_tv=0.0, lambda_alpha=0.0)(x0)
    s = 255 * torch.tensor(STD, dtype=torch.float64)
    sigma = SIGMA_227 * 64 / 227
    gains = [
        heavy_ball_gain(
            2 * sigma**2 / (float(sc) ** 2 * float(x0.square().sum())), 0.9, SCHEDULES["cnn"]
        )
        for sc in s
    ]
    y0_norm = float((x0 * s.view(1, 3, 1, 1)).norm())
    tolerance = max(gains) * (sigma + y0_norm) / y0_norm
    assert 1e-4 < tolerance < 0.01  # the derivation gives a meaningful, small tolerance
    err = image_error(result.images[0], x0, STD)
    assert float(err) < tolerance
    assert float(result.feature_error) < tolerance**2


def test_tv_smooths_the_identity_inversion():
    x0 = photo(64)
    net = nn.Sequential(nn.Identity())
    res = Inversion(net, "0", lambda_tv=1.0)(x0)

    def y(x):
        return x * 255 * torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)

    assert float(total_variation(y(res.images[0]))) < 0.6 * float(total_variation(y(x0)))
    assert 0.05 < float(image_error(res.images[0], x0, STD)) < 0.5  # smoothed, not recovered


def test_objective_decreases_and_features_match():
    net, x0 = random_net(), photo(32)
    res = Inversion(net, "4", lambda_tv=1.0)(x0)
    history = res.history[:, 0, 0]
    assert history[-1] < 0.1 * history[0]
    assert float(res.feature_error) < 0.1
    assert (history[1:] <= history[:-1] + 1e-12).double().mean() > 0.9


def test_more_tv_weight_gives_a_smoother_reconstruction():
    net, x0 = random_net(), photo(24)
    scale = 255 * torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    tvs = [
        float(
            total_variation(Inversion(net, "4", lambda_tv=lam, n_steps=120)(x0).images[0] * scale)
        )
        for lam in (0.1, 1.0, 10.0)
    ]
    assert tvs[0] > tvs[1] > tvs[2]
    assert tvs[2] < 0.5 * tvs[0]


def test_update_is_the_literal_deep_goggle_loop():
    # deep-goggle core/invert_nn.m, written out: x in 0-255 units, dr from its `tv` derivative
    # and beta x^(beta-1), momentum v = m v - lr dr - lr sigma^2/||y0||^2 dzdx, reset at each
    # change of lr. The network sees x / (255 std).
    net, x0 = random_net(), photo(16)
    segments = ((0.004, 7), (0.0004, 5))
    lam_tv, lam_a, alpha, beta = 3.0, 8e-10, 6.0, 2.0
    inv = Inversion(net, "4", lambda_tv=lam_tv, lambda_alpha=lam_a, schedule=segments, seed=3)
    got = inv(x0).images[0]

    scale = 255 * torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        y0 = net(x0)
    y0_sigma2 = float(y0.square().sum())
    x0_sigma = SIGMA_227 * 16 / 227
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 16, 16, generator=gen, dtype=torch.float64)
    x = x / x.norm() * x0_sigma

    def tv_grad(x):  # deep-goggle `tv` (replicated last row/column), beta = 2
        d1 = torch.cat([x[..., :, 1:], x[..., :, -1:]], -1) - x
        d2 = torch.cat([x[..., 1:, :], x[..., -1:, :]], -2) - x
        d11 = torch.cat([torch.zeros_like(d1[..., :1]), d1[..., :-1]], -1) - d1
        d22 = torch.cat([torch.zeros_like(d2[..., :1, :]), d2[..., :-1, :]], -2) - d2
        d11[..., 0] = -d1[..., 0]
        d22[..., 0, :] = -d2[..., 0, :]
        return beta * (d11 + d22)

    prev, momentum = 0.0, torch.zeros_like(x)
    for eta, n in segments:
        for _ in range(n):
            if eta != prev:
                momentum, prev = torch.zeros_like(x), eta
            xr = x.clone().requires_grad_(True)
            (dzdx,) = torch.autograd.grad((net(xr / scale) - y0).square().sum(), xr)
            dr = lam_tv / 2 * tv_grad(x) + lam_a / 2 * alpha * x ** (alpha - 1)
            momentum = 0.9 * momentum - eta * dr - eta * x0_sigma**2 / y0_sigma2 * dzdx
            x = x + momentum
    torch.testing.assert_close(got, x / scale, rtol=1e-10, atol=1e-10)


def test_total_variation_closed_forms_and_gradient():
    const = torch.full((2, 3, 5, 6), 0.7, dtype=torch.float64)
    assert torch.equal(total_variation(const), torch.zeros(2, dtype=torch.float64))
    step = torch.zeros(1, 3, 5, 6, dtype=torch.float64)
    step[:, 1, :, 3:] = 2.5
    for beta in (1.0, 2.0, 1.5):
        torch.testing.assert_close(
            total_variation(step, beta), torch.tensor([5 * 2.5**beta], dtype=torch.float64)
        )
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: total_variation(t, 1.5), (x,))
    assert torch.autograd.gradcheck(lambda t: alpha_norm(t, 6.0), (x,))
    torch.testing.assert_close(alpha_norm(x.detach(), 6.0), x.detach().pow(6).sum().view(1))


def test_errors_of_the_paper():
    ref = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    d = torch.randn_like(ref)
    torch.testing.assert_close(
        reconstruction_error(ref + d, ref),
        d.flatten(1).square().sum(1) / ref.flatten(1).square().sum(1),
    )
    pair = ref[:2]
    spread = 2 * (pair[0] - pair[1]).square().sum() / 4  # mean over the 4 ordered pairs
    torch.testing.assert_close(
        set_normalized_error(pair + d[:2], pair), d[:2].flatten(1).square().sum(1) / spread
    )
    with pytest.raises(ValueError, match="at least 2"):
        set_normalized_error(ref[:1], ref[:1])


def test_auto_lambda_tv_is_the_papers_split_of_alexnets_20_layers():
    net = nn.Sequential(*[nn.ReLU() for _ in range(20)])
    got = [auto_lambda_tv(net, str(i)) for i in range(20)]
    assert got == [1.0] * 6 + [10.0] * 6 + [100.0] * 8


def test_batch_restarts_seed_state_and_hooks():
    net, x0 = random_net(), torch.cat([photo(16), -photo(16)])
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    x_copy = x0.clone()
    inv = Inversion(net, "4", n_steps=30, n_restarts=2, jitter=2, seed=1)
    with torch.no_grad():
        a = inv(x0)
    b = inv(x0)
    assert a.images.shape == (2, 2, 3, 16, 16) and a.feature_error.shape == (2, 2)
    assert a.history.shape[1:] == (2, 2)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, Inversion(net, "4", n_steps=30, seed=2)(x0).images[0])
    assert a.best().shape == (2, 3, 16, 16)
    assert torch.equal(x0, x_copy) and hook_count(net) == 0
    assert net.training and all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_invert_features_and_mask():
    net, x0 = random_net(), photo(16)
    with torch.no_grad():
        code = net(x0)
    mask = torch.zeros(code.shape[1:], dtype=torch.float64)
    mask[:, 3:5, 3:5] = 1
    res = Inversion(net, "4", n_steps=60, lambda_tv=1.0, mask=mask).invert_features(code, (16, 16))
    assert res.images.shape == (1, 1, 3, 16, 16)
    assert float(res.feature_error) < 0.2  # measured under the mask


def test_errors():
    net, x0 = random_net(), photo(16)
    with pytest.raises(ValueError, match="unsqueeze"):
        Inversion(net, "4")(x0[0])
    with pytest.raises(ValueError, match="NaN"):
        Inversion(net, "4")(torch.full_like(x0, math.nan))
    with pytest.raises(ValueError, match="close matches"):
        Inversion(net, "44")
    with pytest.raises(ValueError, match="schedule"):
        Inversion(net, "4", schedule="fast")
    with pytest.raises(ValueError, match="lambda_tv"):
        Inversion(net, "4", lambda_tv=-1.0)
    with pytest.raises(ValueError, match="zero"):
        Inversion(nn.Sequential(nn.ReLU()), "0")(-x0.abs())  # the code is all zero
    with pytest.raises(ValueError, match="broadcast"):
        Inversion(net, "4", mask=torch.ones(3, 2, 2)).invert_features(
            torch.ones(1, 16, 8, 8), (16, 16)
        )
    with pytest.raises(ValueError, match="shape"):
        Inversion(net, "4", n_steps=2).invert_features(torch.ones(1, 16, 8, 8).double(), (32, 32))


def test_divergence_raises_instead_of_returning_nan():
    net, x0 = random_net(), photo(16)
    with pytest.raises(FloatingPointError, match="diverged"):
        Inversion(net, "4", schedule=[(1e6, 30)])(x0)
