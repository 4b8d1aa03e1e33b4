"""LRP relevance account: every layer balances (in = out + absorbed), the rows reconcile the
score with the input relevance on real architectures with biases and non-trivial batch norms,
a planted leak is found, and bias-free rules keep the score on the input (zennit as oracle)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from tests._models import seeded
from tests.conftest import has
from xai.attributions.lrp import LRP, Composite, Epsilon, EpsilonPlusFlat, Rule
from xai.attributions.lrp.composites import _PRESETS, composite_names, get_composite

# the rule-based composites (the transformer composites propagate relevance themselves and
# report their absorbed share as composite.absorbed, tested in test_transformers.py)
CNN_COMPOSITES = [n for n in composite_names() if not hasattr(get_composite(n), "relevance")]


def _x(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _nontrivial(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with the statistics of issue 23 (mean in [-0.5, 0.5], var in [0.5, 2],
    affine weight in [0.5, 1.5], shift in [-0.2, 0.2]) and biases in [-0.1, 0.1]."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1, generator=gen)
    return model.eval()


def _vgg16():
    torch.manual_seed(0)
    model = torchvision.models.vgg16(num_classes=10)
    # the 25088x4096 head would dominate time and memory; the 13 convolutions are VGG16's
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(32, 32),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(32, 10),
    )
    return model


def _check(account, rtol=1e-4):
    assert account.leaking(rtol) == [], account.table()
    score = account.score.abs()
    # the rows telescope: score = input + sum over rows of (in - out)
    assert (account.untracked.abs() <= rtol * score).all(), account.table()
    totals = account.absorbed()
    balance = account.input_total + totals["bias"] + totals["stabilizer"] + totals["rule"]
    torch.testing.assert_close(balance, account.score, rtol=rtol, atol=0.0)


# (builder, dtype): float64 where it is cheap; float32 balances to 1e-4 too (sums in float64)
ARCHS = {
    "resnet18": (torchvision.models.resnet18, torch.float64),
    "resnet50": (torchvision.models.resnet50, torch.float32),
    "vgg16": (_vgg16, torch.float32),
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_account_reconciles_on_biased_networks_for_every_composite(arch):
    build, dtype = ARCHS[arch]
    torch.manual_seed(0)
    model = build() if arch == "vgg16" else build(num_classes=10)
    model = _nontrivial(model).to(dtype)
    n = 2 if dtype == torch.float64 else 1  # the larger two: one sample (test time)
    x = _x(n, 3, 32, 32, seed=1, dtype=dtype)
    targets = torch.tensor([1, 7])[:n]
    for name in CNN_COMPOSITES:
        lrp = LRP(model, name)
        account = lrp.account(x, targets)
        _check(account)
        if name == "epsilon_plus_flat":  # the account changes nothing in the relevance
            torch.testing.assert_close(account.relevance, lrp.relevance(x, targets), rtol=0, atol=0)
        names = [row.name for row in account.rows]
        if arch.startswith("resnet"):  # the canonized residual sums have their own rows
            assert "layer1.0 (sum)" in names and "layer4.1 (sum)" in names
        biases = account.absorbed()["bias"]
        assert (biases.abs() > 1e-3 * account.score.abs()).all()  # the biases matter here


def test_residual_sums_and_functional_pooling_are_rows_of_a_mobilenet():
    torch.manual_seed(0)
    # float32: float64 depthwise convolutions are very slow on CPUs
    model = _nontrivial(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25))
    account = LRP(model, "epsilon_gamma_box").account(_x(2, 3, 32, 32, dtype=torch.float32), [2, 5])
    _check(account)
    names = [row.name for row in account.rows]
    assert names[0] == "classifier.1"  # backward order: the head first
    assert "<model> (functional pooling)" in names and "features.3 (sum)" in names
    merged = next(r for r in account.rows if r.name == "features.0.1")  # a merged batch norm
    assert merged.rule == "Pass()" and torch.equal(merged.relevance_in, merged.relevance_out)


class _Leaky(Rule):
    """Passes on 90 % of what the epsilon rule would, without booking the rest."""

    def __init__(self) -> None:
        self.inner = Epsilon()

    def __call__(self, call, relevance):
        return 0.9 * self.inner(call, relevance)


def test_a_planted_leak_is_reported_on_its_layer_only():
    torch.manual_seed(0)
    model = _nontrivial(seeded(torchvision.models.resnet18(num_classes=4))).double()
    lrp = LRP(model, EpsilonPlusFlat(name_map={"layer2.0.conv2": _Leaky()}))
    account = lrp.account(_x(1, 3, 32, 32), 0)
    assert account.leaking() == ["layer2.0.conv2"]
    row = next(r for r in account.rows if r.name == "layer2.0.conv2")
    # the epsilon rule's own share is booked; the 10 % dropped on top of it is the leak
    torch.testing.assert_close(row.leak, row.relevance_out / 9, rtol=1e-8, atol=1e-12)
    assert row.leak.abs().min() > 0
    assert account.untracked.abs().max() <= 1e-8 * account.score.abs().max()


def test_bias_free_rules_conserve_on_a_biased_network():
    torch.manual_seed(0)
    model = _nontrivial(torchvision.models.resnet18(num_classes=10)).double()
    x = _x(2, 3, 32, 32, seed=2)
    for name in ("epsilon_plus_flat", "epsilon_alpha2_beta1"):
        absorbing = LRP(model, _PRESETS[name](zero_params=("bias",))).account(x, [3, 4])
        _check(absorbing)
        assert absorbing.absorbed()["bias"].abs().max() == 0
        account = LRP(model, _PRESETS[name](zero_params=("bias",), empty="flat")).account(x, [3, 4])
        _check(account)
        totals = account.absorbed()
        assert totals["bias"].abs().max() == 0 and totals["rule"].abs().max() < 1e-12
        torch.testing.assert_close(account.input_total, account.score, rtol=1e-3, atol=0.0)


@pytest.mark.skipif(not has("zennit"), reason="zennit is a test-only dependency")
@pytest.mark.parametrize("rule", ["epsilon", "zplus", "alpha_beta", "gamma", "wsquare"])
def test_bias_free_rules_agree_with_zennit_layer_by_layer(rule):
    """Each rule with ``zero_params=("bias",)`` on a biased conv and linear layer, against
    zennit's rule with ``zero_params=["bias"]`` (one layer: its relevance is the rule's)."""
    from zennit import rules as zr
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite

    from xai.attributions import lrp as ours

    theirs = {
        "epsilon": zr.Epsilon,
        "zplus": zr.ZPlus,
        "alpha_beta": zr.AlphaBeta,
        "gamma": zr.Gamma,
        "wsquare": zr.WSquare,
    }[rule]
    mine = {
        "epsilon": ours.Epsilon,
        "zplus": ours.ZPlus,
        "alpha_beta": ours.AlphaBeta,
        "gamma": ours.Gamma,
        "wsquare": ours.WSquare,
    }[rule]
    torch.manual_seed(0)
    for layer, x in (
        (nn.Conv2d(3, 4, 3, padding=1), _x(2, 3, 6, 6, seed=3)),
        (nn.Linear(12, 4), _x(2, 3, 2, 2, seed=4)),
    ):
        model = (
            nn.Sequential(layer).double()
            if x.shape[-1] == 6
            else nn.Sequential(nn.Flatten(), layer).double()
        )
        with torch.no_grad():
            layer.bias.uniform_(-1, 1)
        zennit_composite = LayerMapComposite(
            [((nn.Conv2d, nn.Linear), theirs(zero_params=["bias"]))]
        )
        onehot = nn.functional.one_hot(torch.tensor([1, 2]), 4).double()
        if isinstance(layer, nn.Conv2d):
            onehot = onehot[:, :, None, None].expand(-1, -1, 6, 6)
        with Gradient(model, zennit_composite) as attributor:
            _, expected = attributor(x, lambda out, mask=onehot: out * mask)
        # our top relevance is output * d score / d output = output * onehot, as zennit's
        composite = Composite([((nn.Conv2d, nn.Linear), mine(zero_params=("bias",)))])
        rel = LRP(model, composite, canonizers=None).relevance(
            x, lambda out, mask=onehot: (out * mask).flatten(1).sum(1)
        )
        torch.testing.assert_close(rel, expected, rtol=1e-8, atol=1e-10)


@pytest.mark.skipif(not has("zennit"), reason="zennit is a test-only dependency")
def test_bias_free_composite_agrees_with_zennit_on_a_resnet():
    from zennit import composites as zc
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer

    torch.manual_seed(0)
    model = _nontrivial(torchvision.models.resnet18(num_classes=10)).double()
    for m in model.modules():  # zennit's merge leaves x / sqrt(1 + eps); compare rules alone
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    x = _x(2, 3, 32, 32, seed=6)
    onehot = nn.functional.one_hot(torch.tensor([2, 9]), 10).double()
    theirs = zc.EpsilonPlusFlat(zero_params=["bias"], canonizers=[ResNetCanonizer()])
    with Gradient(model, theirs) as attributor:
        _, expected = attributor(x, lambda out: out * onehot)
    rel = LRP(model, EpsilonPlusFlat(zero_params=("bias",))).relevance(x, [2, 9])
    err = (rel - expected).norm() / expected.norm()
    assert err <= 1e-6, f"relative error {float(err):.2e}"


@pytest.mark.real_model
def test_real_mobilenet_account_and_bias_free_conservation(mobilenet):
    from xai.data import sample_batch

    x, _ = sample_batch(["chelsea", "coffee"], size=64)
    model = mobilenet  # float32: float64 depthwise convolutions are very slow on CPUs
    targets = model(x).argmax(1)
    for name in CNN_COMPOSITES:
        _check(LRP(model, name).account(x, targets))
    for name in ("epsilon_plus_flat", "epsilon_alpha2_beta1"):
        # bias-free z+ normalizers can be tiny: the default stabilizer 1e-6 absorbs ~1e-3 of
        # the score on this network, 1e-9 almost nothing (empty outputs go flat, not to 1/eps)
        composite = _PRESETS[name](zero_params=("bias",), empty="flat", stabilizer=1e-9)
        account = LRP(model, composite).account(x, targets)
        _check(account)
        torch.testing.assert_close(account.input_total, account.score, rtol=1e-3, atol=0.0)


def test_empty_flat_relevance_matches_the_account():
    """``empty="flat"`` spreads the relevance of z+ outputs without contributions in
    ``relevance`` too, not only in ``account`` (the in-place stabilization of a non-negative
    normalizer once hid the empty outputs from the check), and then the input keeps the score.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 8 * 8, 3),
    ).double()
    x = _x(1, 1, 8, 8, seed=1)
    x[..., :4, :4] = -5.0  # dead windows: outputs whose z+ normalizer is zero
    lrp = LRP(model, EpsilonPlusFlat(1e-12, 1e-12, zero_params=("bias",), empty="flat"))
    account = lrp.account(x, [1])
    assert account.absorbed()["rule"].abs().max() < 1e-12
    torch.testing.assert_close(lrp.relevance(x, [1]), account.relevance, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(account.input_total, account.score, rtol=1e-9, atol=0.0)
