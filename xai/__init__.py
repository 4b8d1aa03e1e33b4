"""xai: explain PyTorch vision models.

Attribution maps (``xai.attributions``), concepts (``xai.concepts``), metrics
(``xai.metrics``) and figures (``xai.visualize``) on one hook-based model adapter
(``xai.adapter``).
"""

from xai import adapter, attributions
from xai.adapter import ModelAdapter, list_layers

__version__ = "0.1.0"

__all__ = ["ModelAdapter", "__version__", "adapter", "attributions", "list_layers"]
