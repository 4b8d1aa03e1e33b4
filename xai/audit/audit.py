"""Dataset-level attribution audit: where does the model look, per class and per group?

:func:`audit` streams a dataset through an attribution method in batches and aggregates, per
class, per group and per (class, group):

* the share of positive attribution mass inside the object/region mask (relevance mass,
  Arras et al. 2022; "Global Saliency", Hurtado et al. 2019), with a bootstrap interval;
* the pointing hit rate (is each map's maximum inside the mask?);
* the most frequent hot-spot locations (each map's maximum, binned on a ``grid_size`` grid);
* accuracy;
* the mean normalized map of each class, and the worst cases (least mass inside the mask).

It flags classes whose attributions sit mostly outside the object (``"outside_object"``) or
on one fixed image location (``"fixed_location"``): the signature of a shortcut such as a
watermark or a ruler (Geirhos et al. 2020). Memory is bounded: per sample only a few numbers
are kept, plus one running map per class and ``n_worst`` examples per class. With
``checkpoint=path`` the state is saved every few batches and a rerun resumes after the last
saved batch (the data must come in the same order).

The audit is one module per job: the settings (:mod:`xai.audit.config`), the streaming engine
with its checkpoints (:mod:`xai.audit.stream`; the Ray engine is :mod:`xai.audit.distributed`),
the per-batch scoring (:mod:`xai.audit.scoring`), the running state (:mod:`xai.audit.state`),
the tables (:mod:`xai.audit.summary`), the flag rules (:mod:`xai.audit.flags`) and the concept
step (:mod:`xai.audit.concepts`); this module is the front that ties them together.

References:
    Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 2022. Hurtado et al., "Global
    Saliency: Aggregating Saliency Maps to Assess Dataset Artefact Bias", arXiv 1910.07604.
    Geirhos et al., "Shortcut learning in deep neural networks", Nat. Mach. Intell. 2020.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from xai._typing import LayerLike
from xai.audit.concepts import class_concepts
from xai.audit.config import AuditConfig
from xai.audit.result import AuditResult
from xai.audit.stream import local_state
from xai.audit.summary import summarize

__all__ = ["AuditConfig", "AuditResult", "audit", "run_audit"]


def audit(
    model: nn.Module,
    data: Any,
    *,
    explainer: Any = "saliency",
    layer: LayerLike | None = None,
    labels: Any = None,
    masks: Any = None,
    groups: Any = None,
    class_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
    target: str = "label",
    batch_size: int = 64,
    grid_size: int = 7,
    mass_threshold: float = 0.5,
    hotspot_threshold: float = 0.5,
    min_samples: int = 5,
    n_worst: int = 4,
    n_bootstrap: int = 200,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 10,
    concepts: int = 0,
    concept_layer: LayerLike | None = None,
    concept_classes: str | Sequence[int] = "flagged",
    concept_images: int = 32,
    progress: bool = True,
    engine: str = "local",
    num_workers: int | None = None,
    ray_options: dict | None = None,
) -> AuditResult:
    """Audit where ``model``'s attributions fall over a dataset, per class and per group.

    Args:
        model: the classifier ``(B, C, H, W) -> (B, classes)``; never modified.
        data: images ``(N, C, H, W)`` (tensor or array; then pass ``labels`` and optionally
            ``masks`` ``(N, H, W)`` and ``groups`` ``(N,)``), a torch ``Dataset`` whose items are
            ``(image, label[, mask[, group]])`` or dicts with those keys, or a ``DataLoader``
            (any iterable) of such batches. Streamed ``batch_size`` images at a time.
        explainer: an attribution method (an :class:`~xai.attributions.base.Attribution` or any
            callable ``explainer(inputs, target=...) -> (B, H, W)``) or a registry name, built
            with ``get(name).create(model, layer=layer)`` (default ``"saliency"``: input
            resolution, any architecture, one backward per batch).
        layer: the layer for a named explainer that reads one (e.g. ``"features"``).
        labels: per-image class labels ``(N,)``, with a tensor ``data`` only.
        masks: object/region masks ``(N, H, W)`` (non-zero = object), with a tensor ``data``
            only.
        groups: group ids ``(N,)``, with a tensor ``data`` only.
        class_names: display name per class index.
        group_names: display name per group id.
        target: explain each image's ``"label"`` (default: what evidence the model uses for the
            true class) or its ``"prediction"``.
        batch_size: images per attribution call (memory bound).
        grid_size: hot spots are binned on a ``grid_size x grid_size`` grid (default 7: the
            resolution of a ResNet/MobileNet last layer).
        mass_threshold: flag ``"outside_object"`` when a class's mean share of positive
            relevance inside the mask is below this (default 0.5: *mostly* outside) and below
            the mean mask area (what a uniform map scores: small objects are not flagged for
            a map that is still concentrated on them).
        hotspot_threshold: flag ``"fixed_location"`` when at least this share of a class's maps
            peak in one cell and, with masks, most of those peaks lie outside the object
            (default 0.5). Maps with no positive value have no hot spot.
        min_samples: classes with fewer images are never flagged.
        n_worst: examples kept per class for the report (least mass inside the mask).
        n_bootstrap: resamples of the 95% percentile bootstrap interval of the mass inside.
        seed: seed of the bootstrap.
        checkpoint: a file to save the running state to; an existing one is resumed (its
            batches are skipped: the data must come in the same order).
        checkpoint_every: save every this many batches (and at the end).
        concepts: number of concepts per class to extract with
            :class:`xai.concepts.ConceptExtractor` (CRAFT; NMF on ``concept_layer``
            activations at every position, Sobol importance); 0 (default) skips this step.
        concept_layer: the layer to factorize (non-negative activations; default ``layer``).
        concept_classes: ``"flagged"`` (default), ``"all"`` or a list of class indices.
        concept_images: the first images of each class kept for the concepts (memory bound).
        progress: show a ``tqdm`` progress bar.
        engine: ``"local"`` (default): this process, batch after batch. ``"ray"``: shards of
            the data on a pool of Ray actors, each holding a copy of the model (see
            :func:`xai.audit.distributed.ray_audit_state`); the result equals the local one
            to float tolerance. Needs tensors or a map-style ``Dataset`` and Ray
            (``pip install "ray[data]"``).
        num_workers: local engine with a ``Dataset``: DataLoader worker processes (``None``,
            default: up to 4 when the dataset has at least 4 batches and the machine more
            than one core, else 0). Pinned memory is used when the model is on a GPU. Ray
            engine: the number of actors (default 2).
        ray_options: Ray engine settings: ``address`` (an existing cluster, e.g.
            ``"ray://head:10001"``; default: the running one or a local one), ``shard_size``
            (images per task, default ``8 * batch_size``), ``num_cpus`` / ``num_gpus`` per
            actor, ``checkpoint_dir`` (one file per finished shard; a restarted job skips
            them).

    Returns:
        An :class:`AuditResult`; :func:`xai.audit.write_report` turns it into a report.

    Raises:
        TypeError: a bad ``model``, ``data`` or ``explainer``.
        ValueError: bad settings, missing labels, masks/groups/maps whose shapes do not match.
    """
    _check_model(model)  # before the settings: the first argument's error comes first
    config = AuditConfig(
        explainer=explainer, layer=layer, class_names=class_names, group_names=group_names,
        target=target, batch_size=batch_size, grid_size=grid_size,
        mass_threshold=mass_threshold, hotspot_threshold=hotspot_threshold,
        min_samples=min_samples, n_worst=n_worst, n_bootstrap=n_bootstrap, seed=seed,
        checkpoint=checkpoint, checkpoint_every=checkpoint_every, concepts=concepts,
        concept_layer=concept_layer, concept_classes=concept_classes,
        concept_images=concept_images, progress=progress, engine=engine,
        num_workers=num_workers, ray_options=ray_options,
    )  # fmt: skip
    return run_audit(model, data, config, labels=labels, masks=masks, groups=groups)


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def run_audit(
    model: nn.Module,
    data: Any,
    config: AuditConfig,
    *,
    labels: Any = None,
    masks: Any = None,
    groups: Any = None,
) -> AuditResult:
    """:func:`audit` with its settings given as one :class:`AuditConfig`.

    Args:
        model: the classifier, as in :func:`audit`.
        data: the images or batches, as in :func:`audit`.
        config: every other setting.
        labels: with a tensor ``data``: ``(N,)`` class labels.
        masks: with a tensor ``data``: ``(N, H, W)`` object masks or ``None``.
        groups: with a tensor ``data``: ``(N,)`` group ids or ``None``.

    Returns:
        An :class:`AuditResult`.

    Raises:
        TypeError: a bad ``model`` or ``data``.
        ValueError: missing labels, masks/groups/maps whose shapes do not match.
    """
    _check_model(model)
    method = config.explainer_for(model)
    if config.engine == "ray":
        from xai.audit.distributed import ray_audit_state

        state = ray_audit_state(
            model, data, explainer=method, labels=labels, masks=masks, groups=groups,
            batch_size=config.batch_size, num_workers=config.num_workers or 2,
            progress=config.progress, **config.state_settings, **(config.ray_options or {}),
        )  # fmt: skip
    else:
        state = local_state(model, method, data, labels, masks, groups, config)
    if state.seen == 0:
        raise ValueError("the dataset is empty: nothing to audit")
    summary = config.summary(method, state.seen, state.image_size)
    result = summarize(state, summary, config.class_names, config.group_names)
    from xai.verbalize.audit import flag_sentence

    for flag in result.flags:  # the flag in words, with the numbers it quotes
        flag["sentence"] = flag_sentence(flag, result)
    if config.concepts:
        result.concepts = class_concepts(model, state, result, config)
        for row in result.classes:
            row["concepts"] = result.concepts.get(row["class"], [])
    return result
