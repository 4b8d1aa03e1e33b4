"""Feature visualization (Olah et al., Distill 2017): planted detectors, the Fourier
parameterization against torch.fft, objective algebra against hand formulas, and the rules
every explanation follows (model unchanged, no hooks, seeded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import hook_count
from xai.features import (
    Channel,
    ClassLogit,
    Direction,
    Diversity,
    FeatureVisualization,
    ImageParam,
    Layer,
    Neuron,
)
from xai.features.objectives import Activations
from xai.features.param import COLOR_CORRELATION, fft_scale, to_rgb
from xai.features.transforms import jitter, lucid_transforms

PERIOD = 8


def planted_net() -> nn.Sequential:
    """9x9 conv + ReLU with four planted channels on [0, 1] images:
    0 red detector (center tap [1, -0.5, -0.5]), 1 vertical stripes of period 8 (a zero-mean
    cosine along x, equal over RGB), 2 green detector, 3 horizontal stripes (cosine along y)."""
    conv = nn.Conv2d(3, 4, 9, padding=4, bias=False)
    wave = torch.cos(2 * math.pi * torch.arange(9) / PERIOD)
    wave = wave - wave.mean()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, :, 4, 4] = torch.tensor([1.0, -0.5, -0.5])
        conv.weight[1] = wave.view(1, 1, 9).expand(3, 9, 9) / 9
        conv.weight[2, :, 4, 4] = torch.tensor([-0.5, 1.0, -0.5])
        conv.weight[3] = wave.view(1, 9, 1).expand(3, 9, 9) / 9
    return nn.Sequential(conv, nn.ReLU())


def channel_means(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(images).mean((2, 3))  # (B, 4)


def test_planted_channels_are_visualized():
    net = planted_net()
    objective = Channel("1", 0, batch=0) + Channel("1", 1, batch=1)
    vis = FeatureVisualization(
        net, objective, size=48, batch=2, n_steps=160, model_size=None, mean=None, std=None, seed=0
    )
    result = vis()
    images = result.images
    assert images.shape == (2, 3, 48, 48) and 0 <= float(images.min()) <= float(images.max()) <= 1
    acts = channel_means(net, images)
    start = ImageParam(2, (48, 48), generator=torch.Generator().manual_seed(0))()
    acts_start = channel_means(net, start.detach())
    noise = channel_means(
        net, torch.rand(20, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    )
    for k in (0, 1):
        assert acts[k, k] >= 5 * acts_start[k, k]
        assert acts[k, k] > noise[:, k].max()
    # the other channels stay low: the green and horizontal detectors, and the other target
    assert acts[0, 2] < 0.2 * acts[0, 0] and acts[1, 3] < 0.2 * acts[1, 1]
    assert acts[1, 0] < 0.2 * acts[0, 0] and acts[0, 1] < 0.5 * acts[1, 1]
    # channel 0 reproduces its pattern: red, correlated with the template [1, -0.5, -0.5]
    rgb = images[0].mean((1, 2))
    assert rgb[0] > rgb[1] + 0.2 and rgb[0] > rgb[2] + 0.2
    template = torch.tensor([1.0, -0.5, -0.5])
    assert float(torch.corrcoef(torch.stack([rgb, template]))[0, 1]) > 0.9
    # channel 1: vertical stripes of period 8 -> the column profile varies, the row profile
    # hardly; the column profile's power lies around the period 8 (periods 6 to 12; the
    # random scaling by 0.9-1.1 and the ReLU widen the stripes a little)
    gray = images[1].mean(0)
    cols, rows = gray.mean(0), gray.mean(1)
    assert cols.std() > 1.5 * rows.std()
    power = torch.fft.rfft(cols - cols.mean()).abs().square()
    periods = 48 / torch.arange(1, len(power)).float()
    band = (periods >= 6) & (periods <= 12)
    assert float(power[1:][band].sum() / power.sum()) > 0.6


def test_class_logit_and_determinism_and_state():
    net = planted_net()
    model = nn.Sequential(net, nn.AdaptiveAvgPool2d(1), nn.Flatten())  # logits = channel means
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vis = FeatureVisualization(
        model, ClassLogit(2), size=32, n_steps=40, model_size=None, mean=None, std=None, seed=5
    )
    with torch.no_grad():
        a = vis()
    b = vis()
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert a.history[-1] > 3 * a.history[0]
    rgb = a.images[0].mean((1, 2))
    assert rgb[1] > rgb[0] and rgb[1] > rgb[2]  # the green detector's class
    assert hook_count(model) == 0 and model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    other = FeatureVisualization(
        model, ClassLogit(2), size=32, n_steps=40, model_size=None, mean=None, std=None, seed=6
    )()
    assert not torch.equal(a.images, other.images)


def test_diversity_makes_the_batch_less_alike():
    net = planted_net()

    def gram_similarity(images):
        with torch.no_grad():
            acts = net(images)
        return float(Diversity("1")(Activations(net, {"1": acts}, None)))

    common = {
        "size": 32,
        "batch": 3,
        "n_steps": 60,
        "model_size": None,
        "mean": None,
        "std": None,
        "seed": 0,
        "transforms": [jitter(4)],
    }
    plain = FeatureVisualization(net, Channel("1", 1), **common)().images
    diverse = FeatureVisualization(net, Channel("1", 1) - 10 * Diversity("1"), **common)().images
    assert gram_similarity(diverse) < gram_similarity(plain)


def test_fft_parameterization_is_irfft2_and_lucid_scale():
    for h, w in ((6, 8), (7, 9)):  # odd W: no extra column to crop
        param = ImageParam(
            2,
            (h, w),
            decorrelate=False,
            decay_power=0.0,
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float64,
        )
        spectrum = torch.view_as_complex(param.tensor.detach())
        expected = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") / 4
        torch.testing.assert_close(param.raw().detach(), expected, rtol=0, atol=1e-15)
        assert param.raw().shape == (2, 3, h, w)
    # lucent's rfft2d_freqs for even W, in numpy
    fy = np.fft.fftfreq(6)[:, None]
    fx = np.fft.fftfreq(8)[: 8 // 2 + 1]
    freqs = np.sqrt(fx * fx + fy * fy)
    torch.testing.assert_close(
        fft_scale(6, 8, 1.0), torch.from_numpy(1.0 / np.maximum(freqs, 1.0 / 8))
    )
    # color decorrelation: the matrix divided by its largest column norm (0.4620), then sigmoid
    c = np.asarray(COLOR_CORRELATION)
    norm = np.linalg.norm(c, axis=0).max()
    assert abs(norm - 0.4620) < 1e-4
    img = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    expected = 1 / (1 + np.exp(-np.einsum("bchw,dc->bdhw", img.numpy(), c / norm)))
    torch.testing.assert_close(to_rgb(img), torch.from_numpy(expected))


def test_objective_algebra_matches_hand_formulas():
    torch.manual_seed(0)
    a = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    out = torch.randn(3, 7, dtype=torch.float64)
    net = nn.Sequential(nn.Identity())
    acts = Activations(net, {"0": a}, out)
    a32 = a.float()
    ch = Channel("0", 2)
    torch.testing.assert_close(ch(acts), a32[:, 2].mean())
    torch.testing.assert_close(Channel("0", 1, batch=2)(acts), a32[2, 1].mean())
    # Neuron: (y, x) = (row, column), default the center (h // 2, w // 2) = (2, 3)
    torch.testing.assert_close(Neuron("0", 1)(acts), a32[:, 1, 2, 3].mean())
    torch.testing.assert_close(Neuron("0", 1, y=4, x=0)(acts), a32[:, 1, 4, 0].mean())
    torch.testing.assert_close(Layer("0")(acts), a32.square().mean())
    torch.testing.assert_close(Layer("0", "mean")(acts), a32.mean())
    torch.testing.assert_close(ClassLogit(5)(acts), out[:, 5].float().mean())
    v = torch.randn(4)
    cos = (a32 * v.view(1, 4, 1, 1)).sum(1) / (a32.norm(dim=1) * v.norm())
    torch.testing.assert_close(Direction("0", v)(acts), cos.mean())
    # lucent's double loop over the batch
    flat = a32.flatten(2)
    grams = [g / g.norm() for g in flat @ flat.transpose(1, 2)]
    lucid = sum((grams[i] * grams[j]).sum() for i in range(3) for j in range(3) if i != j) / 3
    torch.testing.assert_close(Diversity("0")(acts), lucid)
    combo = 2 * ch + Layer("0") - 0.5 * Neuron("0", 1) + 3
    expected = 2 * ch(acts) + Layer("0")(acts) - 0.5 * Neuron("0", 1)(acts) + 3
    torch.testing.assert_close(combo(acts), expected)
    torch.testing.assert_close((-ch / 4)(acts), -ch(acts) / 4)
    torch.testing.assert_close(sum([ch, ch])(acts), 2 * ch(acts))
    assert combo.needs_output is False and (ch + ClassLogit(1)).needs_output is True
    with pytest.raises(TypeError, match="numbers"):
        ch * ch


def test_transforms_are_seeded_and_shapes():
    img = torch.rand(1, 3, 40, 40)
    out = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(3)
        x = img
        for t in lucid_transforms():
            x = t(x, gen)
        out.append(x)
    assert torch.equal(out[0], out[1])
    assert jitter(8)(img, torch.Generator()).shape[-2:] == (32, 32)
    xp = FeatureVisualization(
        planted_net(),
        Channel("1", 0),
        size=32,
        n_steps=3,
        transforms="xplique",
        model_size=48,
        mean=None,
        std=None,
    )()
    assert xp.images.shape == (1, 3, 32, 32)


def test_errors():
    net = planted_net()
    with pytest.raises(TypeError, match="Objective"):
        FeatureVisualization(net, "1")
    with pytest.raises(ValueError, match="close matches"):
        FeatureVisualization(net, Channel("11", 0))
    with pytest.raises(ValueError, match="transforms"):
        FeatureVisualization(net, Channel("1", 0), transforms="magic")
    with pytest.raises(ValueError, match="4 channels"):
        FeatureVisualization(net, Channel("1", 9), size=16, n_steps=1, model_size=None)()
    with pytest.raises(ValueError, match="batch"):
        FeatureVisualization(net, Channel("1", 0, batch=3), size=16, n_steps=1, model_size=None)()
    with pytest.raises(ValueError, match="batch >= 2"):
        FeatureVisualization(net, Diversity("1"), size=16, n_steps=1, model_size=None)()
    assert hook_count(net) == 0


def test_non_finite_objective_raises():
    net = nn.Sequential(planted_net(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    nan_logit = ClassLogit(lambda out: out[:, 0] * float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        FeatureVisualization(net, nan_logit, size=16, n_steps=2, model_size=None)()
