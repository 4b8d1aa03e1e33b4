"""What a layer's features encode: representation inversion and feature visualization.

- :class:`Inversion` (Mahendran & Vedaldi, CVPR 2015): images whose code at a layer matches
  a given image's, with the paper's regularizers, constants and schedule; the normalized
  reconstruction errors of the paper (:func:`reconstruction_error`,
  :func:`set_normalized_error`).
- :class:`FeatureVisualization` (Olah et al., Distill 2017): images that maximize a channel, a
  neuron, a layer (DeepDream) or a class logit, with a decorrelated Fourier parameterization,
  transformation robustness and composable objectives (:class:`Channel`, :class:`Neuron`,
  :class:`Layer`, :class:`Direction`, :class:`ClassLogit`, :class:`Diversity`).

Both run the model through :mod:`xai.adapter` only and leave it unchanged.
"""

from xai.features.inversion import (
    SCHEDULES,
    Inversion,
    InversionResult,
    alpha_norm,
    auto_lambda_tv,
    image_error,
    reconstruction_error,
    set_normalized_error,
    total_variation,
)
from xai.features.objectives import (
    Channel,
    ClassLogit,
    Direction,
    Diversity,
    Layer,
    Neuron,
    Objective,
)
from xai.features.param import ImageParam
from xai.features.render import FeatureVisualization, Visualization

__all__ = [
    "SCHEDULES",
    "Channel",
    "ClassLogit",
    "Direction",
    "Diversity",
    "FeatureVisualization",
    "ImageParam",
    "Inversion",
    "InversionResult",
    "Layer",
    "Neuron",
    "Objective",
    "Visualization",
    "alpha_norm",
    "auto_lambda_tv",
    "image_error",
    "reconstruction_error",
    "set_normalized_error",
    "total_variation",
]
