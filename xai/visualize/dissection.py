"""Figures for Network Dissection and Net2Vec (Bau et al., CVPR 2017; Fong & Vedaldi, CVPR 2018).

- :func:`top_patches`: the images where a filter fires most, its mask highlighted (the rest
  dimmed, NetDissect's display), titled with the filter's top concept and IoU;
- :func:`concept_histogram`: per layer, how many filters are interpretable for each concept,
  coloured by the concept's kind (NetDissect's per-layer summary);
- :func:`similarity_matrix`: cosine similarity between Net2Vec concept embeddings.

All return a ``matplotlib.figure.Figure`` (nothing is shown); save with
:func:`xai.visualize.save`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xai.visualize._image import _to_numpy, to_image

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xai.concepts import LayerDissection, NetworkDissection

__all__ = ["concept_histogram", "similarity_matrix", "top_patches"]

_KIND_COLORS = {"object": "#4363d8", "texture": "#3cb44b", "color": "#f58231", None: "#808080"}


def top_patches(
    dissection: NetworkDissection,
    data: Any,
    unit: int,
    *,
    layer: str | None = None,
    n: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Figure:
    """The top-activating images of one filter with its mask, titled with its concept and IoU.

    Args:
        dissection: a fitted :class:`~xai.concepts.NetworkDissection`.
        data: the data it was fitted on, indexable (``data[i] -> (image, masks)``), e.g.
            :class:`xai.data.BrodenLite`.
        unit: the filter index k.
        layer: the dissected layer (default: the first).
        n: number of images (default: all kept, ``n_top``).
        mean: per-channel mean of the images' normalization, to display them (default: the
            data's ``mean`` attribute when present).
        std: per-channel standard deviation of that normalization (default: the data's
            ``std`` attribute when present).

    Returns:
        A ``Figure`` with one row of ``n`` images; outside the filter's mask the image is
        dimmed and the mask is outlined.
    """
    from matplotlib.figure import Figure

    name = dissection.layers[0] if layer is None else layer
    if not hasattr(dissection, "results_"):
        raise RuntimeError("call dissection.fit(data) first")
    if name not in dissection.results_:
        raise ValueError(f"layer {name!r} was not dissected; choose from {dissection.layers}")
    res = dissection.results_[name]
    k = res.iou.shape[1]
    if not 0 <= unit < k:
        raise ValueError(f"unit must be in [0, {k}), got {unit}")
    top = res.top_images[unit] if res.top_images is not None else torch.arange(1)
    index: list[int] = top[: (n or len(top))].tolist()
    mean = mean if mean is not None else getattr(data, "mean", None)
    std = std if std is not None else getattr(data, "std", None)
    images = torch.stack([data[i][0] for i in index])
    masks = dissection.unit_masks(images, name)[:, unit]
    concept = int(res.unit_label[unit])
    fig = Figure(figsize=(1.8 * len(index), 2.3))
    axes = fig.subplots(1, len(index), squeeze=False)[0]
    for ax, image, mask in zip(axes, images, masks, strict=True):
        rgb = to_image(image, mean=mean, std=std)
        m = mask.numpy()
        ax.imshow(np.where(m[..., None], rgb, 0.25 * rgb))
        if m.any() and not m.all():
            ax.contour(m.astype(float), levels=[0.5], colors="yellow", linewidths=1.0)
        ax.set_axis_off()
    fig.suptitle(
        f"{name} unit {unit}: {res.concepts[concept]} (IoU {float(res.iou[concept, unit]):.3f})",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def concept_histogram(
    results: NetworkDissection | Mapping[str, LayerDissection] | Sequence[LayerDissection],
    *,
    threshold: float = 0.04,
) -> Figure:
    """Per layer, the number of interpretable filters per concept (NetDissect's summary).

    A filter counts for its top concept when its IoU exceeds ``threshold`` (0.04 as in
    NetDissect-Lite). Bars are coloured by the concept's kind when the data gave kinds.

    Args:
        results: a fitted :class:`~xai.concepts.NetworkDissection` or its ``results_``.
        threshold: the IoU above which a filter is interpretable.

    Returns:
        A ``Figure`` with one panel per layer.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    if hasattr(results, "results_"):
        layers = [results.results_[n] for n in results.layers]  # type: ignore[union-attr]
    elif isinstance(results, Mapping):
        layers = list(results.values())
    else:
        layers = list(results)
    if not layers:
        raise ValueError("no layer results to plot")
    fig = Figure(figsize=(max(6.0, 0.32 * len(layers[0].concepts) + 2), 1.9 * len(layers) + 0.6))
    axes = fig.subplots(len(layers), 1, squeeze=False)[:, 0]
    for ax, res in zip(axes, layers, strict=True):
        summary = res.summary(threshold)
        counts = np.array([summary["per_concept"].get(c, 0) for c in res.concepts])
        kinds = res.kinds or [None] * len(res.concepts)
        ax.bar(range(len(counts)), counts, color=[_KIND_COLORS.get(k, "#808080") for k in kinds])
        ax.set_xticks(range(len(counts)))
        ax.set_xticklabels(res.concepts, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("filters", fontsize=8)
        ax.set_title(
            f"{res.layer}: {summary['n_interpretable']}/{summary['n_filters']} filters with "
            f"IoU > {threshold}",
            fontsize=9,
        )
        ax.tick_params(axis="y", labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if layers[0].kinds:
        present = list(dict.fromkeys(layers[0].kinds))
        handles = [Patch(color=_KIND_COLORS.get(k, "#808080"), label=k) for k in present]
        axes[0].legend(handles=handles, fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def similarity_matrix(
    similarity: Any, names: Sequence[str] | None = None, *, title: str | None = None
) -> Figure:
    """Heat map of a ``(C, C)`` concept similarity matrix (e.g. :meth:`Net2Vec.similarity`).

    Args:
        similarity: ``(C, C)`` tensor or array of cosine similarities in [-1, 1].
        names: the C concept names (default: indices).
        title: figure title.

    Returns:
        A ``Figure`` with the matrix (diverging colormap centred on 0) and a colorbar.
    """
    from matplotlib.figure import Figure

    sim = _to_numpy(similarity).astype(float)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be a square (C, C) matrix, got {sim.shape}")
    c = sim.shape[0]
    names = list(names) if names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} names for {c} concepts")
    fig = Figure(figsize=(0.38 * c + 2.5, 0.38 * c + 1.6))
    ax = fig.subplots()
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    if c <= 16:
        for i in range(c):
            for j in range(c):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine")
    ax.set_title(title or "concept embedding similarity", fontsize=9)
    fig.tight_layout()
    return fig
