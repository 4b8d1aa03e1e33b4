"""LRP: closed forms, conservation, agreement with zennit 0.5.1, canonizers, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from tests._models import RaisingNet, TinyConvNet, seeded
from tests.conftest import has, hook_count
from xai.adapter.rules import Call
from xai.attributions.lrp import (
    LRP,
    AlphaBeta,
    Composite,
    Epsilon,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    Flat,
    Gradient,
    MergeBatchNorm,
    ResidualCanonizer,
    Rule,
    UniformEpsilon,
    WSquare,
    ZBox,
    ZPlus,
)
from xai.attributions.lrp.canonizers import merge_batch_norm
from xai.attributions.lrp.rules import input_vjp


def _x(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class VGGish(nn.Module):
    """conv-ReLU(inplace)-maxpool-conv-BN-ReLU-avgpool-flatten-linear-ReLU-dropout-linear."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=bias),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1, bias=bias),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32, 16, bias=bias),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(16, 5, bias=bias),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _bias_free(model: nn.Module) -> nn.Module:
    """Zero every bias and make batch norms bias-free (zero mean and shift): conservation."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data.zero_()
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.bias.data.zero_()
    return model


def _small_resnet():
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    torch.manual_seed(0)
    basic = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=5)
    basic.layer2 = nn.Sequential(basic.layer2[0], Bottleneck(128, 32))  # also a Bottleneck
    return seeded(basic)


def _small_mobilenet():
    torch.manual_seed(0)
    return seeded(torchvision.models.mobilenet_v2(num_classes=5, width_mult=0.25))


# --- closed forms ---------------------------------------------------------------------------


def test_lrp0_equals_gradient_times_input():
    model = seeded(VGGish())
    x = _x(3, 3, 16, 16)
    rel = LRP(model, UniformEpsilon(0.0), canonizers=None).relevance(x, [0, 2, 4])
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (grad,) = torch.autograd.grad(out[torch.arange(3), [0, 2, 4]].sum(), xg)
    torch.testing.assert_close(rel, grad * x, rtol=1e-9, atol=1e-10)


def test_heatmap_is_the_channel_sum_and_init_one_divides_by_the_logit():
    model = seeded(VGGish())
    x = _x(2, 3, 16, 16)
    lrp = LRP(model, "epsilon_plus_flat")
    rel = lrp.relevance(x, 1)
    torch.testing.assert_close(lrp(x, 1), rel.sum(1))
    ones = LRP(model, "epsilon_plus_flat", init="one").relevance(x, 1)
    logit = model(x)[:, 1]
    torch.testing.assert_close(ones * logit[:, None, None, None], rel, rtol=1e-9, atol=1e-12)


# --- conservation ---------------------------------------------------------------------------

CONSERVING = {
    "epsilon": lambda: UniformEpsilon(1e-12),
    "epsilon_plus_flat": lambda: EpsilonPlusFlat(epsilon=1e-12, stabilizer=1e-12),
    "epsilon_gamma_box": lambda: EpsilonGammaBox(-3.0, 3.0, epsilon=1e-12, stabilizer=1e-12),
}


CONSERVATION_CASES = [("vgg", name) for name in sorted(CONSERVING)] + [
    ("resnet", "epsilon_gamma_box"),
    ("resnet", "epsilon_plus_flat"),
    ("mobilenet", "epsilon_plus_flat"),
]


@pytest.mark.parametrize(("arch", "composite"), CONSERVATION_CASES)
def test_conservation_on_bias_free_networks(arch, composite):
    model = {
        "vgg": lambda: seeded(VGGish()),
        "resnet": _small_resnet,
        "mobilenet": _small_mobilenet,
    }[arch]()
    model = _bias_free(model)
    # float64 depthwise convolutions are slow on CPU: MobileNetV2 gets a 16 px input
    size = 16 if arch == "mobilenet" else 32
    x = _x(2, 3, size, size, seed=3)
    targets = [1, 4]
    logits = model(x)[torch.arange(2), targets]
    rel = LRP(model, CONSERVING[composite]()).relevance(x, targets)
    torch.testing.assert_close(rel.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-10)


def test_zbox_conserves_even_with_a_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double()
    x = _x(2, 3, 8, 8).clamp(-1, 1)
    comp = Composite(
        [
            (nn.Conv2d, ZBox(-1.0, 1.0, stabilizer=1e-12)),
            (nn.Linear, Epsilon(1e-12, zero_params=("bias",))),
        ]
    )
    rel = LRP(model, comp).relevance(x, [0, 2])
    # the dense layer's rule ignores its bias, so the whole logit reaches the conv outputs; the
    # conv's own bias cancels in z^B, so the input relevance still sums to the logit
    torch.testing.assert_close(
        rel.flatten(1).sum(1), model(x)[torch.arange(2), [0, 2]], rtol=1e-8, atol=1e-10
    )


# --- rule properties ------------------------------------------------------------------------


def test_alpha_beta_must_conserve():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(-1.0, -2.0)


def test_zplus_gives_nonnegative_relevance_for_nonnegative_inputs():
    model = seeded(VGGish())
    x = _x(2, 3, 16, 16).abs()
    comp = Composite([((nn.Conv2d, nn.Linear), ZPlus())])
    rel = LRP(model, comp).relevance(x, lambda out: out.relu()[:, 0] + 1.0)
    assert (rel >= -1e-12).all()


class _ShiftedRelu(nn.Module):
    """conv - ReLU - shift by -0.5 (in place or not) - conv - flatten - linear."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x):
        h = self.relu(self.conv1(x))
        h = h.sub_(0.5) if self.in_place else h - 0.5
        return self.head(self.conv2(h))


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_gamma_box"])
def test_relu_outputs_changed_in_place_are_still_split_by_sign(composite):
    # rules skip the negative part of inputs that come straight from a ReLU; an in-place
    # change of the ReLU's output (here a shift making it negative) must be noticed
    torch.manual_seed(0)
    ours = seeded(_ShiftedRelu(in_place=True))
    twin = _ShiftedRelu(in_place=False).double().eval()
    twin.load_state_dict(ours.state_dict())
    x = _x(2, 3, 6, 6, seed=3)
    rel = LRP(ours, composite).relevance(x, 1)
    torch.testing.assert_close(rel, LRP(twin, composite).relevance(x, 1), rtol=1e-12, atol=1e-12)


