"""A map over its image: the basic figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xai._typing import ArrayLike
from xai.visualize._image import normalize, resize_map, to_image, to_map
from xai.visualize.captions import add_caption

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _signed_cmap(cmap: str | None, signed: bool) -> str:
    if cmap is not None:
        return cmap
    return "RdBu_r" if signed else "inferno"


def overlay(
    image: ArrayLike,
    attribution: ArrayLike,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    cmap: str | None = None,
    signed: bool | None = None,
    percentile: float = 99.5,
    scale: float | None = None,
    colorbar: bool = False,
    title: str | None = None,
    caption: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draw ``attribution`` over ``image`` on a matplotlib Axes and return the Axes.

    Args:
        image: ``(C, H, W)``/``(H, W, C)`` tensor or array, uint8 or float; ``mean``/``std``
            undo a normalization (e.g. ``xai.data.IMAGENET_MEAN``/``IMAGENET_STD``).
        mean: per-channel mean of the input normalization to undo for display (e.g.
            ``xai.data.IMAGENET_MEAN``; default: none).
        std: per-channel standard deviation of that normalization (e.g.
            ``xai.data.IMAGENET_STD``).
        attribution: ``(H, W)`` map (resized to the image with bilinear interpolation when its
            size differs), tensor or array.
        alpha: opacity of the map (0 shows only the image).
        cmap: colormap; default perceptually uniform ``"inferno"`` for unsigned maps and the
            zero-centred diverging ``"RdBu_r"`` for signed ones.
        signed: force signed/unsigned display (default: signed if any value is negative).
        percentile: values above this percentile are clipped (robust to a few hot pixels).
        scale: a fixed divisor, to share one colour scale across maps.
        colorbar: add a colourbar.
        title: the Axes' title.
        caption: a sentence written under the image (e.g. from ``xai.verbalize.Verbalizer``),
            see :func:`xai.visualize.add_caption`.
        ax: the Axes to draw on (a new figure is made when ``None``).

    Returns:
        The matplotlib ``Axes``; nothing is shown (no ``plt.show()``).
    """
    from matplotlib.figure import Figure

    img = to_image(image, mean=mean, std=std)
    raw = to_map(attribution)
    is_signed = bool((raw < 0).any()) if signed is None else signed
    heat = normalize(
        resize_map(raw, img.shape[:2]), signed=is_signed, percentile=percentile, scale=scale
    )
    if ax is None:
        ax = Figure(figsize=(4, 4)).add_subplot()
    ax.imshow(img)
    vmin = -1.0 if is_signed else 0.0
    im = ax.imshow(
        heat, cmap=_signed_cmap(cmap, is_signed), alpha=float(alpha), vmin=vmin, vmax=1.0
    )
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    if caption is not None:
        add_caption(ax, caption)
    return ax


def heatmap_rgb(
    image: ArrayLike,
    attribution: ArrayLike,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    cmap: str = "inferno",
) -> np.ndarray:
    """The overlay as an ``(H, W, 3)`` uint8 array (for saving with other tools)."""
    import matplotlib

    img = to_image(image, mean=mean, std=std)
    heat = normalize(resize_map(to_map(attribution), img.shape[:2]), signed=False)
    colored = matplotlib.colormaps[cmap](heat)[..., :3]
    out = (1 - alpha) * img + alpha * colored
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
