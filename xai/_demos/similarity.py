"""Similarity-map demo on the real ImageNet MobileNetV2 (offline weights and photos).

The embedding is MobileNetV2's pooled last feature map: ``model.features`` (last block
``features.18``, 1280 channels, ReLU6) followed by global average pooling, a 1280-d vector, as in
the paper's demo, which explains the average-pooled last convolutional features. Used by the
CLI demo and ``notebooks/05_similarity.ipynb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PooledFeatures", "similarity_demo", "tuxpaint_stamps"]

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")


class PooledFeatures(nn.Module):
    """``backbone.features`` followed by global average pooling: ``(B, 3, H, W) -> (B, C)``.

    The feature extractor keeps its name, so its layers are addressed as in the backbone
    (``"features.18"`` for MobileNetV2). The backbone's parameters are shared, not copied.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        features = getattr(backbone, "features", None)
        if not isinstance(features, nn.Module):
            raise TypeError("backbone must have a `features` module (e.g. torchvision MobileNetV2)")
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean((2, 3))


def tuxpaint_stamps(limit: int = 24, root: Path = TUXPAINT_STAMPS) -> list[tuple[str, np.ndarray]]:
    """Tux Paint stamps (Debian package ``tuxpaint-stamps-default``) as ``(name, HxWx3 uint8)``,
    transparent pixels composited on white; an empty list when the package is not installed.

    At most ``limit`` stamps, taken round-robin over the stamp categories so that a small set
    still mixes animals, vehicles, food, etc.
    """
    if not root.is_dir():
        return []
    import matplotlib.image

    by_category: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.png")):
        if "thumb" in path.stem or path.stem.endswith("_mirror"):
            continue
        by_category.setdefault(path.relative_to(root).parts[0], []).append(path)
    picked: list[Path] = []
    queues = [list(v) for _, v in sorted(by_category.items())]
    while queues and len(picked) < limit:
        for queue in list(queues):
            if queue and len(picked) < limit:
                picked.append(queue.pop(0))
            if not queue:
                queues.remove(queue)
    stamps = []
    for path in picked:
        try:
            arr = np.asarray(matplotlib.image.imread(path), dtype=np.float32)
        except (OSError, ValueError, SyntaxError):
            continue
        if arr.ndim != 3 or arr.shape[0] < 32 or arr.shape[1] < 32:
            continue
        if arr.max() > 1.0:
            arr = arr / 255.0
        rgb = arr[..., :3]
        if arr.shape[-1] == 4:
            alpha = arr[..., 3:4]
            rgb = rgb * alpha + (1.0 - alpha)
        stamps.append((path.stem, (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)))
    return stamps


def _batch(photos: list[tuple[str, np.ndarray]], size: int) -> Tensor:
    from xai.data import preprocess

    return torch.cat([preprocess(image, size) for _, image in photos])


def similarity_demo(out_dir: str | Path, *, size: int = 224, top_k: int = 4) -> list[Path]:
    """Write the similarity figures of MobileNetV2 pooled features on offline photos.

    Figures: a pair (two jeeps, or the first two photos), a region search (a box in the
    query against the other photos), a similarity graph of the photos, and when Tux Paint's
    stamps are installed a retrieval strip over them (skipped otherwise).

    Args:
        out_dir: folder for the PNG files (created if needed).
        size: input size (the center crop of :func:`xai.data.preprocess`).
        top_k: hits in each retrieval strip.

    Returns:
        The paths of the written figures.

    Raises:
        FileNotFoundError: the offline MobileNetV2 weights are missing.
    """
    from xai.attributions.similarity import SimilarityMaps
    from xai.data import IMAGENET_MEAN, IMAGENET_STD, load_mobilenet_v2, sample_photos_raw
    from xai.visualize.similarity import retrieval_strip, similarity_graph, similarity_pair

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = PooledFeatures(load_mobilenet_v2())
    sim = SimilarityMaps(model, "features.18", pooling="avg", metric="cosine", batch_size=16)
    photos = sample_photos_raw()
    names = [n for n, _ in photos]
    batch = _batch(photos, size)
    paths: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=110)
        paths.append(path)

    # 1. a pair: the two jeep photos of foolbox's ImageNet sample when present
    jeeps = [i for i, n in enumerate(names) if n.endswith("_609")]
    a, b = (jeeps[0], jeeps[1]) if len(jeeps) >= 2 else (0, 1)
    result = sim.explain(batch[a : a + 1], batch[b : b + 1])
    save(
        similarity_pair(
            batch[a],
            batch[b],
            result.query_maps[0],
            result.reference_maps[0],
            float(result.scores[0]),
            metric="cosine",
            titles=(names[a], names[b]),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        "similarity_pair.png",
    )

    # 2. region search: the center of the query against every other photo
    query = batch[a : a + 1]
    others = [i for i in range(len(names)) if i != a]
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    hits = sim.search(query, box, batch[others], top_k=min(top_k, len(others)))
    hit_rows = [others[int(i)] for i in hits.indices]
    save(
        retrieval_strip(
            batch[a],
            batch[hit_rows],
            hits.maps,
            hits.scores,
            region=box,
            labels=[names[i] for i in hit_rows],
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        "similarity_region_search.png",
    )

    # 3. similarity graph of a small gallery (at most 12 photos)
    gallery = list(range(min(12, len(names))))
    matrix = sim.matrix(batch[gallery])
    save(
        similarity_graph(
            batch[gallery],
            matrix,
            k=2,
            labels=[names[i] for i in gallery],
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
        "similarity_graph.png",
    )

    # 4. Tux Paint stamps, when installed: full-image retrieval for the first stamp
    stamps = tuxpaint_stamps()
    if len(stamps) >= 2:
        stamp_batch = _batch(stamps, size)
        k = min(top_k, len(stamps) - 1)
        res = sim.explain(stamp_batch[:1], stamp_batch[1:])
        order = res.scores.topk(k).indices
        save(
            retrieval_strip(
                stamp_batch[0],
                stamp_batch[1:][order],
                res.reference_maps[order],
                res.scores[order],
                query_map=res.query_maps[order[0]],
                labels=[stamps[1 + int(i)][0] for i in order],
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
            ),
            "similarity_tuxpaint.png",
        )
    return paths
