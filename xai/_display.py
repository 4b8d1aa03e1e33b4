"""Show the library's figures as images in Jupyter, without the user calling pyplot.

Every figure of :mod:`xai.visualize` and :mod:`xai.audit` is a plain
``matplotlib.figure.Figure`` built without pyplot (no global state, no ``plt.show()``).
IPython only knows how to draw such a Figure after matplotlib's inline backend has been
activated (``%matplotlib inline`` or importing pyplot with that backend); otherwise a cell
ending in a figure shows ``<Figure size 1100x460 with 10 Axes>``. Importing :mod:`xai` in an
IPython session registers a PNG formatter for ``Figure`` with IPython's display formatter,
the same registration the inline backend makes, unless one is already there.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure_png(fig: Figure) -> bytes:
    """The PNG bytes of ``fig``, as matplotlib's inline backend renders them."""
    from IPython.core.pylabtools import print_figure

    return print_figure(fig, "png", bbox_inches="tight")


def register_figure_formatter(shell: Any = None) -> bool:
    """Register a PNG formatter for ``matplotlib.figure.Figure`` in the running IPython.

    Args:
        shell: the IPython shell (default: the running one; nothing happens outside IPython).

    Returns:
        ``True`` when a formatter for Figure is in place after the call (ours or one that was
        registered before, e.g. by ``%matplotlib inline``), ``False`` outside IPython.
    """
    if shell is None:
        if "IPython" not in sys.modules:  # never import IPython ourselves
            return False
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return False
    png = shell.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type("matplotlib.figure.Figure")
    except KeyError:
        png.for_type_by_name("matplotlib.figure", "Figure", _figure_png)
    return True
