"""Figures: functions, not classes; tensors or arrays in, matplotlib Figures/Axes out.

Nothing here calls ``plt.show()``; figures are built with ``matplotlib.figure.Figure`` so they
work without a display, and saved with :func:`save`.
"""

import importlib as _importlib

from xai.visualize._image import normalize, to_image, to_map
from xai.visualize.captions import add_caption
from xai.visualize.grid import grid, save
from xai.visualize.overlay import heatmap_rgb, overlay

__all__ = [
    "add_caption",
    "grid",
    "heatmap_rgb",
    "normalize",
    "overlay",
    "save",
    "to_image",
    "to_map",
]

# Figure families owned by other parts of the library (curves for metrics, similarity and
# concept figures) are re-exported when present.
for _mod in ("curves", "similarity", "concepts", "features", "dissection"):
    try:
        _module = _importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _err:
        if _err.name != f"{__name__}.{_mod}":
            raise
        continue
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
