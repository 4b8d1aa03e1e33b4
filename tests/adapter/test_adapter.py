"""The shared adapter: layer resolution, capture, in-place ops, targets, reshape, state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests._models import TinyConvNet, TinyViT, seeded
from tests.conftest import hook_count
from xai.adapter import (
    ModelAdapter,
    ProbabilityTarget,
    SegmentationTarget,
    SimilarityTarget,
    as_target,
    list_layers,
    preserved,
    resolve_layer,
    unwrap_output,
    vit_reshape,
)
from xai.attributions import GradCAM


def test_resolve_by_name_module_and_brackets():
    net = TinyConvNet()
    assert resolve_layer(net, "features.2") == ("features.2", net.features[2])
    assert resolve_layer(net, net.features[2])[0] == "features.2"
    assert resolve_layer(net, "features[2]")[0] == "features.2"


def test_unknown_layer_lists_close_matches():
    net = TinyConvNet()
    with pytest.raises(ValueError, match=r"unknown layer 'feature.2'.*'features.2'"):
        resolve_layer(net, "feature.2")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(net, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="dotted name"):
        resolve_layer(net, 3)


def test_list_layers_reports_output_shapes_and_leaves_no_hooks():
    net = seeded(TinyConvNet(), dtype=torch.float32)
    infos = {i.name: i for i in list_layers(net, torch.rand(2, 3, 16, 16))}
    assert infos["features"].output_shape == (2, 8, 8, 8)
    assert infos["fc"].output_shape == (2, 5)
    assert infos["pool"].type == "AdaptiveAvgPool2d"
    assert hook_count(net) == 0


def test_capture_before_in_place_ops_keeps_pre_relu_values_and_true_gradient():
    """Bug class from captum#156 / torch-cam#72: an in-place ReLU after the hooked layer."""
    net = seeded(TinyConvNet())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    adapter = ModelAdapter(net)
    with adapter.capture(["features.3"]) as cap:  # BN output, followed by ReLU(inplace=True)
        out = adapter.forward(x, cap)
        cap.backward(out[:, 1])
        act, grad = cap.activations["features.3"], cap.gradients["features.3"]
    with torch.no_grad():
        pre = net.features[3](net.features[2](torch.relu(net.features[0](x))))
    torch.testing.assert_close(act, pre)
    assert (act < 0).any()  # really the pre-ReLU values
    # reference gradient without any hook
    z = pre.clone().requires_grad_(True)
    head = net.fc(net.pool(torch.relu(z)).flatten(1))[:, 1].sum()
    (ref,) = torch.autograd.grad(head, z)
    torch.testing.assert_close(grad, ref)
    assert hook_count(net) == 0


def test_residual_in_place_addition_resnet():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3).eval().double()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    adapter = ModelAdapter(net)
    with adapter.capture(["layer4.1.bn2", "layer4"]) as cap:
        out = adapter.forward(x, cap)
        cap.backward(out[:, 0])
        bn2 = cap.activations["layer4.1.bn2"]
        grads = dict(cap.gradients)
    with torch.no_grad():
        block = net.layer4[1]
        inp = net.layer4[0](
            net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))))
        )
        ref = block.bn2(block.conv2(block.relu(block.bn1(block.conv1(inp)))))
    torch.testing.assert_close(bn2, ref)  # `out += identity` did not overwrite it
    assert grads["layer4"].shape == (1, 512, 2, 2)


def test_capture_errors_layer_not_called_and_reused():
    class Reuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.unused = nn.Conv2d(3, 3, 1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    net = Reuse()
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match="not called"):
        GradCAM(net, "unused")(x)
    with pytest.raises(RuntimeError, match="called 2 times"):
        GradCAM(net, "conv")(x)
    assert hook_count(net) == 0


def test_layer_without_spatial_output_is_rejected():
    net = seeded(TinyConvNet())
    with pytest.raises(ValueError, match="no spatial axes"):
        GradCAM(net, "fc")(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    assert hook_count(net) == 0


def test_layer_off_the_target_path_is_reported():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 2, 1)
            self.b = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return torch.cat([self.a(x).mean((2, 3)), self.b(x).mean((2, 3)) * 0], 1)

    net = TwoHeads()
    maps = GradCAM(net, "b")(torch.rand(1, 3, 4, 4), target=0)
    assert torch.equal(maps, torch.zeros_like(maps))  # b is used but gets zero gradient


def test_preserved_restores_flags_and_enables_grad():
    net = TinyConvNet()
    net.train()
    net.fc.weight.requires_grad_(False)
    with torch.no_grad():
        with preserved(net):
            assert torch.is_grad_enabled()
            assert not net.training and not net.features[3].training
            net.fc.bias.requires_grad_(False)
    assert net.training and net.features[3].training
    assert not net.fc.weight.requires_grad and net.fc.bias.requires_grad


def test_inference_mode_is_rejected():
    net = TinyConvNet()
    with torch.inference_mode():
        x = torch.rand(1, 3, 8, 8)
        with pytest.raises(RuntimeError, match="inference_mode"):
            GradCAM(net, "features")(x)
    assert hook_count(net) == 0


def test_two_explainers_on_one_model_are_independent():
    net = seeded(TinyConvNet())
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    a, b = GradCAM(net, "features"), GradCAM(net, "features.2")
    ra, rb = a(x, target=1), b(x, target=1)
    torch.testing.assert_close(a(x, target=1), ra)
    torch.testing.assert_close(b(x, target=1), rb)