def test_flat_and_wsquare_do_not_depend_on_input_values():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten()).double()
    weights = torch.rand(4 * 8 * 8, dtype=torch.float64)
    a, b = _x(1, 3, 8, 8, seed=1), _x(1, 3, 8, 8, seed=2)
    for rule in (Flat(), WSquare()):
        lrp = LRP(conv, Composite([], first_map=[(nn.Conv2d, rule)]), init="one")
        # the same relevance at the conv output (set by the target's weights) gives the same
        # input relevance, whatever the input values
        ra = lrp.relevance(a, lambda out, w=weights: (out * w).sum(1))
        rb = lrp.relevance(b, lambda out, w=weights: (out * w).sum(1))
        torch.testing.assert_close(ra, rb)
        assert ra.abs().sum() > 0


def test_max_pooling_is_winner_take_all():
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)).double()
    x = _x(1, 3, 4, 4).abs()
    rel = LRP(model, UniformEpsilon(1e-12)).relevance(x, 0)
    winners = torch.zeros_like(x, dtype=torch.bool)
    idx = nn.functional.max_pool2d(x, 2, return_indices=True)[1]
    winners.view(1, 3, -1).scatter_(2, idx.view(1, 3, -1), True)
    assert (rel[~winners] == 0).all() and (rel[winners] != 0).all()


# --- agreement with zennit ------------------------------------------------------------------


def _zennit_inverted_residual():
    from torchvision.models.mobilenetv2 import InvertedResidual
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def forward(self, x):
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

    def head(self, x):  # the functional pooling of MobileNetV2.forward as a module
        return self.classifier(torch.flatten(self.canonizer_pool(self.features(x)), 1))

    def attribute_map(name, module):
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": forward.__get__(module), "canonizer_sum": Sum()}
        if isinstance(module, torchvision.models.MobileNetV2):
            return {"forward": head.__get__(module), "canonizer_pool": nn.AdaptiveAvgPool2d(1)}
        return None

    return AttributeCanonizer(attribute_map)


