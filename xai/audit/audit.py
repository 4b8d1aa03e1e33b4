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

References:
    Arras, Osman, Samek, "CLEVR-XAI", Information Fusion 2022. Hurtado et al., "Global
    Saliency: Aggregating Saliency Maps to Assess Dataset Artefact Bias", arXiv 1910.07604.
    Geirhos et al., "Shortcut learning in deep neural networks", Nat. Mach. Intell. 2020.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xai._checks import check_inputs
from xai._typing import LayerLike
from xai.adapter.targets import class_indices
from xai.audit.state import AuditState, BatchStats, load_state

__all__ = ["AuditResult", "audit"]

_FLAG_TEXT = {
    "outside_object": "attribution mostly outside the object: {mass:.0%} of the positive "
    "relevance lies inside the mask (threshold {thr:.0%})",
    "fixed_location": "hot spot at a fixed location: {share:.0%} of the maps peak in the cell "
    "rows {y0}-{y1}, cols {x0}-{x1} (threshold {thr:.0%}){where}",
}


@dataclass
class AuditResult:
    """What :func:`audit` found. Tables are lists of dicts (``pandas.DataFrame(rows)`` works).

    Attributes:
        classes: one row per class: ``class``, ``name``, ``n``, ``accuracy``, ``mass_inside``
            (mean share of positive relevance inside the mask, NaN without masks),
            ``mass_inside_ci`` (95% bootstrap interval), ``area_inside`` (mean mask area share:
            what a uniform map would score), ``pointing`` (hit rate), ``hotspots`` (the top
            cells: ``{"cell": (row, col), "box": (y0, x0, y1, x1), "share": s,
            "outside": s_out}``), ``flags`` (list of flag kinds).
        groups: one row per group: ``group``, ``name``, ``n``, ``accuracy``, ``mass_inside``,
            ``pointing``.
        class_groups: one row per (class, group) with the same columns.
        flags: one dict per flag: ``class``, ``name``, ``kind``, ``message`` and the numbers.
        samples: per-sample columns (lists): ``index``, ``label``, ``prediction``, ``group``,
            ``mass_inside``, ``hit``, ``peak_row``, ``peak_col``.
        mean_maps: ``(K, H, W)`` mean of the per-sample max-normalized positive maps per class
            (rows of classes never seen are zero).
        hotspot_counts: ``(K, grid_size, grid_size)`` counts of each map's peak cell.
        worst: class -> list of the ``n_worst`` examples with the least mass inside the mask
            (or the lowest target score without masks): dicts with ``index``, ``image``
            ``(C, H, W)``, ``map`` ``(H, W)``, ``mask`` ``(H, W)`` or None, ``label``,
            ``prediction``, ``mass_inside``.
        config: the audit's settings.
        concepts: class -> the class's concepts (``audit(..., concepts=K)``), most important
            first: ``concept`` (index), ``importance`` (Sobol total index, CRAFT),
            ``mass_inside`` (share of the concept's map inside the object mask), ``peak_cell``
            and ``box`` (where its mean map peaks).
    """

    classes: list[dict]
    groups: list[dict]
    class_groups: list[dict]
    flags: list[dict]
    samples: dict[str, list]
    mean_maps: Tensor
    hotspot_counts: Tensor
    worst: dict[int, list[dict]]
    config: dict = field(default_factory=dict)
    concepts: dict[int, list[dict]] = field(default_factory=dict)

    @property
    def flagged_classes(self) -> list[int]:
        """Classes with at least one flag, sorted."""
        return sorted({f["class"] for f in self.flags})

    def to_dict(self) -> dict:
        """A JSON-serializable summary (no images): tables, flags, per-sample columns,
        hot-spot counts and the settings.
        """
        return _jsonable({
            "config": self.config,
            "classes": self.classes,
            "groups": self.groups,
            "class_groups": self.class_groups,
            "flags": self.flags,
            "samples": self.samples,
            "hotspot_counts": self.hotspot_counts.tolist(),
            "concepts": self.concepts,
            "worst": {
                str(k): [{kk: vv for kk, vv in w.items() if kk not in ("image", "map", "mask")}
                         for w in v]
                for k, v in self.worst.items()
            },
        })  # fmt: skip


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.generic,)):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- data streaming

