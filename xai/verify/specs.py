"""The per-operation bound rules of the tracer: what each supported operation becomes.

Each ``*_spec`` returns the fields of an :class:`~xai.verify.ops.Op` (``kind``, ``fn``,
``abs_fn``, ``transpose``, ``params``) for one operation, or a string saying why the operation
is refused; :func:`_module_rule` picks the rule of a module. :data:`SUPPORTED` lists them, and
:func:`_unsupported` is the error naming a node without a rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from xai.verify.ops import UnsupportedOperationError

_Args = tuple[Any, ...]  # a traced call's positional arguments (nodes, constants)
_Kwargs = dict[str, Any]
_IntOrTuple = int | tuple[int, ...]

SUPPORTED = (
    "nn.Linear / F.linear",
    "nn.Conv2d / F.conv2d (zero padding)",
    "nn.BatchNorm1d/2d (eval statistics)",
    "nn.ReLU / F.relu / torch.relu",
    "nn.ReLU6 / F.relu6 / nn.Hardtanh / F.hardtanh",
    "nn.LeakyReLU / F.leaky_relu",
    "nn.MaxPool2d / F.max_pool2d (no ceil_mode, no dilation, no indices)",
    "nn.AvgPool2d / F.avg_pool2d",
    "nn.AdaptiveAvgPool2d / F.adaptive_avg_pool2d",
    "nn.Flatten / torch.flatten / view / reshape",
    "mean / sum over per-sample dimensions, indexing that keeps the batch (t[:, :k])",
    "nn.Dropout* / nn.Identity (pass-through, eval)",
    "addition / subtraction of two tensors or of a constant (residuals)",
    "torch.cat",
    "multiplication / division by a constant (scalar or per-sample-shaped tensor)",
    "a final nn.Softmax / nn.LogSoftmax (stripped: bounds are on the logits)",
)


def _describe(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        return f"call_module {type(mod).__name__} at {node.target!r}"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target} (node {node.name!r})"


def _unsupported(node: torch.fx.Node, gm: torch.fx.GraphModule, why: str = "") -> Exception:
    extra = f" ({why})" if why else ""
    return UnsupportedOperationError(
        f"no bound-propagation rule for {_describe(node, gm)}{extra}. Supported: "
        + "; ".join(SUPPORTED)
        + ". Wrap the model so that it only uses these operations."
    )


_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_PASS_FUNCS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
_PASS_METHODS = ("contiguous", "clone", "detach")
_RESHAPE_FUNCS = (torch.flatten, torch.reshape)
_RESHAPE_METHODS = ("view", "reshape", "flatten", "squeeze", "unsqueeze")
_SOFTMAX = (nn.Softmax, nn.LogSoftmax)
_SOFTMAX_FUNCS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)


def _affine(fn: Callable[..., Tensor], positive: bool | None) -> dict:
    """An affine op; ``positive=True`` when its linear part has nonnegative coefficients."""
    spec: dict[str, Any] = {"kind": "affine", "fn": fn}
    if positive:

        def abs_fn(*rs: Tensor) -> Tensor:
            return fn(*rs) - fn(*[torch.zeros_like(r[:1]) for r in rs])

        spec["abs_fn"] = abs_fn
    return spec


def _identity_spec() -> dict:
    spec = _affine(lambda t: t, positive=True)
    spec["passthrough"] = True
    return spec


def _scale_spec(fn: Callable[[Tensor], Tensor], factor: float) -> dict:
    return {
        "kind": "affine",
        "fn": fn,
        "abs_fn": lambda r: r * abs(factor),
        "transpose": lambda lam: [lam * factor],
    }


def _relu_spec(low_slope: float, cap: float | None) -> dict:
    def fn(t: Tensor) -> Tensor:
        y = torch.where(t >= 0, t, t * low_slope) if low_slope else t.clamp_min(0)
        return y.clamp_max(cap) if cap is not None else y

    return {"kind": "relu", "fn": fn, "low_slope": low_slope, "cap": cap}


def _linear_spec(weight: Tensor, bias: Tensor | None) -> dict:
    w = weight.detach()
    b = None if bias is None else bias.detach()
    w_abs = w.abs()
    return {
        "kind": "affine",
        "fn": lambda t: F.linear(t, w, b),
        "abs_fn": lambda r: F.linear(r, w_abs),
        "transpose": lambda lam: [lam @ w],
        "weight": w,
        "dual": lambda m: m @ (w * w).T,  # sum_i w_ji^2 m_i, for the L2 first layer
        "op_name": "linear",
    }


def _option(args: _Args, kwargs: _Kwargs, name: str, position: int, default: Any) -> Any:
    """A traced call's argument ``name``, given by keyword or at ``position``, else ``default``."""
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else default