def _zero_bn_eps(model):
    # zennit's merge leaves the batch norm at x / sqrt(1 + eps), a relative error of about
    # eps / 2 per batch norm in its forward; ours is exact. eps = 0 compares the rules alone.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    return model


ZENNIT_CASES = [
    "vgg11_bn/epsilon_gamma_box",
    "resnet18/epsilon_plus_flat",
    "mobilenet_v2/epsilon_alpha2_beta1_flat",
]


@pytest.mark.slow
@pytest.mark.skipif(not has("zennit"), reason="zennit is a test-only dependency")
@pytest.mark.parametrize("case", ZENNIT_CASES)
def test_agrees_with_zennit(case):
    from zennit import composites as zc
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    arch, composite = case.split("/")
    torch.manual_seed(0)
    if arch == "vgg11_bn":
        model = torchvision.models.vgg11_bn(num_classes=10)
        model.classifier = nn.Sequential(  # the 25088x4096 head would dominate the run time
            nn.Linear(512 * 7 * 7, 32),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(32, 32),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(32, 10),
        )
        canonizers = [VGGCanonizer()]
    elif arch == "resnet18":
        model = torchvision.models.resnet18(num_classes=10)
        canonizers = [ResNetCanonizer()]
    else:
        model = torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25)
        canonizers = [SequentialMergeBatchNorm(), _zennit_inverted_residual()]
    model = _zero_bn_eps(seeded(model))
    size = 16 if arch == "mobilenet_v2" else 32  # float64 depthwise convs are slow on CPU
    x = _x(2, 3, size, size, seed=5)
    targets = torch.tensor([1, 7])
    if composite == "epsilon_gamma_box":
        theirs, ours = (
            zc.EpsilonGammaBox(-3.0, 3.0, canonizers=canonizers),
            EpsilonGammaBox(-3.0, 3.0),
        )
    elif composite == "epsilon_plus_flat":
        theirs, ours = zc.EpsilonPlusFlat(canonizers=canonizers), EpsilonPlusFlat()
    else:
        theirs, ours = zc.EpsilonAlpha2Beta1Flat(canonizers=canonizers), EpsilonAlpha2Beta1Flat()
    state = copy.deepcopy(model.state_dict())
    onehot = nn.functional.one_hot(targets, 10).double()
    with Gradient(model, theirs) as attributor:
        _, expected = attributor(x, lambda out: out * onehot)
    for key, value in model.state_dict().items():  # zennit restored the model
        assert torch.equal(value, state[key])
    rel = LRP(model, ours).relevance(x, targets)
    err = (rel - expected).norm() / expected.norm()
    assert err <= 1e-4, f"relative error {float(err):.2e}"
    assert torch.isfinite(rel).all() and rel.abs().sum() > 0


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv1d(6, 4, 1),
        nn.Conv2d(6, 4, 1, bias=False),
        nn.Conv3d(6, 4, 1),
        nn.Conv2d(6, 4, 1, stride=2),  # strided 1x1: the transposed convolution
        nn.Conv2d(6, 6, 1, groups=3),  # grouped 1x1: the transposed convolution
        nn.Conv2d(6, 4, 3, padding=1),
    ],
)
def test_input_vjp_is_the_convolutions_input_gradient(conv):
    # the rules' backward (1x1 convolutions take a shortcut) against autograd
    conv = conv.double()
    x = _x(2, 6, *([5] * (conv.weight.dim() - 2)), seed=1).requires_grad_(True)
    out = conv(x)
    grad = _x(*out.shape, seed=2)
    (expected,) = torch.autograd.grad(out, x, grad)
    got = input_vjp(conv, x.shape, conv.weight.detach(), grad)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# --- canonizers -----------------------------------------------------------------------------


def test_virtual_batch_norm_merge_reproduces_the_layer_pair():
    torch.manual_seed(0)
    model = seeded(nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)))
    weight, bias = merge_batch_norm(model[0].weight.detach(), None, model[1])
    x = _x(2, 3, 6, 6)
    torch.testing.assert_close(nn.functional.conv2d(x, weight, bias), model(x))


