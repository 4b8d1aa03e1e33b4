"""Figures built without pyplot display as PNG images in IPython (issue 18)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from xai._display import register_figure_formatter

pytest.importorskip("IPython")


def _shell():
    from IPython.core.formatters import DisplayFormatter

    return SimpleNamespace(display_formatter=DisplayFormatter())


def test_a_plain_figure_gets_a_png_repr():
    from matplotlib.figure import Figure

    shell = _shell()
    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    data, _ = shell.display_formatter.format(fig)
    assert "image/png" not in data  # the bug: IPython alone shows only "<Figure size ...>"
    assert register_figure_formatter(shell)
    data, _ = shell.display_formatter.format(fig)
    assert data["text/plain"].startswith("<Figure size")
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"


def test_an_existing_formatter_is_kept():
    from matplotlib.figure import Figure

    shell = _shell()
    png = shell.display_formatter.formatters["image/png"]
    png.for_type(Figure, lambda fig: b"user's own")
    register_figure_formatter(shell)
    data, _ = shell.display_formatter.format(Figure())
    assert data["image/png"] == b"user's own"


def test_outside_ipython_nothing_happens(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert register_figure_formatter() is False
