"""NormGrad, the unified spatial-contribution framework and meta-saliency (Rebuffi et al. 2020).

Oracles: per-location weight gradients of a *locally connected* copy of the (virtual or real)
convolution, taken with ``torch.autograd`` (every location has its own weight tensor, so its
gradient is exactly that location's contribution G_u); our Grad-CAM / HiResCAM / Saliency and
captum's InputXGradient for the unified formula; an explicit SGD step on a model copy for
meta-saliency; ``scipy.stats.spearmanr`` for class sensitivity.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._models import GapLinear, TinyConvNet, seeded
from tests.conftest import hook_count
from xai.adapter import ModelAdapter
from xai.attributions import GradCAM, HiResCAM, Saliency, normalize_per_sample, upsample
from xai.attributions.meta_saliency import MetaSaliency
from xai.attributions.normgrad import (
    LAYER_SETS,
    PRESETS,
    NormGrad,
    SelectiveNormGrad,
    SpatialContribution,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny convolutions are many times slower with several threads on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# oracle: a locally connected convolution with one weight (and bias) per sample and location
# ---------------------------------------------------------------------------------------------
class LocallyConnected(nn.Module):
    """A conv whose weight is repeated for every (sample, output location) as a parameter.

    With every copy equal to ``weight`` the forward equals ``F.conv2d`` (zero padding); the
    autograd gradient of copy (b, u) is location u's contribution to sample b's weight gradient.
    """

    def __init__(self, weight, bias, *, batch, out_hw, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        c_out, c_in_g, kh, kw = weight.shape
        self.geom = dict(kernel_size=(kh, kw), stride=stride, padding=padding, dilation=dilation)
        self.groups, self.c_out, self.out_hw = groups, c_out, out_hw
        n_loc = out_hw[0] * out_hw[1]
        w = weight.detach().reshape(groups, c_out // groups, c_in_g * kh * kw)
        self.weight = nn.Parameter(w.expand(batch, n_loc, *w.shape).clone())
        b = torch.zeros(c_out, dtype=weight.dtype) if bias is None else bias.detach()
        self.bias = nn.Parameter(b.expand(batch, n_loc, c_out).clone())

    def forward(self, x):
        patches = F.unfold(x, **self.geom)  # (B, C_in k k, L)
        bsz = x.shape[0]
        patches = patches.view(bsz, self.groups, -1, patches.shape[-1])
        out = torch.einsum("blgoi,bgil->bgol", self.weight, patches).reshape(bsz, self.c_out, -1)
        out = out + self.bias.transpose(1, 2)
        return out.view(bsz, self.c_out, *self.out_hw)

    def contributions(self, with_weight=True, with_bias=False):
        """Per (sample, location) flattened gradient entries ``(B, h, w, n)`` (after backward)."""
        parts = []
        bsz, n_loc = self.weight.shape[:2]
        if with_weight:
            parts.append(self.weight.grad.reshape(bsz, n_loc, -1))
        if with_bias:
            parts.append(self.bias.grad.reshape(bsz, n_loc, -1))
        return torch.cat(parts, -1).view(bsz, *self.out_hw, -1)


def aggregate(entries, aggregation):
    if aggregation == "norm":
        return entries.norm(dim=-1)
    if aggregation == "sum":
        return entries.sum(-1)
    if aggregation == "selective":
        return F.relu(entries).norm(dim=-1)
    if aggregation == "max":
        return entries.amax(-1)
    return entries.abs().amax(-1)


def identity_kernel(channels, virtual_layer):
    """Weight of the virtual identity layer and its groups."""
    if virtual_layer == "conv1x1":
        return torch.eye(channels, dtype=F64)[:, :, None, None], 1, 0
    if virtual_layer == "conv3x3":
        w = torch.zeros(channels, channels, 3, 3, dtype=F64)
        w[range(channels), range(channels), 1, 1] = 1
        return w, 1, 1
    if virtual_layer == "conv3x3_depthwise":
        w = torch.zeros(channels, 1, 3, 3, dtype=F64)
        w[:, 0, 1, 1] = 1
        return w, channels, 1
    # "scaling" (a per-channel scale) and "bias" (bias only): a depthwise 1x1 identity
    return torch.ones(channels, 1, 1, 1, dtype=F64), channels, 0


class Head(nn.Module):
    """A spatially non-trivial head (strided conv, ReLU, flatten, linear) for 8x8 maps."""

    def __init__(self, channels=4, n_classes=5):
        super().__init__()
        self.conv = nn.Conv2d(channels, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, n_classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).flatten(1))


class Net(nn.Module):
    def __init__(self, groups=2, bias=True):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh())
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=groups, bias=bias)
        self.head = Head()

    def forward(self, x):
        return self.head(self.conv(self.features(x)))


@pytest.fixture
def images():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=F64)


TARGETS = [1, 4]


VIRTUAL = [
    (v, b)
    for v in ("conv1x1", "conv3x3", "conv3x3_depthwise", "scaling", "bias")
    for b in (False, True)
    if not (b and v in ("scaling", "bias"))
]


@pytest.mark.parametrize("aggregation", ["norm", "sum", "selective", "max", "max_abs"])
@pytest.mark.parametrize(("virtual_layer", "with_bias"), VIRTUAL)
def test_virtual_layers_equal_per_location_autograd_weight_gradients(
    virtual_layer, aggregation, with_bias, images
):
    net = seeded(Net())
    # the probe: a locally connected identity layer inserted after `net.conv`
    weight, groups, pad = identity_kernel(4, virtual_layer)
    probe = LocallyConnected(weight, None, batch=2, out_hw=(8, 8), padding=pad, groups=groups)
    layer_out = net.conv(net.features(images))
    torch.testing.assert_close(probe(layer_out), layer_out, rtol=0, atol=1e-14)  # identity
    logits = net.head(probe(layer_out))
    logits.gather(1, torch.tensor(TARGETS)[:, None]).sum().backward()
    entries = probe.contributions(
        with_weight=virtual_layer != "bias", with_bias=with_bias or virtual_layer == "bias"
    )
    expected = aggregate(entries, aggregation)

    method = SpatialContribution(
        net,
        "conv",
        virtual_layer=virtual_layer,
        aggregation=aggregation,
        with_bias=with_bias,
        upsample=False,
    )
    torch.testing.assert_close(method(images, TARGETS), expected, rtol=1e-10, atol=1e-13)


def test_normgrad_is_activation_norm_times_gradient_norm(images):
    net = seeded(Net())
    act = net.conv(net.features(images)).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(net.head(act)[:, 2].sum(), act)
    maps = NormGrad(net, "conv", upsample=False)(images, 2)
    torch.testing.assert_close(maps, act.norm(dim=1) * grad.norm(dim=1), rtol=1e-12, atol=0)
    with_bias = NormGrad(net, "conv", with_bias=True, upsample=False)(images, 2)
    ref = grad.norm(dim=1) * (act.pow(2).sum(1) + 1).sqrt()
    torch.testing.assert_close(with_bias, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("aggregation", ["norm", "sum", "selective", "max", "max_abs"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_proper_equals_per_location_gradient_of_the_real_conv(
    aggregation, with_bias, groups, images
):
    net = seeded(Net(groups=groups))
    conv = net.conv
    probe = LocallyConnected(
        conv.weight, conv.bias, batch=2, out_hw=(8, 8), stride=2, padding=1, groups=groups
    )
    feats = net.features(images)
    torch.testing.assert_close(probe(feats), conv(feats), rtol=1e-12, atol=1e-13)
    logits = net.head(probe(feats))
    logits.gather(1, torch.tensor(TARGETS)[:, None]).sum().backward()
    expected = aggregate(probe.contributions(with_bias=with_bias), aggregation)
    method = SpatialContribution(
        net,
        "conv",
        virtual_layer="proper",
        aggregation=aggregation,
        with_bias=with_bias,
        upsample=False,
    )
    torch.testing.assert_close(method(images, TARGETS), expected, rtol=1e-10, atol=1e-13)


def test_proper_on_a_pointwise_conv_equals_conv1x1_on_its_input():
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(5, 6, 1),
        nn.Flatten(),
        nn.Linear(6 * 36, 3),
    )
    net = seeded(net)
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    proper = NormGrad(net, "2", virtual_layer="proper", upsample=False)(x, 1)
    a = net[1](net[0](x)).detach()
    out = net[2](a).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(net[4](net[3](out))[:, 1].sum(), out)
    torch.testing.assert_close(proper, a.norm(dim=1) * g.norm(dim=1), rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# the unified formula reproduces other methods
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny():
    return seeded(TinyConvNet())


@pytest.fixture
def inputs():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=F64)


def test_grad_cam_preset_reproduces_grad_cam(tiny, inputs):
    ours = SpatialContribution.from_preset("grad_cam", tiny, "features")(inputs, [0, 2, 4])
    ref = GradCAM(tiny, "features")(inputs, [0, 2, 4])
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_scaling_sum_is_gradient_x_input_at_a_layer(tiny, inputs):
    gxi = SpatialContribution.from_preset("gradient_x_input", tiny, "features")
    raw = gxi(inputs, 1)
    assert (raw < 0).any(), "Gradient x Input is signed"
    with_relu = SpatialContribution(
        tiny, "features", **{**PRESETS["gradient_x_input"], "relu": True}
    )(inputs, 1)
    ref = HiResCAM(tiny, "features")(inputs, 1)  # ReLU(sum_c g * x)
    torch.testing.assert_close(with_relu, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    low = SpatialContribution(tiny, "features", upsample=False, **PRESETS["gradient_x_input"])
    low_relu = SpatialContribution(
        tiny, "features", upsample=False, relu=True, **PRESETS["gradient_x_input"]
    )
    torch.testing.assert_close(F.relu(low(inputs, 1)), low_relu(inputs, 1), rtol=0, atol=0)


def test_presets_at_the_input_reproduce_saliency_and_captum_input_x_gradient(tiny, inputs):
    from captum.attr import InputXGradient

    wrapped = nn.Sequential(nn.Identity(), tiny)  # layer "0" outputs the input itself
    gxi = SpatialContribution.from_preset("gradient_x_input", wrapped, "0")(inputs, 3)
    ref = InputXGradient(tiny).attribute(inputs.clone(), target=3).sum(1)
    torch.testing.assert_close(gxi, ref, rtol=1e-10, atol=1e-14)
    grad = SpatialContribution.from_preset("gradient", wrapped, "0")(inputs, 3)
    torch.testing.assert_close(grad, Saliency(tiny)(inputs, 3), rtol=1e-10, atol=1e-14)


def test_gap_linear_normgrad_is_class_agnostic_but_selective_is_not():
    net = seeded(GapLinear())
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(0), dtype=F64)
    ng = NormGrad(net, "act", upsample=False)
    a, b = ng(x, 0), ng(x, 3)
    torch.testing.assert_close(normalize_per_sample(a), normalize_per_sample(b))
    # closed form: the gradient is W_c / N everywhere, so the map is ||W_c|| / N * ||x_u||
    act = net.act(net.conv(x))
    ref = net.fc.weight[0].norm() / 100 * act.norm(dim=1)
    torch.testing.assert_close(a, ref.detach(), rtol=1e-12, atol=0)
    sel = SelectiveNormGrad(net, "act", upsample=False)
    assert not torch.allclose(normalize_per_sample(sel(x, 0)), normalize_per_sample(sel(x, 3)))


# ---------------------------------------------------------------------------------------------
# several layers
# ---------------------------------------------------------------------------------------------
LAYERS = ["features.1", "features"]


def test_multi_layer_maps_combine_single_layer_maps(tiny, inputs):
    singles = [NormGrad(tiny, layer)(inputs, 2) for layer in LAYERS]
    norm = [normalize_per_sample(m) for m in singles]
    both = NormGrad(tiny, LAYERS)
    fused = both(inputs, 2)
    torch.testing.assert_close(fused, norm[0] * norm[1], rtol=1e-12, atol=1e-15)
    assert torch.equal(fused, both(inputs, 2))  # deterministic
    assert fused.min() >= 0 and fused.max() <= 1
    weighted = NormGrad(tiny, LAYERS, fusion="geometric_mean", layer_weights=[1.0, 3.0])
    ref = norm[0] ** 0.25 * norm[1] ** 0.75
    torch.testing.assert_close(weighted(inputs, 2), ref, rtol=1e-12, atol=1e-15)
    mean = NormGrad(tiny, LAYERS, fusion="mean", layer_weights="linear")  # weights 1/2, 1
    torch.testing.assert_close(mean(inputs, 2), (norm[0] + 2 * norm[1]) / 3, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("arch", sorted(LAYER_SETS))
def test_layer_sets_name_layers_of_the_torchvision_models(arch):
    import torchvision

    with torch.device("meta"):  # no memory, no weights
        model = getattr(torchvision.models, arch)(weights=None)
    assert NormGrad(model, LAYER_SETS[arch]).layers == LAYER_SETS[arch]


def test_one_layer_in_a_list_equals_the_single_layer(tiny, inputs):
    torch.testing.assert_close(
        NormGrad(tiny, ["features"])(inputs), NormGrad(tiny, "features")(inputs), rtol=0, atol=0
    )


def test_all_layers_come_from_one_forward_pass(tiny, inputs):
    calls = []
    from xai.adapter import hooks

    with hooks(forward={tiny: lambda m, a, o: calls.append(1)}):
        NormGrad(tiny, ["features.0", "features.1", "features"])(inputs)
    assert len(calls) == 1


def test_layer_resolution_and_upsampling(tiny, inputs):
    low = NormGrad(tiny, "features", upsample=False)(inputs)
    assert low.shape == (3, 16, 16)
    torch.testing.assert_close(upsample(low, (32, 32)), NormGrad(tiny, "features")(inputs))


# ---------------------------------------------------------------------------------------------
# the adapter's opt-in input capture (used by virtual_layer="proper")
# ---------------------------------------------------------------------------------------------
def test_capture_records_layer_inputs_only_when_asked(tiny, inputs):
    adapter = ModelAdapter(tiny)
    with adapter.capture(["features.2"]) as cap:
        adapter.forward(inputs, cap)
        assert cap.inputs == {}
    with adapter.capture(["features.2"], inputs=True) as cap:
        adapter.forward(inputs, cap)
        expected = tiny.features[1](tiny.features[0](inputs))
        torch.testing.assert_close(cap.inputs["features.2"], expected)
        cap.backward(adapter.scores(cap.outputs, 0))
    assert cap.inputs == {} and hook_count(tiny) == 0


def test_capture_refuses_an_input_modified_in_place_after_the_layer():
    class Overwrites(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            h = x * 1.0
            out = self.conv(h)
            h.mul_(2)  # changes the conv's input after the conv ran
            return (out + h).mean((2, 3))

    net = seeded(Overwrites())
    x = torch.rand(1, 3, 4, 4, dtype=F64)
    with pytest.raises(RuntimeError, match="modified in place"):
        NormGrad(net, "conv", virtual_layer="proper")(x, 0)
    assert hook_count(net) == 0


# ---------------------------------------------------------------------------------------------
# meta-saliency
# ---------------------------------------------------------------------------------------------
def test_meta_saliency_leaves_the_model_unchanged_and_equals_a_manual_sgd_step(tiny, inputs):
    tiny.features[3].train()
    tiny.fc.weight.requires_grad_(False)
    state = copy.deepcopy(tiny.state_dict())
    flags = [(m, m.training) for m in tiny.modules()]
    req = [(p, p.requires_grad) for p in tiny.parameters()]
    meta = MetaSaliency(NormGrad(tiny, "features"), lr=0.05)
    maps = meta(inputs, [0, 3, 1])
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(m.training == t for m, t in flags)
    assert all(p.requires_grad == r for p, r in req)
    assert all(p.grad is None for p in tiny.parameters()) and hook_count(tiny) == 0

    # reference: one explicit SGD step on the cross-entropy of each sample, on a copy
    for i, cls in enumerate([0, 3, 1]):
        model = copy.deepcopy(tiny).eval()
        for p in model.parameters():
            p.requires_grad_(True)
        loss = F.cross_entropy(model(inputs[i : i + 1]), torch.tensor([cls]))
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p -= 0.05 * g
        ref = NormGrad(model, "features")(inputs[i : i + 1], cls)
        torch.testing.assert_close(maps[i : i + 1], ref, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(maps, NormGrad(tiny, "features")(inputs, [0, 3, 1]))


def test_meta_saliency_with_zero_lr_is_the_base_method(tiny, inputs):
    base = SelectiveNormGrad(tiny, "features")
    torch.testing.assert_close(MetaSaliency(base, lr=0.0)(inputs), base(inputs), rtol=1e-12, atol=0)


def test_meta_saliency_ascent_steps_the_other_way(tiny, inputs):
    up = MetaSaliency(NormGrad(tiny, "features"), lr=0.05, ascent=True)(inputs[:1], 2)
    down = MetaSaliency(NormGrad(tiny, "features"), lr=0.05)(inputs[:1], 2)
    assert not torch.allclose(up, down)
    model = copy.deepcopy(tiny)
    loss = F.cross_entropy(model(inputs[:1]), torch.tensor([2]))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p += 0.05 * g
    torch.testing.assert_close(
        up, NormGrad(model, "features")(inputs[:1], 2), rtol=1e-10, atol=1e-14
    )


def _synthetic(n, gen):
    """3 classes: a bright 4x4 square in the colour channel of the class, at a random place."""
    x = 0.1 * torch.randn(n, 3, 16, 16, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    rc = torch.randint(0, 12, (n, 2), generator=gen)
    for i in range(n):
        r, c = rc[i].tolist()
        x[i, y[i], r : r + 4, c : c + 4] += 1.0
    return x, y


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _class_sensitivity(model, x, method):
    try:
        from xai.metrics import ClassSensitivity
    except ImportError:  # pragma: no cover - computed locally as in the paper's protocol
        ClassSensitivity = None
    if ClassSensitivity is not None:
        return ClassSensitivity()(model, x, method).mean()
    from scipy.stats import spearmanr

    out = model(x)
    hi = method(x, out.argmax(1).tolist()) + 1e-6
    lo = method(x, out.argmin(1).tolist()) + 1e-6
    return float(
        sum(spearmanr(h.flatten(), l_.flatten())[0] for h, l_ in zip(hi, lo, strict=True)) / len(x)
    )


def test_meta_saliency_makes_a_class_insensitive_method_class_sensitive():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x, y = _synthetic(512, gen)
    net = ToyNet()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):  # about a second; float32 for speed
        idx = torch.randint(0, 512, (64,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net = net.double().eval()
    test_x, test_y = _synthetic(16, gen)
    test_x = test_x.double()
    assert (net(test_x).argmax(1) == test_y).double().mean() > 0.9
    state = copy.deepcopy(net.state_dict())

    # GAP + linear: NormGrad at the last conv block is the same map for every class (= 1)
    plain = _class_sensitivity(net, test_x, NormGrad(net, "features"))
    assert plain > 0.999
    # the paper's lr (0.0025) already lowers it a little; a larger step (the authors' sweep
    # goes to 1e-2; this toy model is confident, so its cross-entropy gradients are small)
    # makes it clearly class-sensitive. Measured: 0.9996 and 0.91.
    default = _class_sensitivity(net, test_x, MetaSaliency(NormGrad(net, "features")))
    strong = _class_sensitivity(net, test_x, MetaSaliency(NormGrad(net, "features"), lr=0.05))
    assert strong < default < plain
    assert strong < 0.95
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
def test_errors_name_the_problem(tiny, inputs):
    with pytest.raises(ValueError, match="virtual_layer must be one of"):
        NormGrad(tiny, "features", virtual_layer="conv5x5")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        SpatialContribution(tiny, "features", aggregation="mean")
    with pytest.raises(ValueError, match="fusion must be one of"):
        NormGrad(tiny, LAYERS, fusion="sum")
    with pytest.raises(ValueError, match="2 non-negative numbers"):
        NormGrad(tiny, LAYERS, fusion="mean", layer_weights=[1.0])
    with pytest.raises(ValueError, match="layer_weights apply to"):
        NormGrad(tiny, LAYERS, layer_weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="needs nn.Conv2d"):
        NormGrad(tiny, "features", virtual_layer="proper")
    with pytest.raises(ValueError, match="preset must be one of"):
        SpatialContribution.from_preset("lrp", tiny, "features")
    with pytest.raises(TypeError, match="xai Attribution"):
        MetaSaliency(tiny)
    with pytest.raises(ValueError, match="loss must be one of"):
        MetaSaliency(NormGrad(tiny, "features"), loss="mse")

    class Dense(nn.Module):  # a segmentation-like output
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    seg = seeded(Dense())
    meta = MetaSaliency(NormGrad(seg, "conv"))
    target = lambda out: out[:, 1].flatten(1).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match="loss='score'"):
        meta(inputs, target)
    maps = MetaSaliency(NormGrad(seg, "conv"), loss="score")(inputs, target)
    assert maps.shape == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# the real MobileNetV2
# ---------------------------------------------------------------------------------------------
# Boxes (row0, row1, col0, col1) in the 224x224 preprocessed images, read once off a plot with
# a 16-pixel grid: chelsea, the cat's eyes, nose and mouth; coffee, the cup (rim, coffee and
# handle, without the saucer).
BOXES = {"chelsea": (48, 208, 24, 216), "coffee": (0, 176, 16, 200)}


@pytest.mark.real_model
def test_normgrad_on_mobilenet_peaks_on_the_object(mobilenet):
    from xai.data import sample_batch

    x, names = sample_batch(["chelsea", "coffee"])
    single = NormGrad(mobilenet, "features.18")(x)
    fused = NormGrad(mobilenet, ["features.17", "features.18"])(x)
    for i, name in enumerate(names):
        r0, r1, c0, c1 = BOXES[name]
        box = torch.zeros(224, 224, dtype=torch.bool)
        box[r0:r1, c0:c1] = True
        for maps in (single, fused):
            r, c = divmod(int(maps[i].argmax()), 224)
            assert box[r, c], f"{name}: peak at {(r, c)} outside the box"
        # measured: 3.3 (chelsea) and 6.1 (coffee) for the two-layer product
        ratio = fused[i][box].mean() / fused[i][~box].mean()
        assert ratio > 2, f"{name}: inside/outside ratio {float(ratio):.2f}"
