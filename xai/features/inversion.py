r"""Representation inversion (Mahendran & Vedaldi, CVPR 2015): what a layer keeps of an image.

Given a reference image :math:`x_0` and its code :math:`\Phi_0 = \Phi(x_0)` at a layer, find

.. math::
    x^* = \arg\min_x \frac{\|\Phi(x) - \Phi_0\|^2}{\|\Phi_0\|^2}
          + \frac{\lambda_V}{2\sigma^2} R_{V^\beta}(x)
          + \frac{\lambda_\alpha}{2\sigma^2} R_\alpha(x)

with :math:`R_\alpha(x) = \sum |x|^\alpha` and :math:`R_{V^\beta}(x) = \sum_{c,i,j}
((x_{c,i,j+1}-x_{c,i,j})^2 + (x_{c,i+1,j}-x_{c,i,j})^2)^{\beta/2}` (forward differences, zero at
the far border), evaluated on the mean-subtracted image in 0-255 grey levels, and
:math:`\sigma` the norm of a typical such image (27,098.1 at 227x227, scaled with the pixel
count). The constants, the momentum gradient descent with a step-size schedule and a momentum
reset at each change, and the random start rescaled to norm :math:`\sigma` are those of the
authors' code (deep-goggle, ``core/invert_nn.m``, ``experiments/experiment_cnn.m``).

References:
    A. Mahendran and A. Vedaldi. Understanding Deep Image Representations by Inverting Them.
    CVPR 2015. https://arxiv.org/abs/1412.0035
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from xai._checks import check_inputs, check_positive_int
from xai._typing import LayerLike
from xai.adapter import resolve_layer
from xai.adapter.split import layer_outputs, recorder
from xai.features._common import channel_view, frozen, generator, progress_bar

# one recorded forward pass: inputs -> (layer outputs, model output)
_Run = Callable[[Tensor], tuple[dict[str, Tensor], Tensor | None]]

__all__ = [
    "SCHEDULES",
    "SIGMA_227",
    "Inversion",
    "InversionResult",
    "alpha_norm",
    "auto_lambda_tv",
    "image_error",
    "reconstruction_error",
    "set_normalized_error",
    "total_variation",
]

#: deep-goggle's ``x0_sigma``: the Euclidean norm of a typical 227x227x3 mean-subtracted image in
#: 0-255 units (per-pixel RMS of about 69 grey levels).
SIGMA_227 = 27_098.1

#: Step-size schedules ``((eta, n_steps), ...)`` of deep-goggle. ``"cnn"``: the paper's CNN runs
#: (experiment_cnn.m, 400 steps); ``"default"``: invert_nn.m's default (2,100 steps).
SCHEDULES: dict[str, tuple[tuple[float, int], ...]] = {
    "cnn": ((0.004, 100), (0.0004, 200), (0.00004, 100)),
    "default": ((0.001, 800), (1e-4, 500), (1e-5, 500), (1e-6, 200), (1e-7, 100)),
}


def total_variation(images: Tensor, beta: float = 2.0) -> Tensor:
    r"""The :math:`V^\beta` regularizer of each image,
    :math:`\sum_{c,i,j} (d_h^2 + d_v^2)^{\beta/2}`.

    Forward differences per channel; the last column/row is replicated, so its difference is 0
    (deep-goggle's ``tv``). Safe to differentiate for any ``beta > 0`` (zero gradient where both
    differences vanish).

    Args:
        images: ``(N, C, H, W)``.
        beta: the exponent :math:`\beta` (2 for CNNs in the paper; 1 is classic TV).

    Returns:
        ``(N,)``.
    """
    dh = images[..., :, 1:] - images[..., :, :-1]
    dv = images[..., 1:, :] - images[..., :-1, :]
    if beta == 2.0:  # the two sums separate: no padding, no joint map (the common case, fast)
        return dh.square().flatten(1).sum(1) + dv.square().flatten(1).sum(1)
    v = torch.nn.functional.pad(dh.square(), (0, 1)) + torch.nn.functional.pad(
        dv.square(), (0, 0, 0, 1)
    )
    positive = v > 0
    v = torch.where(positive, v, torch.ones_like(v)).pow(beta / 2) * positive
    return v.flatten(1).sum(1)


def alpha_norm(images: Tensor, alpha: float = 6.0) -> Tensor:
    r"""The :math:`\alpha`-norm regularizer :math:`\sum |x|^\alpha` of each image, ``(N,)``."""
    return images.abs().pow(alpha).flatten(1).sum(1)


def reconstruction_error(features: Tensor, reference: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""The paper's normalized feature error :math:`\|\Phi(x^*)-\Phi_0\|^2/\|\Phi_0\|^2` per sample.

    Args:
        features: ``(B, ...)`` codes of the reconstructions.
        reference: ``(B, ...)`` codes :math:`\Phi_0` of the reference images.
        mask: optional weights broadcastable to the codes (partial inversion).

    Returns:
        ``(B,)``; 0 is a perfect match, 1 is as far as the all-zero code.
    """
    weight = torch.ones_like(reference) if mask is None else mask.to(reference).expand_as(reference)
    num = ((features - reference).square() * weight).flatten(1).sum(1)
    den = (reference.square() * weight).flatten(1).sum(1)
    return num / den


