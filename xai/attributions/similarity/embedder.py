"""The embedding network that similarity maps explain: forward passes, terms, scores, maps.

:class:`Embedder` holds the model, its layer, the ``pooling=`` strategy
(:mod:`~xai.attributions.similarity.pooling`) and the metric, and gives the pieces that
:class:`~xai.attributions.similarity.SimilarityMaps` and the region search
(:mod:`~xai.attributions.similarity.search`) are built from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_positive_int, map_dtype
from xai._typing import LayerLike, ReshapeLike
from xai.adapter import ModelAdapter, SimilarityTarget, chunks
from xai.adapter.scoring import tracked
from xai.attributions.similarity.pooling import DecomposablePooling, PoolingName, make_pooling

__all__ = ["Embedder", "Metric"]

Metric = Literal["cosine", "dot"]

_METRICS = ("cosine", "dot")
_CHECK_RTOL = 1e-3


class Embedder:
    """An embedding network ``(B, C, H, W) -> (B, D)`` seen through one layer and its pooling.

    The arguments are those of :class:`~xai.attributions.similarity.SimilarityMaps`.

    Raises:
        ValueError: unknown ``pooling``/``metric``, an unknown layer, ``p <= 0``.
        TypeError: ``model`` is not an ``nn.Module``, ``head`` is not an ``nn.Linear``.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike,
        *,
        pooling: PoolingName = "avg",
        metric: Metric = "cosine",
        p: float = 3.0,
        eps: float = 1e-6,
        head: nn.Linear | None = None,
        reshape: ReshapeLike = None,
        upsample: bool = True,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.strategy = make_pooling(pooling, p=p, eps=eps, head=head)
        if metric not in _METRICS:
            raise ValueError(f"metric must be 'cosine' or 'dot', got {metric!r}")
        check_positive_int(batch_size, "batch_size", allow_none=True)
        self.model = model
        self.adapter = ModelAdapter(model, reshape=reshape)
        self.layer = self.adapter.resolve(layer)[0]
        self.pooling = pooling
        self.metric = metric
        self.p = float(p)
        self.eps = float(eps)
        self.head = head
        self.upsample = upsample
        self.batch_size = batch_size
        self.progress = progress

    @property
    def decomposable(self) -> bool:
        """Whether the maps are an additive decomposition of the score (all but ``grad_cam``)."""
        return self.strategy.decomposable

    def _chunks(self, total: int) -> Iterable[slice]:
        parts = chunks(total, self.batch_size)
        return tracked(parts, self.progress and len(parts) > 1, "similarity")

    def _forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """One forward pass without gradients: ``(activations (B, C, h, w), outputs (B, D))``."""
        with self.adapter.capture([self.layer]) as cap, torch.no_grad():
            outputs = self.adapter.forward(inputs, cap)
            acts = cap.activations.get(self.layer)
        if acts is None:
            raise RuntimeError(
                f"layer {self.layer!r} was not called in the forward pass: is it used by the model?"
            )
        if acts.dim() != 4:
            raise ValueError(
                f"layer {self.layer!r} has output shape {tuple(acts.shape)}, not (B, C, h, w); "
                "choose the last convolutional layer before the pooling, or pass "
                "reshape='vit' / 'swin' for token layers"
            )
        return acts, self._check_outputs(outputs)

    def _check_outputs(self, outputs: Tensor) -> Tensor:
        if outputs.dim() != 2:
            raise ValueError(
                f"an embedding model must return (B, D) vectors, got shape "
                f"{tuple(outputs.shape)}; pool and flatten the features in the model (e.g. "
                "nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten()))"
            )
        return outputs.detach()

    def _activations(self, inputs: Tensor) -> Tensor:
        return self._forward(inputs)[0]

    def _outputs(self, inputs: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.adapter.forward(inputs)
        return self._check_outputs(out).to(map_dtype(inputs))

    def _decomposition(self) -> DecomposablePooling:
        if not isinstance(self.strategy, DecomposablePooling):
            raise ValueError(f"pooling={self.pooling!r} does not decompose the embedding")
        return self.strategy

    def _terms(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Per-location terms ``psi`` ``(B, D, h, w)`` and the embedding ``(B, D)`` they sum to."""
        acts, outputs = self._forward(inputs)
        terms = self._decomposition().terms(acts)
        embedding = terms.sum((2, 3))
        self._check_embedding(embedding, outputs)
        return terms, embedding

    def _check_embedding(self, embedding: Tensor, outputs: Tensor) -> None:
        """Raise unless the model's output is the embedding being decomposed."""
        out = outputs.to(embedding)
        if out.shape != embedding.shape:
            raise ValueError(
                f"the model returns {out.shape[1]}-d embeddings but pooling {self.layer!r} "
                f"gives {embedding.shape[1]}-d ones: the layer is not followed by pooling alone; "
                "pass head= (an nn.Linear after the pooling) or use pooling='grad_cam'"
            )
        if self.metric == "cosine":  # a positive rescaling (L2 normalization) is allowed
            out = F.normalize(out, dim=1)
            embedding = F.normalize(embedding, dim=1)
        err = (out - embedding).norm(dim=1)
        tol = _CHECK_RTOL * out.norm(dim=1) + 1e-6
        if bool((err > tol).any()):
            hint = (
                " (for metric='dot' the output must equal it exactly; an L2-normalizing model "
                "is fine with metric='cosine')"
                if self.metric == "dot"
                else ""
            )
            raise ValueError(
                f"the model's output is not {self._decomposition().describe()} of layer "
                f"{self.layer!r}{hint}: check pooling= (and p= for GeM) and head=, or use "
                "pooling='grad_cam' for a pooling that does not decompose"
            )

    def _norm(self, e_a: Tensor, e_b: Tensor) -> Tensor:
        """``Z`` per pair: ``1`` (dot) or ``||e_a|| ||e_b||`` (cosine); ``e_a`` is ``(1, D)``."""
        if self.metric == "dot":
            return torch.ones(e_b.shape[0], dtype=e_b.dtype, device=e_b.device)
        tiny = torch.finfo(e_b.dtype).tiny
        return (e_a.norm(dim=1) * e_b.norm(dim=1)).clamp_min(tiny)

    def _score(self, e_a: Tensor, e_b: Tensor) -> Tensor:
        return (e_b @ e_a[0]) / self._norm(e_a, e_b)

    def _finish(self, maps: Tensor, inputs: Tensor) -> Tensor:
        """Upsample grid maps ``(B, h, w)`` to the input size, preserving each map's sum."""
        if not self.upsample:
            return maps
        size = tuple(inputs.shape[-2:])
        if not self.decomposable or tuple(maps.shape[-2:]) == size:
            return maps
        h, w = maps.shape[-2:]
        up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        up = up * (h * w / (size[0] * size[1]))
        # bilinear resizing preserves the sum exactly for integer factors; fix the rest evenly
        residual = maps.sum((1, 2)) - up.sum((1, 2))
        return up + residual[:, None, None] / (size[0] * size[1])

    def _grad_cam(self, inputs: Tensor, target: SimilarityTarget) -> Tensor:
        from xai.attributions.cam import GradCAM

        cam = GradCAM(self.model, self.layer, reshape=self.adapter.reshape, upsample=self.upsample)
        out = []
        for chunk in self._chunks(inputs.shape[0]):
            tgt = target.select(torch.arange(chunk.start, chunk.stop))
            out.append(cam(inputs[chunk], tgt))
        return torch.cat(out)


def out_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    """The maps' dtype for inputs ``a`` and ``b``: their promotion, at least float32."""
    return torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)


def against(terms: Tensor, other: Tensor, norm: Tensor) -> Tensor:
    """Maps ``(B, h, w)``: per-location terms ``(B, D, h, w)`` dotted with ``other`` ``(D,)``."""
    return torch.einsum("bdhw,d->bhw", terms, other) / norm[:, None, None]