def test_compiled_and_data_parallel_wrappers_are_unwrapped():
    net = seeded(TinyConvNet())
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    ref = GradCAM(net, "features")(x, target=0)
    wrapped = nn.DataParallel(net)
    torch.testing.assert_close(GradCAM(wrapped, "features")(x, target=0), ref)
    assert hook_count(net) == 0


# targets ------------------------------------------------------------------------------------
def test_targets_normalize_and_validate():
    out = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0]])
    torch.testing.assert_close(as_target(None)(out), torch.tensor([5.0, 4.0]))
    torch.testing.assert_close(as_target(0)(out), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(as_target([2, 1])(out), torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(as_target(torch.tensor([1, 0]))(out), torch.tensor([5.0, 3.0]))
    torch.testing.assert_close(as_target(lambda o: o.sum(1))(out), torch.tensor([8.0, 7.0]))
    torch.testing.assert_close(ProbabilityTarget(1)(out), out.softmax(1)[:, 1])
    torch.testing.assert_close(ProbabilityTarget(1, "sigmoid")(out), out.sigmoid()[:, 1])
    with pytest.raises(ValueError, match="out of range"):
        as_target(3)(out)
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        as_target([0, 1, 2])(out)
    with pytest.raises(ValueError, match="one scalar per sample"):
        as_target(lambda o: o)(out)
    with pytest.raises(TypeError, match="target must be"):
        as_target("cat")
    with pytest.raises(TypeError, match="integer class indices"):
        as_target([0.5, 1.0])
    with pytest.raises(ValueError, match=r"\(B, n_classes\)"):
        as_target(0)(torch.rand(2, 3, 4, 4))


def test_frozen_and_selected_targets_follow_rows():
    out = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0]])
    frozen = as_target(None).freeze(out)
    assert frozen.classes.tolist() == [1, 2]
    rows = torch.tensor([1, 1, 0])
    expanded = torch.stack([out[1], out[1], out[0]])
    # rows 0 and 1 are copies of sample 1 (class 2), row 2 of sample 0 (class 1)
    torch.testing.assert_close(frozen.select(rows)(expanded), torch.tensor([4.0, 4.0, 5.0]))
    with pytest.raises(RuntimeError, match="freeze"):
        as_target(None).select(rows)


def test_segmentation_and_similarity_targets():
    seg = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(SegmentationTarget(1, mask)(seg), seg[:, 1, 0, 0] + seg[:, 1, 1, 1])
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    ref = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(SimilarityTarget(ref, "dot")(emb), torch.tensor([1.0, 2.0]))
    cos = SimilarityTarget(ref)(emb)
    torch.testing.assert_close(cos, torch.full((2,), 2**-0.5))
    per_sample = SimilarityTarget(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "dot")
    torch.testing.assert_close(per_sample.select(torch.tensor([1]))(emb[1:]), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="reference embeddings for a batch of 3"):
        per_sample.check_batch(3)


def test_model_outputs_are_unwrapped():
    t = torch.rand(2, 3)
    assert unwrap_output(t) is t
    assert unwrap_output((t, "aux")) is t
    assert unwrap_output({"out": t}) is t

    class HF:
        logits = t

    assert unwrap_output(HF()) is t
    with pytest.raises(TypeError, match="cannot find a tensor"):
        unwrap_output("nope")


# reshape ------------------------------------------------------------------------------------
def test_vit_reshape_infers_prefix_tokens_and_grid():
    tokens = torch.arange(2 * (5 + 16) * 3, dtype=torch.float32).view(2, 21, 3)
    grid = vit_reshape(tokens)  # 21 = 5 prefix + 4x4
    assert grid.shape == (2, 3, 4, 4)
    torch.testing.assert_close(grid[:, :, 0, 1], tokens[:, 6])
    assert vit_reshape(torch.rand(1, 197, 8)).shape == (1, 8, 14, 14)
    assert vit_reshape(torch.rand(1, 257, 8), num_prefix_tokens=1).shape == (1, 8, 16, 16)
    with pytest.raises(ValueError, match="square patch grid"):
        vit_reshape(torch.rand(1, 203, 8), num_prefix_tokens=1)


def test_grad_cam_on_a_vit_with_register_tokens():
    torch.manual_seed(0)
    vit = TinyViT().double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    state = copy.deepcopy(vit.state_dict())
    maps = GradCAM(vit, "blocks.0", reshape="vit")(x, target=[0, 2])
    assert maps.shape == (2, 16, 16) and (maps > 0).any()
    raw = GradCAM(vit, "blocks.0", reshape="vit", upsample=False)(x, target=[0, 2])
    assert raw.shape == (2, 4, 4)  # 3 prefix tokens (class + 2 registers) dropped
    assert hook_count(vit) == 0
    assert all(torch.equal(v, state[k]) for k, v in vit.state_dict().items())
    with pytest.warns(UserWarning, match="zero everywhere"):
        GradCAM(vit, "blocks.1.linear2", reshape="vit")(x, target=0)  # patch tokens unused


def test_no_memory_retained_across_repeated_calls():
    """Bug class from pytorch-grad-cam#132 / torch-cam#197: hooks or graphs kept alive."""
    import gc
    import weakref

    net = seeded(TinyConvNet())
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    method = GradCAM(net, "features")
    seen = []
    for _ in range(20):
        maps = method(x, target=1)
        assert maps.grad_fn is None and not maps.requires_grad
        seen.append(weakref.ref(maps))
        del maps
    gc.collect()
    assert all(ref() is None for ref in seen)  # no map kept alive by a hook or a graph
    explainer = weakref.ref(method)
    del method
    gc.collect()
    assert explainer() is None and hook_count(net) == 0
