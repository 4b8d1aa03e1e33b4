"""Segmentation-target demo on real photos (``xai demo`` section ``segmentation``).

No segmentation weights ship offline, so the segmenter is the real ImageNet MobileNetV2 applied
densely, as in FCN (Long et al., CVPR 2015): its linear classifier becomes a 1x1 convolution
over the last feature map (``7 x 7`` at 224 px), and the per-location logits are upsampled to
the image. It returns ``{"out": (B, 1000, H, W)}`` like torchvision's segmentation models, so
the explanation goes through the same path (``unwrap_output``, :class:`SegmentationTarget`).
The average of its logits over the locations equals the classifier's logits (the classifier
is linear after global average pooling), so the "segment" is where the predicted class wins.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DenseClassifier", "segmentation_demo"]

PHOTOS = ("chelsea", "coffee", "grace_hopper")


class DenseClassifier(nn.Module):
    """A GAP + linear classifier applied at every location: ``{"out": (B, K, H, W)}`` logits.

    Args:
        classifier: a model with ``features`` (``(B, 3, H, W) -> (B, C, h, w)``) and a
            ``classifier`` ending in an ``nn.Linear`` (torchvision's MobileNetV2, EfficientNet).
            Its modules are shared, not copied; the head is a 1x1 view of the linear weights.
        upsample: upsample the logits to the input size (bilinear, as torchvision's
            segmenters; default ``True``). ``False`` keeps the feature map's resolution: 1,000
            classes at full resolution are 200 MB per 224 px image, too much for the many
            forward passes of a perturbation method.
    """

    def __init__(self, classifier: nn.Module, *, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.features: nn.Module = classifier.features  # type: ignore[assignment]
        head = classifier.classifier
        linear = head[-1] if isinstance(head, nn.Sequential) else head
        if not isinstance(linear, nn.Linear):
            raise TypeError("the classifier must end in an nn.Linear")
        self.linear = linear

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``{"out": logits}`` of every location, upsampled to the input size (bilinear)."""
        feats = self.features(x)
        weight = self.linear.weight[:, :, None, None]
        logits = F.conv2d(feats, weight, self.linear.bias)
        if not self.upsample:
            return {"out": logits}
        size = tuple(x.shape[-2:])
        return {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}


def segmentation_demo(
    out_dir: str | Path,
    *,
    size: int = 224,
    photos: tuple[str, ...] = PHOTOS,
    occlusion_window: int = 48,
) -> list[Path]:
    """Write ``segmentation.png``: Grad-CAM and occlusion for a segment's class on real photos.

    Each row is a photo: the segment (the cells of the ``7 x 7`` logit map whose arg-max
    class is the image's predicted class; drawn upsampled), then the maps of
    :class:`~xai.adapter.SegmentationTarget` (that class's logits summed over the segment) by
    Grad-CAM at ``features.18`` and ``features.14``, and by occlusion (window
    ``occlusion_window``, stride half of it).

    Args:
        out_dir: folder for the PNG (created if needed).
        size: input size (the center crop of :func:`xai.data.preprocess`).
        photos: names of :func:`xai.data.sample_photos_raw` photos (missing ones are skipped).
        occlusion_window: side of the occluding square in pixels.

    Returns:
        The path of the written figure.

    Raises:
        FileNotFoundError: the offline MobileNetV2 weights are missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xai.adapter import SegmentationTarget
    from xai.attributions.cam import GradCAM
    from xai.attributions.gradients import Occlusion
    from xai.data import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        imagenet_categories,
        load_mobilenet_v2,
        preprocess,
        sample_photos_raw,
    )
    from xai.visualize.overlay import overlay

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = DenseClassifier(load_mobilenet_v2(), upsample=False).eval()
    available = dict(sample_photos_raw(include_foolbox=False))
    names = [n for n in photos if n in available] or list(available)[:3]
    batch = torch.cat([preprocess(available[n], size) for n in names])
    categories = imagenet_categories()
    with torch.no_grad():
        logits = model(batch)["out"]
    predicted = logits.mean((2, 3)).argmax(1)
    columns = ["segment", "Grad-CAM features.18", "Grad-CAM features.14", "occlusion"]
    methods = [
        GradCAM(model, "features.18"),
        GradCAM(model, "features.14"),
        Occlusion(model, window_size=occlusion_window, stride=occlusion_window // 2, batch_size=16),
    ]
    fig, axes = plt.subplots(len(names), 4, figsize=(11, 2.9 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        cls = int(predicted[row])
        segment = logits[row].argmax(0) == cls
        target = SegmentationTarget(cls, segment)
        x = batch[row : row + 1]
        shown = F.interpolate(segment[None, None].float(), size=x.shape[-2:], mode="nearest")
        maps = [shown[0, 0]] + [method(x, target)[0] for method in methods]
        for col, (title, attribution) in enumerate(zip(columns, maps, strict=True)):
            overlay(
                x[0],
                attribution,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                alpha=0.45 if col == 0 else 0.5,
                cmap="viridis" if col == 0 else None,
                ax=axes[row, col],
            )
            label = f"{name}: {categories[cls]}" if col == 0 else (title if row == 0 else "")
            axes[row, col].set_title(f"{title}\n{label}" if col == 0 else label, fontsize=8)
    fig.suptitle(
        "SegmentationTarget: the predicted class's logits summed over its segment\n"
        "(ImageNet MobileNetV2 applied densely, FCN-style; not trained for segmentation)",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / "segmentation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
