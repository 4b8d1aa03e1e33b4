"""Validation shared by every public entry point: errors name the problem and the fix."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from types import FrameType

import torch
from torch import Tensor

from xai._spatial import rank_error

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the user's line: the first caller outside ``xai``
    (``stacklevel=2`` seen from the public entry point, however deep the library call).
    """
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def check_inputs(
    inputs: object, *, name: str = "inputs", ranks: Sequence[int] = (4,), refusal: str = ""
) -> Tensor:
    """Check that ``inputs`` is a floating ``(B, C, H, W)`` tensor and return it.

    ``ranks`` are the accepted ranks (``(4, 5)`` also takes videos and volumes
    ``(B, C, T, H, W)``); ``refusal`` says why a caller refuses a rank that others take (see
    :func:`xai._spatial.rank_error`).

    The finiteness check is one fused pass over the batch (``torch.isfinite(x).all()``), cheap
    next to any forward pass: a NaN or Inf input would otherwise give NaN maps, or worse,
    finite maps of a NaN model output.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong rank, an empty batch, a meta-device tensor (no data) or NaN/Inf
            values.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}; "
            "convert images with torch.as_tensor(array).permute(2, 0, 1)[None].float()"
        )
    if inputs.dim() not in ranks:
        raise ValueError(rank_error(inputs, ranks, name, refusal))
    if not torch.is_floating_point(inputs):
        raise TypeError(
            f"{name} must be a floating tensor, got dtype {inputs.dtype}; "
            f"use {name}.float() (and scale uint8 images to [0, 1] first)"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(inputs.shape)})")
    if inputs.is_meta:
        raise ValueError(
            f"{name} is on the meta device (a tensor without data); move real data to the "
            f"model's device, e.g. {name}.to('cpu')"
        )
    check_finite(inputs, name)
    if torch.is_inference_mode_enabled() or inputs.is_inference():
        raise RuntimeError(
            f"{name} was created under torch.inference_mode(): gradients are impossible for "
            "such tensors; call the explainer outside inference_mode (torch.no_grad() is fine) "
            f"or pass {name}.clone() made outside it"
        )
    return inputs


def check_finite(values: Tensor, name: str) -> Tensor:
    """Raise a ``ValueError`` naming ``name`` when ``values`` holds NaN or Inf entries."""
    if values.is_floating_point() or values.is_complex():
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"{name} contains {bad} NaN or Inf value(s) out of {values.numel()}; clean or "
                f"drop those samples first (torch.isfinite({name}).flatten(1).all(1) finds them)"
            )
    return values


def check_positive_int(value: object, name: str, *, allow_none: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is a positive int (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def map_dtype(inputs: Tensor) -> torch.dtype:
    """The dtype of an attribution map: the input's, promoted to at least float32."""
    return torch.promote_types(inputs.dtype, torch.float32)
