"""Targets: what scalar per sample an explanation explains.

Every target form a user may pass (``None``, an int, one int per sample, a callable) is turned
once, by :func:`as_target`, into a :class:`Target`: a callable mapping the model output to a
``(B,)`` tensor of scores. Task targets are small classes (:class:`SegmentationTarget`,
:class:`SimilarityTarget`, :class:`ProbabilityTarget`).

Perturbation methods evaluate the model on expanded batches (many perturbed copies of each
sample); :meth:`Target.select` returns the target for such a batch, given for each row the
index of the sample it came from, and :meth:`Target.freeze` fixes an ``argmax`` target to the
classes predicted on the clean inputs.
"""

from __future__ import annotations

import copy
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from xai._typing import TargetLike


def unwrap_output(output: Any) -> Tensor:
    """Return the tensor to score from a model output.

    Plain tensors pass through; Hugging Face ``ModelOutput`` (``.logits``; ``image_embeds`` or
    ``pooler_output`` for CLIP vision towers), dicts with ``"logits"`` or ``"out"``
    (torchvision segmentation), and tuples/lists (first element) are
    unwrapped. A detector's output (one dict with ``boxes``, ``labels``, ``scores`` per image,
    torchvision's Faster R-CNN / RetinaNet / FCOS in eval mode) comes back as
    :class:`Detections`, which only :class:`DetectionTarget` (or a callable target written for
    it) can score. Anything else raises a ``TypeError`` that says to pass a callable target.
    """
    if isinstance(output, Tensor):
        return output
    if _is_detection_output(output):
        return Detections(output)  # type: ignore[return-value]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, dict):
        for key in ("logits", "out", "image_embeds", "pooler_output"):
            if isinstance(output.get(key), Tensor):
                return output[key]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"cannot find a tensor to explain in a model output of type {type(output).__name__}; "
        "wrap the model so that it returns a tensor"
    )


class Target(ABC):
    """Base class: ``target(outputs) -> (B,)`` scores, one per sample.

    A subclass implements :meth:`__call__`; it may override the other methods (their defaults
    suit a target without data-dependent choices or per-sample data).
    """

    @abstractmethod
    def __call__(self, outputs: Tensor) -> Tensor:
        """The ``(B,)`` scores of the model outputs ``outputs`` (one scalar per sample)."""

    def freeze(self, outputs: Tensor) -> Target:
        """The same target with any data-dependent choice (argmax) fixed from ``outputs``."""
        return self

    @property
    def needs_freeze(self) -> bool:
        """Whether :meth:`freeze` must be called before scoring perturbed copies."""
        return False

    def select(self, index: Tensor) -> Target:
        """The target for a batch whose row ``j`` is a copy of original sample ``index[j]``."""
        return self

    def check_batch(self, batch: int) -> None:  # noqa: B027 (optional: most targets hold no per-sample data)
        """Raise a ``ValueError`` early when per-sample data does not match the batch size."""


