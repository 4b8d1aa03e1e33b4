"""Streaming the data through the in-process audit engine, with checkpoints.

:func:`batches` turns tensors, a map-style ``Dataset`` or any iterable of batches into
``(inputs, labels, masks, groups)`` batches. A ``Dataset`` whose samples are rows of tensors
(``TensorDataset``, :class:`~xai.data.shortcuts.GroundTruthSet`) is sliced like tensors; any
other ``Dataset`` is read by a ``DataLoader`` with worker processes (by default, when the
dataset has a few batches and the machine more than one core) and pinned memory when the model
is on a GPU. :func:`local_state` explains batch after
batch into one :class:`~xai.audit.state.AuditState`, saved every few batches to a checkpoint and
resumed from it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xai.audit.config import AuditConfig
from xai.audit.scoring import batch_stats
from xai.audit.state import AuditState, load_state

__all__ = ["as_tensor", "batches", "local_state", "optional_tensor", "unpack_batch"]

_KEYS = {
    "inputs": ("inputs", "input", "image", "images", "x"),
    "labels": ("labels", "label", "target", "targets", "y"),
    "masks": ("masks", "mask"),
    "groups": ("groups", "group"),
}


def as_tensor(value: Any, name: str) -> Tensor:
    """``value`` (a tensor, array or list) as a tensor, without a copy of a tensor or array.

    Raises:
        TypeError: any other kind of value (``name`` says which argument).
    """
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (list, tuple)):
        value = torch.as_tensor(value)
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, array or list, got {type(value).__name__}")
    return value


def optional_tensor(value: Any, name: str) -> Tensor | None:
    """:func:`as_tensor`, with ``None`` (no masks, no groups) passed through."""
    return None if value is None else as_tensor(value, name)


def unpack_batch(batch: Any) -> tuple[Any, Any, Any, Any]:
    """``(inputs, labels, masks, groups)`` of a tuple/list or dict batch (missing: ``None``)."""
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


def batches(
    data: Any,
    labels: Any,
    masks: Any,
    groups: Any,
    batch_size: int,
    num_workers: int | None = 0,
    pin_memory: bool = False,
) -> tuple[Iterable[tuple[Any, Any, Any, Any]], int | None]:
    """Batches ``(inputs, labels, masks, groups)`` from tensors, a Dataset or a DataLoader,
    and the number of samples (``None`` when unknown).

    Args:
        data: images ``(N, C, H, W)``, a map-style ``Dataset`` or an iterable of batches.
        labels: ``(N,)`` class indices, with tensor ``data`` only.
        masks: ``(N, H, W)`` object masks or ``None``, with tensor ``data`` only.
        groups: ``(N,)`` group ids or ``None``, with tensor ``data`` only.
        batch_size: images per batch (tensors and a ``Dataset``; a DataLoader keeps its own).
        num_workers: DataLoader worker processes for a ``Dataset`` (``None``: up to 4 when the
            dataset has at least 4 batches and the machine more than one core, else 0).
        pin_memory: pin the DataLoader's batches (for a model on a GPU).

    Raises:
        TypeError: data of another kind.
        ValueError: missing labels with tensors, or labels/masks/groups with a Dataset.
    """
    rows = None if isinstance(data, (Tensor, np.ndarray)) else _tensor_rows(data)
    if rows is not None:  # a Dataset of tensor rows: sliced, not collated item by item
        if labels is not None or masks is not None or groups is not None:
            raise ValueError(
                "labels/masks/groups arguments go with a tensor of images; a Dataset or "
                "DataLoader must yield them itself: (inputs, labels[, masks[, groups]])"
            )
        data, labels, masks, groups = rows
    if isinstance(data, (Tensor, np.ndarray)):
        x = as_tensor(data, "data")
        if labels is None:
            raise ValueError("with a tensor of images, pass labels=(N,) class indices")
        y = as_tensor(labels, "labels")
        m = optional_tensor(masks, "masks")
        g = optional_tensor(groups, "groups")
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
        n = len(data)
        if num_workers is None:  # auto: worker processes pay off from a few batches on
            cpus = os.cpu_count() or 1
            num_workers = min(4, cpus - 1) if n >= 4 * batch_size and cpus > 1 else 0
        extra: dict[str, Any] = {"prefetch_factor": 4} if num_workers > 0 else {}
        loader = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
            **extra,
        )
        return (unpack_batch(b) for b in loader), n
    if isinstance(data, Iterable):
        total = len(data.dataset) if isinstance(data, DataLoader) else None  # type: ignore
        return (unpack_batch(b) for b in data), total
    raise TypeError(
        "data must be a tensor (N, C, H, W), a torch Dataset or a DataLoader/iterable of "
        f"batches, got {type(data).__name__}"
    )


def _tensor_rows(data: Any) -> tuple[Any, Any, Any, Any] | None:
    """``(inputs, labels, masks, groups)`` of a Dataset whose samples are rows of tensors (a
    ``TensorDataset`` of 2 to 4 tensors, a :class:`~xai.data.shortcuts.GroundTruthSet`), else
    ``None``: their batches are slices, the same tensors the DataLoader would collate.
    """
    from torch.utils.data import TensorDataset

    from xai.data.shortcuts import GroundTruthSet

    if type(data) is TensorDataset and 2 <= len(data.tensors) <= 4:
        t = list(data.tensors) + [None] * (4 - len(data.tensors))
        return t[0], t[1], t[2], t[3]
    if type(data) is GroundTruthSet:
        return data.inputs, data.labels, data.masks, data.groups
    return None


def _resume(config: AuditConfig) -> tuple[AuditState, Path | None]:
    """A fresh state, or the one saved at ``config.checkpoint`` (checked against the settings)."""
    settings = (config.grid_size, config.n_worst, config.keep_for_concepts)
    ckpt = Path(config.checkpoint) if config.checkpoint is not None else None
    if ckpt is None or not ckpt.is_file():
        return AuditState(*settings), ckpt
    state = load_state(ckpt)
    if (state.grid_size, state.n_worst, state.keep_for_concepts) != settings:
        raise ValueError(
            f"the checkpoint {ckpt} was written by an audit with other settings "
            "(grid_size, n_worst or concepts); delete it or use another file"
        )
    return state, ckpt


def local_state(
    model: nn.Module, method: Any, data: Any, labels: Any, masks: Any, groups: Any,
    config: AuditConfig,
) -> AuditState:  # fmt: skip
    """The in-process engine: stream the batches, update one :class:`AuditState`.

    Batches already in ``config.checkpoint`` are skipped (the data must come in the same order
    and with the same ``batch_size``).
    """
    from tqdm.auto import tqdm

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    stream, total = batches(
        data, labels, masks, groups, config.batch_size, config.num_workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    state, ckpt = _resume(config)
    skip = state.seen
    bar = tqdm(total=total, desc="audit", unit="img", disable=not config.progress)
    position, n_batches = 0, 0
    for x, y, m, g in stream:
        x = as_tensor(x, "inputs")
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
            method, model, x.to(device, non_blocking=True), optional_tensor(y, "labels"),
            optional_tensor(m, "masks"), optional_tensor(g, "groups"), position, config.grid_size,
            config.target, state.image_size,
        )  # fmt: skip
        state.image_size = state.image_size or (int(x.shape[2]), int(x.shape[3]))
        state.update(stats)
        position += n
        n_batches += 1
        bar.update(n)
        if ckpt is not None and n_batches % config.checkpoint_every == 0:
            state.save(ckpt)
    bar.close()
    if ckpt is not None and state.seen:
        state.save(ckpt)
    return state
