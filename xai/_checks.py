"""Validation shared by every public entry point: errors name the problem and the fix."""

from __future__ import annotations

import torch
from torch import Tensor


def check_inputs(inputs: object, *, name: str = "inputs") -> Tensor:
    """Check that ``inputs`` is a floating ``(B, C, H, W)`` tensor and return it.

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: wrong rank or an empty batch.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(inputs).__name__}; "
            "convert images with torch.as_tensor(array).permute(2, 0, 1)[None].float()"
        )
    if inputs.dim() != 4:
        hint = (
            f" (a single image? use {name}.unsqueeze(0))"
            if inputs.dim() == 3
            else ""
        )
        raise ValueError(
            f"{name} must have shape (B, C, H, W), got {tuple(inputs.shape)}{hint}"
        )
    if not torch.is_floating_point(inputs):
        raise TypeError(
            f"{name} must be a floating tensor, got dtype {inputs.dtype}; "
            f"use {name}.float() (and scale uint8 images to [0, 1] first)"
        )
    if inputs.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(inputs.shape)})")
    if torch.is_inference_mode_enabled() or inputs.is_inference():
        raise RuntimeError(
            f"{name} was created under torch.inference_mode(): gradients are impossible for "
            "such tensors; call the explainer outside inference_mode (torch.no_grad() is fine) "
            f"or pass {name}.clone() made outside it"
        )
    return inputs


def check_positive_int(value: object, name: str, *, allow_none: bool = False) -> None:
    """Raise a ``ValueError`` unless ``value`` is a positive int (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def map_dtype(inputs: Tensor) -> torch.dtype:
    """The dtype of an attribution map: the input's, promoted to at least float32."""
    return torch.promote_types(inputs.dtype, torch.float32)
