"""Concept figures (CRAFT, CVPR 2023; holistic framework, NeurIPS 2023).

- :func:`concept_gallery`: for each concept, the crops that express it most, titled with the
  concept's importance;
- :func:`concept_overlay`: where the top concepts are in one image (a colour per concept, each
  map kept above its 90th percentile, CRAFT's display);
- :func:`strategic_cluster_graph`: images of a class in 2-D by their concept importances,
  coloured by the concept that drives their prediction.

All return a ``matplotlib.figure.Figure`` (nothing is shown); save with
:func:`xai.visualize.save`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from xai._typing import ArrayLike
from xai.visualize._image import _to_numpy, resize_map, to_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xai.concepts import ConceptExtractor

__all__ = ["concept_gallery", "concept_overlay", "concept_tree", "strategic_cluster_graph"]

_COLORS = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
    "#000075",
]


def _color(k: int) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.asarray(to_rgb(_COLORS[k % len(_COLORS)]))


def _names(k: int, names: Sequence[str] | None) -> list[str]:
    return list(names) if names is not None else [f"concept {i}" for i in range(k)]


def concept_gallery(
    extractor: ConceptExtractor,
    *,
    importances: ArrayLike | None = None,
    concepts: Sequence[int] | None = None,
    n_crops: int = 6,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    concept_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """The crops with the highest coefficient for each concept (CRAFT figure 1).

    Args:
        extractor: a fitted :class:`~xai.concepts.ConceptExtractor` (with crops: not
            ``patches="positions"``).
        importances: ``(K,)`` global importances: shown in the titles and, when ``concepts``
            is ``None``, used to order the rows (most important first).
        concepts: which concepts to show (default all, by decreasing importance).
        n_crops: crops per concept (default 6).
        mean: per-channel mean of the input normalization to undo for display (e.g.
            ``xai.data.IMAGENET_MEAN``; default: none).
        std: per-channel standard deviation of that normalization (e.g.
            ``xai.data.IMAGENET_STD``).
        concept_names: labels (default ``"concept i"``).
        title: figure title (default names the class).

    Returns:
        A ``Figure`` with one row per concept.

    Raises:
        ValueError: the extractor was fitted on positions (no crops).
    """
    from matplotlib.figure import Figure

    if bool((extractor.patches_[:, 1] < 0).any()):
        raise ValueError(
            "the extractor was fitted with patches='positions' (no crops to show); fit with "
            "patches='grid' or 'random' for a gallery"
        )
    coeffs = extractor.coefficients_
    k = coeffs.shape[1]
    imp = None if importances is None else _to_numpy(importances).astype(float).ravel()
    if concepts is None:
        concepts = list(np.argsort(-imp)) if imp is not None else list(range(k))
    names = _names(k, concept_names)
    n = min(n_crops, coeffs.shape[0])
    fig = Figure(figsize=(1.6 * n + 1.8, 1.6 * len(concepts)))
    axes = fig.subplots(len(concepts), n, squeeze=False)
    for row, c in enumerate(concepts):
        top = torch.argsort(coeffs[:, c], descending=True)[:n]
        crops = extractor.crops(extractor.patches_[top])
        for col in range(n):
            ax = axes[row, col]
            ax.imshow(to_image(crops[col], mean=mean, std=std))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(_COLORS[int(c) % len(_COLORS)])
                spine.set_linewidth(3)
        label = names[int(c)] + ("" if imp is None else f"\nimportance {imp[int(c)]:.3g}")
        axes[row, 0].set_ylabel(label, fontsize=9)
    fig.suptitle(title or f"Concepts of class {extractor.target_}: top crops")
    fig.tight_layout()
    return fig


def concept_overlay(
    image: ArrayLike,
    maps: ArrayLike,
    *,
    importances: ArrayLike | None = None,
    concepts: Sequence[int] | None = None,
    n_concepts: int = 5,
    percentile: float = 90.0,
    alpha: float = 0.65,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    concept_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Where each concept is in one image: a combined panel (a colour per concept) and one
    panel per concept.

    Each concept's map keeps the values above its ``percentile`` (default 90, CRAFT's notebook;
    the holistic paper's plots use 80), scaled to ``[0, 1]`` and painted in the concept's
    colour with opacity ``alpha`` (default 0.65, Xplique's CRAFT plot).

    Args:
        image: ``(C, H, W)`` image (tensor or array).
        maps: ``(K, H, W)`` (or ``(K, h, w)``, resized) concept maps of this image, e.g.
            ``extractor.concept_maps(x)[0]``.
        importances: ``(K,)`` importances used to pick and order the concepts shown.
        concepts: explicit concept indices (overrides ``importances``).
        n_concepts: how many concepts when picked by importance (default 5).
        percentile: each map keeps its values above this percentile (default 90).
        alpha: opacity of the concept colours (default 0.65).
        mean: per-channel mean of the input normalization to undo for display (e.g.
            ``xai.data.IMAGENET_MEAN``; default: none).
        std: per-channel standard deviation of that normalization (e.g.
            ``xai.data.IMAGENET_STD``).
        concept_names: labels.
        title: figure title.

    Returns:
        A ``Figure`` with ``1 + len(concepts)`` panels.
    """
    from matplotlib.figure import Figure

    img = to_image(image, mean=mean, std=std)
    arr = _to_numpy(maps).astype(np.float64)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"maps must be (K, H, W), got shape {arr.shape}")
    k = arr.shape[0]
    if concepts is None:
        if importances is not None:
            order = np.argsort(-_to_numpy(importances).astype(float).ravel())
        else:
            order = np.argsort(-arr.reshape(k, -1).max(1))
        concepts = [int(c) for c in order[:n_concepts]]
    names = _names(k, concept_names)
    fig = Figure(figsize=(3.0 * (1 + len(concepts)), 3.3))
    axes = fig.subplots(1, 1 + len(concepts), squeeze=False)[0]
    combined = img.copy()
    for i, c in enumerate(concepts):
        m = resize_map(arr[c], img.shape[:2])
        cut = np.percentile(m, percentile)
        top = np.where(m >= cut, m - cut, 0.0)
        top = top / top.max() if top.max() > 0 else top
        weight = (alpha * top)[..., None]
        painted = img * (1 - weight) + _color(c) * weight
        combined = combined * (1 - weight) + _color(c) * weight
        axes[i + 1].imshow(np.clip(painted, 0, 1))
        axes[i + 1].set_title(names[c], fontsize=9, color=_COLORS[c % len(_COLORS)])
    axes[0].imshow(np.clip(combined, 0, 1))
    axes[0].set_title("top concepts", fontsize=9)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 1, 0.9))
    else:
        fig.tight_layout()
    return fig


