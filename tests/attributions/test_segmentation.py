"""torchvision segmentation models end to end with :class:`SegmentationTarget`.

``deeplabv3_mobilenet_v3_large`` (random init, 3 classes, 64 px images) returns
``{"out": (B, K, H, W)}``; its backbone returns ``{"out": features}``, read as
``"backbone:out"``.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import xai.attributions as attributions
from tests.conftest import hook_count
from xai.adapter import SegmentationTarget
from xai.attributions import GradCAM, Occlusion
from xai.attributions.base import LayerAttribution

SIZE = 64


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False
    )
    return model.double().eval()


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)


def _masks():
    """A different region per image: the left half of image 0, the bottom half of image 1."""
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, :, : SIZE // 2] = True
    masks[1, SIZE // 2 :] = True
    return masks


def test_grad_cam_of_a_masked_class_equals_captum(segmenter, images):
    from captum.attr import LayerGradCam

    masks = _masks()
    target = SegmentationTarget(1, masks)
    mine = GradCAM(segmenter, "backbone:out", upsample=False)(images, target)

    def masked_logit_sum(x):  # the target written out, on the raw torchvision output
        return (segmenter(x)["out"][:, 1] * masks).flatten(1).sum(1)

    ref = (
        LayerGradCam(masked_logit_sum, segmenter.backbone["16"])
        .attribute(images, relu_attributions=True)
        .detach()
    )
    scale = float(ref.abs().max())  # random-init maps are small (about 1e-9)
    assert scale > 0
    torch.testing.assert_close(mine, ref[:, 0], rtol=1e-6, atol=1e-6 * scale)
    # the region matters: the whole-image target gives another map
    whole = GradCAM(segmenter, "backbone:out", upsample=False)(images, SegmentationTarget(1))
    peak = whole.flatten(1).amax(1)[:, None, None]
    assert float((whole / peak - mine / mine.flatten(1).amax(1)[:, None, None]).abs().max()) > 0.1
    assert hook_count(segmenter) == 0


def test_all_layer_methods_run_on_the_segmenter(segmenter, images):
    x = images[:1].float()
    model = segmenter.float()
    try:
        target = SegmentationTarget(2, _masks()[0])
        names = [
            n for n in attributions.available() if issubclass(attributions.get(n), LayerAttribution)
        ]
        for name in names:  # an early 16-channel block keeps Score-CAM at 16 forward passes
            maps = attributions.get(name).create(model, layer="backbone.1")(x, target)
            assert maps.shape == (1, SIZE, SIZE) and bool(torch.isfinite(maps).all()), name
        assert hook_count(model) == 0 and not model.training
    finally:
        segmenter.double()


def test_occlusion_selects_each_copys_mask(segmenter, images):
    """Per-image masks (B, H, W): a batch equals its images one by one, also when a chunk of
    occluded copies mixes the two images."""
    target = SegmentationTarget(1, _masks())
    occlusion = Occlusion(segmenter, window_size=32, stride=32, batch_size=6)
    batch = occlusion(images, target)
    single = torch.cat(
        [occlusion(images[i : i + 1], target.select(torch.tensor([i]))) for i in range(2)]
    )
    torch.testing.assert_close(batch, single)
    assert float(batch.abs().max()) > 0


def test_dense_classifier_demo(mobilenet, tmp_path):
    """The demo's segmenter: the mean of its per-location logits is the classifier's logits
    (GAP and a linear layer commute); the figure is written."""
    from xai._demos.segmentation import DenseClassifier, segmentation_demo

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dense = DenseClassifier(mobilenet).eval()
    with torch.no_grad():
        features = dense.features(x)
        logits = dense(x)["out"]
        expected = mobilenet.classifier(features.mean((2, 3)))
        # at 64 px the feature map is 2x2: the bilinear upsampling keeps the mean exactly
        torch.testing.assert_close(logits.mean((2, 3)), expected, rtol=1e-4, atol=1e-4)
    (path,) = segmentation_demo(tmp_path, size=64, photos=("chelsea",), occlusion_window=32)
    assert path.name == "segmentation.png" and path.stat().st_size > 10_000
