"""Batch explanations: the maps of a whole dataset written to shard files (a resumable job).

:func:`explain_dataset` writes each shard's maps to ``.npy`` or Parquet files, on Ray or in this
process, through the shard machinery of :mod:`xai.audit.shards`; :func:`load_maps` reads them
back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xai.audit.shards import _load_payload, _run_shards, _shards, _ShardWorker, _Source

__all__ = ["explain_dataset", "load_maps"]


def explain_dataset(
    model: nn.Module,
    data: Any,
    out_dir: str | Path,
    *,
    explainer: Any,
    labels: Any = None,
    target: str = "label",
    batch_size: int = 64,
    shard_size: int | None = None,
    engine: str = "ray",
    num_workers: int = 2,
    num_cpus: float = 1,
    num_gpus: float = 0,
    file_format: str = "npy",
    address: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Explain a whole dataset and write the maps to shard files (a resumable job).

    Each shard ``i`` (``shard_size`` consecutive samples) becomes ``maps-{i:06d}.npy`` (a
    float32 ``(n, H, W)`` array) with ``index-{i:06d}.npy`` (the sample indices), or
    ``maps-{i:06d}.parquet`` (columns ``index`` and ``map``, a flattened float32 list; the
    height and width in the file's metadata). Shards already written are skipped, so a
    restarted job only computes the rest. :func:`load_maps` reads them back.

    Args:
        model: the model (pickled to each actor).
        data: images ``(N, C, H, W)`` (with optional ``labels``) or a map-style ``Dataset``.
        out_dir: the output folder (created).
        explainer: the attribution method.
        labels: with tensors: the targets (``target="label"``); else the predicted class.
        target: ``"label"`` (default; falls back to the prediction without labels) or
            ``"prediction"``.
        batch_size: images per explainer call.
        shard_size: images per file (default ``8 * batch_size``).
        engine: ``"ray"`` (default) or ``"local"`` (this process, same files).
        num_workers: Ray actors (default 2), as in :func:`ray_audit_state`.
        num_cpus: CPUs reserved by each actor (default 1).
        num_gpus: GPUs reserved by each actor (default 0).
        address: an existing Ray cluster (default: the running or a new local instance).
        file_format: ``"npy"`` (default) or ``"parquet"`` (needs pyarrow).
        progress: a progress bar over the shards.

    Returns:
        The map files, by shard.
    """
    if file_format not in ("npy", "parquet"):
        raise ValueError(f"file_format must be 'npy' or 'parquet', got {file_format!r}")
    if engine not in ("ray", "local"):
        raise ValueError(f"engine must be 'ray' or 'local', got {engine!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = (
        _Source(data, labels, None, None)
        if labels is not None or not isinstance(data, (Tensor, np.ndarray))
        else _UnlabelledSource(data)
    )
    shard_size = shard_size or 8 * batch_size
    shards = _shards(source.n, shard_size)
    ext = "npy" if file_format == "npy" else "parquet"
    files = [out / f"maps-{i:06d}.{ext}" for i, _s, _e in shards]
    todo = [sh for sh, f in zip(shards, files, strict=True) if not f.is_file()]
    job = {
        "kind": "maps",
        "target": target,
        "batch_size": batch_size,
        "device": "cuda" if num_gpus and num_gpus > 0 else "cpu",
    }
    if engine == "local":
        worker = _ShardWorker(model, explainer, source, job)
        results: Iterator[tuple[int, bytes | Path]] = ((i, worker._run(s, e)) for i, s, e in todo)
    else:
        sub = _SubsetSource(source, todo)
        results = (
            (sub.shard_ids[i], payload)
            for i, payload in _run_shards(
                model, explainer, sub, job, shard_size=shard_size, num_workers=num_workers,
                num_cpus=num_cpus, num_gpus=num_gpus, checkpoint_dir=None, address=address,
                progress=progress,
            )
        )  # fmt: skip
    bounds = {i: (s, e) for i, s, e in shards}
    for shard, payload in results:
        start, stop = bounds[shard]
        maps = _load_payload(payload)["maps"].numpy()
        _write_shard(out, shard, np.arange(start, stop), maps, file_format)
    return files


class _UnlabelledSource(_Source):
    def __init__(self, data: Any) -> None:
        images = torch.as_tensor(data)
        self.kind = "tensors"
        self.tensors = (images, None, None, None)
        self.n = int(images.shape[0])


class _SubsetSource:
    """The shards still to compute, renumbered 0..k-1 with their own sizes kept."""

    def __init__(self, source: _Source, todo: list[tuple[int, int, int]]) -> None:
        self.source = source
        self.todo = todo
        self.shard_ids = {k: i for k, (i, _s, _e) in enumerate(todo)}
        self.n = sum(e - s for _i, s, e in todo)
        self._offsets = np.cumsum([0] + [e - s for _i, s, e in todo])

    def get(self, start: int, stop: int) -> tuple[Any, Any, Any, Any]:
        k = int(np.searchsorted(self._offsets, start, side="right") - 1)
        _i, s, _e = self.todo[k]
        offset = s - int(self._offsets[k])
        return self.source.get(start + offset, stop + offset)


def _write_shard(out: Path, shard: int, index: np.ndarray, maps: np.ndarray, fmt: str) -> None:
    if fmt == "npy":
        np.save(out / f"index-{shard:06d}.npy", index)
        tmp = out / f"maps-{shard:06d}.tmp.npy"
        np.save(tmp, maps.astype(np.float32))
        tmp.replace(out / f"maps-{shard:06d}.npy")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    _n, h, w = maps.shape
    flat = pa.FixedSizeListArray.from_arrays(pa.array(maps.reshape(-1).astype(np.float32)), h * w)
    table = pa.table({"index": pa.array(index.astype(np.int64)), "map": flat})
    table = table.replace_schema_metadata({"height": str(h), "width": str(w)})
    tmp = out / f"maps-{shard:06d}.tmp.parquet"
    pq.write_table(table, tmp)
    tmp.replace(out / f"maps-{shard:06d}.parquet")


def load_maps(out_dir: str | Path) -> tuple[Tensor, Tensor]:
    """Read the shards of :func:`explain_dataset`: ``(index (N,), maps (N, H, W))`` by index.

    Raises:
        FileNotFoundError: no map shard in ``out_dir``.
    """
    out = Path(out_dir)
    npy = sorted(out.glob("maps-[0-9]*[0-9].npy"))
    parquet = sorted(out.glob("maps-[0-9]*[0-9].parquet"))
    if not npy and not parquet:
        raise FileNotFoundError(f"no maps-*.npy or maps-*.parquet shards in {out}")
    indices, maps = [], []
    for f in npy:
        shard = f.stem.split("-")[1]
        indices.append(np.load(out / f"index-{shard}.npy"))
        maps.append(np.load(f))
    for f in parquet:
        import pyarrow.parquet as pq

        table = pq.read_table(f)
        meta = table.schema.metadata
        h, w = int(meta[b"height"]), int(meta[b"width"])
        indices.append(table.column("index").to_numpy())
        flat = table.column("map").combine_chunks().flatten().to_numpy()
        maps.append(flat.reshape(-1, h, w))
    index = torch.as_tensor(np.concatenate(indices))
    order = torch.argsort(index)
    return index[order], torch.as_tensor(np.concatenate(maps))[order]
