"""Turn a layer output into a spatial grid ``(B, C, h, w)``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from xai._typing import ReshapeLike


def _prefix_tokens(
    n_tokens: int, declared: int | None, grid: tuple[int, int] | None = None
) -> tuple[int, int, int]:
    """Return (prefix, h, w) for ``n_tokens`` tokens: the model's own patch grid when it fits,
    else the smallest prefix that leaves a square grid.
    """
    if grid is not None and declared is not None and n_tokens - declared == grid[0] * grid[1]:
        return declared, grid[0], grid[1]
    candidates = [declared] if declared is not None else range(9)
    for prefix in candidates:
        side = math.isqrt(n_tokens - prefix)
        if side > 0 and side * side == n_tokens - prefix:
            return prefix, side, side
    raise ValueError(
        f"cannot infer a square patch grid from {n_tokens} tokens"
        + (f" with {declared} prefix tokens" if declared is not None else "")
        + "; pass reshape=callable mapping (B, N, C) -> (B, C, h, w)"
    )


def vit_reshape(
    tokens: Tensor, num_prefix_tokens: int | None = None, grid: tuple[int, int] | None = None
) -> Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, h, w)``, dropping class/distillation/register tokens.

    The number of prefix tokens is ``num_prefix_tokens`` when given (see :func:`token_layout`),
    otherwise the smallest count that leaves a square number of patch tokens. ``grid``
    ``(h, w)`` (the model's patch grid, which may be non-square) is used when the token count
    matches it; otherwise a square grid is inferred.
    """
    if tokens.dim() != 3:
        raise ValueError(
            f"reshape='vit' expects token outputs of shape (B, N, C), got {tuple(tokens.shape)}"
        )
    b, n, c = tokens.shape
    prefix, h, w = _prefix_tokens(n, num_prefix_tokens, grid)
    return tokens[:, prefix:, :].reshape(b, h, w, c).permute(0, 3, 1, 2)


def swin_reshape(features: Tensor) -> Tensor:
    """Channels-last ``(B, h, w, C)`` -> ``(B, C, h, w)`` (torchvision/timm Swin stages)."""
    if features.dim() != 4:
        raise ValueError(
            f"reshape='swin' expects (B, h, w, C) outputs, got {tuple(features.shape)}"
        )
    return features.permute(0, 3, 1, 2)


def make_reshape(reshape: ReshapeLike, model: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """Normalize a ``reshape`` option into a callable (or ``None`` for spatial layers)."""
    if reshape == "auto":
        reshape = token_layout(model).kind
    if reshape is None:
        return None
    if reshape == "vit":
        layout = token_layout(model)
        return lambda t: vit_reshape(t, layout.prefix, layout.grid)
    if reshape == "swin":
        return swin_reshape
    if callable(reshape):
        return reshape
    raise ValueError(f"reshape must be None, 'auto', 'vit', 'swin' or a callable, got {reshape!r}")


@dataclass(frozen=True)
class TokenLayout:
    """How a model lays out its tokens (see :func:`token_layout`).

    Attributes:
        kind: ``"vit"`` (``(B, N, C)`` tokens with prefix tokens), ``"swin"`` (channels-last
            ``(B, h, w, C)``) or ``None`` (not a known token model: layers are spatial).
        prefix: number of class/distillation/register tokens before the patch tokens.
        grid: the patch grid ``(h, w)`` at the model's configured image size.
        default_layer: dotted name of the last block's first norm (``norm1`` in timm and
            PyTorch, ``layernorm_before`` / ``layer_norm1`` in ``transformers``, ``ln_1`` in
            torchvision), the default layer of layer methods; ``None`` if there is none.
    """

    kind: Literal["vit", "swin"] | None
    prefix: int | None = None
    grid: tuple[int, int] | None = None
    default_layer: str | None = None


FIRST_NORMS = ("norm1", "layernorm_before", "layer_norm1", "ln_1")
"""Names of the pre-attention norm of a transformer block, per family."""


def _pair(value: object) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _grid(image: object, patch: object) -> tuple[int, int] | None:
    image, patch = _pair(image), _pair(patch)
    if image is None or patch is None:
        return None
    return image[0] // patch[0], image[1] // patch[1]


def _default_layer(model: nn.Module) -> str | None:
    """The last block's pre-attention norm; for post-norm PyTorch encoder layers (whose
    ``norm1`` follows the attention) the output of the block before the last one.
    """
    names = [n for n, _ in model.named_modules() if n.split(".")[-1] in FIRST_NORMS]
    if not names:
        return None
    modules = dict(model.named_modules())
    parent = names[-1].rpartition(".")[0]
    if (
        isinstance(modules.get(parent), nn.TransformerEncoderLayer)
        and not modules[parent].norm_first
    ):
        blocks = [n for n, m in modules.items() if isinstance(m, nn.TransformerEncoderLayer)]
        return blocks[-2] if len(blocks) > 1 else None
    return names[-1]


def token_layout(model: nn.Module) -> TokenLayout:
    """The token layout of timm, ``transformers`` and torchvision vision transformers.

    ==========================  ======================  =========================================
    family                      prefix tokens           patch grid
    ==========================  ======================  =========================================
    timm ViT / DeiT / EVA       ``num_prefix_tokens``   ``patch_embed.grid_size``
    (and any model with         (class, distillation,
    ``num_prefix_tokens``)      register tokens)
    ``transformers`` ViT, CLIP  1 + ``num_register_     ``image_size // patch_size`` (config)
    (config with patch_size)    tokens``
    torchvision ViT             1 (class token)         ``image_size // patch_size``
    Swin (timm, torchvision,    none (channels-last     the stage's own ``(h, w)``
    ``transformers``)           ``(B, h, w, C)``)
    ==========================  ======================  =========================================

    Other models get ``kind=None`` (their layers are taken as spatial). The grid is only a
    hint: when the token count does not match it (another input size), a square grid is
    inferred from the token count.
    """
    from xai.adapter.layers import _unwrap

    model = _unwrap(model)
    default = _default_layer(model)
    family = f"{type(model).__module__}.{type(model).__name__}".lower()
    if "swin" in family:
        return TokenLayout("swin", default_layer=default)
    n_prefix = getattr(model, "num_prefix_tokens", None)  # timm
    if n_prefix is not None:
        embed = getattr(model, "patch_embed", None)
        grid = _pair(getattr(embed, "grid_size", None))
        return TokenLayout("vit", int(n_prefix), grid, default)
    config = getattr(model, "config", None)
    config = getattr(config, "vision_config", config)
    if config is not None and hasattr(config, "patch_size") and hasattr(config, "image_size"):
        prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        return TokenLayout("vit", prefix, _grid(config.image_size, config.patch_size), default)
    if hasattr(model, "class_token") and hasattr(model, "patch_size"):  # torchvision ViT
        grid = _grid(getattr(model, "image_size", None), model.patch_size)
        return TokenLayout("vit", 1, grid, default)
    return TokenLayout(None)
