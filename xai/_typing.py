"""Type aliases shared by the public API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Union

from torch import Tensor, nn

LayerLike = Union[str, nn.Module]
"""A layer given by its dotted name (``"layer4.1.conv2"``) or by the module object."""

TargetLike = Union[None, int, Sequence[int], Tensor, Callable[[Tensor], Tensor]]
"""What to explain: ``None`` (each sample's argmax), a class index, one index per sample,
or a callable mapping the model output to one scalar per sample."""

ReshapeLike = Union[None, Literal["auto", "vit", "swin"], Callable[[Tensor], Tensor]]
"""How to turn a layer output into a ``(B, C, h, w)`` grid: ``None`` (already spatial),
``"auto"`` (from the model family, see :func:`xai.adapter.reshape.token_layout`),
``"vit"`` (tokens ``(B, N, C)`` with prefix tokens), ``"swin"`` (``(B, h, w, C)``) or a callable."""
