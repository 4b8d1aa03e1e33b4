"""Helpers shared by inversion and feature visualization (private)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from xai.adapter import preserved


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """:func:`xai.adapter.preserved` with every parameter's ``requires_grad`` off inside.

    Only the image is optimized: with frozen parameters the forward pass saves nothing for
    weight gradients, which keeps one optimization step close to one forward+backward of the
    image. The flags are restored on exit (also after an exception).
    """
    with preserved(model):
        for param in model.parameters():
            param.requires_grad_(False)
        yield model


def channel_view(values: Sequence[float] | Tensor, like: Tensor, name: str) -> Tensor:
    """Per-channel constants (``mean``/``std``) as a ``(1, C, 1, 1)`` tensor like ``like``."""
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device).flatten()
    if t.numel() not in (1, like.shape[1]):
        raise ValueError(
            f"{name} has {t.numel()} values but the images have {like.shape[1]} channels; give "
            "one value per channel"
        )
    return t.view(1, -1, 1, 1)


def generator(seed: int | None) -> torch.Generator:
    """A CPU generator: random draws are made on the CPU, so results do not depend on device."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar over ``total`` steps (disabled unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