def class_indices(value: object, name: str = "target") -> int | Tensor:
    """Class indices as an int (one class) or a 1-D long tensor (one per sample).

    Accepts Python and NumPy integers, sequences of them, integer NumPy arrays and integer
    tensors (a 0-d one is one class). Floats are refused rather than truncated: ``1.7`` or
    ``torch.tensor(1.7)`` is not a class.

    Raises:
        TypeError: floats, bools, complex numbers or other non-integer values.
        ValueError: an array of rank 2 or more.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    kinds = "an int, a sequence of ints, or a 1-D integer tensor/array"
    if isinstance(value, (bool, str, bytes, numbers.Number)):
        raise TypeError(
            f"{name} must be {kinds}, got {type(value).__name__} {value!r}; class indices are "
            f"never rounded: pass int({name}) if that is what you mean"
        )
    t = value
    if not isinstance(t, Tensor):
        try:
            items = value if hasattr(value, "__array__") else list(value)  # type: ignore[call-overload]
            t = torch.as_tensor(items)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be {kinds}, got {type(value).__name__}") from None
    t = t.detach()
    if t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(
            f"{name} must hold integer class indices, got dtype {t.dtype}; class indices are "
            f"never rounded: convert with {name}.long() if the values are whole numbers"
        )
    if t.dim() == 0:
        return int(t)
    if t.dim() != 1:
        raise ValueError(
            f"a per-sample {name} must be a 1-D sequence of ints, got shape {tuple(t.shape)}"
        )
    return t.long()


def _check_scores(scores: object, batch: int, who: str) -> Tensor:
    if not isinstance(scores, Tensor) or scores.shape != (batch,):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(
            f"{who} must return one scalar per sample, shape ({batch},), got {shape}; "
            "reduce the output per sample (e.g. out[:, k] or out.flatten(1).sum(1))"
        )
    return scores


class ClassTarget(Target):
    """The logit of a class: ``None`` (each sample's argmax), one int, or one int per sample.

    Args:
        classes: ``None``, an int (the same class for every sample) or a sequence / 1-D tensor
            of ints whose length equals the batch size.
    """

    def __init__(self, classes: None | int | Sequence[int] | Tensor = None) -> None:
        self.classes: None | int | Tensor = (
            None if classes is None else class_indices(classes, "target")
        )

    @property
    def needs_freeze(self) -> bool:
        """An argmax target (``classes=None``) must be fixed before perturbed copies."""
        return self.classes is None

    def check_batch(self, batch: int) -> None:
        """One class per sample, when per-sample classes are given."""
        if isinstance(self.classes, Tensor) and self.classes.numel() != batch:
            raise ValueError(
                f"got {self.classes.numel()} targets for a batch of {batch}; pass one "
                "target per sample, a single int, or None for each sample's argmax"
            )

    def indices(self, outputs: Tensor) -> Tensor:
        """The class index of each sample, ``(B,)`` long, validated against ``outputs``."""
        if outputs.dim() != 2:
            raise ValueError(
                f"a class target needs model outputs of shape (B, n_classes), got "
                f"{tuple(outputs.shape)}; for other outputs pass a callable target or "
                "SegmentationTarget / SimilarityTarget"
            )
        batch, n_classes = outputs.shape
        if self.classes is None:
            return outputs.detach().argmax(dim=1)
        if isinstance(self.classes, int):
            idx = torch.full((batch,), self.classes, dtype=torch.long, device=outputs.device)
        else:
            if self.classes.numel() != batch:
                raise ValueError(
                    f"got {self.classes.numel()} targets for a batch of {batch}; pass one "
                    "target per sample, a single int, or None for each sample's argmax"
                )
            idx = self.classes.to(outputs.device)
        bad = (idx < 0) | (idx >= n_classes)
        if bool(bad.any()):
            raise ValueError(
                f"target class {int(idx[bad][0])} is out of range for a model with "
                f"{n_classes} outputs (valid: 0..{n_classes - 1})"
            )
        return idx

    def __call__(self, outputs: Tensor) -> Tensor:
        """The logit of each sample's class, ``(B,)``."""
        idx = self.indices(outputs)
        return outputs.gather(1, idx[:, None])[:, 0]

    def freeze(self, outputs: Tensor) -> ClassTarget:
        """The classes fixed from ``outputs`` (the argmax, for ``classes=None``)."""
        return ClassTarget(self.indices(outputs).cpu())

    def select(self, index: Tensor) -> ClassTarget:
        """The classes of the original samples ``index`` (after :meth:`freeze`)."""
        if self.classes is None:
            raise RuntimeError("freeze() an argmax target before select()")
        if isinstance(self.classes, int):
            return self
        return ClassTarget(self.classes[index.cpu()])

    def __repr__(self) -> str:
        return f"ClassTarget({self.classes!r})"


class ProbabilityTarget(ClassTarget):
    """The probability of a class: softmax over classes, or sigmoid for multi-label models."""

    def __init__(
        self, classes: None | int | Sequence[int] | Tensor = None, activation: str = "softmax"
    ) -> None:
        super().__init__(classes)
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        self.activation = activation

    def __call__(self, outputs: Tensor) -> Tensor:
        """The probability of each sample's class, ``(B,)``."""
        idx = self.indices(outputs)
        probs = outputs.softmax(1) if self.activation == "softmax" else outputs.sigmoid()
        return probs.gather(1, idx[:, None])[:, 0]

    def freeze(self, outputs: Tensor) -> ProbabilityTarget:
        """The classes fixed from ``outputs`` (the argmax, for ``classes=None``)."""
        return ProbabilityTarget(self.indices(outputs).cpu(), self.activation)

    def select(self, index: Tensor) -> ProbabilityTarget:
        """The classes of the original samples ``index`` (after :meth:`freeze`)."""
        frozen = super().select(index)
        return ProbabilityTarget(frozen.classes, self.activation)


class CallableTarget(Target):
    """A user function ``fn(outputs) -> (B,)``. It must treat samples independently."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, outputs: Tensor) -> Tensor:
        """``fn(outputs)``, checked to be one scalar per sample."""
        batch = len(outputs) if isinstance(outputs, Detections) else outputs.shape[0]
        return _check_scores(self.fn(outputs), batch, "a target callable")


class SegmentationTarget(Target):
    """Sum of one class's logits over a mask, for ``(B, K, H, W)`` segmentation outputs.

    Args:
        cls: the class channel to explain.
        mask: ``(H, W)`` or ``(B, H, W)`` weights (bool or float); ``None`` sums every pixel.
    """

    def __init__(self, cls: int, mask: Tensor | None = None) -> None:
        self.cls = int(cls)
        self.mask = mask

    def __call__(self, outputs: Tensor) -> Tensor:
        """The class's logits summed over the mask, ``(B,)``."""
        if outputs.dim() != 4:
            raise ValueError(
                f"SegmentationTarget needs (B, K, H, W) outputs, got {tuple(outputs.shape)}"
            )
        scores = outputs[:, self.cls]
        if self.mask is not None:
            mask = self.mask.to(device=outputs.device, dtype=outputs.dtype)
            if mask.shape[-2:] != scores.shape[-2:]:
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} does not match the output's spatial "
                    f"shape {tuple(scores.shape[-2:])}"
                )
            scores = scores * mask
        return scores.flatten(1).sum(1)

    def select(self, index: Tensor) -> SegmentationTarget:
        """The masks of the original samples ``index`` (a shared mask is kept)."""
        if self.mask is not None and self.mask.dim() == 3:
            return SegmentationTarget(self.cls, self.mask[index.to(self.mask.device)])
        return self


