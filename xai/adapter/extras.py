"""Additional inputs: extra forward arguments, per sample or shared, bound to a model for a call.

A model whose forward takes more than the image (``model(x, mask)``, ``model(x, scale, bias)``)
is explained with ``Method(model)(x, target, additional_inputs=(mask,))``. Every forward that
any method or metric runs then calls ``model(x_rows, *extras_for_rows)``, where the extras of a
perturbed or expanded batch are those of the sample each row was made from.

Which values are per sample is never guessed: every tensor with at least one dimension is per
sample and must have one row per sample (its first dimension is the batch size ``B``); a value
shared by all samples (a tensor or anything else) is wrapped in :class:`Shared`; 0-d tensors
and non-tensor values (``None``, numbers, strings) are passed unchanged.

The binding is per model module, in a context variable (per thread and per asyncio task):
:meth:`xai.adapter.ModelAdapter.bound` binds, and :meth:`xai.adapter.ModelAdapter.forward` of
any adapter over the same module passes the extras of the rows it is given.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AdditionalInputs", "Shared", "additional_inputs", "binding"]


class Shared:
    """A forward argument shared by every sample: passed unchanged, never indexed by row.

    Example:
        >>> Method(model)(x, additional_inputs=(per_sample_mask, Shared(class_weights)))
    """

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Shared({self.value!r})"


class AdditionalInputs:
    """Validated extra forward arguments of a batch of ``batch`` samples.

    Args:
        values: a tensor, or a tuple of values (anything else, a list included, is one value,
            as in captum's ``additional_forward_args``). Tensors with at least one dimension
            are per sample: ``(B, ...)``; wrap shared values in :class:`Shared`.
        batch: the batch size ``B`` of the explained inputs.

    Raises:
        ValueError: a tensor whose first dimension is not ``B`` (the message says to wrap a
            shared tensor in :class:`Shared`), or a floating tensor with NaN (``-inf`` is
            allowed: additive attention masks use it).
    """

    def __init__(self, values: Any, batch: int) -> None:
        if isinstance(values, AdditionalInputs):
            values = values.values
        elif not isinstance(values, tuple):
            values = (values,)
        self.values: tuple[Any, ...] = values
        self.batch = int(batch)
        for i, value in enumerate(values):
            if isinstance(value, Shared) or not isinstance(value, Tensor) or value.dim() == 0:
                continue
            if value.shape[0] != self.batch:
                raise ValueError(
                    f"additional input {i} has shape {tuple(value.shape)}: a tensor is per sample "
                    f"and needs one row per sample ({self.batch}, ...); wrap a value shared by "
                    "all samples in xai.adapter.Shared(value)"
                )
            if value.is_floating_point() and bool(torch.isnan(value).any()):
                raise ValueError(f"additional input {i} contains NaN values")

    def __len__(self) -> int:
        return len(self.values)

    def for_rows(self, rows: Tensor | None, n_rows: int) -> tuple[Any, ...]:
        """The forward arguments of a batch of ``n_rows`` rows.

        Args:
            rows: ``(n_rows,)`` index of the original sample of each row; ``None`` means the
                original batch itself (then ``n_rows`` must equal :attr:`batch`).
            n_rows: the number of rows of the forward's inputs.

        Raises:
            RuntimeError: ``rows`` is ``None`` but ``n_rows`` differs from the batch size (an
                expanded or chunked batch must say which sample each row comes from), or
                ``rows`` has the wrong length.
        """
        if rows is None:
            if n_rows != self.batch:
                raise RuntimeError(
                    f"a forward of {n_rows} rows with additional inputs bound for a batch of "
                    f"{self.batch}: pass rows= (the original sample of each row) to "
                    "ModelAdapter.forward"
                )
            return tuple(v.value if isinstance(v, Shared) else v for v in self.values)
        if rows.shape != (n_rows,):
            raise RuntimeError(
                f"rows has shape {tuple(rows.shape)} for a forward of {n_rows} rows; pass the "
                "original sample of each row"
            )
        return tuple(_take(v, rows) for v in self.values)

    def subset(self, rows: Tensor) -> AdditionalInputs:
        """The additional inputs of the samples ``rows``, as a batch of ``len(rows)``."""
        return AdditionalInputs(
            tuple(v if isinstance(v, Shared) else _take(v, rows) for v in self.values),
            rows.shape[0],
        )

    def __repr__(self) -> str:
        return f"AdditionalInputs({len(self.values)} values, batch={self.batch})"


def _take(value: Any, rows: Tensor) -> Any:
    if isinstance(value, Shared):
        return value.value
    if isinstance(value, Tensor) and value.dim() > 0:
        return value[rows.to(value.device)]
    return value


def additional_inputs(values: Any, batch: int) -> AdditionalInputs | None:
    """Validate user ``additional_inputs`` for a batch of ``batch``; ``None`` (or an empty
    tuple) is ``None``.
    """
    if values is None or (isinstance(values, tuple) and not values):
        return None
    return AdditionalInputs(values, batch)


_BOUND: contextvars.ContextVar[dict[nn.Module, AdditionalInputs | None]] = contextvars.ContextVar(
    "xai_additional_inputs"
)


def bound_to(module: nn.Module) -> AdditionalInputs | None:
    """The additional inputs bound to ``module`` now (``None``: none)."""
    return _BOUND.get({}).get(module)


@contextlib.contextmanager
def binding(module: nn.Module, extras: AdditionalInputs | None) -> Iterator[None]:
    """Bind ``extras`` to ``module`` for the block; ``None`` binds none (hiding an outer
    binding). Restored on exit, also after an exception.
    """
    token = _BOUND.set({**_BOUND.get({}), module: extras})
    try:
        yield
    finally:
        _BOUND.reset(token)
