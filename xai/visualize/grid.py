"""Method-by-image grids and saving figures."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xai._typing import ArrayLike
from xai.visualize._image import to_image, to_map
from xai.visualize.overlay import overlay

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def grid(
    images: ArrayLike | Sequence[ArrayLike],
    maps: Mapping[str, ArrayLike | Sequence[ArrayLike]],
    *,
    titles: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    alpha: float = 0.5,
    cmap: str | None = None,
    shared_scale: bool = False,
    cell_size: float = 2.2,
    colorbar: bool = False,
) -> Figure:
    """A grid of images (rows) by methods (columns): the original, then each method's overlay.

    Args:
        images: ``(B, C, H, W)`` batch (tensor or array) or a list of images.
        maps: method name -> ``(B, H, W)`` maps (tensor or array), in column order.
        titles: one row title per image (e.g. ``"tabby cat 0.72"``), shown on the first column.
        mean: per-channel mean of the input normalization to undo for display (e.g.
            ``xai.data.IMAGENET_MEAN``; default: none).
        std: per-channel standard deviation of that normalization (e.g.
            ``xai.data.IMAGENET_STD``).
        alpha: opacity of the maps (default 0.5).
        cmap: colormap (default: ``"inferno"`` for unsigned maps, ``"RdBu_r"`` for signed ones).
        shared_scale: one colour scale per method across the images (the 99.5th percentile of
            that method's absolute values over all images) instead of one per cell.
        cell_size: width and height of one cell in inches (default 2.2).
        colorbar: one colourbar per cell.

    Returns:
        A matplotlib ``Figure`` (nothing is shown).
    """
    from matplotlib.figure import Figure

    n = len(images)
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    for name, m in maps.items():
        if len(m) != n:
            raise ValueError(f"method {name!r} has {len(m)} maps for {n} images")
    cols = 1 + len(maps)
    fig = Figure(figsize=(cell_size * cols, cell_size * n), constrained_layout=True)
    axes = np.atleast_2d(np.asarray(fig.subplots(n, cols, squeeze=False)))
    scales = {}
    if shared_scale:
        for name, m in maps.items():
            stacked = np.abs(np.stack([to_map(m[i]) for i in range(n)]))
            scales[name] = float(np.percentile(stacked, 99.5)) or None
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(to_image(images[i], mean=mean, std=std))
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        for j, (name, m) in enumerate(maps.items(), start=1):
            overlay(
                images[i],
                m[i],
                mean=mean,
                std=std,
                alpha=alpha,
                cmap=cmap,
                scale=scales.get(name),
                colorbar=colorbar,
                ax=axes[i, j],
            )
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    return fig


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 300) -> Path:
    """Save a figure to ``path`` (format from the suffix: .png, .pdf, .svg) and return the path.

    Parent folders are created. Raises a ``ValueError`` for an unsupported suffix.
    """
    p = Path(path)
    suffix = p.suffix.lower().lstrip(".")
    supported = fig.canvas.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(
            f"cannot save to {str(p)!r}: unsupported format {suffix or '(none)'!r}; "
            f"use one of {', '.join(sorted(supported))}"
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, bbox_inches="tight")
    return p
