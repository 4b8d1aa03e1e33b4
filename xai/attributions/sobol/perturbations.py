r"""Perturbation operators :math:`\tau(x, m)` of the Sobol attribution method.

``x`` is a batch of images ``(n, C, H, W)`` and ``m`` the masks upsampled to the image size,
``(n, 1, H, W)`` with values in ``[0, 1]``, broadcast over channels; row ``j`` of ``m``
perturbs row ``j`` of ``x``. A perturbation may precompute, once per explained batch, a
``reference`` per image (the blurred image, a mean colour) with :meth:`Perturbation.reference`.

Built-ins (``perturbation=`` name of :class:`xai.attributions.SobolAttribution`):

- ``"inpainting"`` (default, as in Fel et al. 2021): :math:`x \odot m + (1 - m)\,x_0`, with the
  baseline :math:`x_0 = 0` by default. Note that 0 is in the *model's input space*: after the
  usual ImageNet normalization it is the mean colour, not black.
- ``"blur"``: the same convex combination towards :math:`x_0 = \mathrm{blur}(x)`, a
  ``kernel_size`` box blur (10 in the reference codes, i.e. OpenCV ``cv2.blur(x, (10, 10))``:
  normalized box filter, anchor at the kernel centre, reflect-101 borders).
- ``"amplitude"``: :math:`x \odot (m - 0.5)\,\sigma` (``mode="multiplicative"``, default,
  what the reference code computes) or :math:`x + (m - 0.5)\,\sigma`
  (``mode="additive"``, what its docstring writes); :math:`\sigma = 1`.

Any callable ``fn(x, m) -> x'`` with the shapes above is accepted too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PERTURBATIONS",
    "Amplitude",
    "Blur",
    "Inpainting",
    "Perturbation",
    "box_blur",
    "get_perturbation",
]


class Perturbation(ABC):
    """Base class of the perturbation operators.

    Subclasses implement :meth:`__call__` and, when they need a per-image quantity computed
    once (a blurred copy), :meth:`reference`.
    """

    def reference(self, inputs: Tensor) -> Tensor | None:
        """Per-image data ``(B, ...)`` computed once from the clean ``(B, C, H, W)`` inputs."""
        return None

    @abstractmethod
    def __call__(self, x: Tensor, masks: Tensor, reference: Tensor | None = None) -> Tensor:
        """Perturbed images ``(n, C, H, W)`` from ``x`` ``(n, C, H, W)`` and ``masks``
        ``(n, 1, H, W)``; ``reference`` holds the rows of :meth:`reference` matching ``x``.
        """


class Inpainting(Perturbation):
    r"""Move masked-out pixels towards a baseline: :math:`x \odot m + (1 - m)\,x_0`.

    Args:
        baseline: ``0.0`` (default, the reference codes), any float, a tensor broadcastable
            to ``(C, H, W)`` (e.g. ``(C, 1, 1)`` per-channel values), or ``"mean"`` (each
            image's per-channel mean).
    """

    def __init__(self, baseline: float | Tensor | str = 0.0) -> None:
        if isinstance(baseline, str) and baseline != "mean":
            raise ValueError(f"baseline must be a number, a tensor or 'mean', got {baseline!r}")
        self.baseline = baseline

    def reference(self, inputs: Tensor) -> Tensor | None:
        """Each image's per-channel mean ``(B, C, 1, 1)`` for ``baseline="mean"``, else ``None``."""
        if isinstance(self.baseline, str):
            return inputs.mean(tuple(range(2, inputs.dim())), keepdim=True)
        return None

    def __call__(self, x: Tensor, masks: Tensor, reference: Tensor | None = None) -> Tensor:
        r""":math:`x \odot m + (1 - m)\,x_0`."""
        if reference is not None:
            base: Tensor | float = reference
        elif isinstance(self.baseline, Tensor):
            base = self.baseline.to(device=x.device, dtype=x.dtype)
        else:
            base = float(self.baseline)
            if base == 0.0:
                return x * masks
        return x * masks + (1 - masks) * base

    def __repr__(self) -> str:
        return f"Inpainting(baseline={self.baseline!r})"


def box_blur(inputs: Tensor, kernel_size: int = 10) -> Tensor:
    """``cv2.blur`` for ``(B, C, H, W)`` tensors: mean over a ``kernel_size`` square window
    anchored at its centre (offsets ``-k//2 .. (k-1)//2``), reflect-101 borders. Videos
    ``(B, C, T, H, W)`` are blurred frame by frame.
    """
    h, w = inputs.shape[-2:]
    if kernel_size > min(h, w):
        raise ValueError(
            f"blur kernel_size={kernel_size} is larger than the image ({h}x{w}); "
            "pass perturbation_kwargs={'kernel_size': k} with a smaller k"
        )
    before, after = kernel_size // 2, (kernel_size - 1) // 2
    planes = inputs.reshape(-1, 1, h, w)
    padded = F.pad(planes, (before, after, before, after), mode="reflect")
    return F.avg_pool2d(padded, kernel_size, stride=1).view(inputs.shape)


class Blur(Perturbation):
    r"""Move masked-out pixels towards a box-blurred copy of the image.

    :math:`x \odot m + (1 - m)\,\mathrm{blur}(x)`, the blur computed once per image.

    Args:
        kernel_size: side of the box filter in pixels (default 10, the reference codes).
    """

    def __init__(self, kernel_size: int = 10) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive integer, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def reference(self, inputs: Tensor) -> Tensor:
        """The blurred images ``(B, C, H, W)``."""
        return box_blur(inputs, self.kernel_size)

    def __call__(self, x: Tensor, masks: Tensor, reference: Tensor | None = None) -> Tensor:
        r""":math:`x \odot m + (1 - m)\,\mathrm{blur}(x)`."""
        blurred = box_blur(x, self.kernel_size) if reference is None else reference
        return x * masks + (1 - masks) * blurred

    def __repr__(self) -> str:
        return f"Blur(kernel_size={self.kernel_size})"


class Amplitude(Perturbation):
    r"""Change the pixels' amplitude with the mask.

    Args:
        sigma: strength :math:`\sigma` (default 1.0, the reference code).
        mode: ``"multiplicative"`` (default): :math:`x \odot (m - 0.5)\,\sigma`, what the
            reference code computes (it maps the image to :math:`x \cdot [-0.5, 0.5]\sigma`, a
            strong perturbation with sign flips); ``"additive"``:
            :math:`x + (m - 0.5)\,\sigma`, what the reference docstring writes.
    """

    def __init__(self, sigma: float = 1.0, mode: str = "multiplicative") -> None:
        if mode not in ("multiplicative", "additive"):
            raise ValueError(f"mode must be 'multiplicative' or 'additive', got {mode!r}")
        self.sigma = float(sigma)
        self.mode = mode

    def __call__(self, x: Tensor, masks: Tensor, reference: Tensor | None = None) -> Tensor:
        """The images with their amplitude changed by the masks (see ``mode``)."""
        shift = (masks - 0.5) * self.sigma
        return x * shift if self.mode == "multiplicative" else x + shift

    def __repr__(self) -> str:
        return f"Amplitude(sigma={self.sigma}, mode={self.mode!r})"


class _Callable(Perturbation):
    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, x: Tensor, masks: Tensor, reference: Tensor | None = None) -> Tensor:
        """The perturbed images (see :meth:`Perturbation.__call__`)."""
        out = self.fn(x, masks)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the perturbation callable must return a tensor shaped like its input "
                f"{tuple(x.shape)}, got {shape}"
            )
        return out

    def __repr__(self) -> str:
        return f"Perturbation({self.fn!r})"


