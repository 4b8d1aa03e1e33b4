"""The one place in ``xai`` that registers hooks on a user's model.

Every registration happens inside :func:`hooks`, a context manager built on
:class:`contextlib.ExitStack`: each handle is pushed as soon as it exists, so a failure half-way
(or an exception in the forward pass) still removes every hook registered so far.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from torch import nn

ForwardHook = Callable[[nn.Module, tuple, Any], Any]
ForwardPreHook = Callable[[nn.Module, tuple], Any]
KwargsPreHook = Callable[[nn.Module, tuple, dict], Any]


@contextlib.contextmanager
def hooks(
    forward: Mapping[nn.Module, ForwardHook] | None = None,
    forward_pre: Mapping[nn.Module, ForwardPreHook] | None = None,
    forward_pre_kwargs: Mapping[nn.Module, KwargsPreHook] | None = None,
    forward_kwargs: Mapping[nn.Module, Callable[..., Any]] | None = None,
) -> Iterator[None]:
    """Register forward hooks and forward pre-hooks for the duration of a ``with`` block.

    Args:
        forward: module -> ``hook(module, args, output)``; a non-``None`` return replaces the
            module's output (used to route the output through an identity function).
        forward_pre: module -> ``hook(module, args)``; a non-``None`` return replaces the args.
        forward_pre_kwargs: module -> ``hook(module, args, kwargs)``; a non-``None`` return
            ``(args, kwargs)`` replaces both (e.g. asking an attention module for its weights).
        forward_kwargs: module -> ``hook(module, args, kwargs, output)``; a non-``None``
            return replaces the output.

    Module backward hooks are deliberately not offered: they break with in-place operations.
    Gradients are taken with ``torch.autograd.grad`` on captured tensors instead.
    """
    with contextlib.ExitStack() as stack:
        for module, pre in (forward_pre or {}).items():
            stack.callback(module.register_forward_pre_hook(pre).remove)
        for module, pre_kw in (forward_pre_kwargs or {}).items():
            stack.callback(module.register_forward_pre_hook(pre_kw, with_kwargs=True).remove)
        for module, post_kw in (forward_kwargs or {}).items():
            stack.callback(module.register_forward_hook(post_kw, with_kwargs=True).remove)
        for module, post in (forward or {}).items():
            stack.callback(module.register_forward_hook(post).remove)
        yield