def strategic_cluster_graph(
    importances: ArrayLike,
    *,
    images: ArrayLike | None = None,
    min_count: int = 10,
    embedding: str = "pca",
    seed: int | None = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    concept_names: Sequence[str] | None = None,
    n_thumbnails: int = 12,
    title: str | None = None,
) -> Figure:
    """The strategic cluster graph (holistic paper, section 5), from per-image importances.

    Points are images (2-D embedding of their importance vectors, see
    :func:`xai.concepts.strategic_clusters`), coloured by their most important concept when
    that concept dominates at least ``min_count`` images (grey otherwise); the legend gives
    each concept's global share. With ``images``, thumbnails of a few images are drawn at their
    points.

    Args:
        importances: ``(N, K)`` local importances (e.g. ``local_importance(..., method=
            "gradient_input")``).
        images: optional ``(N, C, H, W)`` images for thumbnails.
        min_count: images a concept must dominate to get a colour (default 10, the paper's).
        embedding: ``"pca"`` (default), ``"tsne"`` or ``"umap"``.
        seed: seed of the embedding (default 0).
        mean: per-channel mean of the input normalization to undo for display (e.g.
            ``xai.data.IMAGENET_MEAN``; default: none).
        std: per-channel standard deviation of that normalization (e.g.
            ``xai.data.IMAGENET_STD``).
        concept_names: labels of the concepts in the legend (default ``"concept i"``).
        n_thumbnails: at most this many thumbnails (default 12).
        title: axes title (default names the figure).

    Returns:
        A ``Figure``.
    """
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from xai.concepts import strategic_clusters

    clusters = strategic_clusters(
        torch.as_tensor(_to_numpy(importances)),
        min_count=min_count,
        embedding=embedding,
        seed=seed,
    )
    xy = clusters.coords.numpy()
    labels = clusters.labels.numpy()
    k = clusters.shares.shape[0]
    names = _names(k, concept_names)
    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    grey = labels < 0
    ax.scatter(xy[grey, 0], xy[grey, 1], c="lightgrey", s=30, label="no dominant concept")
    for c in sorted(set(labels[~grey].tolist())):
        sel = labels == c
        share = float(clusters.shares[c])
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            c=_COLORS[c % len(_COLORS)],
            s=40,
            label=f"{names[c]} (share {share:.0%})",
        )
    if images is not None:
        step = max(1, len(xy) // n_thumbnails)
        for i in range(0, len(xy), step)[:n_thumbnails]:
            thumb = OffsetImage(to_image(images[i], mean=mean, std=std), zoom=0.12)
            ax.add_artist(AnnotationBbox(thumb, xy[i], frameon=False))
    ax.set_title(title or "Strategic cluster graph: images by the concepts that drive them")
    ax.set_xlabel(f"{embedding} 1")
    ax.set_ylabel(f"{embedding} 2")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def concept_tree(
    child: ConceptExtractor,
    *,
    n_images: int = 5,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    concept_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """One level of CRAFT's concept tree: a concept and its sub-concepts (from
    :meth:`ConceptExtractor.refine`).

    The top row shows the parent concept's strongest crops (the child's training images);
    each further row is one sub-concept: the crops where it is strongest, with its coefficient
    map (child layer, upsampled) over them, bordered in the sub-concept's colour.

    Args:
        child: the extractor returned by ``parent.refine(concept, layer)``.
        n_images: crops per row (default 5).
        mean: per-channel mean of the input normalization to undo for display (e.g.
            ``xai.data.IMAGENET_MEAN``; default: none).
        std: per-channel standard deviation of that normalization (e.g.
            ``xai.data.IMAGENET_STD``).
        concept_names: labels of the sub-concepts (default ``"sub-concept i"``).
        title: figure title (default names the parent concept and the two layers).

    Returns:
        A ``Figure`` with ``1 + K_child`` rows.

    Raises:
        ValueError: ``child`` was not made by :meth:`ConceptExtractor.refine`.
    """
    from matplotlib.figure import Figure

    parent_info = getattr(child, "parent_", None)
    if parent_info is None:
        raise ValueError("child must be the result of ConceptExtractor.refine(concept, layer)")
    parent, concept = parent_info
    images = child.images_
    n = min(n_images, images.shape[0])
    maps = child.concept_maps(images)  # (N, K, H, W)
    strength = maps.flatten(2).mean(-1)  # (N, K)
    k = maps.shape[1]
    names = (
        list(concept_names) if concept_names is not None else [f"sub-concept {i}" for i in range(k)]
    )
    fig = Figure(figsize=(1.6 * n + 1.8, 1.6 * (k + 1)))
    axes = fig.subplots(k + 1, n, squeeze=False)
    for col in range(n):
        axes[0, col].imshow(to_image(images[col], mean=mean, std=std))
    axes[0, 0].set_ylabel(f"concept {concept}\n({parent.layer})", fontsize=9)
    for row in range(k):
        top = torch.argsort(strength[:, row], descending=True)[:n]
        for col, idx in enumerate(top.tolist()):
            ax = axes[row + 1, col]
            ax.imshow(to_image(images[idx], mean=mean, std=std))
            heat = _to_numpy(maps[idx, row]).astype(float)
            peak = heat.max()
            ax.imshow(
                heat / peak if peak > 0 else heat, cmap="inferno", alpha=0.45, vmin=0.0, vmax=1.0
            )
        axes[row + 1, 0].set_ylabel(f"{names[row]}\n({child.layer})", fontsize=9)
    for r in range(k + 1):
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            if r:
                for spine in ax.spines.values():
                    spine.set_edgecolor(_COLORS[(r - 1) % len(_COLORS)])
                    spine.set_linewidth(3)
    fig.suptitle(title or f"Concept {concept} of class {parent.target_} split at {child.layer!r}")
    fig.tight_layout()
    return fig
