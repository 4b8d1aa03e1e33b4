"""Broden-lite: an offline concept set with exact pixel masks, built by code (never shipped).

Broden (Bau et al., CVPR 2017) cannot be downloaded here, so this builds a small stand-in with
the same protocol, one image at a time from its index (memory does not grow with the set):

* **objects** (10 concepts): Tux Paint photo cut-outs (Debian ``tuxpaint-stamps-default``,
  GPL-2), concept = stamp folder (bird, mammal, insect, fish, fruit, vegetable, flower, house,
  vehicle, tool). 1-3 stamps per image, longest side ``U(0.35, 0.7) * size``, uniform position,
  pasted with a hard alpha so the mask is exactly the pasted pixels; later stamps occlude
  earlier ones.
* **textures / materials** (3 concepts): scikit-image's bundled ``brick``, ``grass`` and
  ``gravel``. The background is two of them split at a random column in ``[W/4, 3W/4)``, each
  half tinted by a random hue (gray x HSV(h, 0.5, 1)) so that colour does not predict texture.
  A texture's mask is its half minus the object pixels.
* **colors** (11 concepts): Broden's 11 color names from the HSV of each final pixel (rules in
  :func:`color_names`; they replace van de Weijer's lookup table, whose data licence is
  unclear). Every pixel has exactly one color.

Masks are given at ``label_size`` (default ``size // 2``, Broden's 112 for 224 inputs), by
nearest sampling of the full-resolution masks.

References:
    Bau et al., "Network Dissection: Quantifying Interpretability of Deep Visual
    Representations", CVPR 2017. Fong & Vedaldi, "Net2Vec: Quantifying and Explaining how
    Concepts are Encoded by Filters in Deep Neural Networks", CVPR 2018.
"""

from __future__ import annotations

import colorsys
import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from xai._checks import check_positive_int
from xai.data.shortcuts.tuxpaint import (
    TUXPAINT_STAMPS,
    _paste_stamp,
    _read_rgba,
    _stamp_files,
    _texture,
    tuxpaint_available,
)

__all__ = ["COLOR_NAMES", "OBJECT_CATEGORIES", "TEXTURE_NAMES", "BrodenLite", "color_names"]

OBJECT_CATEGORIES: dict[str, str] = {
    "bird": "animals/birds",
    "mammal": "animals/mammals",
    "insect": "animals/insects",
    "fish": "animals/fish",
    "fruit": "food/fruit",
    "vegetable": "food/vegetables",
    "flower": "plants/flowers",
    "house": "town/houses",
    "vehicle": "vehicles",
    "tool": "household/tools",
}
TEXTURE_NAMES = ("brick", "grass", "gravel")
COLOR_NAMES = (
    "black", "blue", "brown", "grey", "green", "orange", "pink", "purple", "red", "white",
    "yellow",
)  # fmt: skip


