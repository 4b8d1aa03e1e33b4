"""Inversion and feature-visualization demo on the real ImageNet MobileNetV2 (offline).

scikit-image's chelsea (predicted 'Egyptian cat') is inverted from four depths of MobileNetV2
(Mahendran & Vedaldi, CVPR 2015), and a few channels and the class 'Egyptian cat' are
visualized (Olah et al., Distill 2017). The default settings are tiny so that ``xai demo``
stays fast (about 10 s on 2 CPU cores); ``full=True`` uses the papers' settings (224 px, the
400-step CNN schedule; 128 px, 512 Adam steps, upsampled to 224). Used by the CLI demo and
``notebooks/07_inversion.ipynb``.
"""

from __future__ import annotations

import operator
from functools import reduce
from pathlib import Path

__all__ = ["DEMO_CHANNELS", "DEMO_LAYERS", "features_demo"]

#: Four depths of MobileNetV2's 19 feature blocks (early, two middle, late).
DEMO_LAYERS = ("features.2", "features.5", "features.9", "features.14")
#: (layer, channel) pairs visualized by the demo.
DEMO_CHANNELS = (("features.9", 12), ("features.9", 40), ("features.14", 7))
EGYPTIAN_CAT = 285


def features_demo(
    out_dir: str | Path,
    *,
    full: bool = False,
    photo: str = "chelsea",
    layers: tuple[str, ...] = DEMO_LAYERS,
    channels: tuple[tuple[str, int], ...] = DEMO_CHANNELS,
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write ``inversion_depths.png`` and ``feature_visualizations.png``.

    Args:
        out_dir: folder for the PNG files (created if needed).
        full: the papers' settings (minutes on a CPU) instead of the tiny default (64 px
            inversions of 80 steps, 64 px visualizations of 48 steps, no upsampling).
        photo: offline photo name (see :func:`xai.data.sample_photos_raw`).
        layers: layers to invert, shallow to deep.
        channels: ``(layer, channel)`` pairs to visualize (one batch per layer).
        seed: seed of every random start and transformation.
        progress: tqdm progress bars.

    Returns:
        The paths of the written figures.

    Raises:
        FileNotFoundError: the offline MobileNetV2 weights are missing.
    """
    import torch

    from xai.data import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        imagenet_categories,
        load_mobilenet_v2,
        preprocess,
        sample_photos_raw,
    )
    from xai.features import Channel, ClassLogit, FeatureVisualization, Inversion
    from xai.visualize import save
    from xai.visualize.features import inversion_strip, visualization_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_mobilenet_v2()
    size = 224 if full else 64
    n_steps = None if full else 80
    image = preprocess(dict(sample_photos_raw(include_foolbox=False))[photo], size)
    inversions, errors = {}, {}
    for layer in layers:
        result = Inversion(model, layer, n_steps=n_steps, seed=seed, progress=progress)(image)
        inversions[layer] = result.images[0, 0]
        errors[layer] = float(result.feature_error[0, 0])
    fig = inversion_strip(
        image[0],
        inversions,
        errors=errors,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        title=f"{photo} reconstructed from MobileNetV2 codes "
        f"({size} px; error = normalized feature error)",
    )
    paths = [save(fig, out / "inversion_depths.png", dpi=110)]

    vis_settings = (
        {"size": 128, "n_steps": 512, "model_size": 224}
        if full
        else {"size": 64, "n_steps": 48, "model_size": None}
    )
    images, titles = [], []
    by_layer: dict[str, list[int]] = {}
    for layer, k in channels:
        by_layer.setdefault(layer, []).append(k)
    for layer, ks in by_layer.items():
        objective = reduce(operator.add, [Channel(layer, k, batch=i) for i, k in enumerate(ks)])
        vis = FeatureVisualization(
            model, objective, batch=len(ks), seed=seed, progress=progress, **vis_settings
        )
        images.append(vis().images)
        titles += [f"{layer} channel {k}" for k in ks]
    vis = FeatureVisualization(
        model, ClassLogit(EGYPTIAN_CAT), seed=seed, progress=progress, **vis_settings
    )
    images.append(vis().images)
    titles.append(f"class '{imagenet_categories()[EGYPTIAN_CAT]}'")
    fig = visualization_grid(
        torch.cat(images),
        titles=titles,
        n_cols=len(titles),
        title="MobileNetV2 feature visualizations (Fourier param, "
        "decorrelated colors, jitter/scale/rotate)",
    )
    paths.append(save(fig, out / "feature_visualizations.png", dpi=110))
    return paths
