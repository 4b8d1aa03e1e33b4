"""Feature visualization by activation maximization (Olah et al., Distill 2017).

Optimize images so that an :mod:`objective <xai.features.objectives>` is as large as possible:
a decorrelated Fourier parameterization (:mod:`xai.features.param`), random transformations at
every step (:mod:`xai.features.transforms`) and Adam, with Lucid's defaults (lr 0.05, 512 steps,
128 px, upsampled to 224 for the model).

References:
    C. Olah, A. Mordvintsev, L. Schubert. Feature Visualization. Distill, 2017.
    https://distill.pub/2017/feature-visualization/
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_positive_int
from xai.adapter import resolve_layer
from xai.adapter.split import recorder
from xai.features._common import channel_view, frozen, generator, progress_bar
from xai.features.objectives import Activations, Objective
from xai.features.param import ImageParam
from xai.features.transforms import Transform, lucid_transforms, xplique_transforms

# one recorded forward pass: inputs -> (layer outputs, model output)
_Run = Callable[[Tensor], tuple[dict[str, Tensor], Tensor | None]]

__all__ = ["FeatureVisualization", "Visualization"]


@dataclass(frozen=True)
class Visualization:
    """What :class:`FeatureVisualization` returns.

    Attributes:
        images: ``(B, 3, size, size)`` optimized images in [0, 1] (pixel space).
        history: ``(n_steps,)`` objective value at every step (on transformed images).
    """

    images: Tensor
    history: Tensor


class FeatureVisualization:
    """Images that maximize an objective: a channel, a neuron, a layer, a class logit...

    Args:
        model: any ``nn.Module`` taking normalized images; never modified.
        objective: what to maximize, see :mod:`xai.features.objectives` (composable with
            ``+``, ``-`` and ``*`` by numbers).
        param: ``"fft"`` (default, decorrelated spectrum) or ``"pixel"``.
        decorrelate: color decorrelation (default ``True``, Lucid).
        decay_power: frequency decay of the FFT scale (default 1.0, lucent; xplique 0.85).
        size: side of the optimized images (default 128, lucent's ``render_vis``).
        batch: images optimized together (default 1); objectives pick images with ``batch=i``.
        n_steps: Adam steps (default 512, lucent).
        lr: Adam learning rate (default 0.05, lucent and xplique).
        transforms: ``"lucid"`` (default), ``"xplique"``, ``None`` or a list of
            ``fn(image, generator) -> image`` (see :mod:`xai.features.transforms`).
        model_size: upsample transformed images smaller than this to it before the model
            (default 224, lucent; ``None`` never resizes).
        mean: per-channel mean of the model's input normalization (ImageNet's by default).
        std: per-channel std of the model's input normalization (ImageNet's by default).
        seed: seeds the start and every transformation (``torch.Generator``).
        device: where to optimize (default: the device of the model's first parameter).
        dtype: dtype of the images (default float32).
        progress: show a tqdm progress bar.

    Example:
        >>> vis = FeatureVisualization(model, Channel("features.9", 4), n_steps=256)
        >>> vis().images   # (1, 3, 128, 128) in [0, 1]
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        *,
        param: Literal["fft", "pixel"] = "fft",
        decorrelate: bool = True,
        decay_power: float = 1.0,
        size: int = 128,
        batch: int = 1,
        n_steps: int = 512,
        lr: float = 0.05,
        transforms: str | Sequence[Transform] | None = "lucid",
        model_size: int | None = 224,
        mean: Sequence[float] | None = (0.485, 0.456, 0.406),
        std: Sequence[float] | None = (0.229, 0.224, 0.225),
        seed: int | None = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(objective, Objective):
            raise TypeError(
                f"objective must be an xai.features Objective (Channel, Neuron, Layer, "
                f"ClassLogit, ...), got {type(objective).__name__}"
            )
        for name, value in (("size", size), ("batch", batch), ("n_steps", n_steps)):
            check_positive_int(value, name)
        check_positive_int(model_size, "model_size", allow_none=True)
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if isinstance(transforms, str) and transforms not in ("lucid", "xplique"):
            raise ValueError(
                f"transforms must be 'lucid', 'xplique', None or a list of "
                f"callables, got {transforms!r}"
            )
        self.model, self.objective = model, objective
        self.layers = [resolve_layer(model, layer)[0] for layer in objective.layers]
        self.layers = list(dict.fromkeys(self.layers))
        self.param, self.decorrelate, self.decay_power = param, decorrelate, decay_power
        self.size, self.batch, self.n_steps, self.lr = size, batch, n_steps, float(lr)
        if transforms == "lucid":
            self.transforms: list[Transform] = lucid_transforms()
        elif isinstance(transforms, str):  # "xplique" (other strings were rejected above)
            self.transforms = xplique_transforms(size)
        else:
            self.transforms = list(transforms or [])
        self.model_size = model_size
        self.mean = (0.0,) if mean is None else mean
        self.std = (1.0,) if std is None else std
        self.seed = seed
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else "cpu"
        self.device, self.dtype = torch.device(device), dtype
        self.progress = progress

    def __call__(self) -> Visualization:
        """Optimize and return the images (``(batch, 3, size, size)`` in [0, 1])."""
        gen = generator(self.seed)
        image = ImageParam(
            self.batch,
            (self.size, self.size),
            kind=self.param,
            decorrelate=self.decorrelate,
            decay_power=self.decay_power,
            generator=gen,
            dtype=self.dtype,
            device=self.device,
        )
        optimizer = torch.optim.Adam([image.tensor], lr=self.lr)
        history = torch.empty(self.n_steps, device=self.device)
        with (
            frozen(self.model),
            recorder(self.model, self.layers, grad=True, output=self.objective.needs_output) as run,
            progress_bar(self.n_steps, self.progress, "visualization") as bar,
        ):
            for step in range(self.n_steps):
                value = self.objective(self._forward(run, image(), gen))
                (grad,) = torch.autograd.grad(-value, image.tensor)
                image.tensor.grad = grad
                optimizer.step()
                history[step] = value.detach()  # no host sync per step
                bar.update(1)
        with torch.no_grad():
            images = image().detach()
        if not bool(torch.isfinite(history).all()):
            step = int((~torch.isfinite(history)).nonzero()[0, 0])
            raise FloatingPointError(
                f"the objective became non-finite at step {step}; lower lr or check the objective"
            )
        return Visualization(images=images, history=history.cpu())

    def _forward(self, run: _Run, images: Tensor, gen: torch.Generator) -> Activations:
        for transform in self.transforms:
            images = transform(images, gen)
        if self.model_size is not None and max(images.shape[-2:]) < self.model_size:
            images = F.interpolate(
                images, size=(self.model_size, self.model_size), mode="bilinear", align_corners=True
            )
        x = (images - channel_view(self.mean, images, "mean")) / channel_view(
            self.std, images, "std"
        )
        values, output = run(x)
        return Activations(self.model, values, output)