def _conv_spec(
    weight: Tensor,
    bias: Tensor | None,
    stride: _IntOrTuple,
    padding: _IntOrTuple,
    dilation: _IntOrTuple,
    groups: int,
) -> dict:
    w = weight.detach()
    b = None if bias is None else bias.detach()
    w_abs, w_sq = w.abs(), w * w
    kw: dict[str, Any] = {
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
    }

    def transpose(lam: Tensor, in_shape: tuple[int, ...]) -> list[Tensor]:
        # output_padding makes conv_transpose2d return exactly the input's spatial size
        out = F.conv_transpose2d(lam, w, None, stride, padding, 0, groups, dilation)
        pad_h, pad_w = in_shape[-2] - out.shape[-2], in_shape[-1] - out.shape[-1]
        if pad_h or pad_w:
            out = F.conv_transpose2d(
                lam, w, None, stride, padding, (pad_h, pad_w), groups, dilation
            )
        return [out]

    return {
        "kind": "affine",
        "fn": lambda t: F.conv2d(t, w, b, **kw),
        "abs_fn": lambda r: F.conv2d(r, w_abs, None, **kw),
        "transpose_shaped": transpose,
        "dual": lambda m: F.conv2d(m, w_sq, None, **kw),
        "op_name": "conv2d",
    }


def _conv_functional(args: _Args, kwargs: _Kwargs) -> dict:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    padding = bound.get("padding", 0)
    if isinstance(padding, str):
        raise TypeError("string padding of F.conv2d is not supported; use integers")
    return _conv_spec(
        bound["weight"],
        bound.get("bias"),
        bound.get("stride", 1),
        padding,
        bound.get("dilation", 1),
        bound.get("groups", 1),
    )


def _bn_spec(mod: nn.modules.batchnorm._BatchNorm, value: Tensor) -> dict | str:
    if mod.running_mean is None or mod.running_var is None:
        return "batch norm without running statistics (track_running_stats=False)"
    scale = torch.rsqrt(mod.running_var.detach() + mod.eps)
    if mod.weight is not None:
        scale = scale * mod.weight.detach()
    shift = -mod.running_mean.detach() * scale
    if mod.bias is not None:
        shift = shift + mod.bias.detach()
    view = (1, -1) + (1,) * (value.dim() - 2)
    s, t = scale.to(value.dtype).view(view), shift.to(value.dtype).view(view)
    return {
        "kind": "affine",
        "fn": lambda x: x * s + t,
        "abs_fn": lambda r: r * s.abs(),
        "transpose": lambda lam: [lam * s],
    }


def _maxpool_spec(
    kernel_size: _IntOrTuple,
    stride: _IntOrTuple | None = None,
    padding: _IntOrTuple = 0,
    dilation: _IntOrTuple = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> dict | str:
    pair = nn.modules.utils._pair
    if return_indices:
        return "return_indices=True"
    if ceil_mode:
        return "ceil_mode=True"
    if pair(dilation) != (1, 1):
        return "dilation > 1"
    k = pair(kernel_size)
    s = pair(stride) if stride is not None and stride != [] else k
    p = pair(padding)
    return {
        "kind": "maxpool",
        "fn": lambda t: F.max_pool2d(t, k, s, p),
        "kernel": k,
        "stride": s,
        "padding": p,
    }


def _reshape_spec(value: Tensor, fn: Callable[..., Any], args: _Args, kwargs: _Kwargs) -> dict:
    # a reshape keeps each sample's elements: re-target it to the traced per-sample shape, so
    # that shapes computed from x.size(0) work for any number of rows
    out = fn(value, *args[1:], **kwargs)
    shape = tuple(out.shape[1:])
    if out.dim() == 0 or out.shape[0] != value.shape[0]:
        raise UnsupportedOperationError(
            f"a reshape that mixes samples (shape {tuple(value.shape)} -> {tuple(out.shape)})"
        )
    spec = _affine(lambda t: t.reshape(t.shape[0], *shape), positive=True)
    spec["passthrough"] = True
    return spec


def _module_rule(mod: nn.Module):
    if isinstance(mod, nn.Linear):
        return lambda m, v: _linear_spec(m.weight, m.bias)
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            return lambda m, v: f"padding_mode={m.padding_mode!r}"
        if isinstance(mod.padding, str):
            return _string_padding_conv
        return lambda m, v: _conv_spec(m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _bn_spec
    if isinstance(mod, nn.ReLU):
        return lambda m, v: _relu_spec(0.0, None)
    if isinstance(mod, nn.ReLU6):
        return lambda m, v: _relu_spec(0.0, 6.0)
    if isinstance(mod, nn.Hardtanh):
        return lambda m, v: (
            _relu_spec(0.0, float(m.max_val))
            if m.min_val == 0.0
            else "only Hardtanh(0, max_val) (ReLU6-like) is supported"
        )
    if isinstance(mod, nn.LeakyReLU):
        return lambda m, v: (
            _relu_spec(float(m.negative_slope), None)
            if 0.0 <= m.negative_slope <= 1.0
            else "LeakyReLU needs a negative slope in [0, 1]"
        )
    if isinstance(mod, nn.MaxPool2d):
        return lambda m, v: _maxpool_spec(
            m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
        )
    if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return lambda m, v: _affine(lambda t: m(t), positive=True)
    if isinstance(mod, nn.Flatten):
        return lambda m, v: _reshape_spec(v, m.forward, (v,), {})
    if isinstance(mod, _PASS_MODULES):
        return lambda m, v: _identity_spec()
    return None


def _string_padding_conv(mod: nn.Conv2d, value: Tensor) -> dict | str:
    left_right_top_bottom = mod._reversed_padding_repeated_twice
    left, right, top, bottom = left_right_top_bottom
    if left != right or top != bottom:
        return f"asymmetric padding={mod.padding!r}"
    return _conv_spec(mod.weight, mod.bias, mod.stride, (top, left), mod.dilation, mod.groups)
