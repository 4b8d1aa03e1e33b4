"""Planted "networks" for Network Dissection / Net2Vec: the probed layer's channels are
concept masks (exact ground truth), plus noise channels."""

from __future__ import annotations

import torch
from torch import nn


def rect_masks(
    n: int, c: int, size: int, *, p: float = 0.3, lo: int = 5, hi: int = 10, seed: int = 0
) -> torch.Tensor:
    """``(n, c, size, size)`` bool: each concept present with probability ``p`` as a random
    rectangle of side ``lo..hi``."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, c, size, size, dtype=torch.bool)
    for i in range(n):
        for j in range(c):
            if torch.rand(1, generator=gen) < p:
                h, w = torch.randint(lo, hi + 1, (2,), generator=gen).tolist()
                y = int(torch.randint(0, size - h + 1, (1,), generator=gen))
                x = int(torch.randint(0, size - w + 1, (1,), generator=gen))
                masks[i, j, y : y + h, x : x + w] = True
    return masks


def planted_inputs(masks: torch.Tensor, n_noise: int = 2, seed: int = 1) -> torch.Tensor:
    """Images whose channels are the concept masks then ``n_noise`` U(0, 0.3) channels."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(masks.shape[0], n_noise, *masks.shape[2:], generator=gen) * 0.3
    return torch.cat([masks.float(), noise], 1)


class Planted(nn.Module):
    """``features`` passes the input through (optionally average-pooled by ``stride``), so
    filter k of layer ``"features"`` is concept k's mask."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.features = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.head = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((1, 2, 3))[:, None])