def set_normalized_error(features: Tensor, reference: Tensor) -> Tensor:
    r""":math:`\|\Phi(x^*_i)-\Phi_{0,i}\|^2 / \operatorname{mean}_{i,j}\|\Phi_{0,i}-\Phi_{0,j}\|^2`.

    The paper's quantitative error (deep-goggle ``experiment_shallow_quantitative.m``): the error
    relative to the typical distance between the codes of the image set; report mean and std.

    Args:
        features: ``(B, ...)`` codes of the reconstructions, ``B >= 2``.
        reference: ``(B, ...)`` codes of the reference images.

    Returns:
        ``(B,)``.
    """
    if reference.shape[0] < 2:
        raise ValueError(
            "set_normalized_error needs at least 2 images (it divides by their "
            "mean pairwise distance)"
        )
    flat = reference.flatten(1)
    spread = torch.cdist(flat, flat).square().mean()
    return (features - reference).flatten(1).square().sum(1) / spread


def image_error(
    images: Tensor, reference: Tensor, std: Sequence[float] | Tensor | None = None
) -> Tensor:
    r"""Relative image-space error :math:`\|x^*-x_0\| / \|x_0 - \mu\|` per sample, ``(B,)``.

    ``images`` and ``reference`` are model inputs ``(pixel - mean) / std``; ``std`` undoes the
    scaling so that the error is measured in mean-subtracted pixel units (``None``: as given).
    """
    diff, ref = images - reference, reference
    if std is not None:
        scale = channel_view(std, reference, "std")
        diff, ref = diff * scale, ref * scale
    return diff.flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


def auto_lambda_tv(model: nn.Module, layer: LayerLike) -> float:
    """The paper's TV weight by depth: 1, 10 or 100 for the first 30 %, the next 30 % or the
    rest of the model's leaf modules (AlexNet's split of its 20 layers as 6/6/8 in
    experiment_cnn.m).
    """
    _, module = resolve_layer(model, layer)
    leaves = [m for _, m in model.named_modules() if not list(m.children())]
    own = {id(m) for m in module.modules()}
    last = max((i for i, m in enumerate(leaves) if id(m) in own), default=len(leaves) - 1)
    position = (last + 1) / max(len(leaves), 1)
    return 1.0 if position <= 0.3 + 1e-9 else 10.0 if position <= 0.6 + 1e-9 else 100.0


