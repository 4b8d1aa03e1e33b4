"""Planted-concept models and data shared by the concept tests."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor, nn


class PlantedNet(nn.Module):
    """``features`` (ReLU) -> global average pooling -> linear: ``h`` is affine."""

    def __init__(self, channels: int = 16, n_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.features = nn.ReLU()
        self.fc = nn.Linear(channels, n_classes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(n_classes, channels, generator=gen))
            self.fc.bias.copy_(torch.randn(n_classes, generator=gen))
        self.double()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def planted_bank(k: int = 4, channels: int = 16, seed: int = 0) -> Tensor:
    """``(k, channels)`` non-negative concept vectors with disjoint-ish supports."""
    gen = torch.Generator().manual_seed(seed)
    bank = torch.rand(k, channels, generator=gen, dtype=torch.float64) ** 3
    return bank / bank.norm(dim=1, keepdim=True)


def planted_images(bank: Tensor, n: int = 24, size: int = 4, seed: int = 1) -> Tensor:
    """Images ``(n, C, size, size)`` whose every position is a sparse non-negative combination
    of the bank's rows (one or two active concepts)."""
    gen = torch.Generator().manual_seed(seed)
    k = bank.shape[0]
    coeffs = torch.rand(n, size, size, k, generator=gen, dtype=torch.float64) + 0.5
    keep = torch.rand(n, size, size, k, generator=gen) < 0.35
    first = torch.randint(0, k, (n, size, size), generator=gen)
    keep |= torch.nn.functional.one_hot(first, k).bool()
    return ((coeffs * keep) @ bank).permute(0, 3, 1, 2).contiguous()


class FixedBank:
    """A factorizer that knows the true bank: NNLS encoding (the Factorizer protocol)."""

    requires_nonnegative = True

    def __init__(self, bank: Tensor) -> None:
        self.components = bank

    def encode(self, activations: Tensor) -> Tensor:
        w = self.components.numpy().T
        rows = [nnls(w, a)[0] for a in activations.double().numpy()]
        return torch.as_tensor(np.stack(rows), dtype=activations.dtype)

    def fit(self, activations: Tensor) -> Tensor:
        return self.encode(activations)

    def decode(self, coefficients: Tensor) -> Tensor:
        return coefficients @ self.components.to(coefficients)
