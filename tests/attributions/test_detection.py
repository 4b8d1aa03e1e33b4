"""Detectors (torchvision Faster R-CNN, RetinaNet, FCOS) and dict-output layers.

The detectors are random-init and small (64 px images, a two-convolution backbone, or
ResNet-50-FPN for the peer comparison) with a zero score threshold, so that they return
detections; every test is seeded.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

import xai.attributions as attributions
from tests.conftest import hook_count
from xai.adapter import Detections, DetectionTarget, list_layers
from xai.adapter.detection import box_iou
from xai.attributions import EigenCAM, GradCAM, Occlusion
from xai.attributions.base import LayerAttribution

SIZE = 64


class TinyBackbone(nn.Module):
    """Two stride-2 convolutions returning an ``OrderedDict`` (one FPN-like level, ``"0"``)."""

    out_channels = 32

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU()
        )

    def forward(self, x):
        return OrderedDict([("0", self.body(x))])


def tiny_detector(kind: str = "faster_rcnn") -> nn.Module:
    torch.manual_seed(0)
    backbone = TinyBackbone()
    common = {"min_size": SIZE, "max_size": SIZE, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}
    if kind == "fcos":
        anchors = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0,),))
        model = FCOS(backbone, 4, anchor_generator=anchors, score_thresh=0.0, **common)
    else:
        anchors = AnchorGenerator(sizes=((8, 16, 32),), aspect_ratios=((0.5, 1.0, 2.0),))
        if kind == "retinanet":
            model = RetinaNet(backbone, 4, anchor_generator=anchors, score_thresh=0.0, **common)
        else:
            model = FasterRCNN(
                backbone,
                4,
                rpn_anchor_generator=anchors,
                box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
                box_score_thresh=0.0,
                rpn_pre_nms_top_n_test=100,
                rpn_post_nms_top_n_test=50,
                **common,
            )
    return model.double().eval()


@pytest.fixture(scope="module")
def detector():
    return tiny_detector()


@pytest.fixture(scope="module")
def images():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, SIZE, SIZE, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module")
def detections(detector, images):
    with torch.no_grad():
        return detector(images)


# DetectionTarget against hand-made detections ------------------------------------------------


def _dets(*images):
    return Detections(
        [
            {
                "boxes": torch.tensor(b, dtype=torch.float64).reshape(-1, 4),
                "labels": torch.tensor(lab),
                "scores": torch.tensor(s, dtype=torch.float64),
            }
            for b, lab, s in images
        ]
    )


def test_box_iou_equals_torchvision():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(5, 2, generator=gen) * 40
    b = torch.rand(7, 2, generator=gen) * 40
    boxes_a = torch.cat([a, a + torch.rand(5, 2, generator=gen) * 20], 1)
    boxes_b = torch.cat([b, b + torch.rand(7, 2, generator=gen) * 20], 1)
    torch.testing.assert_close(box_iou(boxes_a, boxes_b), torchvision.ops.box_iou(boxes_a, boxes_b))
    flat = torch.tensor([[16.0, 20.0, 18.0, 20.0]])  # zero area: matches only itself
    assert box_iou(flat, torch.cat([flat, flat + 1])).tolist() == [[1.0, 0.0]]


def test_match_by_class_then_iou_threshold_and_sum():
    box = [0.0, 0.0, 10.0, 10.0]
    # detection 0: same box, other class; 1: IoU 0.5 (10x5 inside), same class; 2: IoU 0.25
    dets = _dets(
        ([box, [0, 0, 10, 5], [0, 0, 5, 5]], [2, 1, 1], [0.9, 0.6, 0.8]),
    )
    assert DetectionTarget(box, 1)(dets).item() == pytest.approx(0.6)  # not 0.9: other class
    assert DetectionTarget(box, 1, iou_threshold=0.51)(dets).item() == 0.0
    assert DetectionTarget(box, 2)(dets).item() == pytest.approx(0.9)
    assert DetectionTarget(box, 3)(dets).item() == 0.0  # no detection of that class
    assert DetectionTarget(box, 1, score="score_times_iou")(dets).item() == pytest.approx(0.3)
    assert DetectionTarget(box, 1, score="score_plus_iou")(dets).item() == pytest.approx(1.1)
    several = DetectionTarget([torch.tensor([box, [0, 0, 5, 5]])], [torch.tensor([2, 1])])
    assert several(dets).item() == pytest.approx(0.9 + 0.8)


def test_per_image_boxes_select_and_errors():
    dets = _dets(([[0, 0, 10, 10]], [1], [0.7]), ([[20, 20, 30, 30]], [1], [0.4]))
    target = DetectionTarget(torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]]), 1)
    torch.testing.assert_close(target(dets), torch.tensor([0.7, 0.4], dtype=torch.float64))
    # a perturbation batch: rows 0, 1 copy image 1, row 2 copies image 0
    swapped = _dets(*[([[20, 20, 30, 30]], [1], [0.4])] * 2, ([[0, 0, 10, 10]], [1], [0.7]))
    torch.testing.assert_close(
        target.select(torch.tensor([1, 1, 0]))(swapped),
        torch.tensor([0.4, 0.4, 0.7], dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="for a batch of 3"):
        target.check_batch(3)
    with pytest.raises(ValueError, match="x2 >= x1"):
        DetectionTarget([10, 0, 0, 10], 1)
    with pytest.raises(ValueError, match="score must be"):
        DetectionTarget([0, 0, 1, 1], 1, score="max")
    with pytest.raises(TypeError, match="detector's output"):
        DetectionTarget([0, 0, 1, 1], 1)(torch.zeros(2, 5))


def test_other_targets_on_detections_name_detection_target(detector, images):
    with pytest.raises(TypeError, match="DetectionTarget"):
        GradCAM(detector, "backbone:0")(images, target=None)
    with pytest.raises(TypeError, match="DetectionTarget"):
        GradCAM(detector, "backbone:0")(images, target=lambda out: out[:, 1])
    assert hook_count(detector) == 0


# dict outputs selected by key ----------------------------------------------------------------


def test_dict_layer_needs_a_key_and_lists_them(detector, images):
    with pytest.raises(TypeError, match=r"keys '0'.*layer='backbone:0'"):
        GradCAM(detector, "backbone")(images, target=DetectionTarget.top(detector(images)))
    with pytest.raises(KeyError, match="no key '7'"):
        EigenCAM(detector, "backbone:7")(images)
    assert hook_count(detector) == 0
    names = {info.name: info.output_shape for info in list_layers(detector, images)}
    assert names["backbone:0"] == (2, 32, SIZE // 4, SIZE // 4)


def test_keyed_layer_equals_the_module_inside(detector, images, detections):
    """``backbone:0`` is the output of ``backbone.body`` (the dict only wraps it)."""
    target = DetectionTarget.top(detections)
    keyed = GradCAM(detector, "backbone:0", upsample=False)(images, target)
    inner = GradCAM(detector, "backbone.body", upsample=False)(images, target)
    torch.testing.assert_close(keyed, inner)
    assert float(keyed.max()) > 0


# the detector end to end ---------------------------------------------------------------------


def _far_detection(det, anchor_box):
    """Index of a detection of ``det`` overlapping ``anchor_box`` by IoU < 0.1."""
    iou = box_iou(anchor_box[None], det["boxes"])[0]
    return int((iou < 0.1).nonzero()[0, 0])


def test_map_changes_when_the_box_moves(detector, images, detections):
    det = detections[0]
    best = int(det["scores"].argmax())
    other = _far_detection(det, det["boxes"][best])
    x = images[:1]
    method = GradCAM(detector, "backbone:0")
    maps = [
        method(x, DetectionTarget(det["boxes"][i], int(det["labels"][i]))) for i in (best, other)
    ]
    assert all(float(m.max()) > 0 for m in maps)
    corr = np.corrcoef(maps[0].flatten().numpy(), maps[1].flatten().numpy())[0, 1]
    assert corr < 0.9, corr
    # a box far from any detection of its class explains nothing (a warning, a zero map)
    with pytest.warns(UserWarning, match="zero everywhere"):
        empty = method(x, DetectionTarget([0.0, 0.0, 1.0, 1.0], int(det["labels"][best])))
    assert float(empty.abs().max()) == 0


def test_matched_detection_is_stable_under_small_perturbations(detector, images, detections):
    target = DetectionTarget.top(detections)
    clean = target(detections)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        noisy = detector(images + 1e-3 * torch.randn(images.shape, generator=gen))
    moved = target(Detections(noisy))
    assert bool((clean > 0).all())
    torch.testing.assert_close(moved, clean, rtol=2e-2, atol=0)
    for det, ref in zip(noisy, target.boxes, strict=True):  # the same box, nearly unmoved
        assert float(box_iou(ref, det["boxes"]).max()) > 0.95


def _layer_methods():
    return [
        n for n in attributions.available() if issubclass(attributions.get(n), LayerAttribution)
    ]


def test_all_layer_methods_run_on_the_detector_and_leave_no_hooks(detector, images, detections):
    target = DetectionTarget.top(detections)
    state = {k: v.clone() for k, v in detector.state_dict().items()}
    x = images.clone()
    for name in _layer_methods():
        method = attributions.get(name).create(detector, layer="backbone:0")
        maps = method(x, target)
        assert maps.shape == (2, SIZE, SIZE) and bool(torch.isfinite(maps).all()), name
        assert hook_count(detector) == 0, name
    assert torch.equal(x, images)
    assert all(torch.equal(v, state[k]) for k, v in detector.state_dict().items())
    assert not detector.training


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_retinanet_and_fcos_box_targets(kind, images):
    model = tiny_detector(kind)
    x = images[:1]
    with torch.no_grad():
        target = DetectionTarget.top(model(x))
    maps = GradCAM(model, "backbone:0")(x, target)
    assert float(maps.max()) > 0 and hook_count(model) == 0
    assert float(target(model(x)).item()) > 0


def test_perturbation_method_matches_the_box_in_every_copy(detector, images, detections):
    """Per-image boxes: a batch equals its images one by one (``select`` picks each copy's
    box, also when a chunk of perturbed copies mixes the two images)."""
    target = DetectionTarget.top(detections)
    occlusion = Occlusion(detector, window_size=32, stride=32, batch_size=6)
    batch = occlusion(images, target)
    single = torch.cat(
        [occlusion(images[i : i + 1], target.select(torch.tensor([i]))) for i in range(2)]
    )
    torch.testing.assert_close(batch, single)
    assert float(batch.abs().max()) > 0
    assert hook_count(detector) == 0


def test_deletion_metric_on_the_detector(detector, images, detections):
    from xai.metrics import Deletion

    target = DetectionTarget.top(detections)
    maps = torch.rand(2, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    result = Deletion(n_steps=4, patch_size=16, batch_size=8)(detector, images, maps, target)
    assert result.scores.shape == (2,) and bool(torch.isfinite(result.scores).all())
    # the clean image keeps its top detection: the curve starts at the target's score
    torch.testing.assert_close(result.curve[:, 0], target(detections).float(), check_dtype=False)


# the peer: pytorch-grad-cam's FasterRCNNBoxScoreTarget -----------------------------------------


def test_the_issue_case_resnet50_fpn_at_backbone_body():
    """torchvision's fasterrcnn_resnet50_fpn, as a new user tries it: 'backbone.body' names
    the fix, 'backbone.body:3' explains the best box."""
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=SIZE,
        max_size=SIZE,
        box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_test=20,
    ).eval()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = DetectionTarget.top(model(x))
    with pytest.raises(TypeError, match="layer='backbone.body:3'"):
        GradCAM(model, "backbone.body")(x, target)
    maps = GradCAM(model, "backbone.body:3")(x, target)
    assert maps.shape == (1, SIZE, SIZE) and float(maps.max()) > 0
    assert hook_count(model) == 0


def _peer_normalized(layer_map: torch.Tensor) -> np.ndarray:
    """Our layer-resolution map through pytorch-grad-cam's post-processing, in its order:
    min-max (with its 1e-7 stabilizer) and resize per layer, mean over layers, min-max again.
    """
    from pytorch_grad_cam.utils.image import scale_cam_image

    per_layer = scale_cam_image(layer_map.numpy(), (SIZE, SIZE))
    return scale_cam_image(np.maximum(per_layer[:, None], 0).mean(1))


def test_grad_cam_and_eigen_cam_match_pytorch_grad_cam(detector, images, detections):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    model, x, det = detector, images[:1], detections[0]
    best = int(det["scores"].argmax())
    box, label = det["boxes"][best], int(det["labels"][best])
    ours = DetectionTarget(box, label, score="score_plus_iou")
    theirs = [FasterRCNNBoxScoreTarget([label], box[None].numpy())]

    # Grad-CAM on a tensor layer (the peer has no gradients for dict outputs)
    mine = GradCAM(model, "backbone.body", upsample=False)(x, ours)
    with pgc.GradCAM(model, target_layers=[model.backbone.body]) as cam:
        ref = cam(input_tensor=x, targets=theirs)
    np.testing.assert_allclose(_peer_normalized(mine), ref, atol=1e-4)
    assert float(mine.max()) > 0

    # Eigen-CAM on the backbone's dict output: ours by key, theirs by a reshape transform
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    mine = EigenCAM(model, "backbone:0", upsample=False)(x, ours)  # target unused
    with torch.no_grad():  # the FPN level read without our adapter
        acts = model.backbone(model.transform(x)[0].tensors)["0"].numpy()
    proj = get_2d_projection(acts.copy())[0]  # the peer's projection, of arbitrary sign
    corr = np.corrcoef(proj.ravel(), acts[0].mean(0).ravel())[0, 1]
    expected = np.maximum(proj if corr >= 0 else -proj, 0)  # our rule: + with the mean map
    np.testing.assert_allclose(mine[0].numpy(), expected, rtol=1e-3, atol=1e-4)
    assert hook_count(model) == 0


def test_split_reads_and_replaces_a_keyed_entry(detector, images):
    """Concept methods split the model at a layer: ``"backbone:0"`` works there too."""
    from xai.adapter.split import head, layer_output

    acts = layer_output(detector, "backbone:0", images)
    with torch.no_grad():
        expected = detector.backbone.body(detector.transform(images)[0].tensors)
    torch.testing.assert_close(acts, expected)
    out = head(detector, "backbone:0", acts, images)  # h(g(x)) is the model's output
    with torch.no_grad():
        for mine, ref in zip(out, detector(images), strict=True):
            torch.testing.assert_close(mine["scores"], ref["scores"])
    assert hook_count(detector) == 0
