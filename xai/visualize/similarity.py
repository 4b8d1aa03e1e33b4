"""Figures for similarity maps (:class:`xai.attributions.SimilarityMaps`).

Three figures, each returned as a matplotlib ``Figure`` (nothing is shown; matplotlib is
imported inside the functions):

* :func:`similarity_pair`: a query and a reference side by side, each with its heatmap, and the
  pair's score;
* :func:`retrieval_strip`: a query (with its selected region) followed by ranked hits, each with
  the heatmap of where it matches;
* :func:`similarity_graph`: a small gallery as a graph, nodes = image thumbnails placed by
  classical multidimensional scaling of the similarities, edges = each image's strongest
  similarities.

Both maps of a pair sum to the same score, so by default they share one colour scale
(``shared_scale=True``); the paper's demo normalized each map separately, which hides how much
of the similarity each image carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xai._typing import ArrayLike
from xai.visualize._image import _to_numpy, to_image, to_map
from xai.visualize.overlay import overlay

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["retrieval_strip", "similarity_graph", "similarity_pair"]


def _robust_max(maps: Sequence[np.ndarray], percentile: float) -> float:
    values = np.concatenate([np.abs(m).ravel() for m in maps])
    top = float(np.percentile(values, percentile)) if values.size else 0.0
    return top if top > 0 else 1.0


def _draw_region(
    ax: Axes, region: ArrayLike | Sequence[float] | None, image_shape: tuple[int, int]
) -> None:
    """Outline a box ``(x0, y0, x1, y1)`` or the contour of an ``(H, W)`` mask on ``ax``."""
    from matplotlib.patches import Rectangle

    if region is None:
        return
    arr = _to_numpy(region)
    if arr.ndim == 1 and arr.shape[0] == 4:
        x0, y0, x1, y1 = (float(v) for v in arr)
        ax.add_patch(
            Rectangle(
                (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=2
            )
        )
        return
    if arr.ndim != 2 or arr.shape != tuple(image_shape):
        raise ValueError(
            f"region must be a box (x0, y0, x1, y1) or an (H, W) mask of the image's size "
            f"{tuple(image_shape)}, got shape {arr.shape}"
        )
    ax.contour(arr.astype(float) > 0, levels=[0.5], colors="cyan", linewidths=2)


def similarity_pair(
    query_image: ArrayLike,
    reference_image: ArrayLike,
    query_map: ArrayLike,
    reference_map: ArrayLike,
    score: float | None = None,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    shared_scale: bool = True,
    percentile: float = 99.5,
    alpha: float = 0.5,
    cmap: str | None = None,
    titles: tuple[str, str] = ("query", "reference"),
    metric: str = "similarity",
    figsize: tuple[float, float] = (8.0, 4.3),
) -> Figure:
    """The pair side by side, each image with its heatmap, and the score in the title.

    Args:
        query_image: ``(C, H, W)``/``(H, W, C)`` tensor or array (see
            :func:`xai.visualize.to_image`; ``mean``/``std`` undo a normalization).
        reference_image: the same for the reference.
        query_map: ``(H, W)`` map of the query (any size; resized bilinearly).
        reference_map: ``(H, W)`` map of the reference.
        score: the pair's similarity, shown in the title (omitted when ``None``).
        mean: per-channel mean of the images' normalization (e.g. ``xai.data.IMAGENET_MEAN``).
        std: per-channel std of the images' normalization.
        shared_scale: one colour scale for both maps (default; they sum to the same score),
            else each map is scaled to its own maximum as in the paper's demo.
        percentile: robust maximum of the colour scale (default 99.5).
        alpha: heatmap opacity.
        cmap: colormap (default ``"inferno"``, or ``"RdBu_r"`` for signed maps).
        titles: panel titles.
        metric: the score's name in the title (``"cosine"``, ``"dot"``).
        figsize: figure size in inches.

    Returns:
        A matplotlib ``Figure`` with two Axes.
    """
    from matplotlib.figure import Figure

    maps = [to_map(query_map), to_map(reference_map)]
    signed = any(bool((m < 0).any()) for m in maps)
    scale = _robust_max(maps, percentile) if shared_scale else None
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, image, heat, title in zip(
        axes, (query_image, reference_image), maps, titles, strict=True
    ):
        own = scale if scale is not None else _robust_max([heat], percentile)
        overlay(
            image,
            heat,
            mean=mean,
            std=std,
            alpha=alpha,
            cmap=cmap,
            signed=signed,
            percentile=percentile,
            scale=own,
            ax=ax,
            title=f"{title} (map sum {heat.sum():.3f})",
        )
    if score is not None:
        fig.suptitle(f"{metric} = {float(score):.3f}")
    return fig


def retrieval_strip(
    query_image: ArrayLike,
    images: ArrayLike | Sequence[ArrayLike],
    maps: ArrayLike | Sequence[ArrayLike],
    scores: ArrayLike | Sequence[float],
    *,
    region: ArrayLike | Sequence[float] | None = None,
    query_map: ArrayLike | None = None,
    labels: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    shared_scale: bool = True,
    percentile: float = 99.5,
    alpha: float = 0.5,
    cmap: str | None = None,
    panel_size: float = 2.2,
) -> Figure:
    """A query followed by its ranked hits, each hit with the heatmap of where it matches.

    Args:
        query_image: the query image (tensor or array, see :func:`xai.visualize.to_image`).
        images: the ``k`` hits in rank order, ``(k, C, H, W)`` or a sequence of images.
        maps: ``(k, H, W)`` heatmaps of the hits (e.g. ``SearchResult.maps``).
        scores: ``(k,)`` similarity of each hit.
        region: the query region to outline: a box ``(x0, y0, x1, y1)`` or an ``(H, W)`` mask.
        query_map: an optional heatmap drawn on the query.
        labels: optional names of the hits.
        mean: per-channel mean of the images' normalization.
        std: per-channel std of the images' normalization.
        shared_scale: one colour scale for every hit (default), so hits compare directly.
        percentile: robust maximum of the colour scale.
        alpha: heatmap opacity.
        cmap: colormap.
        panel_size: size of one panel in inches.

    Returns:
        A matplotlib ``Figure`` with ``k + 1`` Axes.

    Raises:
        ValueError: ``images``, ``maps`` and ``scores`` differ in length, or no hit is given.
    """
    from matplotlib.figure import Figure

    heat = [to_map(m) for m in maps]
    score_list = [float(s) for s in _to_numpy(scores).reshape(-1)]
    hits = list(images)
    if not (len(hits) == len(heat) == len(score_list)) or not hits:
        raise ValueError(
            f"need as many images, maps and scores (at least one), got {len(hits)}, "
            f"{len(heat)} and {len(score_list)}"
        )
    signed = any(bool((m < 0).any()) for m in heat)
    scale = _robust_max(heat, percentile) if shared_scale else None
    fig = Figure(figsize=(panel_size * (len(hits) + 1), panel_size + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(hits) + 1))
    q = to_image(query_image, mean=mean, std=std)
    if query_map is None:
        axes[0].imshow(q)
        axes[0].set_axis_off()
        axes[0].set_title("query", fontsize=9)
    else:
        overlay(
            q,
            to_map(query_map),
            alpha=alpha,
            cmap=cmap,
            percentile=percentile,
            ax=axes[0],
            title="query",
        )
    _draw_region(axes[0], region, q.shape[:2])
    for rank, (ax, image, m, s) in enumerate(
        zip(axes[1:], hits, heat, score_list, strict=True), start=1
    ):
        name = f" {labels[rank - 1]}" if labels is not None else ""
        own = scale if scale is not None else _robust_max([m], percentile)
        overlay(
            image,
            m,
            mean=mean,
            std=std,
            alpha=alpha,
            cmap=cmap,
            signed=signed,
            percentile=percentile,
            scale=own,
            ax=ax,
            title=f"#{rank}{name}  {s:.3f}",
        )
    return fig


def _mds_layout(similarities: np.ndarray) -> np.ndarray:
    """2-D positions in [0.1, 0.9]^2 by classical MDS of d = sqrt(max(s_ii + s_jj - 2 s_ij, 0))."""
    n = similarities.shape[0]
    diag = np.diag(similarities)
    d2 = np.clip(diag[:, None] + diag[None, :] - 2 * similarities, 0.0, None)
    center = np.eye(n) - 1.0 / n
    gram = -0.5 * center @ d2 @ center
    values, vectors = np.linalg.eigh((gram + gram.T) / 2)
    order = np.argsort(values)[::-1][:2]
    pos = vectors[:, order] * np.sqrt(np.clip(values[order], 0.0, None))
    if pos.shape[1] < 2:
        pos = np.pad(pos, ((0, 0), (0, 2 - pos.shape[1])))
    for j in range(2):  # eigenvector signs are arbitrary: fix them for a deterministic layout
        k = int(np.argmax(np.abs(pos[:, j])))
        if pos[k, j] < 0:
            pos[:, j] = -pos[:, j]
    angles = 2 * np.pi * np.arange(n) / max(n, 1)
    circle = np.stack([np.cos(angles), np.sin(angles)], 1)
    span = pos.max(0) - pos.min(0)
    if n < 3 or not np.all(span > 1e-9):
        pos = circle  # degenerate similarities: fall back to a circle
        span = pos.max(0) - pos.min(0)
    pos = (pos - pos.min(0)) / np.where(span > 0, span, 1.0)
    return 0.1 + 0.8 * pos


def _spread(pos: np.ndarray, *, min_distance: float, margin: float, steps: int = 300):
    """Push apart nodes closer than ``min_distance`` (deterministic relaxation), so that
    thumbnails of near-identical images do not hide each other; positions stay in the frame.
    """
    pos = np.clip(pos.astype(np.float64), margin, 1 - margin)
    n = pos.shape[0]
    for _ in range(steps):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.linalg.norm(delta, axis=-1) + np.eye(n)
        overlap = np.clip(min_distance - dist, 0.0, None)
        np.fill_diagonal(overlap, 0.0)
        if not overlap.any():
            break
        # coincident nodes get a fixed, index-dependent direction
        angle = np.arange(n)[:, None] * 2.399 + np.arange(n)[None, :]
        fallback = np.stack([np.cos(angle), np.sin(angle)], -1)
        direction = np.where(dist[..., None] > 1e-9, delta / dist[..., None], fallback)
        pos = pos + 0.5 * (overlap[..., None] * direction).sum(1)
        pos = np.clip(pos, margin, 1 - margin)
    return pos


def similarity_graph(
    images: ArrayLike | Sequence[ArrayLike],
    similarities: ArrayLike,
    *,
    k: int = 2,
    labels: Sequence[str] | None = None,
    layout: str = "mds",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    thumb_size: float = 0.14,
    figsize: tuple[float, float] = (7.0, 7.0),
) -> Figure:
    """A small gallery as a graph: thumbnails as nodes, each image's ``k`` strongest
    similarities as edges (line width and label = similarity). matplotlib only.

    Args:
        images: ``n`` images, ``(n, C, H, W)`` or a sequence (see :func:`to_image`).
        similarities: ``(n, n)`` similarity matrix (e.g. ``SimilarityMaps.matrix(images)``),
            symmetric.
        k: edges per node: each node is joined to its ``k`` most similar other nodes (the
            union over nodes, so a node may have more).
        labels: optional node names shown under the thumbnails.
        layout: ``"mds"`` (classical multidimensional scaling of the similarities: similar
            images sit close) or ``"circle"``.
        mean: per-channel mean of the images' normalization.
        std: per-channel std of the images' normalization.
        thumb_size: thumbnail size as a fraction of the figure.
        figsize: figure size in inches.

    Returns:
        A matplotlib ``Figure``. Its first Axes holds one ``Line2D`` per edge (``gid`` ``"i-j"``
        with ``i < j``); each further Axes is a thumbnail.

    Raises:
        ValueError: the matrix is not ``(n, n)`` for ``n`` images, ``k`` is out of range, or the
            layout is unknown.
    """
    from matplotlib.figure import Figure

    thumbs = [to_image(image, mean=mean, std=std) for image in images]
    sim = np.asarray(_to_numpy(similarities), dtype=np.float64)
    n = len(thumbs)
    if sim.shape != (n, n):
        raise ValueError(f"similarities must be ({n}, {n}) for {n} images, got {sim.shape}")
    if not (isinstance(k, int) and 1 <= k <= max(n - 1, 1)):
        raise ValueError(f"k must be an int in [1, {max(n - 1, 1)}] for {n} images, got {k!r}")
    if layout == "mds":
        pos = _mds_layout(sim)
    elif layout == "circle":
        angles = 2 * np.pi * np.arange(n) / n + np.pi / 2
        pos = 0.5 + 0.38 * np.stack([np.cos(angles), np.sin(angles)], 1)
    else:
        raise ValueError(f"layout must be 'mds' or 'circle', got {layout!r}")
    pos = _spread(pos, min_distance=1.3 * thumb_size, margin=thumb_size / 2 + 0.02)
    off_diag = sim.copy()
    np.fill_diagonal(off_diag, -np.inf)
    edges = set()
    for i in range(n):
        for j in np.argsort(-off_diag[i], kind="stable")[:k]:
            edges.add((min(i, int(j)), max(i, int(j))))
    weights = np.array([sim[i, j] for i, j in sorted(edges)]) if edges else np.zeros(0)
    lo, hi = (weights.min(), weights.max()) if weights.size else (0.0, 1.0)

    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    for (i, j), w in zip(sorted(edges), weights, strict=True):
        strength = (w - lo) / (hi - lo) if hi > lo else 1.0
        (line,) = ax.plot(
            [pos[i, 0], pos[j, 0]],
            [pos[i, 1], pos[j, 1]],
            color="tab:blue",
            linewidth=0.8 + 4.0 * strength,
            alpha=0.35 + 0.5 * strength,
            zorder=1,
        )
        line.set_gid(f"{i}-{j}")
        mid = (pos[i] + pos[j]) / 2
        ax.text(
            mid[0],
            mid[1],
            f"{w:.2f}",
            fontsize=7,
            ha="center",
            va="center",
            zorder=2,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )
    half = thumb_size / 2
    for idx, (thumb, (x, y)) in enumerate(zip(thumbs, pos, strict=True)):
        inset = fig.add_axes((x - half, y - half, thumb_size, thumb_size), zorder=3)
        inset.imshow(thumb)
        inset.set_xticks([])
        inset.set_yticks([])
        if labels is not None:
            inset.set_title(str(labels[idx]), fontsize=7, pad=2)
    return fig
