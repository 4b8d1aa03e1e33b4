"""Type aliases shared by the public API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import numpy as np
from torch import Tensor, nn

LayerLike: TypeAlias = str | nn.Module
"""A layer given by its dotted name (``"layer4.1.conv2"``) or by the module object."""

TargetLike: TypeAlias = int | Sequence[int] | Tensor | Callable[[Tensor], Tensor] | None
"""What to explain: ``None`` (each sample's argmax), a class index, one index per sample,
or a callable mapping the model output to one scalar per sample."""

ReshapeLike: TypeAlias = Literal["auto", "vit", "swin"] | Callable[[Tensor], Tensor] | None
"""How to turn a layer output into a ``(B, C, h, w)`` grid: ``None`` (already spatial),
``"auto"`` (from the model family, see :func:`xai.adapter.reshape.token_layout`),
``"vit"`` (tokens ``(B, N, C)`` with prefix tokens), ``"swin"`` (``(B, h, w, C)``) or a callable."""

ArrayLike: TypeAlias = Tensor | np.ndarray
"""An image, map or batch given to the figures: a tensor (detached and moved to the CPU for
display) or a NumPy array."""
