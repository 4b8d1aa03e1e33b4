"""Image parameterizations for feature visualization (Olah et al., Distill 2017).

``fft``: the image is the inverse real FFT of a spectrum whose frequencies are scaled by
``1 / max(|f|, 1/max(H, W)) ** decay_power``, so that gradient steps favour low frequencies
("preconditioning"); ``pixel``: raw pixels. Both start from N(0, 0.01^2) and are mapped to
[0, 1] by a fixed color decorrelation and a sigmoid. Constants from tensorflow/lucid through
greentfrapp/lucent ``optvis/param/{spatial,color}.py``: sd 0.01, the "magic" divisor 4 of the
FFT image, the square root of ImageNet's color covariance below.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COLOR_CORRELATION", "ImageParam", "fft_scale", "to_rgb"]

#: Square root of ImageNet's RGB covariance (Lucid's ``color_correlation_svd_sqrt``).
COLOR_CORRELATION = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
_MAGIC = 4.0  # lucid: dividing the FFT image by 4 reduces saturation


def fft_scale(height: int, width: int, decay_power: float = 1.0) -> Tensor:
    """``(H, W // 2 + 1)`` spectrum scale ``1 / max(|f|, 1/max(H, W)) ** decay_power``."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freqs = (fx.square() + fy.square()).sqrt()
    return 1.0 / freqs.clamp_min(1.0 / max(height, width)) ** decay_power


def to_rgb(image: Tensor, decorrelate: bool = True) -> Tensor:
    """Map an unconstrained ``(B, 3, H, W)`` image to [0, 1]: optional color decorrelation
    (matrix normalized by its largest column norm), then a sigmoid.
    """
    if decorrelate:
        c = torch.tensor(COLOR_CORRELATION, dtype=image.dtype, device=image.device)
        c = c / c.norm(dim=0).max()
        image = torch.einsum("bchw,dc->bdhw", image, c)
    return torch.sigmoid(image)


class ImageParam:
    """A batch of images as a learnable tensor.

    Args:
        batch: number of images ``B``.
        size: ``(H, W)``.
        kind: ``"fft"`` (default) or ``"pixel"``.
        decorrelate: apply the color decorrelation before the sigmoid.
        decay_power: frequency decay of the FFT scale (lucent 1.0; xplique 0.85).
        generator: the source of the random start (N(0, 0.01^2)).
        channels: image channels (3; decorrelation needs 3).

    Attributes:
        tensor: the leaf tensor to optimize: ``(B, C, H, W // 2 + 1, 2)`` spectrum or
            ``(B, C, H, W)`` pixels.
    """

    def __init__(
        self,
        batch: int,
        size: tuple[int, int],
        *,
        kind: str = "fft",
        decorrelate: bool = True,
        decay_power: float = 1.0,
        generator: torch.Generator | None = None,
        channels: int = 3,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if kind not in ("fft", "pixel"):
            raise ValueError(f"param must be 'fft' or 'pixel', got {kind!r}")
        if decorrelate and channels != 3:
            raise ValueError("color decorrelation needs 3 channels; pass decorrelate=False")
        self.kind, self.decorrelate = kind, decorrelate
        self.size = (int(size[0]), int(size[1]))
        h, w = self.size
        shape = (batch, channels, h, w // 2 + 1, 2) if kind == "fft" else (batch, channels, h, w)
        start = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.01
        self.tensor = start.to(device=device, dtype=dtype).requires_grad_(True)
        self.scale = (
            fft_scale(h, w, decay_power).to(device=device, dtype=dtype)[..., None]
            if kind == "fft"
            else None
        )

    def raw(self) -> Tensor:
        """The unconstrained image ``(B, C, H, W)`` (before decorrelation and sigmoid)."""
        if self.scale is None:  # kind "pixel"
            return self.tensor
        spectrum = torch.view_as_complex((self.scale * self.tensor).contiguous())
        return torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / _MAGIC

    def __call__(self) -> Tensor:
        """The images ``(B, C, H, W)`` in [0, 1]."""
        return to_rgb(self.raw(), self.decorrelate)
