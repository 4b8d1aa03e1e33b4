"""Dataset-scale audits on Ray, with the numbers of the in-process engine.

The data are cut into shards of consecutive samples (:mod:`xai.audit.shards`), processed by a Ray
Data actor pool. :func:`ray_audit_state` returns, per shard, an
:class:`~xai.audit.state.AuditState` (per-class sums and counts, per-sample statistics); the
driver merges them exactly (:meth:`AuditState.merge`), so that ``audit(..., engine="ray")``
reports the same tables, intervals (bootstrapped from the merged per-sample statistics) and flags
as the local engine. Fault tolerance and cluster addresses: see :mod:`xai.audit.shards`.

The batch explanations (:func:`~xai.audit.dataset_maps.explain_dataset`,
:func:`~xai.audit.dataset_maps.load_maps`) live in :mod:`xai.audit.dataset_maps` and are
re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from xai.audit.dataset_maps import explain_dataset, load_maps
from xai.audit.shards import _load_payload, _run_shards, _Source
from xai.audit.state import AuditState, load_state

__all__ = ["explain_dataset", "load_maps", "ray_audit_state"]


def ray_audit_state(
    model: nn.Module,
    data: Any,
    *,
    explainer: Any,
    labels: Any = None,
    masks: Any = None,
    groups: Any = None,
    batch_size: int = 64,
    grid_size: int = 7,
    n_worst: int = 4,
    target: str = "label",
    keep_for_concepts: int = 0,
    num_workers: int = 2,
    shard_size: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    checkpoint_dir: str | Path | None = None,
    address: str | None = None,
    progress: bool = True,
) -> AuditState:
    """The audit's merged state, computed by ``num_workers`` Ray actors, one shard per task.

    Args:
        model: the classifier (pickled to every actor; moved to the GPU there when
            ``num_gpus > 0``).
        data: images ``(N, C, H, W)`` with ``labels`` (``masks``, ``groups``) or a map-style
            ``Dataset`` yielding ``(image, label[, mask[, group]])``.
        explainer: the attribution method (an ``Attribution`` or callable; pickled).
        labels: per-image class labels, with a tensor ``data`` only.
        masks: per-image object masks (non-zero = object), with a tensor ``data`` only.
        groups: per-image group ids, with a tensor ``data`` only.
        batch_size: images per explainer call inside a shard.
        grid_size: hot spots are binned on a ``grid_size x grid_size`` grid (default 7), as in
            :func:`xai.audit.audit`.
        n_worst: examples kept per class for the report (default 4).
        target: explain each image's ``"label"`` (default) or its ``"prediction"``.
        keep_for_concepts: the first images of each class kept for the concept step (default
            0: none).
        num_workers: actors (default 2).
        shard_size: images per task (default ``8 * batch_size``).
        num_cpus: CPUs reserved by each actor (default 1).
        num_gpus: GPUs reserved by each actor (default 0; the model runs on CUDA when > 0).
        checkpoint_dir: finished shards are written there; a rerun skips them.
        address: an existing Ray cluster (default: the running or a new local instance).
        progress: a progress bar over the shards.

    Returns:
        The merged :class:`~xai.audit.state.AuditState` (equal to the local engine's).

    Raises:
        TypeError: data that cannot be addressed by index.
        ValueError: bad settings, or a ``checkpoint_dir`` of another job.
    """
    source = _Source(data, labels, masks, groups)
    device = "cuda" if num_gpus and num_gpus > 0 else "cpu"
    job = {"kind": "audit", "grid_size": grid_size, "n_worst": n_worst, "target": target,
           "keep_for_concepts": keep_for_concepts, "batch_size": batch_size, "device": device,
           "explainer": getattr(explainer, "name", type(explainer).__name__)}  # fmt: skip
    states: dict[int, AuditState] = {}
    for shard, payload in _run_shards(
        model, explainer, source, job, shard_size=shard_size or 8 * batch_size,
        num_workers=num_workers, num_cpus=num_cpus, num_gpus=num_gpus,
        checkpoint_dir=checkpoint_dir, address=address, progress=progress,
    ):  # fmt: skip
        states[shard] = (
            load_state(payload)
            if isinstance(payload, Path)
            else AuditState.from_state_dict(_load_payload(payload))
        )
    merged = AuditState(grid_size, n_worst, keep_for_concepts)
    for shard in sorted(states):
        merged.merge(states[shard])
    return merged
