"""Captions under figures: a sentence (e.g. from :mod:`xai.verbalize`) wrapped below an Axes."""

from __future__ import annotations

import textwrap

__all__ = ["add_caption"]


def add_caption(ax, text: str, *, width: int = 48, fontsize: float = 7.0):
    """Write ``text`` under ``ax``, wrapped to ``width`` characters, and return the Axes.

    The caption is an Axes text below the image (it moves with the Axes and is kept by
    ``save(..., bbox_inches="tight")``), e.g. the sentence of
    :meth:`xai.verbalize.Verbalizer.__call__` for the map shown.

    Args:
        ax: a matplotlib Axes.
        text: the caption; an empty string adds nothing.
        width: characters per line (default 48: about a 4-inch panel at 7 pt).
        fontsize: in points.

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"caption must be a str, got {type(text).__name__}")
    if text:
        ax.text(
            0.5, -0.03, textwrap.fill(text, width, break_on_hyphens=False), transform=ax.transAxes, ha="center",
            va="top", fontsize=fontsize, wrap=False,
        )  # fmt: skip
    return ax
