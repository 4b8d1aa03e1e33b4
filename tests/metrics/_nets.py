"""Small models for the metric tests."""

from __future__ import annotations

import torch
from torch import nn


class Linear(nn.Module):
    """f_k(x) = sum_{c,h,w} W_k[c,h,w] x[c,h,w] + b_k: every removal effect is known exactly."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())  # (K, C, H, W)
        k = weight.shape[0]
        self.bias = nn.Parameter(torch.zeros(k, dtype=weight.dtype) if bias is None else bias)

    def forward(self, x):
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


class Gray(nn.Module):
    """A nonlinear one-channel classifier (conv-tanh-conv-pool-linear), float32 for Quantus."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv2(self.act(self.conv1(x))))).flatten(1))


def gray(seed: int = 0, dtype=torch.float32) -> Gray:
    torch.manual_seed(seed)
    return Gray().to(dtype).eval()
