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


def test_in_a_real_kernel_a_figure_cell_shows_a_png_only_after_import_xai(tmp_path):
    """The notebook test's check fails on the bug and passes with the fix."""
    from tests.test_notebooks import _figure_cells_without_image, notebook_tools

    nbformat, nbclient = notebook_tools()
    make = "from matplotlib.figure import Figure\nfig = Figure(figsize=(2, 1))\nfig.add_subplot()\n"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(make + "fig"),
                nbformat.v4.new_code_cell("import xai\n" + make + "fig")]  # fmt: skip
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    assert [b.split(":")[0] for b in _figure_cells_without_image(nb)] == ["cell 0"]
    assert "image/png" in nb.cells[1].outputs[0]["data"]
