"""The background-swap set: Tux Paint cut-outs on textures correlated with the label, and the
linear probe on frozen MobileNetV2 features trained on it (:func:`background_swap_set`,
:func:`train_background_probe`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from xai.data.shortcuts.ground_truth import GroundTruthSet
from xai.data.shortcuts.tuxpaint import (
    _TEXTURES,
    TUXPAINT_STAMPS,
    _paste_stamp,
    _read_rgba,
    _stamp_files,
    _texture,
    tuxpaint_available,
)

__all__ = ["BackgroundProbe", "background_swap_set", "train_background_probe"]


def background_swap_set(
    n_images: int = 120,
    *,
    categories: tuple[str, str] = ("animals/birds", "vehicles"),
    backgrounds: tuple[str, str] = ("grass", "brick"),
    correlation: float = 0.9,
    size: int = 112,
    object_size: float = 0.55,
    seed: int = 0,
    keep_backgrounds: bool = False,
    root: str | Path = TUXPAINT_STAMPS,
) -> GroundTruthSet:
    """Tux Paint cut-outs pasted on real textures, background correlated with the label.

    Each image is a random crop of a scikit-image texture (brick, grass or gravel, tinted),
    resized to ``size``, with one stamp of class ``categories[label]`` pasted at a random
    position, its longest side ``object_size * size``. The paste is a hard alpha (alpha >= 0.5),
    so the mask is exact: inside it every pixel is the stamp's, outside every pixel is the
    texture's. With probability ``correlation`` an image of class ``k`` gets background
    ``backgrounds[k]``, otherwise the other one (``correlation=0.5``: no correlation; ``0``:
    reversed, for a test set). Half the stamps of each category are used for ``seed`` even,
    so two seeds of different parity give disjoint objects (train/test split by object).

    Inputs are ``(N, 3, size, size)`` ImageNet-normalized (``mean``/``std`` are set), for
    MobileNetV2. ``groups`` is the background index into ``group_names`` (the textures).

    Args:
        n_images: number of images (half per class).
        categories: two stamp folders under ``root`` (default birds vs vehicles).
        backgrounds: the texture correlated with each class (``"grass"``, ``"gravel"``,
            ``"brick"``).
        correlation: P(background = backgrounds[label]).
        size: image side in pixels (default 112: fast MobileNetV2 features on a CPU).
        object_size: longest side of the pasted stamp as a fraction of ``size``.
        seed: seed of every random choice.
        keep_backgrounds: also return the textures before pasting (``backgrounds``), e.g. to
            check that the masks are exact.
        root: Tux Paint stamps folder.

    Raises:
        ValueError: bad arguments or an unknown category.
        FileNotFoundError: Tux Paint stamps are not installed (the message says how).
    """
    from xai.data import IMAGENET_MEAN, IMAGENET_STD

    root = Path(root)
    if not tuxpaint_available(root):
        raise FileNotFoundError(
            f"Tux Paint stamps not found under {str(root)!r}; install them offline with "
            "`apt-get install -y tuxpaint-stamps-default`"
        )
    if len(categories) != 2 or len(backgrounds) != 2:
        raise ValueError("give two categories and two backgrounds (one per class)")
    for b in backgrounds:
        if b not in _TEXTURES:
            raise ValueError(f"unknown background {b!r}; choose from {_TEXTURES}")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], got {correlation!r}")
    if not isinstance(n_images, int) or n_images < 2:
        raise ValueError(f"n_images must be an int >= 2, got {n_images!r}")
    if not 0.1 <= object_size <= 1.0:
        raise ValueError(f"object_size must be in [0.1, 1], got {object_size!r}")
    rng = np.random.default_rng(seed)
    stamps: list[list[np.ndarray]] = []
    for cat in categories:
        files = _stamp_files(root, cat)[seed % 2 :: 2]
        arrays = [a for a in (_read_rgba(f) for f in files) if a is not None]
        if not arrays:
            raise ValueError(f"no usable RGBA stamps in {cat!r}")
        stamps.append(arrays)
    inputs, masks, labels, groups, plain = [], [], [], [], []
    side = max(8, round(object_size * size))
    for i in range(n_images):
        label = i % 2
        bg = label if rng.random() < correlation else 1 - label
        canvas = _texture(backgrounds[bg], size, rng)
        if keep_backgrounds:
            plain.append(torch.from_numpy(canvas.copy()).permute(2, 0, 1))
        rgba = stamps[label][rng.integers(len(stamps[label]))]
        mask = _paste_stamp(canvas, rgba, side, rng)
        inputs.append(torch.from_numpy(canvas).permute(2, 0, 1))
        masks.append(torch.from_numpy(mask))
        labels.append(label)
        groups.append(bg)
    x = torch.stack(inputs).float()
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    kept = ((torch.stack(plain).float() - mean) / std).contiguous() if keep_backgrounds else None
    return GroundTruthSet(
        inputs=((x - mean) / std).contiguous(),
        labels=torch.tensor(labels, dtype=torch.long),
        masks=torch.stack(masks),
        groups=torch.tensor(groups, dtype=torch.long),
        group_names=list(backgrounds),
        class_names=[c.split("/")[-1] for c in categories],
        shortcut_masks=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        info={
            "source": "Tux Paint stamps (Debian tuxpaint-stamps-default) on scikit-image textures",
            "categories": list(categories),
            "backgrounds": list(backgrounds),
            "correlation": correlation,
            "size": size,
            "seed": seed,
        },
        backgrounds=kept,
    )


class BackgroundProbe(nn.Module):
    """A linear probe on frozen pooled features: ``classifier(features(x).mean((2, 3)))``.

    ``features`` is shared with the backbone (MobileNetV2's ``features``; last block
    ``"features.18"``), so layer names are those of the backbone.
    """

    def __init__(self, features: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images -> ``(B, n_classes)`` logits."""
        return self.classifier(self.features(x).mean((2, 3)))


