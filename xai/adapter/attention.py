"""Read the attention probabilities of vision transformers, whatever attention kernel they use.

Fused kernels (``F.scaled_dot_product_attention`` in timm, ``sdpa`` in Hugging Face
``transformers``, the native fast path of ``nn.MultiheadAttention``) never materialize the
attention matrix, so a hook on a softmax or on ``attn_drop`` would silently see nothing. Inside
:func:`attention_maps` every supported attention module is put on its explicit (eager) path for
the duration of the block and restored on exit, also after an exception:

==============================  ==============================================================
family                          how the probabilities ``(B, heads, N, N)`` are read
==============================  ==============================================================
timm ``Attention`` (ViT, DeiT)  ``fused_attn`` set to ``False``; forward hook on ``attn_drop``
``transformers`` (ViT, CLIP)    ``config._attn_implementation = "eager"``; the module's own
                                second output (its attention weights)
``nn.MultiheadAttention``       ``need_weights=True, average_attn_weights=False`` given by a
(torchvision ViT)               kwargs pre-hook; the transformer fast path disabled
==============================  ==============================================================

Each module must be called exactly once per forward pass: a module that was not called (a path
this file does not know bypassed it) raises instead of giving an empty rollout. Windowed
attention (Swin) has no token-to-token matrix over the whole image and is refused by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from xai.adapter.hooks import ForwardHook, KwargsPreHook, hooks
from xai.adapter.layers import _unwrap

__all__ = ["AttentionSite", "attention_maps", "attention_sites", "eager_attention"]


@dataclass(frozen=True, eq=False)
class AttentionSite:
    """One self-attention module of a model.

    Attributes:
        name: dotted module name.
        module: the attention module.
        kind: ``"timm"``, ``"hf"`` or ``"mha"``.
        projections: ``(linear, features, role)`` for the query/key/value projections, with
            ``features`` the slice of the linear layer's output features that holds the role
            (``None``: all of them) and role ``"q"``, ``"k"`` or ``"v"``. Empty for
            ``nn.MultiheadAttention``, whose projections are functional.
    """

    name: str
    module: nn.Module
    kind: str
    projections: tuple[tuple[nn.Module, slice | None, str], ...] = ()


def _windowed(module: nn.Module) -> bool:
    cls = type(module).__name__
    return "WindowAttention" in cls or (cls.startswith("Swin") and "Attention" in cls)


def _site(name: str, module: nn.Module) -> AttentionSite | None:
    if isinstance(module, nn.MultiheadAttention):
        return AttentionSite(name, module, "mha")
    qkv = getattr(module, "qkv", None)
    if (
        hasattr(module, "fused_attn")
        and isinstance(qkv, nn.Linear)
        and isinstance(getattr(module, "attn_drop", None), nn.Module)
    ):
        dim = qkv.out_features // 3
        roles = ("q", "k", "v")
        return AttentionSite(
            name,
            module,
            "timm",
            tuple((qkv, slice(i * dim, (i + 1) * dim), r) for i, r in enumerate(roles)),
        )
    projections = [getattr(module, f"{r}_proj", None) for r in ("q", "k", "v")]
    linears = [p for p in projections if isinstance(p, nn.Linear)]
    if hasattr(module, "config") and len(linears) == 3:
        return AttentionSite(
            name, module, "hf", tuple((p, None, r) for p, r in zip(linears, "qkv", strict=True))
        )
    return None


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The global self-attention modules of ``model``, in registration order.

    Raises:
        ValueError: the model uses windowed attention (Swin), or has no attention module this
            adapter can read (the message lists the supported families).
    """
    sites = []
    for name, module in _unwrap(model).named_modules():
        if _windowed(module):
            raise ValueError(
                f"module {name!r} ({type(module).__name__}) attends within (shifted) local "
                "windows, so the model has no token-to-token attention matrix over the whole "
                "image; attention rollout, Chefer relevance and the transformer LRP composites "
                "need a global-attention ViT (timm ViT/DeiT, transformers ViT/CLIP, torchvision "
                "ViT). Use grad_cam (default layer: the last block's norm1) or a gradient "
                "method on Swin"
            )
        site = _site(name, module)
        if site is not None:
            sites.append(site)
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no self-attention module this adapter can read "
            "(timm Attention with fused_attn, transformers attention with q_proj/k_proj/v_proj, "
            "nn.MultiheadAttention); attention methods need a vision transformer"
        )
    return sites


def _configs(sites: list[AttentionSite]) -> list:
    configs: dict[int, object] = {}
    for site in sites:
        if site.kind == "hf":
            configs.setdefault(id(site.module.config), site.module.config)
    return list(configs.values())


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[list[AttentionSite]]:
    """Put every attention module of ``model`` on its explicit path; restore it on exit.

    timm modules get ``fused_attn = False``, ``transformers`` configs
    ``_attn_implementation = "eager"``, and PyTorch's transformer fast path (which skips
    ``nn.MultiheadAttention.forward``) is disabled; the previous values are restored on exit,
    also after an exception. Yields :func:`attention_sites`.
    """
    sites = attention_sites(model)
    fused = [(s.module, s.module.fused_attn) for s in sites if s.kind == "timm"]
    configs = [(c, c._attn_implementation) for c in _configs(sites)]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        for module, _ in fused:
            # nn.Module.__setattr__ is typed for tensors and modules only
            module.fused_attn = False  # type: ignore[assignment]
        for config, _ in configs:
            config._attn_implementation = "eager"
        torch.backends.mha.set_fastpath_enabled(False)
        yield sites
    finally:
        for module, value in fused:
            module.fused_attn = value
        for config, value in configs:
            config._attn_implementation = value
        torch.backends.mha.set_fastpath_enabled(fastpath)


