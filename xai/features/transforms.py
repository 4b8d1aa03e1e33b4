"""Transformation robustness for feature visualization (Olah et al., Distill 2017).

Random jitter, scale and rotation applied to the image at every step, so that the optimized
pattern must survive them (this removes most high-frequency adversarial noise). Every random
draw comes from the ``torch.Generator`` passed in, so a seed fixes the whole run.

- :func:`lucid_transforms`: Lucid's ``standard_transforms`` (greentfrapp/lucent
  ``optvis/transform.py``): pad 12 (value 0.5), jitter 8, scale in {0.90, 0.92, ..., 1.10},
  rotate in {-10..10} degrees (0 five extra times), jitter 4.
- :func:`xplique_transforms`: xplique's size-relative set (``features_visualizations/
  transformations.py``, unit ``u = size // 16``): pad 4u (0.0), jitters 2u, 2u, 4u, 4u, 4u,
  scale in U(0.92, 0.96), Gaussian blur sigma in U(1, 1.1), jitters u, u, random horizontal flip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = [
    "Transform",
    "jitter",
    "lucid_transforms",
    "pad",
    "random_blur",
    "random_flip",
    "random_rotate",
    "random_scale",
    "xplique_transforms",
]

Transform = Callable[[Tensor, torch.Generator], Tensor]


def _choice(values: Sequence[float], gen: torch.Generator) -> float:
    return values[int(torch.randint(len(values), (1,), generator=gen))]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels of a constant ``value``."""

    def inner(image: Tensor, gen: torch.Generator) -> Tensor:
        return TF.pad(image, [width], fill=value)

    return inner


def jitter(d: int) -> Transform:
    """Random crop that drops ``d`` pixels in each axis (offsets uniform in {0..d}), as Lucid."""

    def inner(image: Tensor, gen: torch.Generator) -> Tensor:
        h, w = image.shape[-2:]
        if d <= 0 or d >= min(h, w):
            return image
        dy, dx = (int(v) for v in torch.randint(d + 1, (2,), generator=gen))
        return image[..., dy : dy + h - d, dx : dx + w - d]

    return inner


def random_scale(
    scales: Sequence[float] | tuple[float, float], *, uniform: bool = False
) -> Transform:
    """Bilinear rescale by a factor drawn from ``scales`` (or U(lo, hi) with ``uniform``)."""

    def inner(image: Tensor, gen: torch.Generator) -> Tensor:
        if uniform:
            lo, hi = scales
            s = lo + (hi - lo) * float(torch.rand((), generator=gen))
        else:
            s = _choice(scales, gen)
        h, w = image.shape[-2:]
        size = [max(1, round(h * s)), max(1, round(w * s))]
        if size == [h, w]:
            return image
        return TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=False)

    return inner


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate about the center by an angle (degrees) drawn from ``angles`` (bilinear)."""

    def inner(image: Tensor, gen: torch.Generator) -> Tensor:
        angle = float(_choice(angles, gen))
        if angle == 0:
            return image
        return TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)

    return inner


def random_blur(sigma: tuple[float, float], kernel_size: int = 11) -> Transform:
    """Gaussian blur with a standard deviation drawn from U(sigma)."""

    def inner(image: Tensor, gen: torch.Generator) -> Tensor:
        s = sigma[0] + (sigma[1] - sigma[0]) * float(torch.rand((), generator=gen))
        return TF.gaussian_blur(image, [kernel_size, kernel_size], [s, s])

    return inner


def random_flip() -> Transform:
    """Horizontal flip with probability 1/2."""

    def inner(image: Tensor, gen: torch.Generator) -> Tensor:
        return image.flip(-1) if bool(torch.rand((), generator=gen) < 0.5) else image

    return inner


def lucid_transforms() -> list[Transform]:
    """Lucid's ``standard_transforms``."""
    return [
        pad(12, 0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(4),
    ]


def xplique_transforms(size: int) -> list[Transform]:
    """Xplique's default transformations for an image of side ``size``."""
    u = max(1, size // 16)
    return [
        pad(4 * u, 0.0),
        *[jitter(d) for d in (2 * u, 2 * u, 4 * u, 4 * u, 4 * u)],
        random_scale((0.92, 0.96), uniform=True),
        random_blur((1.0, 1.1)),
        jitter(u),
        jitter(u),
        random_flip(),
    ]
