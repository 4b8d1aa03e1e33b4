"""The attribution contract, checked for every method in the registry.

A new method registered with ``@register`` is covered here without editing this file: it is
built with ``Method.create(model, layer=...)`` on a tiny network of the family it declares in
``model_family`` (a CNN for ``"any"``, a tiny ViT with its default layer for ``"vit"``).
"""

from __future__ import annotations

import copy

import pytest
import torch

import xai.attributions as attributions
from tests._models import RaisingNet, RaisingViT, TinyConvNet, TinyViT, seeded
from tests.conftest import hook_count

METHODS = attributions.available()
LAYER = "features"


# Cheaper settings for methods whose default cost is thousands of forward passes per image:
# the contract is about behaviour, not cost (sobol_attribution: 2,112 -> 72 passes per image).
FAST = {"sobol_attribution": {"grid_size": 4, "n_designs": 4}}


# model_family -> (tiny model, the same with a module that can raise, layer: None = default)
FAMILIES = {
    "any": (TinyConvNet, RaisingNet, LAYER),
    "vit": (lambda: TinyViT(n_classes=5), RaisingViT, None),
}


def family(name: str):
    return FAMILIES[attributions.get(name).model_family]


def make(name: str, model: torch.nn.Module, **kwargs):
    layer = family(name)[2]
    return attributions.get(name).create(model, layer=layer, **{**FAST.get(name, {}), **kwargs})


@pytest.fixture
def net(request):
    return seeded(family(request.node.callspec.params["name"])[0]())


@pytest.fixture
def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 32, 32, generator=gen, dtype=torch.float64)


def test_registry_is_populated():
    for expected in (
        "grad_cam",
        "grad_cam_plus_plus",
        "xgrad_cam",
        "layer_cam",
        "score_cam",
        "eigen_cam",
        "guided_grad_cam",
        "saliency",
        "integrated_gradients",
        "smooth_grad",
        "occlusion",
    ):
        assert expected in METHODS


@pytest.mark.parametrize("name", METHODS)
def test_shape_dtype_device_and_no_side_effects(name, net, inputs):
    # a norm in train mode must not have its running stats updated (BN) or stay in eval mode
    next(
        m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm))
    ).train()
    [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].weight.requires_grad_(False)
    check_contract(make(name, net), net, inputs, None, (3, 32, 32))


def check_contract(method, net, inputs, target, shape):
    """Explain ``inputs``: maps of ``shape`` in the inputs' dtype and device, finite, and neither
    the inputs nor the model changed (parameters, buffers, flags, hooks).
    """
    state = copy.deepcopy(net.state_dict())
    flags = [(m, m.training) for m in net.modules()]
    grads = [(p, p.requires_grad) for p in net.parameters()]
    x = inputs.clone()
    maps = method(x, target=target)
    assert maps.shape == shape
    assert maps.dtype == torch.float64 and maps.device == x.device
    assert torch.isfinite(maps).all()
    assert torch.equal(x, inputs), "inputs were modified"
    assert hook_count(net) == 0
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed"
    assert all(m.training == t for m, t in flags)
    assert all(p.requires_grad == r for p, r in grads)
    assert all(p.grad is None for p in net.parameters())
    return maps


@pytest.mark.parametrize("name", METHODS)
def test_float32_inputs_give_float32_maps(name, inputs):
    net = seeded(family(name)[0](), dtype=torch.float32)
    maps = make(name, net)(inputs.float())
    assert maps.dtype == torch.float32 and maps.shape == (3, 32, 32)


@pytest.mark.parametrize("name", METHODS)
def test_hooks_removed_after_exception(name, inputs):
    net = seeded(family(name)[1]())
    method = make(name, net)
    net.trap.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        method(inputs)
    assert hook_count(net) == 0
    assert not net.training


@pytest.mark.parametrize("name", METHODS)
def test_per_sample_targets_match_one_by_one(name, net, inputs):
    method = make(name, net)
    targets = [0, 3, 1]
    batch = method(inputs, target=targets)
    single = torch.cat([method(inputs[i : i + 1], target=t) for i, t in enumerate(targets)])
    torch.testing.assert_close(batch, single, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_outer_no_grad_and_frozen_parameters_give_same_map(name, net, inputs):
    method = make(name, net)
    ref = method(inputs, target=2)
    with torch.no_grad():
        under_no_grad = method(inputs, target=2)
    for p in net.parameters():
        p.requires_grad_(False)
    frozen = method(inputs, target=2)
    torch.testing.assert_close(under_no_grad, ref, rtol=1e-9, atol=0)
    torch.testing.assert_close(frozen, ref, rtol=1e-9, atol=1e-12)
    assert not any(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_map_and_batch_size_does_not_matter(name, net, inputs):
    a = make(name, net, seed=7)(inputs, target=1)
    b = make(name, net, seed=7)(inputs, target=1)
    assert torch.equal(a, b)
    one = make(name, net, seed=7, batch_size=1)(inputs, target=1)
    torch.testing.assert_close(one, a, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_callable_target_equals_class_target(name, net, inputs):
    method = make(name, net)
    by_index = method(inputs, target=4)
    if method.class_score == "probability":
        by_callable = method(inputs, target=lambda out: out.softmax(1)[:, 4])
    else:
        by_callable = method(inputs, target=lambda out: out[:, 4])
    torch.testing.assert_close(by_callable, by_index, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_bad_inputs_raise_clear_errors(name, net, inputs):
    method = make(name, net)
    with pytest.raises(ValueError, match="unsqueeze"):
        method(inputs[0])
    with pytest.raises(TypeError, match="floating"):
        method((inputs * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="out of range"):
        method(inputs, target=99)
    with pytest.raises(ValueError, match="3 targets|2 targets"):
        method(inputs, target=[0, 1])
    assert hook_count(net) == 0


# videos and volumes (B, C, T, H, W) ---------------------------------------------------------
# Every method that declares input rank 5 gives (B, T, H, W) maps under the same contract; every
# other method refuses such inputs with an error naming itself.
VOLUME_SETTINGS = {"occlusion": {"window_size": (2, 4, 4), "stride": (2, 4, 4)}}


@pytest.fixture
def clip():
    gen = torch.Generator().manual_seed(2)
    return torch.rand(2, 3, 4, 8, 8, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", METHODS)
def test_videos_and_volumes(name, clip):
    if 5 not in attributions.get(name).input_ranks:
        method = make(name, seeded(family(name)[0]()))
        with pytest.raises(ValueError, match=rf"{name} explains images only .*available\(rank=5\)"):
            method(clip)
        return
    net = seeded(TinyConvNet(dims=3))
    next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)).train()
    method = make(name, net, **VOLUME_SETTINGS.get(name, {}))
    maps = check_contract(method, net, clip, [0, 3], (2, 4, 8, 8))
    single = torch.cat([method(clip[i : i + 1], target=t) for i, t in enumerate([0, 3])])
    torch.testing.assert_close(maps, single, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="unsqueeze"):
        method(clip[0, 0])