def test_model_is_unchanged_during_and_after_and_forward_is_not_patched():
    model = _small_resnet()
    state = copy.deepcopy(model.state_dict())
    seen = {}

    def spy(out):
        # runs inside the explanation: parameters are never overwritten, not even temporarily
        seen["during"] = all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        seen["patched"] = any("forward" in vars(m) for m in model.modules())
        return out[:, 0]

    LRP(model, "epsilon_plus_flat").relevance(_x(1, 3, 32, 32), spy)
    assert seen == {"during": True, "patched": False}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert hook_count(model) == 0


class _Boom(Rule):
    def __call__(self, call: Call, relevance):
        raise RuntimeError("rule boom")


def test_hooks_removed_after_exceptions_in_forward_and_backward():
    net = seeded(RaisingNet())
    lrp = LRP(net, Composite([((nn.Conv2d, nn.Linear), Epsilon())], name_map={"trap": Gradient()}))
    net.trap.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        lrp(_x(2, 3, 16, 16))
    assert hook_count(net) == 0
    model = seeded(VGGish())
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="rule boom"):
        LRP(model, Composite([(nn.Linear, _Boom()), (nn.Conv2d, Epsilon())]))(_x(1, 3, 16, 16))
    assert hook_count(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_inplace_relu_and_residual_inplace_add_are_handled():
    # TinyConvNet has ReLU(inplace=True) after a conv-BN pair; ResNet blocks do `out += identity`
    for model in (seeded(TinyConvNet()), _small_resnet()):
        x = _x(2, 3, 32, 32)
        before = x.clone()
        rel = LRP(model, UniformEpsilon(0.0)).relevance(x, 0)
        assert torch.equal(x, before) and torch.isfinite(rel).all()
        # LRP-0 with merged batch norms and proportional sums on a ReLU network: the
        # relevance is gradient x input of the canonized network, which equals the model's
        # own gradient x input only without residual sums
        if isinstance(model, TinyConvNet):
            xg = x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(model(xg)[:, 0].sum(), xg)
            torch.testing.assert_close(rel, grad * x, rtol=1e-8, atol=1e-10)


class _InPlaceChain(nn.Module):
    """In-place ReLUs after conv-BN, after a conv, after another in-place ReLU, and on a
    conv output that another layer (``side``) has already read."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.conv3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu1, self.relu2 = nn.ReLU(inplace), nn.ReLU(inplace)
        self.relu3, self.relu4 = nn.ReLU6(inplace), nn.ReLU(inplace)
        self.side = nn.Conv2d(4, 4, 1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu3(self.relu2(self.conv2(h)))
        g = self.conv3(h)
        s = self.side(g)
        return self.head(self.relu4(g) + s)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box", "epsilon"])
def test_inplace_relus_that_overwrite_their_input_give_the_out_of_place_relevance(composite):
    # an in-place ReLU works on its input itself (no copy) when no rule reads what it
    # overwrites (z+ convolutions); the epsilon and gamma rules read the layer output, and
    # `side` has read conv3's output: those ReLUs get a copy
    ours = seeded(_InPlaceChain(inplace=True))
    twin = _InPlaceChain(inplace=False).double().eval()
    twin.load_state_dict(ours.state_dict())
    state = copy.deepcopy(ours.state_dict())
    x = _x(2, 3, 6, 6, seed=4)
    before = x.clone()
    lrp = LRP(ours, composite)
    rel = lrp.relevance(x, 2)
    torch.testing.assert_close(rel, LRP(twin, composite).relevance(x, 2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lrp.account(x, 2).relevance, rel, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, before) and hook_count(ours) == 0
    assert all(torch.equal(v, state[k]) for k, v in ours.state_dict().items())


def test_wrong_residual_description_is_detected():
    from torchvision.models.resnet import BasicBlock

    model = _small_resnet()
    wrong = ResidualCanonizer(BasicBlock, "bn1", "downsample", torch.relu)
    with pytest.raises(RuntimeError, match="does not compute post"):
        LRP(model, canonizers=[MergeBatchNorm(), wrong, *_resnet_bottleneck_only()])(
            _x(1, 3, 32, 32)
        )
    assert hook_count(model) == 0


def _resnet_bottleneck_only():
    from torchvision.models.resnet import Bottleneck

    return [ResidualCanonizer(Bottleneck, "bn3", "downsample", torch.relu)]


# --- errors ---------------------------------------------------------------------------------


def test_unsupported_layer_is_refused_with_the_supported_set():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LayerNorm(4 * 6 * 6), nn.Linear(4 * 6 * 6, 2)
    ).double()
    with pytest.raises(ValueError, match=r"no rule for module '2' \(LayerNorm\).*Conv2d"):
        LRP(model)(_x(1, 3, 8, 8))
    assert hook_count(model) == 0


def test_uncanonized_residual_block_is_refused():
    model = _small_resnet()
    with pytest.raises(ValueError, match="BasicBlock.*canonizers='auto'"):
        LRP(model, canonizers=[MergeBatchNorm()])(_x(1, 3, 32, 32))
    mobile = _small_mobilenet()
    with pytest.raises(ValueError, match="InvertedResidual"):
        LRP(mobile, canonizers=None)(_x(1, 3, 32, 32))


def test_bad_options():
    model = seeded(VGGish())
    with pytest.raises(ValueError, match="unknown composite"):
        LRP(model, "epsilon_plus_flatt")
    with pytest.raises(ValueError, match="init"):
        LRP(model, init="softmax")
    with pytest.raises(TypeError, match="Canonizer"):
        LRP(model, canonizers=[object()])
    with pytest.raises(ValueError, match="needs a linear layer"):
        LRP(model, Composite([(nn.MaxPool2d, ZPlus())]))(_x(1, 3, 16, 16))


@pytest.mark.real_model
def test_real_mobilenet_relevance_is_mostly_positive_and_conservative(mobilenet):
    from xai.data import sample_batch

    x, _ = sample_batch(["chelsea"], size=112)  # 112 px keeps the test fast
    lrp = LRP(mobilenet, "epsilon_plus_flat")
    rel = lrp.relevance(x)
    logit = mobilenet(x).max(1).values
    total = rel.flatten(1).sum(1)
    assert torch.isfinite(rel).all()
    assert (total > 0).all() and (total <= logit * 1.5).all()


@pytest.mark.real_model
def test_real_mobilenet_lrp_and_sr_maps_peak_on_the_cat(mobilenet):
    """chelsea's 224 px crop: the face box (rows 40-224, cols 40-224, the eyes-to-nose region
    measured once for the Grad-CAM test) must hold the maxima of a smoothed LRP map and of
    the SR map; the fur strip at the left edge and the top rows must not."""
    from xai.attributions import SalientRelevance
    from xai.data import sample_batch

    x, _ = sample_batch(["chelsea"])
    lrp = LRP(mobilenet, "epsilon_plus_flat")
    heat = lrp(x)[0].abs()
    # LRP maps are pixel-sparse: compare 16x16 block sums, not single pixels
    blocks = torch.nn.functional.avg_pool2d(heat[None, None], 16)[0, 0]
    r, c = divmod(int(blocks.argmax()), blocks.shape[1])
    assert 40 <= r * 16 + 8 < 224 and 40 <= c * 16 + 8 < 224, (r, c)
    sr = SalientRelevance(lrp, longest_side=64)(x)[0]
    r, c = divmod(int(sr.argmax()), 224)
    assert 40 <= r < 224 and 40 <= c < 224, (r, c)


def test_no_activation_outlives_the_explanation():
    """The rewired modules' autograd nodes must not keep the graph alive: a node that held its own
    output tensor (whose grad_fn is that node) formed a cycle through C++ that gc cannot free,
    so every LRP call leaked all activations (0.86 GB after one report-card method)."""
    import gc

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 37, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(37, 37, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(37, 4),
    ).eval()
    x = torch.rand(5, 3, 12, 12)
    LRP(model, "epsilon_plus")(x, target=1)
    gc.collect()
    alive = [
        o
        for o in gc.get_objects()
        if isinstance(o, torch.Tensor) and o.dim() == 4 and tuple(o.shape[:2]) == (5, 37)
    ]
    assert not alive, f"{len(alive)} activations of the explained batch are still alive"