_KEYS = {
    "inputs": ("inputs", "input", "image", "images", "x"),
    "labels": ("labels", "label", "target", "targets", "y"),
    "masks": ("masks", "mask"),
    "groups": ("groups", "group"),
}


def _as_tensor(value: Any, name: str) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (list, tuple)):
        value = torch.as_tensor(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, array or list, got {type(value).__name__}")
    return value


def _unpack(batch: Any) -> tuple[Any, Any, Any, Any]:
    if isinstance(batch, dict):
        found = {}
        for key, names in _KEYS.items():
            found[key] = next((batch[n] for n in names if n in batch), None)
        if found["inputs"] is None or found["labels"] is None:
            raise ValueError(
                f"a dict batch needs an image key {_KEYS['inputs']} and a label key "
                f"{_KEYS['labels']}; got keys {sorted(batch)}"
            )
        return found["inputs"], found["labels"], found["masks"], found["groups"]
    if isinstance(batch, (tuple, list)) and 2 <= len(batch) <= 4:
        items = list(batch) + [None] * (4 - len(batch))
        return items[0], items[1], items[2], items[3]
    raise ValueError(
        "each batch must be (inputs, labels[, masks[, groups]]) or a dict with 'inputs' and "
        f"'labels' (and optionally 'masks', 'groups'); got {type(batch).__name__}"
    )


def _stream(
    data: Any,
    labels: Any,
    masks: Any,
    groups: Any,
    batch_size: int,
    num_workers: int | None = 0,
    pin_memory: bool = False,
) -> tuple[Iterable[tuple[Any, Any, Any, Any]], int | None]:
    """Batches ``(inputs, labels, masks, groups)`` from tensors, a Dataset or a DataLoader."""
    if isinstance(data, (Tensor, np.ndarray)):
        x = _as_tensor(data, "data")
        if labels is None:
            raise ValueError("with a tensor of images, pass labels=(N,) class indices")
        y = _as_tensor(labels, "labels")
        m = _as_tensor(masks, "masks")
        g = _as_tensor(groups, "groups")
        n = x.shape[0]
        for name, t in (("labels", y), ("masks", m), ("groups", g)):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows but data has {n} images")

        def gen() -> Iterator[tuple[Any, Any, Any, Any]]:
            for i in range(0, n, batch_size):
                s = slice(i, i + batch_size)
                yield (x[s], y[s], None if m is None else m[s], None if g is None else g[s])

        return gen(), n
    if labels is not None or masks is not None or groups is not None:
        raise ValueError(
            "labels/masks/groups arguments go with a tensor of images; a Dataset or DataLoader "
            "must yield them itself: (inputs, labels[, masks[, groups]])"
        )
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        n = len(data)  # type: ignore[arg-type]
        if num_workers is None:  # auto: worker processes pay off from a few batches on
            cpus = os.cpu_count() or 1
            num_workers = min(4, cpus - 1) if n >= 4 * batch_size and cpus > 1 else 0
        loader = DataLoader(
            data,  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
        )
        return (_unpack(b) for b in loader), n
    if isinstance(data, Iterable):
        total = len(data.dataset) if isinstance(data, DataLoader) else None  # type: ignore
        return (_unpack(b) for b in data), total
    raise TypeError(
        "data must be a tensor (N, C, H, W), a torch Dataset or a DataLoader/iterable of "
        f"batches, got {type(data).__name__}"
    )


# --------------------------------------------------------------------------------- the audit


def _resolve_explainer(model: nn.Module, explainer: Any, layer: LayerLike | None) -> Any:
    if isinstance(explainer, str):
        from xai.attributions import get

        return get(explainer).create(model, layer=layer)
    if not callable(explainer):
        raise TypeError(
            "explainer must be a registry name (see xai.attributions.available()) or an "
            f"Attribution such as xai.attributions.GradCAM(model, 'layer4'), got "
            f"{type(explainer).__name__}"
        )
    return explainer


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
        labels, masks, groups: per-image class labels, object/region masks (non-zero = object)
            and group ids, with a tensor ``data`` only.
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if target not in ("label", "prediction"):
        raise ValueError(f"target must be 'label' or 'prediction', got {target!r}")
    for name, value in (
        ("batch_size", batch_size),
        ("grid_size", grid_size),
        ("checkpoint_every", checkpoint_every),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, value in (
        ("mass_threshold", mass_threshold),
        ("hotspot_threshold", hotspot_threshold),
    ):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    method = _resolve_explainer(model, explainer, layer)
    if not isinstance(concepts, int) or concepts < 0:
        raise ValueError(f"concepts must be an int >= 0, got {concepts!r}")
    if concepts and (concept_layer or layer) is None:
        raise ValueError("concepts need a layer to factorize: pass concept_layer='...'")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    keep = concept_images if concepts else 0
    settings = {"grid_size": grid_size, "n_worst": n_worst, "target": target,
                "keep_for_concepts": keep}  # fmt: skip
    if engine == "ray":
        if checkpoint is not None:
            raise ValueError(
                "checkpoint= is for the local engine; with engine='ray' pass "
                "ray_options={'checkpoint_dir': ...} (one file per finished shard)"
            )
        from xai.audit.distributed import ray_audit_state

        state = ray_audit_state(
            model, data, explainer=method, labels=labels, masks=masks, groups=groups,
            batch_size=batch_size, num_workers=num_workers or 2, progress=progress,
            **settings, **(ray_options or {}),
        )  # fmt: skip
    else:
        state = _local_state(
            model, method, data, labels, masks, groups, batch_size, checkpoint,
            checkpoint_every, num_workers, progress, **settings,
        )  # fmt: skip
    if state.seen == 0:
        raise ValueError("the dataset is empty: nothing to audit")
    config = {
        "explainer": getattr(method, "name", type(method).__name__),
        "layer": str(layer) if layer is not None else None,
        "target": target, "grid_size": grid_size, "mass_threshold": mass_threshold,
        "hotspot_threshold": hotspot_threshold, "min_samples": min_samples,
        "n_images": state.seen, "image_size": state.image_size, "has_masks": None,
        "n_bootstrap": n_bootstrap, "seed": seed, "engine": engine,
    }  # fmt: skip
    result = _summarize(state, config, class_names, group_names)
    from xai.verbalize.audit import flag_sentence

    for flag in result.flags:  # the flag in words, with the numbers it quotes
        flag["sentence"] = flag_sentence(flag, result)
    if concepts:
        result.concepts = _concepts(
            model, state, result, concepts, concept_layer or layer, concept_classes, seed, progress
        )
        for row in result.classes:
            row["concepts"] = result.concepts.get(row["class"], [])
        config.update(concepts=concepts, concept_layer=str(concept_layer or layer))
    return result


def _concepts(
    model: nn.Module,
    state: AuditState,
    result: AuditResult,
    n_concepts: int,
    layer: LayerLike,
    which: str | Sequence[int],
    seed: int,
    progress: bool,
) -> dict[int, list[dict]]:
    """Per class: the ``n_concepts`` CRAFT concepts, their importance and where they are."""
    try:
        from xai.concepts import ConceptExtractor
    except ImportError as err:  # pragma: no cover - concepts are part of the package
        raise ValueError(f"concepts need xai.concepts ({err})") from None
    if which == "flagged":
        classes = result.flagged_classes
    elif which == "all":
        classes = sorted(state.concept_inputs)
    else:
        classes = [int(c) for c in which]
    grid = result.config["grid_size"]
    h, w = state.image_size
    out: dict[int, list[dict]] = {}
    for c in classes:
        if c not in state.concept_inputs:
            continue
        x = torch.cat(state.concept_inputs[c])
        masks = state.concept_masks.get(c)
        extractor = ConceptExtractor(
            model, layer, n_concepts=n_concepts, patches="positions", seed=seed, progress=progress
        ).fit(x, c)
        importance = extractor.importance().double()
        maps = extractor.concept_maps(x).double().clamp_min(0)  # (B, K, H, W)
        mean_map = maps.mean(0)
        rows = []
        for k in torch.argsort(importance, descending=True).tolist():
            flat = int(mean_map[k].flatten().argmax())
            r, q = (flat // w) * grid // h, (flat % w) * grid // w
            inside = float("nan")
            if masks is not None:
                m = torch.cat(masks)[:, None].double()
                tot = maps[:, k].flatten(1).sum(1)
                share = (maps[:, k : k + 1] * m).flatten(1).sum(1) / tot.clamp_min(1e-300)
                inside = float(share[tot > 0].mean()) if (tot > 0).any() else float("nan")
            rows.append(
                {
                    "concept": k,
                    "importance": float(importance[k]),
                    "mass_inside": inside,
                    "peak_cell": (r, q),
                    "box": (
                        math.ceil(r * h / grid),
                        math.ceil(q * w / grid),
                        math.ceil((r + 1) * h / grid),
                        math.ceil((q + 1) * w / grid),
                    ),
                }
            )
        out[c] = rows
    return out


def _local_state(
    model: nn.Module,
    method: Any,
    data: Any,
    labels: Any,
    masks: Any,
    groups: Any,
    batch_size: int,
    checkpoint: str | Path | None,
    checkpoint_every: int,
    num_workers: int | None,
    progress: bool,
    *,
    grid_size: int,
    n_worst: int,
    target: str,
    keep_for_concepts: int,
) -> AuditState:
    """The in-process engine: stream the batches, update one :class:`AuditState`."""
    from tqdm.auto import tqdm

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches, total = _stream(
        data, labels, masks, groups, batch_size, num_workers, pin_memory=device.type == "cuda"
    )
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.is_file():
        state = load_state(ckpt)
        if (state.grid_size, state.n_worst, state.keep_for_concepts) != (
            grid_size,
            n_worst,
            keep_for_concepts,
        ):
            raise ValueError(
                f"the checkpoint {ckpt} was written by an audit with other settings "
                "(grid_size, n_worst or concepts); delete it or use another file"
            )
    else:
        state = AuditState(grid_size, n_worst, keep_for_concepts)
    skip = state.seen
    bar = tqdm(total=total, desc="audit", unit="img", disable=not progress)
    position, n_batches = 0, 0
    for x, y, m, g in batches:
        x = _as_tensor(x, "inputs")
        n = x.shape[0]
        if position + n <= skip:  # already in the checkpoint
            position += n
            bar.update(n)
            continue
        if position < skip:
            raise ValueError(
                f"the checkpoint ends inside a batch ({skip} images); resume with the same "
                "batch_size and data order"
            )
        stats = batch_stats(
            method, model, x.to(device, non_blocking=True), _as_tensor(y, "labels"),
            _as_tensor(m, "masks"), _as_tensor(g, "groups"), position, grid_size, target,
            state.image_size,
        )  # fmt: skip
        state.image_size = state.image_size or tuple(x.shape[2:])  # type: ignore[assignment]
        state.update(stats)
        position += n
        n_batches += 1
        bar.update(n)
        if ckpt is not None and n_batches % checkpoint_every == 0:
            state.save(ckpt)
    bar.close()
    if ckpt is not None and state.seen:
        state.save(ckpt)
    return state


def batch_stats(
    method: Any,
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    m: Tensor | None,
    g: Tensor | None,
    start: int,
    grid_size: int,
    target: str,
    image_size: tuple[int, int] | None = None,
) -> BatchStats:
    """Explain one batch and compute its per-sample statistics, vectorized over the batch.

    The model's predictions come from the explainer's own forward pass on the clean batch when
    it makes one (:func:`xai.adapter.observe.observe_outputs`), else from one extra forward.

    Raises:
        ValueError: shapes that do not match, labels/groups of the wrong length or kind.
    """
    from xai.adapter import preserved, unwrap_output
    from xai.adapter.observe import observe_outputs

    check_inputs(x, name="inputs")  # shape (with the fix), dtype, NaN/Inf: argmax(NaN) is 0
    if y is None:
        raise ValueError("every batch needs labels")
    n, _, h, w = x.shape
    if image_size is not None and tuple(image_size) != (h, w):
        raise ValueError(f"all images must have one size; got {(h, w)} after {image_size}")
    y = torch.as_tensor(class_indices(y.reshape(-1), "labels")).reshape(-1).cpu()
    if bool((y < 0).any()):
        raise ValueError(f"labels must be class indices >= 0, got {int(y.min())}")
    if y.shape[0] != n:
        raise ValueError(f"got {y.shape[0]} labels for {n} images")
    if m is not None:
        if m.dim() == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if tuple(m.shape) != (n, h, w):
            raise ValueError(
                f"masks of shape {tuple(m.shape)} do not match images {tuple(x.shape)}: pass "
                f"({n}, {h}, {w}) masks (non-zero = object)"
            )
        m = (m != 0).to(x.device)
    if g is not None:
        g = g.reshape(-1).long().cpu()
        if g.shape[0] != n:
            raise ValueError(f"got {g.shape[0]} group ids for {n} images")
        if bool((g < 0).any()):
            raise ValueError("group ids must be non-negative integers")
    tgt = y.to(x.device)
    if target == "label":
        with observe_outputs(model, x) as seen:
            maps = method(x, target=tgt)
        logits = seen.outputs
    else:
        logits = None
    if logits is None:
        with preserved(model), torch.no_grad():
            model.eval()
            logits = unwrap_output(model(x))
    pred = logits.argmax(1)
    if target == "prediction":
        tgt = pred
        maps = method(x, target=tgt)
    if not isinstance(maps, Tensor) or tuple(maps.shape) != (n, h, w):
        raise ValueError(
            f"the explainer returned {tuple(getattr(maps, 'shape', ()))}, expected ({n}, {h}, {w})"
            " maps at the input resolution"
        )
    maps = maps.detach().double()
    flat = maps.flatten(1)
    pos = flat.clamp_min(0)
    total = pos.sum(1)
    peak_value, peak = flat.max(1)
    has_peak = peak_value > 0  # an all-zero/negative map has no hot spot
    rows, cols = peak // w, peak % w
    scores = logits.gather(1, tgt.to(logits.device)[:, None])[:, 0].double()
    nan = torch.full((n,), float("nan"), dtype=torch.float64, device=maps.device)
    if m is not None:
        mf = m.flatten(1)
        mass = torch.where(total > 0, (pos * mf).sum(1) / total.clamp_min(1e-300), nan)
        hit = torch.where(has_peak, mf.gather(1, peak[:, None])[:, 0].double(), nan)
        area = mf.double().mean(1)
        badness = torch.where(torch.isnan(mass), -scores.to(mass), -mass)
    else:
        mass = hit = area = nan
        badness = -scores.to(maps.device)
    badness = torch.nan_to_num(badness, nan=-math.inf)
    norm = (pos / pos.amax(1).clamp_min(1e-300)[:, None]).view(n, h, w)
    cells = (rows * grid_size // h) * grid_size + cols * grid_size // w
    minus_one = torch.full_like(rows, -1)
    columns = {
        "index": torch.arange(start, start + n),
        "label": y,
        "prediction": pred.cpu(),
        "group": torch.full((n,), -1, dtype=torch.long) if g is None else g,
        "mass_inside": mass.cpu(), "area_inside": area.cpu(), "hit": hit.cpu(),
        "peak_row": torch.where(has_peak, rows, minus_one).cpu(),
        "peak_col": torch.where(has_peak, cols, minus_one).cpu(),
        "badness": badness.cpu(),
    }  # fmt: skip
    return BatchStats(
        columns, norm.cpu(), has_peak.cpu(), cells.cpu(), x, maps.float(), None if m is None else m
    )


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _bootstrap(values: Sequence[float], n_boot: int, rng: np.random.Generator) -> list[float]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size < 2 or n_boot < 1:
        return [float("nan"), float("nan")]
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _samples(state: AuditState) -> dict[str, list]:
    """The per-sample columns as lists (``group`` ``None`` where the data has none)."""
    cols = state.columns()
    out = {k: v.tolist() for k, v in cols.items() if k != "badness"}
    out["group"] = [None if v < 0 else v for v in out["group"]]
    return out


def _summarize(
    state: AuditState,
    config: dict,
    class_names: Sequence[str] | None,
    group_names: Sequence[str] | None,
) -> AuditResult:
    samples = _samples(state)
    s = {k: np.asarray(v, dtype=object) for k, v in samples.items()}
    label = s["label"].astype(np.int64)
    correct = (s["prediction"].astype(np.int64) == label).astype(np.float64)
    mass = s["mass_inside"].astype(np.float64)
    hit = s["hit"].astype(np.float64)
    area = s["area_inside"].astype(np.float64)
    has_masks = bool(np.isfinite(area).any())
    config["has_masks"] = has_masks
    grid, (h, w) = config["grid_size"], state.image_size
    rng = np.random.default_rng(config["seed"])
    n_classes = max(max(state.counts) + 1, len(class_names or ()))

    def cname(c: int) -> str:
        return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)

    def gname(gid: Any) -> str:
        if gid is None:
            return "all"
        return (
            str(group_names[gid])
            if group_names is not None and gid < len(group_names)
            else (str(gid))
        )

    def stats(sel: np.ndarray) -> dict:
        return {
            "n": int(sel.sum()),
            "accuracy": float(correct[sel].mean()) if sel.any() else float("nan"),
            "mass_inside": _nanmean(mass[sel]),
            "area_inside": _nanmean(area[sel]),
            "pointing": _nanmean(hit[sel]),
        }

    classes, flags = [], []
    for c in sorted(state.counts):
        sel = label == c
        row = {"class": c, "name": cname(c), **stats(sel)}
        row["mass_inside_ci"] = _bootstrap(mass[sel], config["n_bootstrap"], rng)
        counts = state.hotspots[c]
        order = torch.argsort(counts.flatten(), descending=True, stable=True)[:3]
        peaks_r = s["peak_row"][sel].astype(np.int64)  # -1: no hot spot (never in a cell)
        peaks_c = s["peak_col"][sel].astype(np.int64)
        hits_c = hit[sel]
        hotspots = []
        for flat in order.tolist():
            cnt = int(counts.flatten()[flat])
            if cnt == 0:
                break
            r, q = divmod(flat, grid)
            box = (
                math.ceil(r * h / grid),
                math.ceil(q * w / grid),
                math.ceil((r + 1) * h / grid),
                math.ceil((q + 1) * w / grid),
            )
            in_cell = (peaks_r * grid // h == r) & (peaks_c * grid // w == q)
            outside = float(1.0 - np.nanmean(hits_c[in_cell])) if has_masks else float("nan")
            hotspots.append(
                {"cell": (r, q), "box": box, "share": cnt / state.counts[c], "outside": outside}
            )
        row["hotspots"] = hotspots
        row["flags"] = []
        if row["n"] >= config["min_samples"]:
            if has_masks and row["mass_inside"] < min(config["mass_threshold"], row["area_inside"]):
                row["flags"].append("outside_object")
                flags.append(
                    {
                        "class": c,
                        "name": row["name"],
                        "kind": "outside_object",
                        "mass_inside": row["mass_inside"],
                        "message": _FLAG_TEXT["outside_object"].format(
                            mass=row["mass_inside"], thr=config["mass_threshold"]
                        ),
                    }
                )
            top = hotspots[0] if hotspots else None
            if (
                top is not None
                and top["share"] >= config["hotspot_threshold"]
                and (not has_masks or top["outside"] > 0.5)
            ):
                row["flags"].append("fixed_location")
                y0, x0, y1, x1 = top["box"]
                where = (
                    f"; {top['outside']:.0%} of those peaks are outside the object"
                    if has_masks
                    else ""
                )
                flags.append(
                    {
                        "class": c,
                        "name": row["name"],
                        "kind": "fixed_location",
                        "box": top["box"],
                        "share": top["share"],
                        "message": _FLAG_TEXT["fixed_location"].format(
                            share=top["share"],
                            y0=y0,
                            y1=y1 - 1,
                            x0=x0,
                            x1=x1 - 1,
                            thr=config["hotspot_threshold"],
                            where=where,
                        ),
                    }
                )
        classes.append(row)
    group_ids = [v for v in s["group"].tolist()]
    groups, class_groups = [], []
    if any(v is not None for v in group_ids):
        gid = np.asarray([-1 if v is None else v for v in group_ids], dtype=np.int64)
        for gv in sorted(set(gid.tolist())):
            sel = gid == gv
            groups.append({"group": gv, "name": gname(gv), **stats(sel)})
            for c in sorted(state.counts):
                both = sel & (label == c)
                if both.any():
                    class_groups.append(
                        {
                            "class": c,
                            "name": cname(c),
                            "group": gv,
                            "group_name": gname(gv),
                            **stats(both),
                        }
                    )
    mean_maps = torch.zeros(n_classes, h, w, dtype=torch.float64)
    hot = torch.zeros(n_classes, grid, grid, dtype=torch.long)
    for c, total in state.map_sums.items():
        mean_maps[c] = total / state.counts[c]
        hot[c] = state.hotspots[c]
    worst = {
        c: [{k: v for k, v in d.items() if k != "badness"} for d in lst]
        for c, lst in state.worst.items()
    }
    return AuditResult(classes, groups, class_groups, flags, samples, mean_maps, hot, worst, config)
