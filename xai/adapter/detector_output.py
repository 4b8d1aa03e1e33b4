"""A detector's output as :func:`~xai.adapter.targets.unwrap_output` returns it.

Torchvision's detectors return one dict of ``boxes``, ``labels`` and ``scores`` per image;
:class:`Detections` wraps that list so that only a target written for detections
(:class:`~xai.adapter.detection.DetectionTarget`, or a callable) can score it, and any use as a
tensor fails with a :class:`DetectionOutputError` that names the fix. A leaf module, so that
``targets`` (which unwraps outputs) and ``detection`` (which scores them) both import it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

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
