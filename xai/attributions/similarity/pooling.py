r"""The ``pooling=`` strategies of :class:`~xai.attributions.similarity.SimilarityMaps`.

One class per pooling, and :func:`make_pooling` the one place that maps a ``pooling=`` name to
its class. A :class:`DecomposablePooling` writes the embedding :math:`\mathrm{head}(\mathrm{pool}
(A))` as a sum of per-location terms (:meth:`~DecomposablePooling.terms`) and pools a weighted
region of the query (:meth:`~DecomposablePooling.region_embedding`); :class:`GradCAMPooling`
assumes nothing about the pooling and is explained by gradients instead. The formulas, and what
is exact, are in the :mod:`xai.attributions.similarity` docstring.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from xai._checks import map_dtype

__all__ = [
    "POOLINGS",
    "AvgPooling",
    "DecomposablePooling",
    "GeMPooling",
    "GradCAMPooling",
    "MaxPooling",
    "Pooling",
    "SumPooling",
    "make_pooling",
]

PoolingName = Literal["avg", "sum", "max", "gem", "grad_cam"]


class Pooling(ABC):
    """How an embedding network pools a layer into its embedding.

    Class attributes:
        name: the ``pooling=`` name.
        decomposable: whether the similarity maps are an additive decomposition of the score.
    """

    name: ClassVar[str]
    decomposable: ClassVar[bool]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GradCAMPooling(Pooling):
    """Any pooling and head (attention pooling, MLP heads, ViTs ...): maps are Grad-CAM of the
    similarity to the other image's embedding, not a decomposition.
    """

    name: ClassVar[str] = "grad_cam"
    decomposable: ClassVar[bool] = False


class DecomposablePooling(Pooling):
    r"""A pooling whose embedding is a sum of per-location terms, then an optional linear head.

    Subclasses give the pooled channel terms :math:`\omega_u \odot A_u` (:meth:`_pool_terms`)
    and the pooled channels of a weighted region (:meth:`_pool_region`); this base applies the
    head, whose bias is split evenly over the locations.

    Args:
        head: ``None`` or the ``nn.Linear`` that maps the pooled feature to the embedding.
    """

    decomposable: ClassVar[bool] = True
    noun: ClassVar[str]
    """The pooling in an error message: "the average", "the max" ..."""

    def __init__(self, head: nn.Linear | None = None) -> None:
        self.head = head

    def __repr__(self) -> str:
        return f"{type(self).__name__}(head={self.head!r})"

    def describe(self) -> str:
        """The decomposed embedding in words, e.g. "the average pooling (then head)"."""
        return self.noun + (" pooling (then head)" if self.head is not None else " pooling")

    def terms(self, acts: Tensor) -> Tensor:
        r"""Per-location terms :math:`\psi_u`, ``(B, D, h, w)``, of ``(B, C, h, w)`` activations.

        They sum over the locations to the embedding; computed in at least float32.
        """
        acts = acts.to(map_dtype(acts))  # half-precision models: reduce in float32
        h, w = acts.shape[-2:]
        terms = self._pool_terms(acts)
        if self.head is not None:
            weight = self.head.weight.detach().to(terms)
            terms = torch.einsum("kc,bchw->bkhw", weight, terms)
            if self.head.bias is not None:
                terms = terms + self.head.bias.detach().to(terms)[:, None, None] / (h * w)
        return terms

    def region_embedding(self, acts: Tensor, weights: Tensor) -> Tensor:
        """Embedding ``(D,)`` of the locations of ``acts`` ``(C, h, w)`` weighted by ``(h, w)``."""
        acts = acts.to(map_dtype(acts))
        pooled = self._pool_region(acts, weights.to(acts))
        if self.head is None:
            return pooled
        out = self.head.weight.detach().to(pooled) @ pooled
        if self.head.bias is not None:
            out = out + self.head.bias.detach().to(pooled)
        return out

    @abstractmethod
    def _pool_terms(self, acts: Tensor) -> Tensor:
        """Pooled channel terms ``(B, C, h, w)`` that sum over the locations to the pooling."""

    @abstractmethod
    def _pool_region(self, acts: Tensor, weights: Tensor) -> Tensor:
        """Pooled channels ``(C,)`` of ``acts`` ``(C, h, w)`` weighted by ``weights`` ``(h, w)``."""


class AvgPooling(DecomposablePooling):
    r"""Global average pooling, :math:`\omega_u = 1/N`: exact and linear (the paper's case)."""

    name: ClassVar[str] = "avg"
    noun: ClassVar[str] = "the average"

    def _pool_terms(self, acts: Tensor) -> Tensor:
        h, w = acts.shape[-2:]
        return acts / (h * w)

    def _pool_region(self, acts: Tensor, weights: Tensor) -> Tensor:
        return (acts * weights).sum((1, 2)) / weights.sum()


class SumPooling(DecomposablePooling):
    r"""Sum pooling (SPoC), :math:`\omega_u = 1`: exact, as average pooling."""

    name: ClassVar[str] = "sum"
    noun: ClassVar[str] = "the sum"

    def _pool_terms(self, acts: Tensor) -> Tensor:
        return acts

    def _pool_region(self, acts: Tensor, weights: Tensor) -> Tensor:
        return (acts * weights).sum((1, 2))


class MaxPooling(DecomposablePooling):
    """Max pooling (MAC): each channel's value lands at its arg-max location (ties split evenly).

    A region's embedding is the max over the cells the region touches.
    """

    name: ClassVar[str] = "max"
    noun: ClassVar[str] = "the max"

    def _pool_terms(self, acts: Tensor) -> Tensor:
        flat = acts.flatten(2)
        ties = flat == flat.amax(2, keepdim=True)
        share = ties / ties.sum(2, keepdim=True)
        return (flat * share).view_as(acts)

    def _pool_region(self, acts: Tensor, weights: Tensor) -> Tensor:
        return acts[:, weights > 0].amax(1)


class GeMPooling(DecomposablePooling):
    r"""Generalized mean :math:`f_c = (\frac1N \sum_u \max(A_{uc}, \epsilon)^p)^{1/p}`.

    Channel ``c``'s pooled value is credited to the locations in proportion to
    :math:`\max(A_{uc}, \epsilon)^p` (complete, but an approximation of each location's role).

    Args:
        p: the exponent (Radenović et al.'s default 3.0).
        eps: the clamp (Radenović et al.'s default 1e-6).
        head: as :class:`DecomposablePooling`.

    References:
        Radenović, Tolias & Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
        TPAMI 2018.
    """

    name: ClassVar[str] = "gem"
    noun: ClassVar[str] = "the GeM"

    def __init__(self, p: float = 3.0, eps: float = 1e-6, head: nn.Linear | None = None) -> None:
        super().__init__(head)
        self.p = float(p)
        self.eps = float(eps)

    def __repr__(self) -> str:
        return f"GeMPooling(p={self.p!r}, eps={self.eps!r}, head={self.head!r})"

    def _pool_terms(self, acts: Tensor) -> Tensor:
        flat = acts.flatten(2).clamp_min(self.eps)
        pooled = flat.pow(self.p).mean(2).pow(1.0 / self.p)
        share = torch.softmax(self.p * flat.log(), dim=2)
        return (pooled[..., None] * share).view_as(acts)

    def _pool_region(self, acts: Tensor, weights: Tensor) -> Tensor:
        a = acts.clamp_min(self.eps).pow(self.p)
        return ((a * weights).sum((1, 2)) / weights.sum()).pow(1.0 / self.p)


POOLINGS: dict[str, type[Pooling]] = {
    cls.name: cls for cls in (AvgPooling, SumPooling, MaxPooling, GeMPooling, GradCAMPooling)
}


def make_pooling(
    name: str, *, p: float = 3.0, eps: float = 1e-6, head: nn.Linear | None = None
) -> Pooling:
    """The strategy of a ``pooling=`` name: the one place that maps names to classes.

    Args:
        name: a key of :data:`POOLINGS`.
        p: GeM exponent (default 3.0, Radenović et al.); ``"gem"`` only.
        eps: GeM clamp (default 1e-6, Radenović et al.); ``"gem"`` only.
        head: ``None`` or the model's ``nn.Linear`` after the pooling (decomposable only).

    Raises:
        ValueError: an unknown name, ``p`` not a positive finite number.
        TypeError: ``head`` is not an ``nn.Linear``.
    """
    if name not in POOLINGS:
        raise ValueError(
            f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {name!r}; "
            "use 'grad_cam' when the model's pooling is none of these"
        )
    if not (isinstance(p, (int, float)) and p > 0 and math.isfinite(p)):
        raise ValueError(f"the GeM exponent p must be a positive finite number, got {p!r}")
    if head is not None and not isinstance(head, nn.Linear):
        raise TypeError(
            f"head must be None or an nn.Linear (an affine map decomposes), got "
            f"{type(head).__name__}; for a non-linear head use pooling='grad_cam'"
        )
    cls = POOLINGS[name]
    if cls is GeMPooling:
        return GeMPooling(p, eps, head)
    if issubclass(cls, DecomposablePooling):
        return cls(head)
    return cls()
