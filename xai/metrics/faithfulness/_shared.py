"""Helpers shared by the faithfulness metrics: per-row broadcasting and the ranking order."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def _per_row(values: Tensor, like: Tensor) -> Tensor:
    """``(n,)`` per-row values viewed to broadcast over the rows of ``like`` (any rank)."""
    return values.view(-1, *(1,) * (like.dim() - 1))


def _check_order(order: str, allowed: Sequence[str] = ("morf", "lerf")) -> None:
    if order not in allowed:
        raise ValueError(f"order must be one of {', '.join(map(repr, allowed))}, got {order!r}")


class _ByOrder:
    """``higher_is_better`` of a perturbation curve whose ranking order is configurable.

    Declared for the MoRF order (most relevant first); removing the least relevant features
    first (``order="lerf"``) reverses what a good map does to the curve, so an instance ranking
    LeRF reports the opposite. Read on the class, it is the MoRF value.
    """

    def __init__(self, morf: bool) -> None:
        self.morf = morf

    def __get__(self, metric: object, owner: type | None = None) -> bool:
        return self.morf != (getattr(metric, "order", "morf") == "lerf")