class SimilarityTarget(Target):
    """Similarity of each embedding ``(B, D)`` to a reference embedding.

    Args:
        reference: ``(D,)`` (one reference for all samples) or ``(B, D)`` (one per sample).
        metric: ``"cosine"`` or ``"dot"``.
    """

    def __init__(self, reference: Tensor, metric: str = "cosine") -> None:
        if metric not in ("cosine", "dot"):
            raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
        if reference.dim() not in (1, 2):
            raise ValueError(
                f"reference must be (D,) or (B, D), got shape {tuple(reference.shape)}"
            )
        self.reference = reference.detach()
        self.metric = metric

    def __call__(self, outputs: Tensor) -> Tensor:
        """The similarity of each embedding to its reference, ``(B,)``."""
        if outputs.dim() != 2:
            raise ValueError(
                f"SimilarityTarget needs (B, D) embeddings, got {tuple(outputs.shape)}"
            )
        ref = self.reference.to(device=outputs.device, dtype=outputs.dtype)
        ref = ref.expand_as(outputs) if ref.dim() == 1 else ref
        if ref.shape != outputs.shape:
            raise ValueError(
                f"reference shape {tuple(self.reference.shape)} does not match embeddings "
                f"{tuple(outputs.shape)}"
            )
        if self.metric == "cosine":
            return torch.nn.functional.cosine_similarity(outputs, ref, dim=1)
        return (outputs * ref).sum(1)

    def check_batch(self, batch: int) -> None:
        """One reference per sample, when per-sample references are given."""
        if self.reference.dim() == 2 and self.reference.shape[0] != batch:
            raise ValueError(
                f"got {self.reference.shape[0]} reference embeddings for a batch of {batch}; "
                "pass one per sample or a single (D,) reference"
            )

    def select(self, index: Tensor) -> SimilarityTarget:
        """The references of the original samples ``index`` (a shared one is kept)."""
        if self.reference.dim() == 2:
            return SimilarityTarget(self.reference[index.to(self.reference.device)], self.metric)
        return self


def as_target(target: TargetLike | Target) -> Target:
    """Normalize any accepted target form into a :class:`Target`.

    ``None`` -> each sample's argmax logit; int / sequence / 1-D tensor (NumPy integers and
    integer arrays included) -> :class:`ClassTarget`; a :class:`Target` passes through; any
    other callable -> :class:`CallableTarget`. Floats are refused (``TypeError``), not
    truncated to a class.
    """
    if isinstance(target, Target):
        return target
    if (
        target is None
        or isinstance(target, (numbers.Number, Tensor, list, tuple, str, bytes))
        or hasattr(target, "__array__")  # NumPy arrays and scalars
    ):
        return ClassTarget(target)  # type: ignore[arg-type]
    if callable(target):
        return CallableTarget(target)
    raise TypeError(
        f"target must be None, an int, a sequence of ints, a 1-D tensor or a callable, got "
        f"{type(target).__name__}"
    )


# Detection ---------------------------------------------------------------------------------

_DETECTION_KEYS = ("boxes", "labels", "scores")


def _is_detection_output(output: Any) -> bool:
    return (
        isinstance(output, (list, tuple))
        and len(output) > 0
        and all(
            isinstance(item, dict) and all(isinstance(item.get(k), Tensor) for k in _DETECTION_KEYS)
            for item in output
        )
    )


class DetectionOutputError(TypeError, AttributeError):
    """A detector's output was used as a tensor (by a class, probability or segmentation
    target). An ``AttributeError`` too, so that ``hasattr(outputs, ...)`` stays false.
    """


class Detections(list):
    """A detector's output: one dict per image with ``boxes`` ``(N, 4)`` (x1, y1, x2, y2 in
    input pixels), ``labels`` ``(N,)`` and ``scores`` ``(N,)``, as torchvision's detectors
    return in eval mode.

    It is a list, so :class:`DetectionTarget` and callables written for detections read it as
    such; any use as a tensor (``outputs.shape``, ``outputs[:, k]``, ``outputs.softmax(1)``)
    raises a :class:`DetectionOutputError` naming :class:`DetectionTarget`.
    """

    def detach(self) -> Detections:
        """The same detections with every tensor detached."""
        return Detections([{k: _detach(v) for k, v in item.items()} for item in self])

    def __getattr__(self, name: str) -> Any:
        raise DetectionOutputError(_detection_hint(f"has no attribute {name!r}"))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, tuple):
            raise DetectionOutputError(_detection_hint("cannot be indexed like a tensor"))
        return super().__getitem__(index)


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def _detection_hint(what: str) -> str:
    return (
        f"the model returns detections (one dict of boxes, labels and scores per image), which "
        f"{what}: explain a box with target=xai.adapter.DetectionTarget(boxes, labels) (or "
        "DetectionTarget.top(model(x)) for each image's best detection)"
    )


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