class AttentionRecord:
    """Attention probabilities recorded in one forward pass (filled inside the context).

    Attributes:
        sites: the attention modules, in registration order.
        maps: one ``(B, heads, N, N)`` tensor per attention call, in call order, still part
            of the autograd graph (gradients w.r.t. them are the attention gradients).
    """

    def __init__(self, sites: list[AttentionSite]) -> None:
        self.sites = sites
        self.maps: list[Tensor] = []
        self.calls: dict[str, int] = {}

    def _record(self, site: AttentionSite, probs: object) -> None:
        if not isinstance(probs, Tensor) or probs.dim() != 4:
            raise RuntimeError(
                f"attention module {site.name!r} ({type(site.module).__name__}) returned no "
                "attention probabilities (B, heads, N, N) on its eager path"
            )
        self.calls[site.name] = self.calls.get(site.name, 0) + 1
        self.maps.append(probs)

    def check(self) -> None:
        """Raise unless every attention module was called exactly once."""
        for site in self.sites:
            calls = self.calls.get(site.name, 0)
            if calls != 1:
                raise RuntimeError(
                    f"attention module {site.name!r} ({type(site.module).__name__}) was called "
                    f"{calls} times in one forward pass (expected once): its attention "
                    + (
                        "was computed by a path that bypasses the module"
                        if calls == 0
                        else "is ambiguous"
                    )
                )


@contextlib.contextmanager
def attention_maps(model: nn.Module) -> Iterator[AttentionRecord]:
    """Record the attention probabilities of every self-attention module for one forward.

    Example:
        >>> with attention_maps(vit) as record:
        ...     logits = vit(x)
        ...     record.check()
        ...     maps = record.maps          # L tensors (B, heads, N, N)

    The model's attention settings are restored and every hook removed on exit.
    """
    with eager_attention(model) as sites:
        record = AttentionRecord(sites)
        forward: dict[nn.Module, ForwardHook] = {}
        pre_kwargs: dict[nn.Module, KwargsPreHook] = {}
        forward_kwargs: dict[nn.Module, Callable[..., Any]] = {}
        for site in sites:
            if site.kind == "timm":
                forward[site.module.get_submodule("attn_drop")] = _output_recorder(record, site)
            elif site.kind == "hf":
                forward[site.module] = _second_output_recorder(record, site)
            else:
                pre_kwargs[site.module] = _ask_for_weights
                forward_kwargs[site.module] = _mha_recorder(record, site)
        try:
            with hooks(
                forward=forward,
                forward_pre_kwargs=pre_kwargs,
                forward_kwargs=forward_kwargs,
            ):
                yield record
        finally:
            record.maps = []


def _output_recorder(record: AttentionRecord, site: AttentionSite):
    def hook(_module: nn.Module, _args: tuple, output: object) -> None:
        record._record(site, output)

    return hook


def _second_output_recorder(record: AttentionRecord, site: AttentionSite):
    def hook(_module: nn.Module, _args: tuple, output: object) -> None:
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        record._record(site, weights)

    return hook


def _mha_recorder(record: AttentionRecord, site: AttentionSite):
    """Record ``nn.MultiheadAttention``'s weights and route its output through them.

    The weights it returns are a view that the rest of its functional forward does not use,
    so gradients w.r.t. them would be missing. The hook recomputes the output as
    ``out_proj(heads(weights @ v))`` from the module's own parameters, checks that it equals
    the module's output, and returns it: the same value, with the weights on the graph.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object):
        weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
        record._record(site, weights)
        assert isinstance(weights, Tensor) and isinstance(output, (tuple, list))
        value = kwargs.get("value", args[2] if len(args) > 2 else None)
        if (
            not isinstance(value, Tensor)
            or not isinstance(module, nn.MultiheadAttention)
            or module.bias_k is not None
            or module.add_zero_attn
            or value.dim() != 3
        ):
            raise ValueError(
                f"attention module {site.name!r}: nn.MultiheadAttention with batched 3-D "
                "inputs and without bias_k/add_zero_attn is supported"
            )
        out = _mha_from_weights(module, value, weights)
        with torch.no_grad():
            ref = output[0]
            tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
            if out.shape != ref.shape or float((out - ref).abs().max()) > tol:
                raise RuntimeError(
                    f"attention module {site.name!r}: its output could not be recomputed "
                    "from its attention weights"
                )
        return (out, weights, *output[2:])

    return hook


def _mha_from_weights(module: nn.MultiheadAttention, value: Tensor, weights: Tensor) -> Tensor:
    """``out_proj(concat_heads(weights @ v))`` of an ``nn.MultiheadAttention`` call."""
    import torch.nn.functional as F

    e, heads = module.embed_dim, module.num_heads
    if module.batch_first:
        value = value.transpose(0, 1)  # (S, B, E)
    s, b = value.shape[:2]
    if module._qkv_same_embed_dim:
        w_v = module.in_proj_weight[2 * e :]
    else:
        w_v = module.v_proj_weight
    b_v = module.in_proj_bias[2 * e :] if module.in_proj_bias is not None else None
    v = F.linear(value, w_v, b_v).reshape(s, b * heads, e // heads).transpose(0, 1)
    length = weights.shape[-2]
    out = torch.bmm(weights.reshape(b * heads, length, s).to(v.dtype), v)  # (B*H, L, hd)
    out = out.transpose(0, 1).reshape(length, b, e)
    out = F.linear(out, module.out_proj.weight, module.out_proj.bias)
    return out.transpose(0, 1) if module.batch_first else out


def _ask_for_weights(_module: nn.Module, args: tuple, kwargs: dict):
    return args, {**kwargs, "need_weights": True, "average_attn_weights": False}
