"""Captions under figures: a sentence (e.g. from :mod:`xai.verbalize`) wrapped below an Axes."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["add_caption"]


def add_caption(ax: Axes, text: str, *, width: int | None = None, fontsize: float = 7.0) -> Axes:
    """Write ``text`` under ``ax``, wrapped to ``width`` characters, and return the Axes.

    The caption is an Axes text below the image (it moves with the Axes and is kept by
    ``save(..., bbox_inches="tight")``), e.g. the sentence of
    :meth:`xai.verbalize.Verbalizer.__call__` for the map shown.

    Args:
        ax: a matplotlib Axes.
        text: the caption; an empty string adds nothing.
        width: characters per line (default: as many as fit the Axes' width, taking a
            character as 0.6 em).
        fontsize: in points.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    if text:
        if width is None:
            ax.apply_aspect()  # an image Axes shrinks to its aspect: wrap to what is drawn
            root = ax.figure.figure  # the Figure itself, also for an Axes on a SubFigure
            inches = ax.get_position().width * root.get_figwidth()
            width = max(16, int(inches * 72 / (0.6 * fontsize)))
        wrapped = textwrap.fill(text, width, break_on_hyphens=False)
        ax.text(
            0.5, -0.03, wrapped, transform=ax.transAxes, ha="center", va="top", fontsize=fontsize
        )
    return ax