def color_names(rgb: np.ndarray) -> np.ndarray:
    """Index into :data:`COLOR_NAMES` of every pixel of an RGB image in [0, 1], ``(..., 3)``.

    Rules on HSV (v, s in [0, 1], h in degrees): v < 0.2 black; else s < 0.2: white if
    v >= 0.8, else grey; else by hue: red [345, 15), orange [15, 45), yellow [45, 70),
    green [70, 180), blue [180, 260), purple [260, 300), pink [300, 345); orange hues with
    v < 0.6 are brown. Every pixel gets exactly one name.
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    v = rgb.max(-1)
    chroma = v - rgb.min(-1)
    s = np.where(v > 0, chroma / np.maximum(v, 1e-12), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-12)
    hue = (
        np.select(
            [v == r, v == g],
            [((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
            (r - g) / safe + 4.0,
        )
        * 60.0
    )
    index = {n: i for i, n in enumerate(COLOR_NAMES)}
    edges = np.array([15, 45, 70, 180, 260, 300, 345], dtype=np.float32)
    by_hue = np.array(
        [index[n] for n in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "red")]
    )
    name = by_hue[np.searchsorted(edges, hue, side="right")]
    name = np.where((name == index["orange"]) & (v < 0.6), index["brown"], name)
    name = np.where(s < 0.2, np.where(v >= 0.8, index["white"], index["grey"]), name)
    return np.where(v < 0.2, index["black"], name).astype(np.int64)


@functools.lru_cache(maxsize=16)
def _stamps(root: str, category: str, max_side: int) -> tuple[np.ndarray, ...]:
    """The usable RGBA stamps of one folder, shrunk so their longest side is at most
    ``max_side`` (pasting then resizes small arrays only).
    """
    out = []
    for path in _stamp_files(Path(root), category):
        rgba = _read_rgba(path)
        if rgba is None:
            continue
        h, w = rgba.shape[:2]
        if max(h, w) > max_side:
            scale = max_side / max(h, w)
            rgba = torch.nn.functional.interpolate(
                torch.from_numpy(np.ascontiguousarray(rgba)).permute(2, 0, 1)[None],
                size=(max(1, round(h * scale)), max(1, round(w * scale))),
                mode="bilinear", align_corners=False, antialias=True,
            )[0].permute(1, 2, 0).numpy()  # fmt: skip
        out.append(rgba)
    return tuple(out)


class BrodenLite(Dataset):
    """The offline concept set, rendered on demand: item ``i`` is ``(image, masks)``.

    ``image`` is ``(3, size, size)`` float32, ImageNet-normalized (``mean``/``std``);
    ``masks`` is ``(C, label_size, label_size)`` bool, one channel per name in
    :attr:`concepts` (10 objects, then 3 textures, then 11 colors; :attr:`kinds` says which).
    Item ``i`` depends only on ``(seed, i)``, so the set is deterministic for a seed and any
    subset or DataLoader order gives the same images. :meth:`train` / :meth:`val` are a seeded
    80/20 split.

    Args:
        n_images: number of images (default 1,200, as measured in the spec).
        size: image side in pixels (default 224).
        label_size: mask side (default ``size // 2``, Broden's label resolution).
        seed: seed of every random choice.
        min_files: skip stamp folders with fewer usable files (default 10).
        root: Tux Paint stamps folder.

    Raises:
        FileNotFoundError: Tux Paint stamps are not installed (the message says how).
        ImportError: scikit-image (the textures) is not installed.
        ValueError: bad sizes.

    Example:
        >>> data = BrodenLite(300, size=96, seed=0)
        >>> image, masks = data[0]          # (3, 96, 96), (24, 48, 48)
        >>> train, val = data.train(), data.val()
    """

    def __init__(
        self,
        n_images: int = 1200,
        *,
        size: int = 224,
        label_size: int | None = None,
        seed: int = 0,
        min_files: int = 10,
        root: str | Path = TUXPAINT_STAMPS,
    ) -> None:
        from xai.data import IMAGENET_MEAN, IMAGENET_STD

        check_positive_int(n_images, "n_images")
        check_positive_int(size, "size")
        if size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {size}")
        label_size = size // 2 if label_size is None else label_size
        check_positive_int(label_size, "label_size")
        if label_size > size:
            raise ValueError(f"label_size ({label_size}) cannot exceed size ({size})")
        root = Path(root)
        if importlib.util.find_spec("skimage") is None:
            raise ImportError(
                "Broden-lite's textures come from scikit-image: pip install scikit-image"
            )
        if not tuxpaint_available(root):
            raise FileNotFoundError(
                f"Tux Paint stamps not found under {str(root)!r}; install them offline with "
                "`apt-get install -y tuxpaint-stamps-default`"
            )
        self.n_images, self.size, self.label_size, self.seed = n_images, size, label_size, seed
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._stamps = {}
        for name, folder in OBJECT_CATEGORIES.items():
            if not (root / folder).is_dir():
                continue
            stamps = _stamps(str(root), folder, size)
            if len(stamps) >= min_files:
                self._stamps[name] = stamps
        if not self._stamps:
            raise FileNotFoundError(f"no stamp folder with >= {min_files} usable files in {root}")
        self.objects = list(self._stamps)
        self.concepts = [*self.objects, *TEXTURE_NAMES, *COLOR_NAMES]
        self.kinds = (
            ["object"] * len(self.objects) + ["texture"] * len(TEXTURE_NAMES)
            + ["color"] * len(COLOR_NAMES)
        )  # fmt: skip
        order = np.random.default_rng([seed, 2**31]).permutation(n_images)
        self._is_train = np.zeros(n_images, dtype=bool)
        self._is_train[order[: round(0.8 * n_images)]] = True
        grid = (np.arange(label_size) + 0.5) * size / label_size
        self._nearest = np.minimum(grid.astype(np.int64), size - 1)

    def __len__(self) -> int:
        return self.n_images

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` as ``(rgb (size, size, 3) float32 in [0, 1], label map)`` where the
        label map is ``(3, size, size)`` int64: object index (-1 = none), texture index,
        color index, all at full resolution.
        """
        if not 0 <= index < self.n_images:
            raise IndexError(f"index {index} out of range for {self.n_images} images")
        rng = np.random.default_rng([self.seed, index])
        size = self.size
        first, second = rng.choice(len(TEXTURE_NAMES), size=2, replace=False)
        split = int(rng.integers(size // 4, 3 * size // 4))
        canvas = np.empty((size, size, 3), dtype=np.float32)
        texture = np.empty((size, size), dtype=np.int64)
        for idx, cols in ((first, slice(0, split)), (second, slice(split, size))):
            tint = colorsys.hsv_to_rgb(float(rng.uniform()), 0.5, 1.0)
            canvas[:, cols] = _texture(TEXTURE_NAMES[idx], size, rng, tint=tint)[:, cols]
            texture[:, cols] = idx
        objects = np.full((size, size), -1, dtype=np.int64)
        for _ in range(int(rng.integers(1, 4))):
            concept = int(rng.integers(len(self.objects)))
            stamps = self._stamps[self.objects[concept]]
            rgba = stamps[int(rng.integers(len(stamps)))]
            side = max(4, round(rng.uniform(0.35, 0.7) * size))
            objects[_paste_stamp(canvas, rgba, side, rng)] = concept
        rgb = np.clip(canvas, 0.0, 1.0)
        return rgb, np.stack([objects, texture, color_names(rgb)])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rgb, labels = self.render(int(index))
        near = self._nearest
        labels = labels[:, near[:, None], near[None, :]]
        n_obj, n_tex = len(self.objects), len(TEXTURE_NAMES)
        masks = np.concatenate([
            labels[0][None] == np.arange(n_obj)[:, None, None],
            np.where(labels[0] < 0, labels[1], -1)[None] == np.arange(n_tex)[:, None, None],
            labels[2][None] == np.arange(len(COLOR_NAMES))[:, None, None],
        ])  # fmt: skip
        image = torch.from_numpy(rgb).permute(2, 0, 1)
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return ((image - mean) / std).contiguous(), torch.from_numpy(masks)

    def train(self) -> Subset:
        """The seeded 80 % training split (a ``Subset`` with a ``concepts`` attribute)."""
        return self._subset(True)

    def val(self) -> Subset:
        """The seeded 20 % validation split."""
        return self._subset(False)

    def _subset(self, train: bool) -> Subset:
        subset = Subset(self, np.flatnonzero(self._is_train == train).tolist())
        subset.concepts = self.concepts  # type: ignore[attr-defined]
        subset.kinds = self.kinds  # type: ignore[attr-defined]
        return subset
