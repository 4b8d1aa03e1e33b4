"""The settings of a dataset audit, validated once: :class:`AuditConfig`.

:func:`xai.audit.audit` takes them as keywords and builds an :class:`AuditConfig`; the engines
(:mod:`xai.audit.stream`, :mod:`xai.audit.distributed`), the summary (:mod:`xai.audit.summary`)
and the concept step (:mod:`xai.audit.concepts`) read them from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from xai._typing import LayerLike

__all__ = ["AuditConfig"]


@dataclass(frozen=True)
class AuditConfig:
    """Every setting of :func:`xai.audit.audit` except the model and the data.

    The defaults and their provenance are documented on :func:`xai.audit.audit`; the
    constructor checks them (``ValueError``/``TypeError`` naming the setting and the fix).
    """

    explainer: Any = "saliency"
    layer: LayerLike | None = None
    class_names: Sequence[str] | None = None
    group_names: Sequence[str] | None = None
    target: str = "label"
    batch_size: int = 64
    grid_size: int = 7
    mass_threshold: float = 0.5
    hotspot_threshold: float = 0.5
    min_samples: int = 5
    n_worst: int = 4
    n_bootstrap: int = 200
    seed: int = 0
    checkpoint: str | Path | None = None
    checkpoint_every: int = 10
    concepts: int = 0
    concept_layer: LayerLike | None = None
    concept_classes: str | Sequence[int] = "flagged"
    concept_images: int = 32
    progress: bool = True
    engine: str = "local"
    num_workers: int | None = None
    ray_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.target not in ("label", "prediction"):
            raise ValueError(f"target must be 'label' or 'prediction', got {self.target!r}")
        for name in ("batch_size", "grid_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("mass_threshold", "hotspot_threshold"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if not isinstance(self.explainer, str) and not callable(self.explainer):
            raise TypeError(
                "explainer must be a registry name (see xai.attributions.available()) or an "
                f"Attribution such as xai.attributions.GradCAM(model, 'layer4'), got "
                f"{type(self.explainer).__name__}"
            )
        if not isinstance(self.concepts, int) or self.concepts < 0:
            raise ValueError(f"concepts must be an int >= 0, got {self.concepts!r}")
        if self.concepts and self.factorized_layer is None:
            raise ValueError("concepts need a layer to factorize: pass concept_layer='...'")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.engine == "ray" and self.checkpoint is not None:
            raise ValueError(
                "checkpoint= is for the local engine; with engine='ray' pass "
                "ray_options={'checkpoint_dir': ...} (one file per finished shard)"
            )

    @property
    def factorized_layer(self) -> LayerLike | None:
        """The layer of the concept step: ``concept_layer``, else ``layer``."""
        return self.concept_layer or self.layer

    @property
    def keep_for_concepts(self) -> int:
        """Images kept per class for the concept step (0 without concepts)."""
        return self.concept_images if self.concepts else 0

    @property
    def state_settings(self) -> dict[str, Any]:
        """The settings an engine's :class:`~xai.audit.state.AuditState` depends on."""
        return {
            "grid_size": self.grid_size,
            "n_worst": self.n_worst,
            "target": self.target,
            "keep_for_concepts": self.keep_for_concepts,
        }

    def explainer_for(self, model: nn.Module) -> Any:
        """The attribution method: ``explainer`` itself, or the registry method it names,
        built with ``get(name).create(model, layer=layer)``.
        """
        if isinstance(self.explainer, str):
            from xai.attributions import get

            return get(self.explainer).create(model, layer=self.layer)
        return self.explainer

    def summary(self, method: Any, n_images: int, image_size: Any) -> dict[str, Any]:
        """The settings recorded in :attr:`AuditResult.config` (JSON-friendly)."""
        out: dict[str, Any] = {
            "explainer": getattr(method, "name", type(method).__name__),
            "layer": str(self.layer) if self.layer is not None else None,
            "target": self.target,
            "grid_size": self.grid_size,
            "mass_threshold": self.mass_threshold,
            "hotspot_threshold": self.hotspot_threshold,
            "min_samples": self.min_samples,
            "n_images": n_images,
            "image_size": image_size,
            "has_masks": None,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "engine": self.engine,
        }
        if self.concepts:
            out.update(concepts=self.concepts, concept_layer=str(self.factorized_layer))
        return out
