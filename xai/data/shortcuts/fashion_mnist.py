"""The planted-shortcut set: Fashion-MNIST with a patch planted on one class, and the small CNN
trained on it (:func:`planted_shortcut_set`, :func:`train_small_cnn`).
"""

from __future__ import annotations

import functools
import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from xai.data.shortcuts.ground_truth import GroundTruthSet

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ROOT",
    "SmallCNN",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "planted_shortcut_set",
    "train_small_cnn",
]

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def fashion_mnist_available(root: str | Path = FASHION_MNIST_ROOT) -> bool:
    """Whether the four Fashion-MNIST idx files are installed under ``root``."""
    root = Path(root)
    return all((root / f).is_file() for pair in _FMNIST_FILES.values() for f in pair)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:  # unsigned byte payload
        raise ValueError(f"{path} is not an idx file of unsigned bytes (magic {magic:#x})")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=2)
def _load_cached(split: str, root: str) -> tuple[Tensor, Tensor]:
    images_file, labels_file = (Path(root) / f for f in _FMNIST_FILES[split])
    images = torch.from_numpy(_read_idx(images_file).copy())
    labels = torch.from_numpy(_read_idx(labels_file).astype(np.int64))
    return images, labels


def load_fashion_mnist(
    split: str = "train", root: str | Path = FASHION_MNIST_ROOT
) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (MIT licence).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder of the idx ``.gz`` files (default: where the Debian package puts them).

    Returns:
        ``(images, labels)``: ``(N, 28, 28)`` uint8 and ``(N,)`` long.

    Raises:
        ValueError: an unknown split.
        FileNotFoundError: the package is not installed (the message says how to install it).
    """
    if split not in _FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    images_file, labels_file = (root / f for f in _FMNIST_FILES[split])
    if not images_file.is_file() or not labels_file.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST not found under {str(root)!r}; install it offline with "
            "`apt-get install -y dataset-fashion-mnist`"
        )
    images, labels = _load_cached(split, str(root))
    return images.clone(), labels.clone()


def _pick_per_class(labels: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """About ``n`` indices, balanced over the classes, in a seeded random order."""
    classes = labels.unique()
    per = math.ceil(n / len(classes))
    chosen = []
    for c in classes.tolist():
        idx = (labels == c).nonzero()[:, 0]
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per]])
    out = torch.cat(chosen)
    return out[torch.randperm(len(out), generator=gen)][:n]


def planted_shortcut_set(
    n_images: int = 3000,
    *,
    split: str = "train",
    shortcut_class: int = 6,
    fraction: float = 0.95,
    patch_size: int = 4,
    position: tuple[int, int] = (1, 1),
    planted: bool = True,
    seed: int = 0,
    root: str | Path = FASHION_MNIST_ROOT,
) -> GroundTruthSet:
    """Fashion-MNIST with a white ``patch_size`` square planted on most images of one class.

    The patch sits at a fixed corner ``position`` (row, col of its top-left pixel), where
    garments rarely reach, on a random ``fraction`` of the images of ``shortcut_class`` and on
    no other image: a cue that predicts the class almost perfectly, so a small CNN learns it.
    ``planted=False`` gives the same images without any patch (the clean twin's data).

    Inputs are ``(N, 1, 28, 28)`` float32 in [0, 1] (no normalization). Masks are the garment
    (pixels > 0.1 after a one-pixel dilation) minus the patch; ``shortcut_masks`` are the patch
    on the images that have it; ``groups`` is 1 for patched images, 0 otherwise.

    Args:
        n_images: number of images (balanced over the 10 classes; default 3,000: a CNN trains
            on them in a few seconds on 2 CPU cores).
        split: ``"train"`` or ``"test"`` images of Fashion-MNIST.
        shortcut_class: the class that gets the patch (default 6, "shirt": the hardest class,
            so the shortcut pays off most).
        fraction: share of that class's images that get the patch (default 0.95, as in the
            data notes: the shortcut then reverses accuracy when flipped).
        patch_size: side of the square patch in pixels (default 4).
        position: top-left pixel of the patch (default ``(1, 1)``: the top-left corner).
        planted: plant the patch (``False``: clean twin).
        seed: seed of the image choice and of which images get the patch.
        root: Fashion-MNIST folder.

    Returns:
        A :class:`GroundTruthSet` with ``info["patch_box"] = (y0, x0, y1, x1)`` (exclusive ends).

    Raises:
        ValueError: bad sizes, class, fraction or position.
        FileNotFoundError: Fashion-MNIST is not installed.
    """
    if not isinstance(n_images, int) or n_images < 10:
        raise ValueError(f"n_images must be an int >= 10, got {n_images!r}")
    if shortcut_class not in range(10):
        raise ValueError(
            f"shortcut_class must be a Fashion-MNIST class 0..9, got {shortcut_class!r}"
        )
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    y0, x0 = position
    if patch_size < 1 or y0 < 0 or x0 < 0 or y0 + patch_size > 28 or x0 + patch_size > 28:
        raise ValueError(
            f"the patch ({patch_size} px at {position}) must lie inside the 28x28 image"
        )
    images, labels = load_fashion_mnist(split, root)
    gen = torch.Generator().manual_seed(seed)
    idx = _pick_per_class(labels, n_images, gen)
    x = images[idx].float().div(255.0)[:, None]
    y = labels[idx]
    garment = torch.nn.functional.max_pool2d((x > 0.1).float(), 3, 1, 1)[:, 0] > 0
    box = torch.zeros(28, 28, dtype=torch.bool)
    box[y0 : y0 + patch_size, x0 : x0 + patch_size] = True
    patched = torch.zeros(len(y), dtype=torch.bool)
    if planted:
        of_class = (y == shortcut_class).nonzero()[:, 0]
        n_patch = round(fraction * len(of_class))
        patched[of_class[torch.randperm(len(of_class), generator=gen)[:n_patch]]] = True
        x[patched, :, y0 : y0 + patch_size, x0 : x0 + patch_size] = 1.0
    shortcut = box[None] & patched[:, None, None]
    return GroundTruthSet(
        inputs=x.contiguous(),
        labels=y,
        masks=garment & ~box[None],
        groups=patched.long(),
        group_names=["no patch", "patch"],
        class_names=list(FASHION_MNIST_CLASSES),
        shortcut_masks=shortcut,
        info={
            "source": "Fashion-MNIST (Debian dataset-fashion-mnist)",
            "split": split,
            "shortcut_class": shortcut_class,
            "fraction": fraction if planted else 0.0,
            "patch_box": (y0, x0, y0 + patch_size, x0 + patch_size),
            "planted": planted,
            "seed": seed,
        },
    )


class SmallCNN(nn.Module):
    """A small CNN for 28x28 images: ``features`` (two conv-ReLU-maxpool blocks, ``(B, 16, 7, 7)``)
    then a linear ``classifier`` on the flattened features.

    The flattened head keeps position information, so a fixed-position shortcut is easy to
    learn (as in real shortcut cases: watermarks, rulers, hospital tokens). ``"features"`` is
    the layer the CAM-family methods read.
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, width: int = 16, size: int = 28
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Linear(width * (size // 4) ** 2, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images -> ``(B, n_classes)`` logits."""
        return self.classifier(self.features(x).flatten(1))


def train_small_cnn(
    data: GroundTruthSet | tuple[Tensor, Tensor],
    *,
    epochs: int = 2,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> SmallCNN:
    """Train a :class:`SmallCNN` with Adam; returns it in eval mode (seconds on a CPU).

    Args:
        data: a :class:`GroundTruthSet` or ``(inputs (N, C, H, W), labels (N,))``.
        epochs: passes over the data (default 2: about 87% test accuracy from 3,000 images).
        batch_size: minibatch size.
        lr: Adam learning rate.
        seed: seed of the initialization and the shuffling (same seed, same model).
        progress: show a ``tqdm`` bar over the epochs.
    """
    from tqdm.auto import tqdm

    inputs, labels = (data.inputs, data.labels) if isinstance(data, GroundTruthSet) else data
    if inputs.dim() != 4 or labels.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"need inputs (N, C, H, W) and labels (N,), got {tuple(inputs.shape)} and "
            f"{tuple(labels.shape)}"
        )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmallCNN(inputs.shape[1], int(labels.max()) + 1, size=inputs.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with torch.enable_grad():
        for _ in tqdm(range(epochs), desc="train", disable=not progress):
            order = torch.randperm(len(labels), generator=gen)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                opt.zero_grad()
                loss_fn(model(inputs[batch]), labels[batch]).backward()
                opt.step()
    return model.eval()
