"""Object detection: :class:`DetectionTarget` explains one detected box of a detector's output.

The box is found again in every (perturbed) output by IoU (:func:`box_iou`) and class; the
output type itself, :class:`~xai.adapter.detector_output.Detections`, lives in
:mod:`xai.adapter.detector_output`.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from xai.adapter.detector_output import _is_detection_output
from xai.adapter.targets import Target, class_indices


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union ``(N, M)`` of boxes ``(N, 4)`` and ``(M, 4)`` in (x1, y1, x2, y2)
    format (torchvision's ``box_iou``); differentiable w.r.t. both. Two boxes of zero area
    (random-init detectors return some) have IoU 1 when they are identical, 0 otherwise
    (torchvision gives NaN).
    """
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp_min(0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    same = (a[:, None, :] == b[None, :, :]).all(-1).to(inter.dtype)
    return torch.where(union > 0, inter / union.clamp_min(torch.finfo(union.dtype).tiny), same)


_SCORES = ("score", "score_times_iou", "score_plus_iou")


class DetectionTarget(Target):
    """The score of a detected box, found again in every (perturbed) output by IoU and class.

    For each explained box (``box``, ``label``), the output's detections with the same label
    are compared with it; the one with the highest IoU is the match if that IoU is at least
    ``iou_threshold``, and the box's score is the match's score (see ``score``); 0 when no
    detection matches (the box has disappeared, e.g. under occlusion). Several boxes of one
    image are summed. This is pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` recipe (which
    picks the highest-IoU box of any class, then checks its class) and D-RISE's matching.

    Gradient methods differentiate the matched detection's score (its class probability after
    the detector's post-processing) w.r.t. the layer; perturbation methods (Score-CAM, Sobol,
    occlusion, deletion metrics) match the box again in each perturbed copy, via
    :meth:`select`.

    Args:
        boxes: ``(4,)`` one box for every image, ``(B, 4)`` one box per image, or a sequence
            of ``B`` tensors ``(K_i, 4)`` (several boxes per image, summed); (x1, y1, x2, y2)
            in input pixels, as the detector returns them.
        labels: the class of each box: an int (with a ``(4,)`` box, or the same class for
            ``(B, 4)`` boxes), ``(B,)`` ints, or a sequence of ``B`` ``(K_i,)`` int tensors.
        iou_threshold: minimum IoU of a match (default 0.5, pytorch-grad-cam's and the
            Pascal VOC criterion).
        score: ``"score"`` (default: the matched detection's score), ``"score_times_iou"``
            (score times IoU, D-RISE's similarity without its class-vector term) or
            ``"score_plus_iou"`` (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``).

    Example:
        >>> detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=...).eval()
        >>> target = DetectionTarget.top(detector(images))  # each image's best detection
        >>> maps = GradCAM(detector, "backbone.body:3")(images, target=target)

    References:
        Petsiuk et al., "Black-box Explanation of Object Detectors via Saliency Maps" (D-RISE),
        CVPR 2021.
    """

    consumes_detections: ClassVar[bool] = True

    def __init__(
        self,
        boxes: Tensor | Sequence,
        labels: int | Sequence | Tensor,
        *,
        iou_threshold: float = 0.5,
        score: str = "score",
    ) -> None:
        if score not in _SCORES:
            raise ValueError(f"score must be one of {', '.join(_SCORES)}, got {score!r}")
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.score = score
        self.boxes, self.labels, self.shared = _parse_boxes(boxes, labels)

    @classmethod
    def top(cls, detections: Any, rank: int = 0, **kwargs: Any) -> DetectionTarget:
        """The target of each image's ``rank``-th highest-scoring detection (0: the best).

        Args:
            detections: a detector's output (a list of dicts with boxes, labels, scores).
            rank: which detection by decreasing score.
            **kwargs: ``iou_threshold`` and ``score``.

        Raises:
            ValueError: an image has ``rank`` detections or fewer (lower the detector's score
                threshold, e.g. ``box_score_thresh``).
        """
        if not _is_detection_output(detections):
            raise TypeError(
                "DetectionTarget.top needs a detector's output: a list of dicts with 'boxes', "
                f"'labels' and 'scores' (call the model in eval mode), got {type(detections)}"
            )
        boxes, labels = [], []
        for i, item in enumerate(detections):
            if item["scores"].numel() <= rank:
                raise ValueError(
                    f"image {i} has {item['scores'].numel()} detections, so none of rank {rank}; "
                    "lower the detector's score threshold (e.g. box_score_thresh)"
                )
            best = item["scores"].detach().argsort(descending=True, stable=True)[rank]
            boxes.append(item["boxes"][best].detach())
            labels.append(int(item["labels"][best]))
        return cls(torch.stack(boxes), torch.tensor(labels), **kwargs)

    def check_batch(self, batch: int) -> None:
        """Raise a ``ValueError`` when per-image boxes do not match the batch size."""
        if not self.shared and len(self.boxes) != batch:
            raise ValueError(
                f"got boxes for {len(self.boxes)} images for a batch of {batch}; pass one box "
                "(or one (K, 4) tensor of boxes) per image, or a single (4,) box for all"
            )

    def select(self, index: Tensor) -> DetectionTarget:
        """The target of a batch whose row ``j`` is a (perturbed) copy of image ``index[j]``."""
        if self.shared:
            return self
        new = copy.copy(self)
        new.boxes = [self.boxes[i] for i in index.tolist()]
        new.labels = [self.labels[i] for i in index.tolist()]
        return new

    def __call__(self, outputs: Any) -> Tensor:
        """Scores ``(B,)`` of the explained boxes in the detector's output ``outputs``."""
        if not isinstance(outputs, list) or not _is_detection_output(outputs):
            shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs)
            raise TypeError(
                "DetectionTarget needs a detector's output: a list of dicts with 'boxes', "
                f"'labels' and 'scores' per image (torchvision detectors in eval mode), got {shape}"
            )
        self.check_batch(len(outputs))
        return torch.stack([self._match(det, i) for i, det in enumerate(outputs)])

    def _match(self, det: dict[str, Tensor], i: int) -> Tensor:
        boxes, labels = self.boxes[0 if self.shared else i], self.labels[0 if self.shared else i]
        scores = det["scores"]
        total = scores.sum() * 0  # 0 on the graph: a box with no match gets a zero gradient
        if scores.numel() == 0:
            return total
        ref = boxes.to(device=det["boxes"].device, dtype=det["boxes"].dtype)
        iou = box_iou(ref, det["boxes"])  # (K, N)
        same = labels.to(det["labels"].device)[:, None] == det["labels"][None, :]
        candidate = torch.where(same, iou.detach(), -1.0)
        best_iou, best = candidate.max(1)
        matched = best_iou >= self.iou_threshold
        if not bool(matched.any()):
            return total
        rows = matched.nonzero()[:, 0]
        value = scores[best[rows]]
        overlap = iou[rows, best[rows]]
        if self.score == "score_times_iou":
            value = value * overlap
        elif self.score == "score_plus_iou":
            value = value + overlap
        return total + value.sum()

    def __repr__(self) -> str:
        return (
            f"DetectionTarget({len(self.boxes)} image(s), iou_threshold={self.iou_threshold}, "
            f"score={self.score!r})"
        )


