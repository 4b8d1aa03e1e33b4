"""Methods that wrap another method: a post-step on its maps or on the model it explains.

Post-steps compose as wrappers (like captum's ``NoiseTunnel``): ``MetaSaliency(NormGrad(...))``,
``SalientRelevance(LRP(...))``. :class:`WrappedAttribution` holds the wrapped method as
``.inner`` and provides what every wrapper needs: the type check of the wrapped method, the
registry constructor (the wrapper around its default inner method), :meth:`rebind` (the wrapped
method is re-bound too) and the ``repr``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, Generic, TypeVar, cast

from torch import nn

from xai._typing import LayerLike
from xai.attributions.base import Attribution

__all__ = ["WrappedAttribution"]

I = TypeVar("I", bound=Attribution)  # noqa: E741 (the inner method's type)


class WrappedAttribution(Attribution, Generic[I]):
    """Base of methods that wrap another :class:`~xai.attributions.base.Attribution`.

    Subclasses set :attr:`inner_type`, :attr:`inner_description` and :attr:`inner_example`
    (for the error message), implement :meth:`default_inner` (what the registry-driven code
    wraps) and ``_attribute``, which calls ``self.inner``.

    Args:
        inner: the wrapped method; the wrapper explains the same model.
        **kwargs: ``batch_size``, ``seed``, ``progress`` (see :class:`Attribution`).

    Raises:
        TypeError: ``inner`` is not an instance of :attr:`inner_type`.
    """

    inner_type: ClassVar[type] = Attribution
    """The methods this wrapper accepts."""
    inner_description: ClassVar[str] = "an xai Attribution"
    inner_example: ClassVar[str] = "NormGrad(model, 'layer4')"
    """How to build an accepted method, shown in the ``TypeError`` for anything else."""

    def __init__(self, inner: I, **kwargs: Any) -> None:
        if not isinstance(inner, self.inner_type):
            name = type(self).__name__
            raise TypeError(
                f"{name} wraps {self.inner_description}, got {type(inner).__name__}; use "
                f"{name}({self.inner_example})"
            )
        super().__init__(inner.model, **kwargs)
        self.inner = inner

    @classmethod
    @abstractmethod
    def default_inner(cls, model: nn.Module, layer: LayerLike | None, options: dict[str, Any]) -> I:
        """The method the registry constructor wraps.

        Args:
            model: the model to explain.
            layer: the registry's ``layer`` (used or ignored, as by the inner method's
                ``create``).
            options: the registry's keyword options; the inner method's own options are
                popped from it, the rest goes to the wrapper (:meth:`general_options` picks
                ``batch_size``, ``seed`` and ``progress`` for an inner method that takes them
                too).
        """

    @classmethod
    def create(
        cls, model: nn.Module, *, layer: LayerLike | None = None, **kwargs: Any
    ) -> WrappedAttribution[I]:
        """Registry constructor: the wrapper around :meth:`default_inner`."""
        inner = cls.default_inner(model, layer, kwargs)
        return cls(inner, **kwargs)

    @staticmethod
    def general_options(options: dict[str, Any]) -> dict[str, Any]:
        """The options of every :class:`Attribution` (``batch_size``, ``seed``, ``progress``)."""
        return {key: options[key] for key in ("batch_size", "seed", "progress") if key in options}

    def rebind(self, model: nn.Module) -> WrappedAttribution[I]:
        """A copy explaining ``model``; the wrapped method is re-bound to it too."""
        clone = cast(WrappedAttribution[I], super().rebind(model))
        clone.inner = cast(I, self.inner.rebind(model))
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"
