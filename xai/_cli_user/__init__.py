"""Your own model and images from the command line: ``xai explain``, ``xai audit``, ``xai layers``.

A model is given as

* a torchvision or timm architecture name (``resnet18``, ``timm:convnext_tiny``), built with
  random weights and then loaded from ``--weights``;
* a TorchScript file (``torch.jit.save``); hooks cannot be registered on TorchScript, so only
  the methods that need no layer run (``saliency``, ``integrated_gradients``, ``occlusion``...);
* ``module:function`` or ``path/to/file.py:function``, a function returning an ``nn.Module``.

``--weights`` is a state dict or a checkpoint holding one (``state_dict``, ``model``,
``model_state_dict``, ``net``, ``ema`` keys; a DataParallel ``module.`` prefix is removed),
always read with ``torch.load(weights_only=True)``: a file that needs arbitrary Python objects
to unpickle is refused. Every user error is a :class:`CliError`, printed as one line that
names the fix.

The package is one module per job: :mod:`~xai._cli_user.models` (``--model``, ``--weights``),
:mod:`~xai._cli_user.images` (image files and preprocessing), :mod:`~xai._cli_user.explain`,
:mod:`~xai._cli_user.audit` and :mod:`~xai._cli_user.layers` (the three commands), and
:mod:`~xai._cli_user.parsers` (their options and the dispatch).
"""

from __future__ import annotations

from xai._cli_user.errors import CliError
from xai._cli_user.images import IMAGE_SUFFIXES, Preprocess, collect_images, parse_normalization
from xai._cli_user.models import (
    DEFAULT_LAYERS,
    LoadedModel,
    check_layer,
    default_layer,
    load_model,
    pick_methods,
    read_weights,
)
from xai._cli_user.parsers import add_parsers, run

__all__ = [
    "DEFAULT_LAYERS",
    "IMAGE_SUFFIXES",
    "CliError",
    "LoadedModel",
    "Preprocess",
    "add_parsers",
    "check_layer",
    "collect_images",
    "default_layer",
    "load_model",
    "parse_normalization",
    "pick_methods",
    "read_weights",
    "run",
]
