"""Concept demo (CRAFT) on the real ImageNet MobileNetV2 with offline photos.

Offline there is one photo per class (scikit-image's ``chelsea``, predicted 'Egyptian cat'), so
"the images of the class" are random crops of that photo, resized back to the input size, as
CRAFT does with crops of many images. Concepts are extracted at ``features.18`` (the last block,
ReLU6 outputs: non-negative, as NMF needs), where the rest of the network is pooling + linear.
Used by the CLI demo and ``notebooks/04_concepts.ipynb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["concepts_demo"]


def concepts_demo(
    out_dir: str | Path,
    *,
    photo: str = "chelsea",
    n_concepts: int = 6,
    n_patches: int = 48,
    patch_size: int = 80,
    size: int = 224,
) -> list[Path]:
    """Write the concept figures: gallery (top crops per concept, with Sobol importance),
    concept maps over the photo, and the strategic cluster graph of the crops.

    Args:
        out_dir: folder for the PNG files (created if needed).
        photo: offline photo name (see :func:`xai.data.sample_photos_raw`).
        n_concepts: concepts to extract (default 6; CRAFT uses 10-25 with hundreds of images).
        n_patches: random crops of the photo (default 48, enough for a demo in seconds).
        patch_size: crop side in pixels of the ``size`` image (default 80).
        size: input size.

    Returns:
        The paths of the written figures.

    Raises:
        FileNotFoundError: the offline MobileNetV2 weights are missing.
    """
    from xai.concepts import ConceptExtractor
    from xai.data import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        imagenet_categories,
        load_mobilenet_v2,
        preprocess,
        sample_photos_raw,
    )
    from xai.visualize.concepts import concept_gallery, concept_overlay, strategic_cluster_graph

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_mobilenet_v2()
    image = preprocess(dict(sample_photos_raw())[photo], size)
    ce = ConceptExtractor(
        model,
        "features.18",
        n_concepts=n_concepts,
        patches="random",
        n_patches=n_patches,
        patch_size=patch_size,
        batch_size=16,
        seed=0,
    )
    ce.fit(image)
    label = imagenet_categories()[ce.target_]
    importance = ce.importance(method="sobol")
    paths: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=110)
        paths.append(path)

    fig = concept_gallery(
        ce,
        importances=importance,
        n_crops=5,
        title=f"Concepts of '{label}' at features.18 (Sobol importance)",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    save(fig, "concepts_gallery.png")
    fig = concept_overlay(
        image[0],
        ce.concept_maps(image)[0],
        importances=importance,
        n_concepts=min(4, n_concepts),
        title=f"Where the top concepts of '{label}' are",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    save(fig, "concepts_maps.png")
    crops = ce.crops()
    local = ce.local_importance(crops, method="gradient_input")
    fig = strategic_cluster_graph(
        local,
        images=crops,
        min_count=max(2, n_patches // 10),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        title=f"Crops of '{label}' by the concepts that drive the score (gradient x input)",
    )
    save(fig, "concepts_clusters.png")
    return paths
