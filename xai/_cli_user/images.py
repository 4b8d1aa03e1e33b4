"""``--images``, ``--size``, ``--crop``, ``--normalize``: image files to model-ready tensors."""

from __future__ import annotations

import argparse
import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xai._cli_user.errors import CliError
from xai._cli_user.models import LoadedModel

if TYPE_CHECKING:
    import torch


__all__ = [
    "IMAGE_SUFFIXES",
    "Preprocess",
    "collect_images",
    "display_mean_std",
    "parse_normalization",
    "preprocess_for",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": None,
}
# Default layer of the CAM-family methods per architecture family (name prefix): the last


def collect_images(specs: Sequence[str]) -> list[Path]:
    """Image files from files, folders (recursive) and glob patterns, in a stable order."""
    found: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if any(ch in spec for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
            files = [m for m in matches if m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise CliError(f"--images {spec!r}: the pattern matches no image file")
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise CliError(
                    f"--images {spec!r}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)})"
                )
        elif p.is_file():
            files = [p]
        else:
            raise CliError(f"--images {spec!r}: no such file or folder")
        found += [f for f in files if f not in found]
    if not found:
        raise CliError("no images given: pass --images FILE|FOLDER|GLOB")
    return found


def parse_normalization(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``imagenet``, ``none`` or ``M1,M2,M3/S1,S2,S3`` -> ``(mean, std)`` or ``None``."""
    if spec in _NORMALIZATIONS:
        return _NORMALIZATIONS[spec]
    try:
        mean_s, std_s = spec.split("/")
        mean = tuple(float(v) for v in mean_s.split(","))
        std = tuple(float(v) for v in std_s.split(","))
    except ValueError:
        raise CliError(
            f"--normalize {spec!r}: use imagenet, none, or MEAN/STD such as 0.5,0.5,0.5/0.5,0.5,0.5"
        ) from None
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise CliError(f"--normalize {spec!r}: as many means as stds, stds > 0")
    return mean, std


@dataclass
class Preprocess:
    """Resize the short side to ``size / crop``, center-crop ``size``, scale to [0, 1],
    normalize (``crop=1``: resize to ``size`` only).
    """

    size: int = 224
    crop: float = 0.875
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    channels: int = 3

    def _geometry(self, t: torch.Tensor, interpolation: Any) -> torch.Tensor:
        import torchvision.transforms.functional as TF

        t = TF.resize(
            t,
            round(self.size / self.crop),
            interpolation=interpolation,
            antialias=interpolation != TF.InterpolationMode.NEAREST,
        )
        return TF.center_crop(t, self.size)

    def image(self, path: Path):
        """``(C, size, size)`` float tensor of the image at ``path``."""
        import torch
        import torchvision.transforms.functional as TF

        from xai.data import load_image

        try:
            arr = load_image(path)
        except (FileNotFoundError, ValueError) as err:
            raise CliError(str(err)) from None
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0
        if self.channels == 1:
            t = TF.rgb_to_grayscale(t)
        t = self._geometry(t, TF.InterpolationMode.BILINEAR)
        if self.normalization is not None:
            mean, std = self.normalization
            if len(mean) not in (1, t.shape[0]):
                raise CliError(f"--normalize has {len(mean)} values for {t.shape[0]} channels")
            t = TF.normalize(
                t, list(mean) * (t.shape[0] // len(mean)), list(std) * (t.shape[0] // len(std))
            )
        return t

    def mask(self, path: Path):
        """``(size, size)`` bool mask (non-zero = object) with the image's geometry."""
        import torch
        import torchvision.transforms.functional as TF

        from xai.data import load_image

        try:
            arr = load_image(path)
        except (FileNotFoundError, ValueError) as err:
            raise CliError(str(err)) from None
        t = torch.from_numpy(np.ascontiguousarray(arr.max(axis=2) > 0))[None].float()
        return self._geometry(t, TF.InterpolationMode.NEAREST)[0] > 0.5


def display_mean_std(pre: Preprocess):
    if pre.normalization is None:
        return None, None
    return pre.normalization


def preprocess_for(args: argparse.Namespace, model: LoadedModel) -> Preprocess:
    return Preprocess(
        args.size,
        args.crop,
        parse_normalization(args.normalize),
        args.channels or model.in_channels,
    )