def _parse_boxes(boxes: Any, labels: Any) -> tuple[list[Tensor], list[Tensor], bool]:
    """Boxes and labels as per-image lists of ``(K, 4)`` and ``(K,)`` tensors, and whether the
    single entry is shared by every image.
    """
    per_image = isinstance(boxes, (list, tuple)) and any(
        isinstance(b, (Tensor, list, tuple)) for b in boxes
    )
    if not per_image:
        t = torch.as_tensor(boxes).detach()
        if t.dim() == 1:
            if not isinstance(labels, numbers.Integral):
                labels = class_indices(labels, "labels")
                if not isinstance(labels, int):
                    raise ValueError("a single (4,) box needs a single int label")
            return [_check_box(t[None], "boxes")], [torch.tensor([int(labels)])], True
        if t.dim() != 2:
            raise ValueError(
                f"boxes must be (4,), (B, 4) or a sequence of (K_i, 4) tensors, got shape "
                f"{tuple(t.shape)}"
            )
        lab = class_indices(labels, "labels")
        lab_t = torch.full((t.shape[0],), lab) if isinstance(lab, int) else lab
        if lab_t.numel() != t.shape[0]:
            raise ValueError(f"got {lab_t.numel()} labels for {t.shape[0]} boxes")
        return (
            [_check_box(b[None], "boxes") for b in t],
            [lab_t[i : i + 1] for i in range(len(t))],
            False,
        )
    if not isinstance(labels, (list, tuple)) or len(labels) != len(boxes):
        raise ValueError(
            "with one (K_i, 4) tensor of boxes per image, pass one sequence of K_i labels per "
            f"image ({len(boxes)} images)"
        )
    out_b, out_l = [], []
    for b, lab in zip(boxes, labels, strict=True):
        bt = _check_box(torch.as_tensor(b).detach().reshape(-1, 4), "boxes")
        lt = class_indices(lab, "labels")
        lt = torch.tensor([lt]) if isinstance(lt, int) else lt
        if lt.numel() != bt.shape[0]:
            raise ValueError(f"got {lt.numel()} labels for {bt.shape[0]} boxes of one image")
        out_b.append(bt)
        out_l.append(lt)
    return out_b, out_l, False


def _check_box(boxes: Tensor, name: str) -> Tensor:
    if boxes.shape[-1] != 4 or boxes.is_complex() or not boxes.dtype.is_floating_point:
        if boxes.shape[-1] != 4:
            raise ValueError(
                f"{name} must hold (x1, y1, x2, y2) rows, got shape {tuple(boxes.shape)}"
            )
        boxes = boxes.float()
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{name} must be finite")
    if bool((boxes[:, 2:] < boxes[:, :2]).any()):
        raise ValueError(f"{name} must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")
    return boxes
