"""xai: explain PyTorch vision models.

Attribution maps (``xai.attributions``), concepts (``xai.concepts``), metrics
(``xai.metrics``), figures (``xai.visualize``) and dataset audits (``xai.audit``), on one
hook-based model adapter (``xai.adapter``).
"""

from xai import adapter, attributions
from xai._display import register_figure_formatter as _register_figure_formatter
from xai.adapter import ModelAdapter, list_layers

_register_figure_formatter()  # figures show as images in Jupyter (no-op outside IPython)

__version__ = "0.1.0"

__all__ = ["ModelAdapter", "__version__", "adapter", "attributions", "list_layers"]


def __getattr__(name: str):
    # heavier subpackages load on first use: `xai.metrics`, `xai.concepts`, `xai.audit`, ...
    import importlib

    if name in ("audit", "concepts", "data", "metrics", "verbalize", "visualize"):
        return importlib.import_module(f"xai.{name}")
    raise AttributeError(f"module 'xai' has no attribute {name!r}")