PERTURBATIONS: dict[str, type[Perturbation]] = {
    "inpainting": Inpainting,
    "blur": Blur,
    "amplitude": Amplitude,
}
"""Built-in perturbations by name."""


def get_perturbation(
    perturbation: str | Perturbation | Callable[[Tensor, Tensor], Tensor],
    **kwargs: Any,
) -> Perturbation:
    """A :class:`Perturbation` from a name (with its keyword arguments), an instance, or a
    callable ``fn(x, m) -> x'``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), or keyword
            arguments given with an instance / callable.
        TypeError: neither a name nor a callable.
    """
    if isinstance(perturbation, str):
        if perturbation not in PERTURBATIONS:
            raise ValueError(
                f"unknown perturbation {perturbation!r}; valid perturbations: "
                f"{', '.join(map(repr, PERTURBATIONS))} or a callable (x, masks) -> x'"
            )
        return PERTURBATIONS[perturbation](**kwargs)
    if kwargs:
        raise ValueError(
            "perturbation_kwargs apply to a perturbation given by name; configure an instance "
            "or a callable directly"
        )
    if isinstance(perturbation, Perturbation):
        return perturbation
    if callable(perturbation):
        return _Callable(perturbation)
    raise TypeError(
        f"perturbation must be a name, a Perturbation or a callable (x, masks) -> x', got "
        f"{type(perturbation).__name__}"
    )
