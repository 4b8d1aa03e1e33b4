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

import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from xai._typing import TargetLike
from xai.adapter.detector_output import Detections, _is_detection_output


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