def _schedule(
    schedule: str | Sequence[tuple[float, int]], n_steps: int | None
) -> list[tuple[float, int]]:
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {schedule!r}; use one of {sorted(SCHEDULES)} or "
                "a sequence of (step_size, n_steps) pairs"
            )
        segments = list(SCHEDULES[schedule])
    else:
        segments = [(float(eta), int(n)) for eta, n in schedule]
        if not segments or any(n < 1 or eta <= 0 for eta, n in segments):
            raise ValueError("schedule must be non-empty (step_size > 0, n_steps >= 1) pairs")
    if n_steps is None:
        return segments
    check_positive_int(n_steps, "n_steps")
    total = sum(n for _, n in segments)
    # shrink every segment in proportion, keeping at least one step each
    scaled = [(eta, max(1, round(n * n_steps / total))) for eta, n in segments]
    return scaled


@dataclass(frozen=True)
class InversionResult:
    r"""What :class:`Inversion` returns.

    Attributes:
        images: ``(R, B, C, H, W)`` reconstructions for ``R`` restarts, in the space of the
            inputs (model inputs, ``(pixel - mean) / std``), not clipped.
        feature_error: ``(R, B)`` normalized feature error
            :math:`\|\Phi(x^*)-\Phi_0\|^2/\|\Phi_0\|^2` of the final images.
        history: ``(T, R, B)`` objective :math:`E` at every step (before the update).
        reference: ``(B, ...)`` the inverted code :math:`\Phi_0`.
    """

    images: Tensor
    feature_error: Tensor
    history: Tensor
    reference: Tensor

    def best(self) -> Tensor:
        """``(B, C, H, W)``: for each sample the restart with the lowest feature error."""
        index = self.feature_error.argmin(0)
        return self.images[index, torch.arange(self.images.shape[1])]