def train_background_probe(
    data: GroundTruthSet,
    backbone: nn.Module | None = None,
    *,
    batch_size: int = 32,
    c: float = 1.0,
) -> BackgroundProbe:
    """Fit a logistic-regression probe on frozen MobileNetV2 pooled features (scikit-learn).

    Args:
        data: a :func:`background_swap_set` (ImageNet-normalized inputs).
        backbone: a model with ``features`` (default: the offline ImageNet MobileNetV2,
            :func:`xai.data.load_mobilenet_v2`). Its parameters are shared, never changed.
        batch_size: feature extraction batch size.
        c: inverse L2 strength of the logistic regression (scikit-learn's ``C``; default 1.0).

    Returns:
        A :class:`BackgroundProbe` in eval mode.

    Raises:
        FileNotFoundError: no backbone given and the MobileNetV2 weights are missing.
    """
    from sklearn.linear_model import LogisticRegression

    if backbone is None:
        from xai.data import load_mobilenet_v2

        backbone = load_mobilenet_v2()
    features = getattr(backbone, "features", None)
    if not isinstance(features, nn.Module):
        raise TypeError("backbone must have a `features` module (e.g. torchvision MobileNetV2)")
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            pooled = torch.cat([
                features(data.inputs[i : i + batch_size]).mean((2, 3))
                for i in range(0, len(data), batch_size)
            ])  # fmt: skip
    finally:
        features.train(was_training)
    clf = LogisticRegression(C=c, max_iter=2000).fit(pooled.double().numpy(), data.labels.numpy())
    n_classes = int(data.labels.max()) + 1
    linear = nn.Linear(pooled.shape[1], n_classes)
    with torch.no_grad():
        coef = torch.from_numpy(clf.coef_).float()
        bias = torch.from_numpy(clf.intercept_).float()
        if (
            n_classes == 2 and coef.shape[0] == 1
        ):  # binary: logits (-z/2, z/2) give the same softmax
            coef = torch.cat([-coef / 2, coef / 2])
            bias = torch.cat([-bias / 2, bias / 2])
        linear.weight.copy_(coef)
        linear.bias.copy_(bias)
    probe = BackgroundProbe(features, linear).eval()
    return probe
