r"""Attention-based explanations of vision transformers: rollout and gradient-weighted relevance.

Both read the attention probabilities ``A_l`` ``(B, heads, N, N)`` of every block through
:func:`xai.adapter.attention.attention_maps` (fused kernels are switched to their eager path for
the call and restored), combine them into a token-to-token relevance matrix ``R`` ``(B, N, N)``
and return the row of the token the head reads (the class token; the mean over all tokens for
average-pooled models) over the patch tokens, reshaped to the patch grid of
:func:`xai.adapter.reshape.token_layout` and upsampled bilinearly to the input.

* :class:`AttentionRollout` (Abnar & Zuidema, ACL 2020):
  :math:`\hat A_l = \mathrm{rownorm}(\tfrac12 \bar A_l + \tfrac12 I)`,
  :math:`R = \hat A_L \cdots \hat A_1`, with :math:`\bar A_l` the heads fused by mean (default),
  max or min. Class-agnostic: the target is validated but does not change the map.
* :class:`CheferRelevance` (Chefer, Gur & Wolf, CVPR 2021 / ICCV 2021):
  :math:`\bar A_l = E_h[(\nabla A_l \odot A_l)^+]`, :math:`R \leftarrow R + \bar A_l R` from
  :math:`R = I`, in forward order. The CVPR 2021 paper weights the gradient with the LRP relevance
  of :math:`A_l`; its authors' follow-up (ICCV 2021, "Generic attention-model explainability",
  their recommended ViT recipe) uses :math:`A_l` itself, which is what this class computes.

Windowed attention (Swin) and CNNs are refused with a message that says why.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xai._typing import LayerLike
from xai.adapter import Target, chunks
from xai.adapter.attention import attention_maps, attention_sites
from xai.adapter.layers import _unwrap
from xai.adapter.reshape import token_layout, vit_reshape
from xai.attributions.base import Attribution, register, upsample

__all__ = ["AttentionRollout", "CheferRelevance"]

HEAD_FUSIONS = ("mean", "max", "min")


class _AttentionMethod(Attribution):
    """Shared part: attention capture, the read-out row, the patch grid.

    Args:
        model: a vision transformer with global self-attention (timm ViT/DeiT,
            ``transformers`` ViT/CLIP vision, torchvision ViT, ``nn.TransformerEncoderLayer``).
        token: which row of ``R`` is the explanation: ``"auto"`` (default: the class token,
            index 0, when the model has prefix tokens, else the mean over all tokens, as for
            average-pooled heads), ``"cls"`` or ``"mean"``.
        upsample: return maps at the input resolution (default) or the ``(h, w)`` patch grid.
        **kwargs: ``batch_size``, ``seed``, ``progress`` (see :class:`Attribution`).

    Raises:
        ValueError: the model has no global self-attention (CNN, Swin), or ``token`` is
            unknown.
    """

    model_family: ClassVar[str] = "vit"
    accepts_additional_inputs: ClassVar[bool] = False  # attention is read from one forward

    def __init__(
        self, model: nn.Module, *, token: str = "auto", upsample: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        if token not in ("auto", "cls", "mean"):
            raise ValueError(f"token must be 'auto', 'cls' or 'mean', got {token!r}")
        attention_sites(model)  # refuse CNNs and windowed attention at construction
        self.layout = token_layout(_unwrap(model))
        self.token = token
        self.upsample = upsample

    @classmethod
    def create(
        cls, model: nn.Module, *, layer: LayerLike | None = None, **kwargs: Any
    ) -> Attribution:
        """Registry constructor; ``layer`` is ignored (every block's attention is used)."""
        return cls(model, **kwargs)

    def _readout(self, relevance: Tensor, inputs: Tensor) -> Tensor:
        """``(B, N, N)`` token relevance -> ``(B, H, W)`` map over the patch tokens."""
        prefix = self.layout.prefix
        token = self.token
        if token == "auto":
            token = "cls" if prefix else "mean"
        row = relevance[:, 0] if token == "cls" else relevance.mean(1)  # (B, N)
        grid = vit_reshape(row[..., None], prefix, self.layout.grid)[:, 0]  # (B, h, w)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        return upsample(grid, size) if self.upsample else grid

    def _maps(self, inputs: Tensor, target: Target, gradients: bool) -> tuple[list, list]:
        """Attention maps (and their gradients) per block, for one chunk."""
        x = inputs.clone().requires_grad_(gradients)
        with attention_maps(self.adapter.module) as record:
            outputs = self.adapter.forward(x)
            record.check()
            tgt = target.freeze(outputs.detach())
            maps = list(record.maps)
            grads: list = []
            if gradients:
                grads = list(torch.autograd.grad(tgt(outputs).sum(), maps, allow_unused=True))
                if any(g is None for g in grads):
                    raise RuntimeError("an attention map receives no gradient from the target")
                grads = [g.detach() for g in grads]
        return [m.detach() for m in maps], grads

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        out = []
        for chunk in chunks(inputs.shape[0], self.batch_size):
            rows = torch.arange(chunk.start, chunk.stop)
            tgt = target if target.needs_freeze else target.select(rows)
            out.append(self._chunk(inputs[chunk], tgt))
        return torch.cat(out)

    def _chunk(self, inputs: Tensor, target: Target) -> Tensor:
        raise NotImplementedError


@register
class AttentionRollout(_AttentionMethod):
    """Attention rollout (Abnar & Zuidema, "Quantifying attention flow in transformers", ACL 2020).

    Args:
        model: see :class:`_AttentionMethod`.
        head_fusion: ``"mean"`` (default, the paper), ``"max"`` or ``"min"`` (vit-explain).
        discard_ratio: fraction of the lowest fused attention weights per block set to zero
            before the identity is added (vit-explain's option; default ``0.0``, the paper).
        **kwargs: ``token``, ``upsample``, ``batch_size`` (see :class:`_AttentionMethod`).

    The map does not depend on the target (rollout is class-agnostic).

    Example:
        >>> maps = AttentionRollout(vit)(x)    # (B, H, W)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        head_fusion: str = "mean",
        discard_ratio: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
        if not 0.0 <= float(discard_ratio) < 1.0:
            raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def _chunk(self, inputs: Tensor, target: Target) -> Tensor:
        with torch.no_grad():
            maps, _ = self._maps(inputs, target, gradients=False)
        return self._readout(rollout(maps, self.head_fusion, self.discard_ratio), inputs)


def rollout(maps: list[Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
    """``prod_l rownorm(0.5 * fuse(A_l) + 0.5 * I)`` (last block on the left), ``(B, N, N)``."""
    result = None
    for attn in maps:
        attn = attn.to(torch.promote_types(attn.dtype, torch.float32))
        fused = getattr(attn, head_fusion)(1)
        fused = fused if head_fusion == "mean" else fused.values
        if discard_ratio > 0:
            flat = fused.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                low = flat.topk(k, dim=1, largest=False).indices
                flat = flat.scatter(1, low, 0.0)
            fused = flat.view_as(fused)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        step = 0.5 * fused + 0.5 * eye
        step = step / step.sum(-1, keepdim=True)
        result = step if result is None else step @ result
    assert result is not None
    return result


@register
class CheferRelevance(_AttentionMethod):
    """Gradient-weighted attention relevance of Chefer, Gur & Wolf (ViT recipe).

    ``R = I``; for each block in forward order ``R <- R + mean_heads((dA * A)^+) @ R``, where
    ``dA`` is the gradient of the target score w.r.t. the block's attention probabilities.
    Class-specific; one forward and one backward pass.

    References:
        Chefer, Gur & Wolf, "Transformer interpretability beyond attention visualization",
        CVPR 2021; "Generic attention-model explainability for interpreting bi-modal and
        encoder-decoder transformers", ICCV 2021 (the ``grad * attention`` rule used here).

    Example:
        >>> maps = CheferRelevance(vit)(x, target=281)    # (B, H, W)
    """

    def _chunk(self, inputs: Tensor, target: Target) -> Tensor:
        maps, grads = self._maps(inputs, target, gradients=True)
        relevance = None
        for attn, grad in zip(maps, grads, strict=True):
            attn = attn.to(torch.promote_types(attn.dtype, torch.float32))
            weighted = (grad.to(attn.dtype) * attn).clamp(min=0).mean(1)  # (B, N, N)
            if relevance is None:
                eye = torch.eye(attn.shape[-1], dtype=attn.dtype, device=attn.device)
                relevance = eye.expand_as(weighted).clone()
            relevance = relevance + weighted @ relevance
        assert relevance is not None
        return self._readout(relevance, inputs)
