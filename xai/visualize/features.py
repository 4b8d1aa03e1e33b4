"""Figures of what layers encode: inversions at several depths and feature-visualization grids.

- :func:`inversion_strip`: a photo and its reconstructions from the codes of several layers,
  side by side, titled with each layer's normalized reconstruction error (Mahendran & Vedaldi,
  CVPR 2015, Fig. 6);
- :func:`visualization_grid`: optimized images (one per channel, neuron or class) in a grid
  (Olah et al., Distill 2017).

Both return a ``matplotlib.figure.Figure`` (nothing is shown); save with
:func:`xai.visualize.save`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from xai._typing import ArrayLike
from xai.visualize._image import to_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["inversion_strip", "visualization_grid"]


def inversion_strip(
    image: ArrayLike,
    inversions: Mapping[str, ArrayLike],
    *,
    errors: Mapping[str, float] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
    cell_size: float = 2.2,
) -> Figure:
    r"""The original image, then its reconstruction from each layer, left to right.

    Args:
        image: ``(C, H, W)`` (or ``(1, C, H, W)``) reference image, as given to the model.
        inversions: layer name -> ``(C, H, W)`` reconstruction (same space as ``image``), in
            column order (shallow to deep).
        errors: layer name -> error to print under the layer name (e.g. the feature error
            :math:`\|\Phi(x^*)-\Phi_0\|^2/\|\Phi_0\|^2`).
        mean: undo the input normalization for display (``x * std + mean``, clipped to [0, 1]).
        std: see ``mean``.
        title: figure title.
        cell_size: inches per image.

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    if not inversions:
        raise ValueError("inversions is empty: give at least one layer's reconstruction")
    cols = 1 + len(inversions)
    fig = Figure(
        figsize=(cell_size * cols, cell_size + (0.5 if title else 0.25)), constrained_layout=True
    )
    axes = np.atleast_1d(fig.subplots(1, cols))
    axes[0].imshow(to_image(image, mean=mean, std=std))
    axes[0].set_title("original", fontsize=9)
    for ax, (layer, rec) in zip(axes[1:], inversions.items(), strict=True):
        ax.imshow(to_image(rec, mean=mean, std=std))
        label = (
            layer
            if errors is None or layer not in errors
            else (f"{layer}\nerror {errors[layer]:.3f}")
        )
        ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def visualization_grid(
    images: ArrayLike | Sequence[ArrayLike],
    *,
    titles: Sequence[str] | None = None,
    n_cols: int | None = None,
    title: str | None = None,
    cell_size: float = 2.0,
) -> Figure:
    """Feature visualizations in a grid, one image per cell.

    Args:
        images: ``(N, 3, H, W)`` images in [0, 1] (e.g. ``FeatureVisualization(...)().images``)
            or a list of images.
        titles: one title per image (e.g. ``"features.9:12"``).
        n_cols: columns (default: up to 6 per row).
        title: figure title.
        cell_size: inches per image.

    Returns:
        A matplotlib ``Figure``.
    """
    from matplotlib.figure import Figure

    n = len(images)
    if n == 0:
        raise ValueError("images is empty")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    n_cols = min(n, 6) if n_cols is None else n_cols
    n_rows = math.ceil(n / n_cols)
    fig = Figure(
        figsize=(cell_size * n_cols, cell_size * n_rows + (0.4 if title else 0.2)),
        constrained_layout=True,
    )
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(to_image(images[i]))
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