class Inversion:
    r"""Reconstruct images from their code at a layer (Mahendran & Vedaldi, CVPR 2015).

    The defaults are the paper's CNN runs (deep-goggle ``experiment_cnn.m``): :math:`\alpha = 6`,
    :math:`\lambda_\alpha = 8\cdot10^{-10}`, :math:`\beta = 2`, :math:`\lambda_V` = 1, 10 or 100 by
    depth, momentum 0.9, step sizes 0.004 x [1 (100 steps), 0.1 (200), 0.01 (100)] with the
    momentum reset at each change; one restart, no jitter (the CVPR code has none).

    Units: the model takes ``(pixel - mean) / std`` with pixels in [0, 1]; the regularizers and
    the step sizes act on ``255 * (pixel - mean)``, deep-goggle's units, with
    :math:`\sigma = 27{,}098.1\sqrt{HW/227^2}`, so its constants carry over to any image size.

    Args:
        model: any ``nn.Module`` taking ``(B, C, H, W)``; never modified.
        layer: the representation :math:`\Phi` to invert (dotted name or module).
        alpha: exponent of the :math:`\alpha`-norm regularizer (paper: 6).
        beta: exponent of the :math:`V^\beta` regularizer (paper's CNNs: 2).
        lambda_alpha: weight :math:`\lambda_\alpha` (paper: 8e-10).
        lambda_tv: weight :math:`\lambda_V`, or ``"auto"`` (1/10/100 by depth, see
            :func:`auto_lambda_tv`).
        schedule: ``"cnn"`` (400 steps), ``"default"`` (invert_nn.m, 2,100 steps) or
            ``((step_size, n_steps), ...)``.
        n_steps: rescale the schedule's segments to about this many steps in total (``None``:
            as given). Fewer steps give rougher reconstructions.
        momentum: momentum of the gradient descent (paper: 0.9).
        n_restarts: independent random starts per image (paper: 1).
        jitter: random translation by up to this many pixels at each step (circular shift;
            default 0, as the paper's CVPR code).
        mean: per-channel mean of the model's input normalization (default ImageNet's).
        std: per-channel std of the model's input normalization (default ImageNet's).
        mask: optional weights broadcastable to the code, e.g. ``(C, h, w)`` with ones on a
            central window (the paper's partial inversion, ``neigh``).
        seed: seeds the random start and the jitter (``torch.Generator``; same seed, same
            result on any device).
        progress: show a tqdm progress bar.

    Example:
        >>> inv = Inversion(model, "features.5", n_steps=200)
        >>> result = inv(x)              # x: (B, 3, H, W) model inputs
        >>> result.images[0]             # (B, 3, H, W) reconstructions, same space as x
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike,
        *,
        alpha: float = 6.0,
        beta: float = 2.0,
        lambda_alpha: float = 8e-10,
        lambda_tv: float | Literal["auto"] = "auto",
        schedule: str | Sequence[tuple[float, int]] = "cnn",
        n_steps: int | None = None,
        momentum: float = 0.9,
        n_restarts: int = 1,
        jitter: int = 0,
        mean: Sequence[float] | None = (0.485, 0.456, 0.406),
        std: Sequence[float] | None = (0.229, 0.224, 0.225),
        mask: Tensor | None = None,
        seed: int | None = 0,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer, _ = resolve_layer(model, layer)
        if lambda_tv == "auto":
            lambda_tv = auto_lambda_tv(model, self.layer)
        elif isinstance(lambda_tv, str):
            raise ValueError(f"lambda_tv must be a number or 'auto', got {lambda_tv!r}")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name, value in (
            ("lambda_alpha", lambda_alpha),
            ("lambda_tv", lambda_tv),
            ("jitter", jitter),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        check_positive_int(n_restarts, "n_restarts")
        self.alpha, self.beta = float(alpha), float(beta)
        self.lambda_alpha, self.lambda_tv = float(lambda_alpha), float(lambda_tv)
        self.segments = _schedule(schedule, n_steps)
        self.momentum = float(momentum)
        self.n_restarts = n_restarts
        self.jitter = int(jitter)
        self.mean = (0.0,) if mean is None else mean
        self.std = (1.0,) if std is None else std
        self.mask = mask
        self.seed = seed
        self.progress = progress

    def __call__(self, inputs: Tensor) -> InversionResult:
        """Invert the code of ``inputs`` at the layer.

        Args:
            inputs: ``(B, C, H, W)`` model inputs (``(pixel - mean) / std``); not modified.

        Returns:
            An :class:`InversionResult` with images of the inputs' shape, dtype and device.
        """
        inputs = check_inputs(inputs)
        if not torch.isfinite(inputs).all():
            raise ValueError("inputs contain NaN or infinite values")
        reference = layer_outputs(self.model, [self.layer], inputs)[0][self.layer]
        return self._invert(reference, inputs.shape[-2:], inputs)

    def invert_features(
        self, features: Tensor, size: tuple[int, int], *, channels: int = 3
    ) -> InversionResult:
        """Invert a given code (e.g. an edited or averaged one) into images of ``size``.

        Args:
            features: ``(B, ...)`` code at the layer, as the layer outputs it for a
                ``(B, channels, *size)`` input.
            size: ``(H, W)`` of the images to reconstruct.
            channels: image channels (default 3).
        """
        if not isinstance(features, Tensor) or features.dim() < 2:
            raise TypeError("features must be a (B, ...) tensor, the layer's output for a batch")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values")
        probe = torch.zeros(
            features.shape[0], channels, *size, dtype=features.dtype, device=features.device
        )
        return self._invert(features.detach(), tuple(size), probe)

    def _invert(self, reference: Tensor, size: Sequence[int], like: Tensor) -> InversionResult:
        batch, restarts = like.shape[0], self.n_restarts
        dtype, device = like.dtype, like.device
        height, width = int(size[0]), int(size[1])
        scale = 255.0 * channel_view(self.std, like, "std")  # y (0-255, mean 0) = scale * x
        sigma = SIGMA_227 * math.sqrt(height * width / 227**2)
        target = reference.repeat(restarts, *([1] * (reference.dim() - 1)))
        mask = None if self.mask is None else self.mask.to(device=device, dtype=target.dtype)
        if mask is None:
            weight = torch.ones_like(target)
        else:
            try:
                weight = mask.expand_as(target)
            except RuntimeError:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not broadcast to the code's shape "
                    f"{tuple(reference.shape)}; give (C, h, w) or (B, C, h, w) weights"
                ) from None
        norm2 = (target.square() * weight).flatten(1).sum(1)
        if not bool((norm2 > 0).all()):
            raise ValueError(
                f"the code to invert is zero at layer {self.layer!r} (under the mask) for some "
                "image, so the normalized loss is undefined; pick another layer or mask"
            )
        gen = generator(self.seed)
        start = torch.randn(
            restarts * batch, like.shape[1], height, width, generator=gen, dtype=dtype
        )
        start = start / start.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * sigma
        y = start.to(device).requires_grad_(True)  # deep-goggle's x: 0-255 units, mean 0
        n_total = sum(n for _, n in self.segments)
        shifts = (
            torch.randint(-self.jitter, self.jitter + 1, (n_total, 2), generator=gen)
            if self.jitter
            else None
        )
        history = torch.empty(n_total, restarts * batch, dtype=dtype, device=device)
        step = 0
        with (
            frozen(self.model),
            recorder(self.model, [self.layer], grad=True) as run,
            progress_bar(n_total, self.progress, "inversion") as bar,
        ):
            for eta, n in self.segments:
                velocity = torch.zeros_like(y)  # momentum reset at each step-size change
                rate = eta * sigma**2
                for _ in range(n):
                    energy = self._energy(
                        run,
                        y,
                        scale,
                        target,
                        weight,
                        norm2,
                        sigma,
                        None if shifts is None else shifts[step],
                    )
                    (grad,) = torch.autograd.grad(energy.sum(), y)
                    with torch.no_grad():
                        velocity.mul_(self.momentum).sub_(grad, alpha=rate)
                        y.add_(velocity)
                    history[step] = energy.detach()  # no host sync per step
                    step += 1
                    bar.update(1)
            images = (y / scale).detach()
            final = run(images)[0][self.layer].detach()
        if not bool(torch.isfinite(images).all()):
            raise FloatingPointError(
                "the reconstruction diverged (non-finite pixels); lower the step sizes of the "
                "schedule or the regularizer weights"
            )
        error = reconstruction_error(final, target, mask)
        return InversionResult(
            images=images.detach().view(restarts, batch, *images.shape[1:]),
            feature_error=error.view(restarts, batch),
            history=history.view(n_total, restarts, batch).cpu(),
            reference=reference,
        )

    def _energy(
        self,
        run: _Run,
        y: Tensor,
        scale: Tensor,
        target: Tensor,
        weight: Tensor,
        norm2: Tensor,
        sigma: float,
        shift: Tensor | None,
    ) -> Tensor:
        x = y / scale
        if shift is not None:
            x = torch.roll(x, (int(shift[0]), int(shift[1])), dims=(-2, -1))
        features = run(x)[0][self.layer]
        if features.shape != target.shape:
            raise ValueError(
                f"layer {self.layer!r} gives codes of shape {tuple(features.shape[1:])} for "
                f"these images but the code to invert has shape {tuple(target.shape[1:])}; "
                "give the image size the code was computed at"
            )
        diff = (features - target).square()
        loss = (diff if self.mask is None else diff * weight).flatten(1).sum(1) / norm2
        energy = loss
        if self.lambda_tv:
            energy = energy + self.lambda_tv / 2 * total_variation(y, self.beta) / sigma**2
        if self.lambda_alpha:
            energy = energy + self.lambda_alpha / 2 * alpha_norm(y, self.alpha) / sigma**2
        return energy
