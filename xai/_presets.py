"""Cheap settings per attribution method, shared by the demo and the report card.

Constructor arguments (``layer`` included where a cheaper layer exists on MobileNetV2) that
replace the paper defaults so that a run over every registered method stays short on 2 CPU
cores. A method missing here (e.g. one added later) runs with its own defaults. Forward passes
per image are for a 224 x 224 input.
"""

from __future__ import annotations

from torch import nn

__all__ = ["CHEAP_SETTINGS", "cheap_settings"]

CHEAP_SETTINGS: dict[str, dict] = {
    # 160 channels of the last 7x7 block instead of the 1,280 of features.18: 160 masked passes
    "score_cam": {"layer": "features.16"},
    # grid 4 x 4, 8 designs: 8 * (16 + 2) = 144 passes (paper: grid 8-11, 32 designs, >= 2,112)
    "sobol_attribution": {"grid_size": 4, "n_designs": 8},
    # 48-pixel windows every 24 pixels: 8 * 8 = 64 passes (default 16/8: 729)
    "occlusion": {"window_size": 48, "stride": 24},
    # 16 quadrature points (default 50); the completeness error stays small on MobileNetV2
    "integrated_gradients": {"n_steps": 16},
    # 10 noisy copies (default 50, Smilkov et al.): a visibly noisier but recognisable map
    "smooth_grad": {"n_samples": 10},
    # the registry's working resolution, stated so that summaries show the deviation: the
    # paper's 250 px costs about 2.5e11 flops per image (about 5 s on 2 CPU cores)
    "salient_relevance": {"longest_side": 64},
}


def cheap_settings(name: str, model: nn.Module | None = None) -> dict:
    """:data:`CHEAP_SETTINGS` of method ``name``; a ``layer`` the model lacks is left out."""
    settings = dict(CHEAP_SETTINGS.get(name, {}))
    layer = settings.get("layer")
    if model is not None and layer is not None:
        if layer not in {n for n, _ in model.named_modules()}:
            del settings["layer"]
    return settings
