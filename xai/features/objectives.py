"""Objectives for feature visualization, composable like Lucid's: ``a + b``, ``a - b``, ``2 * a``.

An objective is maximized. It reads the activations of its layers (and, for a class logit, the
model output) from one forward pass of the batch and returns a scalar. ``batch=i`` restricts an
objective to image ``i`` of the batch, so that several objectives are optimized side by side
in one batch (Lucid's ``batch`` argument)::

    obj = sum(Channel("features.5", k, batch=i) for i, k in enumerate([3, 7, 11]))
    obj = Channel("features.9", 4) - 100 * Diversity("features.9")

References:
    C. Olah, A. Mordvintsev, L. Schubert. Feature Visualization. Distill, 2017.
    https://distill.pub/2017/feature-visualization/ ; objectives after tensorflow/lucid through
    its PyTorch port greentfrapp/lucent (``optvis/objectives.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._typing import LayerLike
from xai.adapter import as_target, resolve_layer

__all__ = [
    "Activations",
    "Channel",
    "ClassLogit",
    "Direction",
    "Diversity",
    "Layer",
    "Neuron",
    "Objective",
]


class Activations:
    """What an objective reads: layer outputs by name (any spelling or module) and the output."""

    def __init__(
        self, model: nn.Module, values: Mapping[str, Tensor], output: Tensor | None
    ) -> None:
        self._model = model
        self._values = values
        self.output = output

    def __getitem__(self, layer: LayerLike) -> Tensor:
        name = (
            layer
            if isinstance(layer, str) and layer in self._values
            else (resolve_layer(self._model, layer)[0])
        )
        return self._values[name]


class Objective:
    """Base class: ``objective(acts) -> scalar`` to maximize; supports ``+ - *`` with numbers.

    Subclasses set :attr:`layers` (the layers they read) and :attr:`needs_output`, and implement
    :meth:`__call__`.
    """

    layers: tuple[LayerLike, ...] = ()
    needs_output: bool = False

    def __call__(self, acts: Activations) -> Tensor:
        """The scalar to maximize, from the activations captured in one forward pass."""
        raise NotImplementedError

    def __add__(self, other: object) -> Objective:
        if isinstance(other, numbers.Number):
            return _Sum([(1.0, self)], float(other))  # type: ignore[arg-type]
        if not isinstance(other, Objective):
            return NotImplemented
        return _Sum([(1.0, self), (1.0, other)])

    def __radd__(self, other: object) -> Objective:
        return self.__add__(other)  # sum([...]) starts from 0

    def __neg__(self) -> Objective:
        return _Sum([(-1.0, self)])

    def __sub__(self, other: object) -> Objective:
        if isinstance(other, (Objective, numbers.Number)):
            return self + (-other)  # type: ignore[operator]
        return NotImplemented

    def __rsub__(self, other: object) -> Objective:
        return (-self) + other

    def __mul__(self, other: object) -> Objective:
        if isinstance(other, Objective):
            raise TypeError("objectives multiply by numbers only; add them instead")
        if not isinstance(other, numbers.Number):
            return NotImplemented
        return _Sum([(float(other), self)])  # type: ignore[arg-type]

    __rmul__ = __mul__

    def __truediv__(self, other: object) -> Objective:
        if not isinstance(other, numbers.Number):
            return NotImplemented
        return self * (1.0 / float(other))  # type: ignore[arg-type]


class _Sum(Objective):
    """A weighted sum of objectives plus a constant (flattened, so repr stays readable)."""

    terms: list[tuple[float, Objective]]
    constant: float

    def __init__(self, terms: Sequence[tuple[float, Objective]], constant: float = 0.0) -> None:
        flat: list[tuple[float, Objective]] = []
        for weight, obj in terms:
            if isinstance(obj, _Sum):
                flat += [(weight * w, o) for w, o in obj.terms]
                constant += weight * obj.constant
            else:
                flat.append((weight, obj))
        self.terms = flat
        self.constant = constant
        self.layers = tuple(dict.fromkeys(layer for _, o in flat for layer in o.layers))
        self.needs_output = any(o.needs_output for _, o in flat)

    def __call__(self, acts: Activations) -> Tensor:
        total: Tensor | float = self.constant
        for weight, obj in self.terms:
            total = total + weight * obj(acts)
        return total  # type: ignore[return-value]

    def __repr__(self) -> str:
        parts = [f"{w:g} * {o!r}" for w, o in self.terms]
        return " + ".join(parts + ([f"{self.constant:g}"] if self.constant else []))


def _select(tensor: Tensor, batch: int | None) -> Tensor:
    if batch is None:
        return tensor
    if not -tensor.shape[0] <= batch < tensor.shape[0]:
        raise ValueError(
            f"batch={batch} but the batch has {tensor.shape[0]} images; raise "
            "FeatureVisualization(batch=...)"
        )
    return tensor[batch : batch + 1] if batch != -1 else tensor[-1:]


def _channel(tensor: Tensor, k: int, layer: LayerLike) -> Tensor:
    if not -tensor.shape[1] <= k < tensor.shape[1]:
        raise ValueError(
            f"channel {k} does not exist: layer {layer!r} has {tensor.shape[1]} channels"
        )
    return tensor[:, k]


class _LayerObjective(Objective):
    def __init__(self, layer: LayerLike, batch: int | None) -> None:
        self.layer = layer
        self.layers = (layer,)
        self.batch = batch

    def _acts(self, acts: Activations) -> Tensor:
        return _select(acts[self.layer], self.batch).float()


class Channel(_LayerObjective):
    """Mean activation of channel ``k`` over positions (and images): Lucid's ``channel``.

    Args:
        layer: dotted name or module; its output is ``(B, C, ...)``.
        channel: the channel index ``k``.
        batch: restrict to image ``batch`` of the batch (default: the mean over all).
    """

    def __init__(self, layer: LayerLike, channel: int, *, batch: int | None = None) -> None:
        super().__init__(layer, batch)
        self.channel = int(channel)

    def __call__(self, acts: Activations) -> Tensor:
        """The mean of channel ``k`` of the layer's activations."""
        return _channel(self._acts(acts), self.channel, self.layer).mean()

    def __repr__(self) -> str:
        return f"Channel({self.layer!r}, {self.channel}, batch={self.batch})"


