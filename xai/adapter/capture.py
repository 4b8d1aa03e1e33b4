"""Capture activations and gradients of layers in one forward/backward pass."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from xai._typing import LayerLike, ReshapeLike, TargetLike
from xai.adapter.extras import AdditionalInputs, binding, bound_to
from xai.adapter.hooks import hooks
from xai.adapter.layers import _unwrap, output_error, replace_item, resolve_layer, split_key
from xai.adapter.reshape import make_reshape
from xai.adapter.state import preserved
from xai.adapter.targets import Target, as_target, unwrap_output


class Capture:
    """What one forward (and backward) pass recorded. Filled inside the context, emptied on exit.

    Attributes:
        outputs: the (unwrapped) model output of the last forward, set by
            :meth:`ModelAdapter.forward`.
        activations: layer name -> activation ``(B, C, h, w)`` (after ``reshape``), detached.
        gradients: layer name -> gradient of the scores w.r.t. the activation, same shape,
            filled by :meth:`backward`.
        inputs: layer name -> the layer's first positional input, detached and not reshaped;
            filled only when the capture was opened with ``inputs=True`` (e.g. NormGrad on a
            real convolution unfolds its input). Checked by :meth:`backward` not to have been
            modified in place after the layer ran.
    """

    def __init__(
        self,
        names: Sequence[str],
        reshape: Callable[[Tensor], Tensor] | None,
        *,
        record_inputs: bool = False,
    ) -> None:
        self.names = list(names)
        self._reshape = reshape
        self._raw: dict[str, Tensor] = {}
        self._calls: dict[str, int] = {}
        self._record_inputs = record_inputs
        self._input_versions: dict[str, int] = {}
        self.outputs: Tensor | None = None
        self.activations: dict[str, Tensor] = {}
        self.gradients: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}

    def _spatial(self, name: str, tensor: Tensor) -> Tensor:
        if self._reshape is not None:
            tensor = self._reshape(tensor)
        if tensor.dim() < 3:
            raise ValueError(
                f"layer {name!r} has output shape {tuple(tensor.shape)}, with no spatial axes; "
                "choose a convolutional layer before global pooling (see "
                "xai.adapter.list_layers(model, inputs)), or pass reshape='vit' for tokens"
            )
        return tensor

    def _hook(self, name: str):
        key = split_key(name)[1]

        def hook(_module: nn.Module, args: tuple, output: object) -> object:
            if key is not None:  # "name:key": one entry of a dict / tuple output
                return replace_item(name, output, key, lambda entry: record(args, entry))
            if not isinstance(output, Tensor):
                raise output_error(name, output)
            return record(args, output)

        def record(args: tuple, output: Tensor) -> Tensor:
            self._calls[name] = self._calls.get(name, 0) + 1
            if self._record_inputs:
                if not args or not isinstance(args[0], Tensor):
                    raise TypeError(
                        f"layer {name!r} was not called with a tensor as its first positional "
                        "argument, so its input cannot be recorded"
                    )
                # No copy: the detached view shares the version counter, which backward()
                # checks, so an in-place change after the layer is detected, not silent.
                self.inputs[name] = args[0].detach()
                self._input_versions[name] = args[0]._version
            # Differentiate w.r.t. `source`; hand the rest of the model a clone so that in-place
            # ops after this layer (ReLU(inplace=True), `out += identity`) cannot overwrite the
            # recorded activation or rebase its autograd history.
            source = output if output.requires_grad else output.detach().requires_grad_(True)
            self._raw[name] = source
            self.activations[name] = self._spatial(name, source.detach())
            return source.clone()

        return hook

    def backward(self, scores: Tensor, *, create_graph: bool = False) -> None:
        """Fill :attr:`gradients` with d(sum of scores)/d(activation) for every captured layer.

        Each sample's gradient depends only on its own score, so a batch with a different
        target per sample gets the same maps as the samples explained one at a time.
        """
        if scores.dim() != 1:
            raise ValueError(f"scores must be (B,), got {tuple(scores.shape)}")
        self._check_called()
        self._check_inputs_unchanged()
        sources = [self._raw[n] for n in self.names]
        grads = torch.autograd.grad(
            scores.sum(), sources, create_graph=create_graph, allow_unused=True
        )
        for name, grad in zip(self.names, grads, strict=True):
            if grad is None:
                raise RuntimeError(
                    f"layer {name!r} receives no gradient from the target: it is not on the "
                    "path from the input to the explained output"
                )
            grad = grad if create_graph else grad.detach()
            self.gradients[name] = self._spatial(name, grad)

    def _check_called(self) -> None:
        for name in self.names:
            calls = self._calls.get(name, 0)
            if calls == 0:
                raise RuntimeError(
                    f"layer {name!r} was not called in the forward pass: is it used by the model?"
                )
            if calls > 1:
                raise RuntimeError(
                    f"layer {name!r} was called {calls} times in one forward pass; its "
                    "activation is ambiguous: choose a layer the model uses once"
                )

    def _check_inputs_unchanged(self) -> None:
        for name, version in self._input_versions.items():
            if self.inputs[name]._version != version:
                raise RuntimeError(
                    f"the input of layer {name!r} was modified in place after the layer ran "
                    "(e.g. by an inplace activation), so it cannot be used; choose a layer "
                    "whose input is not overwritten"
                )

    def _clear(self) -> None:
        self._raw.clear()
        self.inputs.clear()
        self._input_versions.clear()
        self.activations.clear()
        self.gradients.clear()
        self.outputs = None


class ModelAdapter:
    """Wraps any ``nn.Module`` without modifying it; the base of every white-box method.

    Args:
        model: the model to explain. ``torch.compile`` and ``DataParallel`` wrappers are
            unwrapped (hooks on a compiled wrapper would be ignored).
        reshape: how to turn the captured layers' outputs into ``(B, C, h, w)`` grids, see
            :data:`xai._typing.ReshapeLike`.

    Example:
        >>> adapter = ModelAdapter(model)
        >>> with adapter.capture(["layer4"]) as cap:
        ...     out = adapter.forward(x, cap)
        ...     cap.backward(adapter.scores(out, target=None))
        ...     acts, grads = cap.activations["layer4"], cap.gradients["layer4"]
    """

    def __init__(self, model: nn.Module, *, reshape: ReshapeLike = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.module = _unwrap(model)
        self.reshape = make_reshape(reshape, self.module)

    def resolve(self, layer: LayerLike) -> tuple[str, nn.Module]:
        """``(dotted_name, module)`` of a layer given by name or module (:func:`resolve_layer`)."""
        return resolve_layer(self.module, layer)

    @contextlib.contextmanager
    def capture(self, layers: Sequence[LayerLike], *, inputs: bool = False) -> Iterator[Capture]:
        """Hook ``layers`` for one forward/backward pass; the model is restored on exit.

        With ``inputs=True`` each layer's first positional input is also recorded in
        :attr:`Capture.inputs` (default ``False``: nothing extra is kept).

        Inside the block the model is in eval mode with gradients enabled (even under an outer
        ``torch.no_grad()``); on exit (also after an exception) every hook is removed, each
        submodule's ``training`` flag and each parameter's ``requires_grad`` are restored, and
        the captured tensors are released.
        """
        resolved = [self.resolve(layer) for layer in layers]
        cap = Capture([n for n, _ in resolved], self.reshape, record_inputs=inputs)
        per_module: dict[nn.Module, list] = {}  # several "name:key" entries share a module
        for i, (name, module) in enumerate(resolved):
            if name in cap.names[:i]:
                raise ValueError(f"layer {name!r} is given twice")
            per_module.setdefault(module, []).append(cap._hook(name))
        modules = {m: fns[0] if len(fns) == 1 else _chain(fns) for m, fns in per_module.items()}
        try:
            with preserved(self.module), hooks(forward=modules):
                yield cap
        finally:
            cap._clear()

    @contextlib.contextmanager
    def bound(self, extras: object = None, *, batch: int | None = None) -> Iterator[None]:
        """Pass additional inputs to every forward of the model in the block.

        Args:
            extras: an :class:`~xai.adapter.extras.AdditionalInputs`, or raw values (a tensor or
                a tuple, see there) validated for ``batch``; ``None`` binds none, hiding an
                outer binding of the same model.
            batch: the batch size of the explained inputs (needed with raw values).

        Every :class:`ModelAdapter` over the same module (a wrapped method's inner one, a
        metric's) sees the binding, in this thread or task only.
        """
        if extras is not None and not isinstance(extras, AdditionalInputs):
            if batch is None:
                raise TypeError("bound(values) needs batch=, the number of explained samples")
            extras = AdditionalInputs(extras, batch)
        with binding(self.module, extras):
            yield

    @property
    def additional_inputs(self) -> AdditionalInputs | None:
        """The additional inputs bound to the model now (``None``: none), see :meth:`bound`."""
        return bound_to(self.module)

    def forward(
        self, inputs: Tensor, capture: Capture | None = None, *, rows: Tensor | None = None
    ) -> Tensor:
        """Run the model and return its (unwrapped) output; record it on ``capture``.

        With additional inputs bound (:meth:`bound`), the model is called as
        ``model(inputs, *extras)``, the per-sample extras indexed by ``rows``: ``(n,)`` the
        original sample of each of the ``n`` input rows (``None``: ``inputs`` is the explained
        batch itself; an expanded batch without ``rows`` raises). Without extras ``rows`` is
        ignored.

        With ``capture``, the captured layers are checked right after the forward: a layer that
        was not called, or was called more than once (a reused module), raises a
        ``RuntimeError`` instead of giving an ambiguous activation.
        """
        if capture is not None:
            capture._calls.clear()
        extras = bound_to(self.module)
        args = () if extras is None else extras.for_rows(rows, inputs.shape[0])
        out = unwrap_output(self.module(inputs, *args))  # not a compiled wrapper: hooks fire
        if capture is not None:
            capture._check_called()
            capture.outputs = out
        return out

    @staticmethod
    def scores(outputs: Tensor, target: TargetLike | Target) -> Tensor:
        """One scalar per sample, ``(B,)``, for any accepted target form."""
        return as_target(target)(outputs)


def _chain(fns: list) -> Callable[[nn.Module, tuple, object], object]:
    """One forward hook running several (one per ``"name:key"`` entry of the same module)."""

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        for fn in fns:
            output = fn(module, args, output)
        return output

    return hook


def warn_if_zero(grads: Tensor, name: str) -> None:
    """Warn when a captured gradient is identically zero (e.g. ViT patch tokens of the last
    block when only the class token feeds the head).
    """
    if grads.numel() and not bool(grads.any()):
        warnings.warn(
            f"the gradient at layer {name!r} is zero everywhere; the map will be empty. For "
            "ViTs pick an earlier block (e.g. blocks[-1].norm1)",
            stacklevel=3,
        )
