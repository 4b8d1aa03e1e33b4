"""The attribution contract every method follows, and the registry that drives tests and CLI.

``maps = Method(model, ...)(inputs, target=None)`` returns a ``(B, H, W)`` tensor at the
input's resolution, on the input's device, in the input's dtype promoted to at least float32,
raw (not normalized). Options that change the result are constructor arguments. Methods
whose ``input_ranks`` include 5 also explain videos and volumes ``(B, C, T, H, W)`` with
``(B, T, H, W)`` maps.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from xai._checks import check_inputs, check_positive_int, map_dtype, warn
from xai._spatial import resize
from xai._typing import LayerLike, ReshapeLike, TargetLike
from xai.adapter import ModelAdapter, Target, as_target, preserved
from xai.adapter.capture import warn_if_zero
from xai.adapter.extras import additional_inputs as additional
from xai.adapter.layers import _unwrap
from xai.adapter.reshape import token_layout

_REGISTRY: dict[str, type[Attribution]] = {}
A = TypeVar("A", bound=type["Attribution"])


def _snake(name: str) -> str:
    name = name.replace("CAM", "Cam").replace("LRP", "Lrp")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def register(cls: A) -> A:
    """Class decorator: add a method to the registry under its snake_case ``name``."""
    if "name" not in cls.__dict__:
        cls.name = _snake(cls.__name__)
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"an attribution named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def available(model_family: str | None = None, *, rank: int | None = None) -> list[str]:
    """Registry keys of the attribution methods, sorted.

    Args:
        model_family: ``None`` (default): every method. ``"any"``: the methods that explain any
            model (e.g. for a CNN). ``"vit"``: those plus the methods that need a vision
            transformer (attention rollout, Chefer relevance).
        rank: only the methods that take inputs of this rank (``4``: images, ``5``: videos and
            volumes ``(B, C, T, H, W)``; see :attr:`Attribution.input_ranks`).
    """
    names = [n for n, c in _REGISTRY.items() if rank is None or rank in c.input_ranks]
    if model_family is None:
        return sorted(names)
    return sorted(n for n in names if _REGISTRY[n].model_family in ("any", model_family))


def get(name: str) -> type[Attribution]:
    """The method class registered under ``name`` (close matches are suggested on a typo)."""
    import difflib

    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown method {name!r}{hint} Available: {', '.join(available())}")


class Attribution(ABC):
    """Base of every attribution method.

    Args:
        model: the model to explain; never modified.
        batch_size: upper bound on the number of inputs in one forward/backward pass, for
            methods that multiply the batch (``None``: no bound).
        seed: seed of the method's ``torch.Generator`` (stochastic methods only).
        progress: show a ``tqdm`` progress bar on long runs.
    """

    name: ClassVar[str]
    stochastic: ClassVar[bool] = False
    model_family: ClassVar[str] = "any"
    """The models a method can explain: ``"any"`` or ``"vit"`` (needs global self-attention;
    the registry-wide contract test runs such methods on a tiny ViT instead of a CNN)."""
    class_score: str = "logit"
    """What an int/None target scores: ``"logit"`` or ``"probability"`` (softmax)."""
    accepts_additional_inputs: ClassVar[bool] = True
    """Whether ``additional_inputs`` can be passed to the model's forwards (``False``: a
    ``ValueError`` when given)."""
    input_ranks: ClassVar[tuple[int, ...]] = (4,)
    """The input ranks the method explains: ``4`` images ``(B, C, H, W)`` -> ``(B, H, W)`` maps,
    ``5`` videos and volumes ``(B, C, T, H, W)`` -> ``(B, T, H, W)`` maps."""
    rank_note: ClassVar[str] = "it is written for 2-D images"
    """Why a method refuses videos and volumes, in its error message."""

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_positive_int(batch_size, "batch_size", allow_none=True)
        self.model = model
        self.adapter = ModelAdapter(model)
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    @classmethod
    def create(
        cls, model: nn.Module, *, layer: LayerLike | None = None, **kwargs: Any
    ) -> Attribution:
        """Build the method with its defaults from the arguments every method can be given.

        The registry-driven code (contract test, CLI, demo) builds every method this way;
        ``layer`` is used by methods that read a layer and ignored by the others. Methods
        whose constructor needs more (e.g. a wrapped method) override this.
        """
        return cls(model, **kwargs)

    def __call__(
        self,
        inputs: Tensor,
        target: TargetLike | Target = None,
        *,
        additional_inputs: object = None,
    ) -> Tensor:
        """Explain ``inputs`` ``(B, C, H, W)`` for ``target``; returns ``(B, H, W)`` maps.

        Args:
            inputs: a floating batch, never modified.
            target: ``None`` (each sample's predicted class), an int, one int per sample, a
                callable ``outputs -> (B,)``, or an :class:`xai.adapter.Target`. NumPy integers
                and integer arrays are accepted; floats are refused, never truncated.
            additional_inputs: extra forward arguments, the model being called as
                ``model(x, *additional_inputs)``: a tensor or a tuple of values. Tensors are
                per sample, ``(B, ...)``, and every perturbed or expanded copy of a sample gets
                that sample's rows; wrap a value shared by all samples in
                :class:`xai.adapter.Shared`. See :mod:`xai.adapter.extras`.

        Raises:
            TypeError: non-tensor or non-floating ``inputs``; a float, bool or string target.
            ValueError: a wrong rank, an empty batch, a meta-device tensor or NaN/Inf values in
                ``inputs``; a target out of range or of the wrong length; NaN/Inf activations
                at a captured layer; an additional input with the wrong first dimension or
                NaN, or additional inputs given to a method that cannot pass them on.
        """
        name = getattr(self, "name", type(self).__name__)
        refusal = (
            f"{name} explains images only ({self.rank_note}; the methods for videos and "
            "volumes are listed by xai.attributions.available(rank=5))"
        )
        x = check_inputs(inputs, ranks=self.input_ranks, refusal=refusal)
        tgt = as_target(target)
        tgt.check_batch(x.shape[0])
        extras = additional(additional_inputs, x.shape[0])
        if extras is not None and not self.accepts_additional_inputs:
            raise ValueError(
                f"{type(self).__name__} cannot pass additional_inputs to the model; explain a "
                "model that binds them instead (a module whose forward takes only the image)"
            )
        with preserved(self.adapter.module), self.adapter.bound(extras):
            maps = self._attribute(x.detach(), tgt)
        maps = self._finalize(maps, x)
        if x.dtype in (torch.float16, torch.bfloat16):
            _warn_if_flat(maps, x.dtype, self.name)
        # a plain tensor, never part of a graph (captum's IG returns one that requires grad)
        return maps.detach().to(dtype=map_dtype(x), device=x.device)

    @abstractmethod
    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        """Return maps ``(B, h, w)`` (upsampled by the template when needed)."""

    def _finalize(self, maps: Tensor, inputs: Tensor) -> Tensor:
        return maps

    def rebind(self, model: nn.Module) -> Attribution:
        """A copy of this method, with the same options, explaining another model.

        Used by metrics that re-explain a modified copy of the model (parameter
        randomization, meta-saliency). Layers are looked up by name in the new model.
        """
        clone = copy.copy(self)
        clone.model = model
        clone.adapter = ModelAdapter(model, reshape=self.adapter.reshape)
        return clone

    # helpers shared by subclasses -------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(0 if self.seed is None else int(self.seed))
        return gen

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__})"


def _warn_if_flat(maps: Tensor, dtype: torch.dtype, name: str) -> None:
    """Half-precision models round small score changes away (bfloat16 keeps 8 significant
    bits): a constant map is then an artefact of the precision, not an explanation.
    """
    flat = maps.detach().flatten(1)
    constant = (flat == flat[:, :1]).all(1)
    if bool(constant.any()):
        warn(
            f"{name}: the maps of sample(s) {constant.nonzero()[:, 0].tolist()} are constant; "
            f"a {dtype} model may round the score changes away: explain a float32 copy "
            "(model.float(), inputs.float())"
        )


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (align_corners=False) resize of ``(B, h, w)`` or ``(B, K, h, w)`` maps;
    trilinear for a 3-axis ``size`` (``(B, t, h, w)`` or ``(B, K, t, h, w)`` video maps).
    """
    return resize(maps, size)


def normalize_per_sample(maps: Tensor, eps: float = 0.0) -> Tensor:
    """Min-max normalize each sample's map to [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return out.view_as(maps)


@dataclass(frozen=True)
class LayerView:
    """What a :class:`LayerAttribution` sees of one layer after the forward (and backward) pass.

    Attributes:
        name: the layer's dotted name in the model.
        activations: the layer's output ``(B, K, h, w)`` (token outputs reshaped to a grid),
            detached, in the input's dtype promoted to at least float32.
        gradients: ``d score / d activations``, same shape and dtype; ``None`` for
            gradient-free methods (``needs_gradients = False``).
        inputs: the explained batch ``(B, C, H, W)``, detached.
        target: the target, frozen on ``outputs`` (an argmax target is fixed).
        outputs: the model output of the pass, detached.
        layer_input: the layer's first positional input, detached, as the layer received it;
            only for methods whose ``needs_layer_input`` is true, else ``None``.
    """

    name: str
    activations: Tensor
    gradients: Tensor | None
    inputs: Tensor
    target: Target
    outputs: Tensor
    layer_input: Tensor | None = None

    def require_gradients(self) -> Tensor:
        """``gradients``, for the methods that need them (they are ``None`` otherwise)."""
        if self.gradients is None:
            raise RuntimeError(
                f"no gradients were taken at layer {self.name!r}: a method that reads them must "
                "keep needs_gradients = True"
            )
        return self.gradients


class LayerAttribution(Attribution):
    """Base of methods that read one or several layers (the Grad-CAM family, NormGrad).

    Args:
        model: the model to explain.
        layer: one layer (dotted name or module) or a list of layers. With several layers,
            each layer's map is upsampled to the input size, min-max normalized per sample and
            the maps are fused with ``fusion``.
        reshape: how to turn token outputs into grids: ``"auto"`` (default: ``"vit"`` or
            ``"swin"`` for the families of :func:`xai.adapter.reshape.token_layout`, patch grid
            and prefix tokens from the model; ``None`` for other models), ``"vit"``, ``"swin"``,
            ``None`` (spatial layers) or a callable ``(B, ...) -> (B, C, h, w)``.
        upsample: return maps at the input resolution (bilinear); ``False`` returns the
            layer-resolution map ``(B, h, w)`` (one layer only).
        fusion: ``"mean"`` (pytorch-grad-cam), ``"max"`` (torch-cam), ``"product"`` or
            ``"geometric_mean"``; see :func:`fuse_maps`.
        **kwargs: ``batch_size``, ``seed``, ``progress`` (see :class:`Attribution`).
    """

    needs_gradients: ClassVar[bool] = True

    @classmethod
    def create(
        cls, model: nn.Module, *, layer: LayerLike | None = None, **kwargs: Any
    ) -> LayerAttribution:
        """Registry constructor; without ``layer``, vision transformers get the last block's
        pre-attention norm (see :func:`xai.adapter.reshape.token_layout`).
        """
        if layer is None:
            layer = token_layout(_unwrap(model)).default_layer
        if layer is None:
            raise ValueError(f"{cls.__name__} needs a layer, e.g. layer='layer4'")
        return cls(model, layer, **kwargs)

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike | Sequence[LayerLike],
        *,
        reshape: ReshapeLike = "auto",
        upsample: bool = True,
        fusion: str = "mean",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.adapter = ModelAdapter(model, reshape=reshape)
        # a str is a Sequence too: only lists and tuples are several layers
        layers: list[LayerLike] = (
            list(layer) if isinstance(layer, (list, tuple)) else [layer]  # type: ignore[list-item]
        )
        if not layers:
            raise ValueError("layer must name at least one layer")
        self.layers = [self.adapter.resolve(item)[0] for item in layers]
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if not upsample and len(self.layers) > 1:
            raise ValueError(
                "upsample=False returns a layer-resolution map, which needs a single layer; "
                "several layers are fused at the input resolution"
            )
        self.upsample = upsample
        self.fusion = fusion

    @property
    def needs_layer_input(self) -> bool:
        """Whether :meth:`_layer_map` reads the layer's input (then captured, else not kept)."""
        return False

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        with self.adapter.capture(self.layers, inputs=self.needs_layer_input) as cap:
            with torch.set_grad_enabled(self.needs_gradients):
                outputs = self.adapter.forward(inputs, cap)
            target = target.freeze(outputs.detach())  # validates the target, fixes argmax
            if self.needs_gradients:
                cap.backward(target(outputs))
            # half precision is reduced in float32; float64 stays float64
            acts = {n: a.to(map_dtype(a)) for n, a in cap.activations.items()}
            grads = {n: cap.gradients[n].to(acts[n].dtype) for n in cap.gradients}
            layer_inputs = dict(cap.inputs)
            outputs = outputs.detach()
        # Maps are computed with the hooks removed: methods that run more forwards (Score-CAM)
        # must not re-trigger the capture.
        maps: dict[str, Tensor] = {}
        for name in self.layers:
            _check_finite_activations(acts[name], name)
            if name in grads:
                warn_if_zero(grads[name], name)
            view = LayerView(
                name=name,
                activations=acts[name],
                gradients=grads.get(name),
                inputs=inputs,
                target=target,
                outputs=outputs,
                layer_input=layer_inputs.get(name),
            )
            maps[name] = self._layer_map(view)
        return self._fuse(maps, inputs)

    @abstractmethod
    def _layer_map(self, view: LayerView) -> Tensor:
        """Map ``(B, h, w)`` of one layer from what :class:`LayerView` holds of it."""

    layer_weights: Tensor | None = None
    """Per-layer weights for ``"mean"``/``"geometric_mean"`` fusion (``None``: uniform)."""

    def _fuse(self, maps: dict[str, Tensor], inputs: Tensor) -> Tensor:
        size = tuple(inputs.shape[2:])
        if len(maps) == 1:
            (only,) = maps.values()
            return upsample(only, size) if self.upsample else only
        stack = torch.stack([normalize_per_sample(upsample(m, size)) for m in maps.values()])
        return fuse_maps(stack, self.fusion, self.layer_weights)


def _check_finite_activations(acts: Tensor, layer: str) -> None:
    """Finite inputs can still overflow inside the model (a float16 model, a diverged one):
    NaN/Inf activations would give NaN maps, or a LinAlgError from EigenCAM's SVD.
    """
    bad = ~torch.isfinite(acts.flatten(1)).all(1)
    if bool(bad.any()):
        raise ValueError(
            f"the activations of layer {layer!r} are NaN or Inf for inputs sample(s) "
            f"{bad.nonzero()[:, 0].tolist()} although the inputs are finite: the model "
            "overflows there (e.g. float16 weights); explain a float32 copy of the model"
        )


FUSIONS = ("mean", "max", "product", "geometric_mean")


def fuse_maps(stack: Tensor, fusion: str, weights: Tensor | None = None) -> Tensor:
    """Combine per-layer maps ``(L, B, H, W)`` (each normalized to [0, 1]) into ``(B, H, W)``.

    ``"mean"`` (pytorch-grad-cam) and ``"geometric_mean"`` (NormGrad's TorchRay code) use
    ``weights`` (``(L,)``, normalized to sum 1; uniform when ``None``); ``"max"`` is torch-cam's
    element-wise max; ``"product"`` the NormGrad authors' standalone code.
    """
    if fusion == "product":
        return stack.prod(0)
    if fusion == "max":
        return stack.amax(0)
    n = stack.shape[0]
    w = weights if weights is not None else torch.ones(n)
    w = (w / w.sum()).to(stack).view(n, *([1] * (stack.dim() - 1)))
    if fusion == "mean":
        return (w * stack).sum(0)
    if fusion == "geometric_mean":
        # 0 ** 0 = 1, so a zero-weight layer does not zero the result
        return stack.pow(w).prod(0)
    raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")


Reduction = Callable[[Tensor], Tensor]


def reduce_channels(attr: Tensor, how: str) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: ``"sum"``, ``"mean"``, ``"max_abs"`` or ``"norm"``."""
    if how == "sum":
        return attr.sum(1)
    if how == "mean":
        return attr.mean(1)
    if how == "max_abs":
        return attr.abs().amax(1)
    if how == "norm":
        return attr.norm(dim=1)
    raise ValueError(f"reduction must be 'sum', 'mean', 'max_abs' or 'norm', got {how!r}")
