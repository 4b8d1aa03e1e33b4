"""Image sources of the background-swap set (and Broden-lite): Tux Paint photo cut-outs, read
with their alpha, pasted with a hard alpha on tinted scikit-image textures.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

__all__ = ["TUXPAINT_STAMPS", "tuxpaint_available"]

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
_TEXTURES = ("grass", "gravel", "brick")


def tuxpaint_available(root: str | Path = TUXPAINT_STAMPS) -> bool:
    """Whether Tux Paint stamps are installed under ``root``."""
    root = Path(root)
    return root.is_dir() and any(root.rglob("*.png"))


def _stamp_files(root: Path, category: str) -> list[Path]:
    folder = root / category
    if not folder.is_dir():
        known = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
        raise ValueError(f"no stamp category {category!r} under {root}; known: {known}")
    return [
        p for p in sorted(folder.rglob("*.png"))
        if "thumb" not in p.stem and not p.stem.endswith("_mirror")
    ]  # fmt: skip


def _read_rgba(path: Path) -> np.ndarray | None:
    import matplotlib.image

    try:
        arr = np.asarray(matplotlib.image.imread(path), dtype=np.float32)
    except (OSError, ValueError, SyntaxError):
        return None
    if arr.ndim != 3 or arr.shape[-1] != 4 or min(arr.shape[:2]) < 24:
        return None
    if arr.max() > 1.0:
        arr = arr / 255.0
    return arr


@functools.lru_cache(maxsize=8)
def _gray_texture(name: str) -> np.ndarray:
    """A scikit-image texture as float32 in [0, 1], decoded once (decoding dominates)."""
    import skimage.data

    gray = getattr(skimage.data, name)().astype(np.float32) / 255.0
    gray.flags.writeable = False
    return gray


def _texture(
    name: str, size: int, gen: np.random.Generator, tint: tuple[float, ...] | None = None
) -> np.ndarray:
    """A random crop of a scikit-image texture, ``(size, size, 3)`` in [0, 1], tinted by
    ``tint`` (RGB multipliers; default: a fixed tint per texture).
    """
    gray = _gray_texture(name)
    h, w = gray.shape[:2]
    crop = int(min(h, w) * gen.uniform(0.35, 0.6))
    top, left = gen.integers(0, h - crop + 1), gen.integers(0, w - crop + 1)
    patch = torch.from_numpy(np.ascontiguousarray(gray[top : top + crop, left : left + crop]))
    patch = torch.nn.functional.interpolate(
        patch[None, None], size=(size, size), mode="bilinear", align_corners=False,
        antialias=True,
    )[0, 0]  # fmt: skip
    if tint is None:
        tint = {"grass": (0.55, 0.85, 0.45), "gravel": (0.8, 0.78, 0.72), "brick": (0.9, 0.5, 0.4)}[
            name
        ]
    rgb = patch.numpy()[..., None] * np.asarray(tint, dtype=np.float32)
    return np.clip(rgb * 1.2, 0, 1)


def _paste_stamp(
    canvas: np.ndarray, rgba: np.ndarray, side: int, rng: np.random.Generator
) -> np.ndarray:
    """Paste ``rgba`` (longest side resized to ``side``) at a uniform random position of the
    ``(S, S, 3)`` ``canvas``, in place, with a hard alpha (>= 0.5); returns its exact
    ``(S, S)`` bool mask: inside, every pixel is the stamp's; outside, the canvas is unchanged.
    """
    size = canvas.shape[0]
    h, w = rgba.shape[:2]
    scale = side / max(h, w)
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(rgba)).permute(2, 0, 1)[None],
        size=(nh, nw), mode="bilinear", align_corners=False, antialias=True,
    )[0].permute(1, 2, 0).numpy()  # fmt: skip
    top, left = rng.integers(0, size - nh + 1), rng.integers(0, size - nw + 1)
    mask = np.zeros(canvas.shape[:2], dtype=bool)
    mask[top : top + nh, left : left + nw] = resized[..., 3] >= 0.5
    region = canvas[top : top + nh, left : left + nw]
    canvas[top : top + nh, left : left + nw] = np.where(
        mask[top : top + nh, left : left + nw, None], np.clip(resized[..., :3], 0, 1), region
    )
    return mask
