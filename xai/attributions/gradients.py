"""Classic gradient and occlusion methods, backed by captum behind the xai call signature.

Each class builds a forward function ``f(x, rows) -> (B,)`` that scores the (unwrapped) model
output with the normalized target; ``rows`` (the index of the original sample of each row) is
passed through captum's ``additional_forward_args`` so captum expands it consistently with its
own batch expansion (steps, noise samples, occlusion windows). Per-sample targets, callable
targets, task targets and additional inputs (given to ``ModelAdapter.forward`` with ``rows``)
therefore work for every method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from xai._checks import check_positive_int, map_dtype
from xai.adapter import Target, freeze
from xai.attributions.base import Attribution, reduce_channels, register

__all__ = ["IntegratedGradients", "Occlusion", "Saliency", "SmoothGrad"]

#: default ``batch_size`` of the methods that multiply the batch (Integrated Gradients' steps,
#: SmoothGrad's noisy copies): their memory is bounded by it, not by the steps or copies
DEFAULT_BATCH = 16


class _CaptumAttribution(Attribution):
    """Shared plumbing: frozen target, forward function, channel reduction.

    The channel axis is reduced whatever the number of spatial axes: videos and volumes
    ``(B, C, T, H, W)`` get ``(B, T, H, W)`` maps.
    """

    input_ranks = (4, 5)

    def __init__(self, model: nn.Module, *, reduction: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        reduce_channels(torch.zeros(1, 1, 1, 1), reduction)  # validate early
        self.reduction = reduction

    def _forward_fn(self, target: Target) -> Callable[[Tensor, Tensor], Tensor]:
        def forward(x: Tensor, rows: Tensor) -> Tensor:
            scores = target.select(rows)(self.adapter.forward(x, rows=rows))
            # captum subtracts and accumulates scores in their dtype: bfloat16 differences
            # (8 significant bits) round small occlusion effects to zero, so promote them
            return scores.to(map_dtype(scores))

        return forward

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        target = freeze(self.adapter, inputs, target)
        rows = torch.arange(inputs.shape[0], device=inputs.device)
        # a fresh leaf that requires grad: captum would otherwise flip the flag itself (and warn)
        x = inputs.detach().requires_grad_(True)
        attr = self._channels(x, self._forward_fn(target), rows)
        return reduce_channels(attr, self.reduction)

    def _channels(self, inputs: Tensor, forward: Callable, rows: Tensor) -> Tensor:
        raise NotImplementedError


@register
class Saliency(_CaptumAttribution):
    r"""Vanilla gradient saliency: :math:`\max_c |\partial y / \partial x_c|`.

    Args:
        reduction: channel reduction (default ``"max_abs"``, as in the paper).

    References:
        Simonyan et al., "Deep Inside Convolutional Networks: Visualising Image Classification
        Models and Saliency Maps", ICLR Workshops 2014. Computed with ``captum.attr.Saliency``.
    """

    def __init__(self, model: nn.Module, *, reduction: str = "max_abs", **kwargs: Any) -> None:
        super().__init__(model, reduction=reduction, **kwargs)

    def _channels(self, inputs: Tensor, forward: Callable[..., Tensor], rows: Tensor) -> Tensor:
        from captum.attr import Saliency as _Saliency

        return _Saliency(forward).attribute(inputs, additional_forward_args=(rows,), abs=False)


@register
class IntegratedGradients(_CaptumAttribution):
    r"""Integrated Gradients: path integral of gradients from a baseline to the input.

    :math:`(x - x') \int_0^1 \partial y(x' + t(x - x')) / \partial x \, dt`, summed over channels
    by default so that the map sums to :math:`y(x) - y(x')` (completeness) up to the
    quadrature error.

    Args:
        baseline: ``0.0`` (default), a float, or a tensor broadcastable to the inputs.
        n_steps: quadrature points (default 50, captum's Gauss-Legendre rule).
        reduction: channel reduction (default ``"sum"``, keeps completeness).
        batch_size: bound on the expanded batch (captum's ``internal_batch_size``; default 16,
            so that memory does not grow with ``n_steps``: 50 steps of 8 images in one
            backward pass of MobileNetV2 at 224 px hold about 12 GB of activations). A pass
            holds at least one step of the whole batch.

    References:
        Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        baseline: float | Tensor = 0.0,
        n_steps: int = 50,
        reduction: str = "sum",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("batch_size", DEFAULT_BATCH)
        super().__init__(model, reduction=reduction, **kwargs)
        self.baseline = baseline
        self.n_steps = n_steps

    def _channels(self, inputs: Tensor, forward: Callable[..., Tensor], rows: Tensor) -> Tensor:
        from captum.attr import IntegratedGradients as _IG

        baseline = self.baseline
        if isinstance(baseline, Tensor):
            baseline = baseline.to(inputs.device, inputs.dtype).expand_as(inputs)
        return _IG(forward).attribute(
            inputs,
            baselines=baseline,
            additional_forward_args=(rows,),
            n_steps=self.n_steps,
            # captum runs at least one step of the whole batch per pass (it warns otherwise)
            internal_batch_size=None
            if self.batch_size is None
            else max(self.batch_size, inputs.shape[0]),
        )


@register
class SmoothGrad(_CaptumAttribution):
    r"""SmoothGrad: the gradient averaged over noisy copies of the input.

    Noise is Gaussian with standard deviation ``noise_level * (max(x) - min(x))`` per sample
    (the paper's parametrization). The same standard-normal draws (from ``seed``) are used for
    every sample of a batch, so a batch gives the same maps as its samples one at a time.
    Gradients come from ``captum.attr.Saliency`` in chunks of ``batch_size`` noisy inputs.

    Args:
        n_samples: noisy copies per input (default 50).
        noise_level: noise scale relative to the input range (default 0.15).
        reduction: channel reduction of the averaged gradient (default ``"max_abs"``).
        batch_size: noisy inputs per forward/backward pass (default 16, so that memory does
            not grow with ``n_samples``).

    References:
        Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.
    """

    stochastic = True

    def __init__(
        self,
        model: nn.Module,
        *,
        n_samples: int = 50,
        noise_level: float = 0.15,
        reduction: str = "max_abs",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("batch_size", DEFAULT_BATCH)
        super().__init__(model, reduction=reduction, **kwargs)
        self.n_samples = n_samples
        self.noise_level = float(noise_level)

    def noise(self, inputs: Tensor) -> Tensor:
        """The noise added to each copy, ``(n_samples, B, C, H, W)`` (for inspection: the
        attribution itself draws it chunk by chunk, the same values).
        """
        sigma = self._sigma(inputs)
        return torch.stack([self._scaled(d, sigma, inputs) for d in self._draws(inputs)])

    def _sigma(self, inputs: Tensor) -> Tensor:
        flat = inputs.detach().flatten(1)
        return self.noise_level * (flat.max(1).values - flat.min(1).values).double()

    def _draws(self, inputs: Tensor) -> Iterator[Tensor]:
        """The standard-normal draw of each noisy copy, ``(C, H, W)`` float64, one at a time:
        the same values whatever the chunking, and never all in memory.
        """
        gen = self._generator(torch.device("cpu"))
        for _ in range(self.n_samples):
            yield torch.randn(tuple(inputs.shape[1:]), generator=gen, dtype=torch.float64)

    @staticmethod
    def _scaled(draw: Tensor, sigma: Tensor, inputs: Tensor) -> Tensor:
        return (draw.to(inputs.device) * _per_row(sigma, inputs)).to(inputs.dtype)

    def _channels(self, inputs: Tensor, forward: Callable[..., Tensor], rows: Tensor) -> Tensor:
        from captum.attr import Saliency as _Saliency

        b = inputs.shape[0]
        sigma = self._sigma(inputs)
        saliency = _Saliency(forward)
        total = torch.zeros_like(inputs, requires_grad=False)
        size = self.batch_size or self.n_samples * b
        draws = self._draws(inputs)
        current: dict[int, Tensor] = {}  # noise sample -> its draw, while a chunk needs it
        drawn = 0
        # row r of the (noise sample, image) product is copy r // b of image r % b; only the
        # draws of the current chunk are held, so memory is bounded by batch_size
        for start in range(0, self.n_samples * b, size):
            index = torch.arange(start, min(start + size, self.n_samples * b))
            copy, image = index // b, index % b
            while drawn <= int(copy[-1]):
                current[drawn] = next(draws)
                drawn += 1
            with torch.no_grad():
                # the chunk's copies are consecutive: stack each draw once, then index by row
                first, last = int(copy[0]), int(copy[-1])
                bank = torch.stack([current[k] for k in range(first, last + 1)])
                noise = bank.to(inputs.device)[(copy - first).to(inputs.device)]
                noisy = inputs[image.to(inputs.device)] + (
                    noise * _per_row(sigma[image.to(sigma.device)], inputs)
                ).to(inputs.dtype)
            current = {k: v for k, v in current.items() if k >= int(copy[-1])}
            chunk_rows = rows[image.to(rows.device)]
            grads = saliency.attribute(
                noisy.detach().requires_grad_(True),
                additional_forward_args=(chunk_rows,),
                abs=False,
            )
            total.index_add_(0, chunk_rows, grads)
        return total / self.n_samples


@register
class Occlusion(_CaptumAttribution):
    r"""Occlusion: the drop of the target score when a square window is set to a baseline.

    Windows of ``window_size`` pixels (all channels) slide with ``stride``; each pixel gets
    the mean score drop of the windows that cover it (``captum.attr.Occlusion``). Videos and
    volumes ``(B, C, T, H, W)`` are occluded by 3-D windows ``(t, h, w)``.

    Args:
        window_size: side of the occluding square (default 16), or one side per spatial axis,
            ``(h, w)`` or ``(t, h, w)`` (an int is a cube on videos: pass ``(t, h, w)`` for
            clips shorter than the window).
        stride: step between windows (default 8), an int or one step per spatial axis.
        baseline: value of occluded pixels (default 0).
        batch_size: bound on occluded inputs per forward pass.

    References:
        Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        window_size: int | tuple[int, ...] = 16,
        stride: int | tuple[int, ...] = 8,
        baseline: float = 0.0,
        reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, reduction=reduction, **kwargs)
        self.window_size = _positive(window_size, "window_size")
        self.stride = _positive(stride, "stride")
        self.baseline = float(baseline)

    def _channels(self, inputs: Tensor, forward: Callable[..., Tensor], rows: Tensor) -> Tensor:
        from captum.attr import Occlusion as _Occlusion

        b, c, *spatial = inputs.shape
        window = _per_axis(self.window_size, spatial, "window_size")
        stride = _per_axis(self.stride, spatial, "stride")
        if any(wi > si for wi, si in zip(window, spatial, strict=True)):
            size = "x".join(map(str, spatial))
            raise ValueError(
                f"window_size={self.window_size} is larger than the input ({size}); "
                f"use a smaller window, one size per axis, e.g. window_size="
                f"{tuple(min(wi, si) for wi, si in zip(window, spatial, strict=True))}"
            )
        per_eval = max(1, (self.batch_size or 64 * b) // b)
        return _Occlusion(forward).attribute(
            inputs,
            sliding_window_shapes=(c, *window),
            strides=(c, *stride),
            baselines=self.baseline,
            additional_forward_args=(rows,),
            perturbations_per_eval=per_eval,
            show_progress=self.progress,
        )


def _per_row(values: Tensor, inputs: Tensor) -> Tensor:
    """``(n,)`` per-row values viewed to broadcast over the rows of ``inputs`` (any rank)."""
    return values.view(-1, *(1,) * (inputs.dim() - 1))


def _positive(value: int | tuple[int, ...], name: str) -> int | tuple[int, ...]:
    """A positive int, or a tuple of them (one per spatial axis)."""
    if isinstance(value, (list, tuple)):
        value = tuple(value)
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        check_positive_int(v, name)
    return value


def _per_axis(value: int | tuple[int, ...], spatial: list[int], name: str) -> tuple[int, ...]:
    """An int repeated over the spatial axes, or a tuple checked to have one entry per axis."""
    if isinstance(value, int):
        return (value,) * len(spatial)
    if len(value) != len(spatial):
        raise ValueError(
            f"{name}={value} has {len(value)} entries but the inputs have {len(spatial)} "
            f"spatial axes {tuple(spatial)}; pass one per axis or an int"
        )
    return value