class Neuron(_LayerObjective):
    """Activation of channel ``k`` at one position ``(y, x)`` (default the center ``(h//2,
    w//2)``): Lucid's ``neuron``, with ``y`` the row (lucent swaps them on non-square maps).
    """

    def __init__(
        self,
        layer: LayerLike,
        channel: int,
        y: int | None = None,
        x: int | None = None,
        *,
        batch: int | None = None,
    ) -> None:
        super().__init__(layer, batch)
        self.channel, self.y, self.x = int(channel), y, x

    def __call__(self, acts: Activations) -> Tensor:
        """The activation of channel ``k`` at position ``(y, x)`` (default: the centre)."""
        a = self._acts(acts)
        if a.dim() != 4:
            raise ValueError(
                f"Neuron needs a (B, C, h, w) layer, {self.layer!r} gives {tuple(a.shape)}"
            )
        h, w = a.shape[-2:]
        y = h // 2 if self.y is None else self.y
        x = w // 2 if self.x is None else self.x
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(
                f"position (y={y}, x={x}) is outside the {h}x{w} map of {self.layer!r}"
            )
        return _channel(a, self.channel, self.layer)[:, y, x].mean()

    def __repr__(self) -> str:
        return f"Neuron({self.layer!r}, {self.channel}, y={self.y}, x={self.x})"


class Layer(_LayerObjective):
    """The whole layer: ``"magnitude"`` is mean(A^2) (DeepDream, Mordvintsev et al. 2015),
    ``"mean"`` is mean(A) (xplique's ``layer`` objective).
    """

    def __init__(
        self, layer: LayerLike, reducer: str = "magnitude", *, batch: int | None = None
    ) -> None:
        if reducer not in ("magnitude", "mean"):
            raise ValueError(f"reducer must be 'magnitude' or 'mean', got {reducer!r}")
        super().__init__(layer, batch)
        self.reducer = reducer

    def __call__(self, acts: Activations) -> Tensor:
        """The layer's mean squared (or mean) activation."""
        a = self._acts(acts)
        return a.square().mean() if self.reducer == "magnitude" else a.mean()

    def __repr__(self) -> str:
        return f"Layer({self.layer!r}, {self.reducer!r})"


class Direction(_LayerObjective):
    """Mean cosine similarity between a direction ``v`` (``(C,)``) and the activation vector at
    each position: Lucid's ``direction`` (a concept or a combination of channels).
    """

    def __init__(self, layer: LayerLike, vector: Tensor, *, batch: int | None = None) -> None:
        super().__init__(layer, batch)
        self.vector = torch.as_tensor(vector).flatten()

    def __call__(self, acts: Activations) -> Tensor:
        """The mean cosine similarity of the direction and the activation vectors."""
        a = self._acts(acts)
        if a.shape[1] != self.vector.numel():
            raise ValueError(
                f"direction has {self.vector.numel()} entries but layer "
                f"{self.layer!r} has {a.shape[1]} channels"
            )
        v = self.vector.to(a).view(1, -1, *([1] * (a.dim() - 2)))
        return F.cosine_similarity(a, v, dim=1).mean()


class ClassLogit(Objective):
    """The model output for a class (a logit for a classifier), or any target
    :func:`xai.adapter.as_target` accepts (a callable on the output).
    """

    needs_output = True

    def __init__(
        self, target: int | Callable[[Tensor], Tensor], *, batch: int | None = None
    ) -> None:
        if target is None:
            raise ValueError("give the class index to visualize, e.g. ClassLogit(285)")
        self.target = as_target(target)
        self.label = target
        self.batch = batch

    def __call__(self, acts: Activations) -> Tensor:
        """The class's logit (mean over the batch, or of image ``batch``)."""
        if acts.output is None:
            raise RuntimeError("ClassLogit needs the model output")
        return _select(self.target(acts.output).float(), self.batch).mean()

    def __repr__(self) -> str:
        return f"ClassLogit({self.label!r})"


class Diversity(_LayerObjective):
    r"""Mean pairwise cosine similarity of the images' Gram matrices at a layer, Lucid's
    ``diversity``: :math:`\frac{1}{B}\sum_{i \ne j} \cos(G_i, G_j)`.

    It measures *similarity*; subtract it to get diverse images, as in Lucid:
    ``Channel(layer, k) - 100 * Diversity(layer)`` (needs ``batch >= 2``).
    """

    def __init__(self, layer: LayerLike) -> None:
        super().__init__(layer, None)

    def __call__(self, acts: Activations) -> Tensor:
        """The mean pairwise cosine similarity of the images' Gram matrices."""
        a = self._acts(acts)
        if a.shape[0] < 2:
            raise ValueError("Diversity compares the images of a batch: use batch >= 2")
        flat = a.flatten(2)
        grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
        cos = grams @ grams.T
        return (cos.sum() - cos.diagonal().sum()) / a.shape[0]

    def __repr__(self) -> str:
        return f"Diversity({self.layer!r})"
