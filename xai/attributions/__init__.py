"""Attribution methods. Every method: ``Method(model, ...)(inputs, target=None) -> (B, H, W)``.

Every public module (or subpackage) of this package is imported here and its ``__all__``
re-exported, so a new method needs only its own file with ``@register``: the registry, the
contract test, the CLI and the demo pick it up.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from xai.attributions.base import (
    Attribution,
    LayerAttribution,
    available,
    get,
    normalize_per_sample,
    register,
    upsample,
)

__all__ = [
    "Attribution",
    "LayerAttribution",
    "available",
    "get",
    "normalize_per_sample",
    "register",
    "upsample",
]

for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name.startswith("_") or _info.name == "base":
        continue
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
