"""Tiny models shared by the tests (float64-friendly, CPU, built in a few milliseconds)."""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """conv-ReLU(inplace)-conv-BN-ReLU(inplace) -> GAP -> linear; ``features`` is the CAM layer.

    ``dims=3``: the same with Conv3d layers, for clips ``(B, 3, T, H, W)``.
    """

    def __init__(self, n_classes: int = 5, channels: int = 8, dims: int = 2) -> None:
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        self.features = nn.Sequential(
            conv(3, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            conv(channels, channels, 3, padding=1, stride=2),
            norm(channels),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class GapLinear(nn.Module):
    """Conv features, global average pooling and a linear head: CAM is defined for it."""

    def __init__(self, n_classes: int = 4, channels: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


class Raising(nn.Module):
    """Raises inside the forward when ``armed``: hooks must still be removed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x):
        if self.armed:
            raise RuntimeError("boom")
        return x


class RaisingNet(TinyConvNet):
    """TinyConvNet with a module after the features that can be made to raise."""

    def __init__(self) -> None:
        super().__init__()
        self.trap = Raising()

    def forward(self, x):
        return self.fc(self.pool(self.trap(self.features(x))).flatten(1))


class TinyViT(nn.Module):
    """Two transformer blocks over 4x4 patches, a class token and register tokens."""

    def __init__(self, n_classes: int = 3, dim: int = 16, n_registers: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1 + n_registers, dim))
        self.num_prefix_tokens = 1 + n_registers
        self.blocks = nn.Sequential(
            *[
                nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
                for _ in range(2)
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1)
        tokens = self.blocks(tokens)
        return self.head(self.norm(tokens[:, 0]))


class RaisingViT(TinyViT):
    """TinyViT with a module after the blocks that can be made to raise."""

    def __init__(self, n_classes: int = 5) -> None:
        super().__init__(n_classes=n_classes)
        self.trap = Raising()

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], 1)
        return self.head(self.norm(self.trap(self.blocks(tokens))[:, 0]))


def seeded(model: nn.Module, seed: int = 0, dtype=torch.float64) -> nn.Module:
    """Re-initialize ``model`` from ``seed``, make BN statistics non-trivial, cast, eval."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.to(dtype).eval()
