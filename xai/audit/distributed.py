"""Dataset-scale audits and batch explanations on Ray, with the numbers of the in-process engine.

The data are cut into shards of consecutive samples. A Ray Data pipeline
(``Dataset.map_batches`` with an actor pool, one actor per CPU or GPU slot, each holding its own
copy of the model and explainer) processes one shard per task:

- :func:`ray_audit_state` returns, per shard, an :class:`~xai.audit.state.AuditState` (per-class
  sums and counts, per-sample statistics); the driver merges them exactly
  (:meth:`AuditState.merge`), so that ``audit(..., engine="ray")`` reports the same tables,
  intervals (bootstrapped from the merged per-sample statistics) and flags as the local engine.
- :func:`explain_dataset` writes each shard's maps to ``.npy`` or Parquet files.

Fault tolerance: Ray Data restarts an actor that dies and retries its task. With a
``checkpoint_dir``, each finished shard is written there (atomically) as soon as the driver
receives it, and a restarted job skips the shards already on disk. A shard's result is keyed by
its id: a task that ran twice (at-least-once retries) is stored once, so no sample is counted
twice.

Pointing at a cluster: ``ray_options={"address": "ray://head-node:10001"}`` (or set
``RAY_ADDRESS``); the model, the explainer and the data source are shipped to the actors by
pickling, so they must be importable on the workers (a model defined in a notebook cell is
pickled by value with cloudpickle). Without an address, a running local Ray instance is used or a
local one is started.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from xai.audit.state import AuditState, load_state

__all__ = ["explain_dataset", "load_maps", "ray_audit_state"]


# ----------------------------------------------------------------------------- data sources
class _Samples(Protocol):
    """What the shards read: ``n`` samples, addressed by ``[start, stop)``."""

    n: int

    def get(self, start: int, stop: int) -> tuple[Any, Any, Any, Any]:
        """``(inputs, labels, masks, groups)`` of samples ``[start, stop)``."""
        ...


class _Source:
    """Index-addressable samples: ``(inputs, labels, masks, groups)`` of ``[start, stop)``."""

    def __init__(self, data: Any, labels: Any, masks: Any, groups: Any) -> None:
        from torch.utils.data import Dataset

        if isinstance(data, (Tensor, np.ndarray)):
            self.kind = "tensors"
            self.tensors: tuple[Tensor | None, ...] = tuple(
                None
                if t is None
                else torch.as_tensor(np.asarray(t) if not isinstance(t, Tensor) else t)
                for t in (data, labels, masks, groups)
            )
            if self.tensors[1] is None:
                raise ValueError("with a tensor of images, pass labels=(N,) class indices")
            self.n = int(data.shape[0])
        elif isinstance(data, Dataset) or (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")
        ):
            if any(v is not None for v in (labels, masks, groups)):
                raise ValueError(
                    "labels/masks/groups arguments go with a tensor of images; a Dataset must "
                    "yield them itself"
                )
            self.kind = "dataset"
            self.dataset = data
            self.n = len(data)
        else:
            raise TypeError(
                "the Ray engine needs data it can address by index: a tensor (N, C, H, W) or a "
                f"map-style Dataset, got {type(data).__name__} (a DataLoader or a stream cannot "
                "be sharded; use engine='local')"
            )

    def get(self, start: int, stop: int) -> tuple[Any, Any, Any, Any]:
        if self.kind == "tensors":
            return tuple(None if t is None else t[start:stop] for t in self.tensors)  # type: ignore[return-value]
        from torch.utils.data import default_collate

        from xai.audit.stream import unpack_batch as _unpack

        batch = default_collate([self.dataset[i] for i in range(start, stop)])
        return _unpack(batch)


def _required(value: Any, name: str) -> Tensor:
    """``value`` (tensor, array or list) as a tensor; ``None`` is an error here."""
    from xai.audit.stream import as_tensor as _as_tensor

    tensor = _as_tensor(value, name)
    if tensor is None:
        raise ValueError(f"the shard has no {name}")
    return tensor


def _shards(n: int, shard_size: int) -> list[tuple[int, int, int]]:
    return [(i, s, min(s + shard_size, n)) for i, s in enumerate(range(0, n, shard_size))]


# ----------------------------------------------------------------------------- the actor
class _ShardWorker:
    """A Ray Data actor: one copy of the model and explainer, one shard per call."""

    def __init__(self, model: nn.Module, explainer: Any, source_ref: Any, job: dict) -> None:
        self.model = model
        self.explainer = explainer
        if isinstance(source_ref, list):  # [object ref], so that Ray does not resolve it early
            import ray

            source_ref = ray.get(source_ref[0])
        self.source: _Samples = source_ref
        self.job = job
        if job["device"] == "cuda" and torch.cuda.is_available():
            self.model.to("cuda")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out_ids, out_payload = [], []
        for shard, start, stop in zip(batch["shard"], batch["start"], batch["stop"], strict=True):
            payload = self._run(int(start), int(stop))
            out_ids.append(int(shard))
            out_payload.append(payload)
        return {
            "shard": np.asarray(out_ids, dtype=np.int64),
            "payload": np.asarray(out_payload, dtype=object),
        }

    def _run(self, start: int, stop: int) -> bytes:
        from xai.audit.scoring import batch_stats
        from xai.audit.stream import as_tensor as _as_tensor

        job = self.job
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        x_all, y_all, m_all, g_all = self.source.get(start, stop)
        buffer = io.BytesIO()
        if job["kind"] == "audit":
            state = AuditState(job["grid_size"], job["n_worst"], job["keep_for_concepts"])
            for s in range(0, stop - start, job["batch_size"]):
                sl = slice(s, s + job["batch_size"])
                x = _required(x_all[sl], "inputs")
                stats = batch_stats(
                    self.explainer, self.model, x.to(device), _as_tensor(y_all[sl], "labels"),
                    None if m_all is None else _as_tensor(m_all[sl], "masks"),
                    None if g_all is None else _as_tensor(g_all[sl], "groups"),
                    start + s, job["grid_size"], job["target"], state.image_size,
                )  # fmt: skip
                state.image_size = state.image_size or tuple(x.shape[2:])  # type: ignore[assignment]
                state.update(stats)
            torch.save(state.state_dict(), buffer)
        else:
            maps = []
            for s in range(0, stop - start, job["batch_size"]):
                sl = slice(s, s + job["batch_size"])
                x = _required(x_all[sl], "inputs").to(device)
                tgt = None if y_all is None or job["target"] == "prediction" else y_all[sl]
                maps.append(self.explainer(x, target=tgt).detach().float().cpu())
            torch.save({"index": torch.arange(start, stop), "maps": torch.cat(maps)}, buffer)
        return buffer.getvalue()


# ----------------------------------------------------------------------------- the driver
def _ray(address: str | None):
    try:
        import ray
    except ImportError:
        raise ImportError(
            "engine='ray' needs Ray: pip install 'ray[data]' (or the project's test extra)"
        ) from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {}
        if not address and not os.environ.get("RAY_ADDRESS"):
            kwargs.update(include_dashboard=False)
        ray.init(log_to_driver=False, **kwargs)
    return ray


def _fingerprint(job: dict, n: int, shard_size: int) -> str:
    text = json.dumps({**job, "n": n, "shard_size": shard_size}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_shards(
    model: nn.Module,
    explainer: Any,
    source: _Samples,
    job: dict,
    *,
    shard_size: int,
    num_workers: int,
    num_cpus: float,
    num_gpus: float,
    checkpoint_dir: str | Path | None,
    address: str | None,
    progress: bool,
) -> Iterator[tuple[int, bytes | Path]]:
    """Yield ``(shard id, payload bytes or the file holding it)`` for every shard, in any order:
    those already in ``checkpoint_dir`` first, then the ones the actors compute.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive int, got {num_workers!r}")
    shards = _shards(source.n, shard_size)
    done: dict[int, Path] = {}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
        manifest = ckpt / "manifest.json"
        stamp = _fingerprint(job, source.n, shard_size)
        if manifest.is_file():
            previous = json.loads(manifest.read_text()).get("fingerprint")
            if previous != stamp:
                raise ValueError(
                    f"{ckpt} holds shards of another job (other data size, shard size or "
                    "settings); use a new checkpoint_dir or delete it"
                )
        else:
            manifest.write_text(
                json.dumps(
                    {"fingerprint": stamp, "n": source.n, "shard_size": shard_size, "job": job},
                    default=str,
                )
            )
        for shard, _s, _e in shards:
            path = ckpt / f"shard-{shard:06d}.pt"
            if path.is_file():
                done[shard] = path
    for shard, path in sorted(done.items()):
        yield shard, path
    todo = [(i, s, e) for i, s, e in shards if i not in done]
    if not todo:
        return
    ray = _ray(address)
    from ray.data import from_items

    source_ref = [ray.put(source)]
    items = [{"shard": i, "start": s, "stop": e} for i, s, e in todo]
    ds = from_items(items, override_num_blocks=len(items))
    results = ds.map_batches(
        _ShardWorker,
        fn_constructor_kwargs={
            "model": model,
            "explainer": explainer,
            "source_ref": source_ref,
            "job": job,
        },
        batch_size=1,
        concurrency=num_workers,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )  # fmt: skip  (Ray Data restarts dead actors and retries their tasks by default)
    from tqdm.auto import tqdm

    seen: set[int] = set()
    with tqdm(total=len(todo), desc="shards", disable=not progress) as bar:
        for row in results.iter_rows():
            shard = int(row["shard"])
            if shard in seen:  # a retried task delivered twice: keep the first
                continue
            seen.add(shard)
            payload = row["payload"]
            if ckpt is not None:
                path = ckpt / f"shard-{shard:06d}.pt"
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_bytes(payload)
                tmp.replace(path)
            bar.update(1)
            yield shard, payload


def _load_payload(payload: bytes | Path) -> Any:
    source = payload if isinstance(payload, Path) else io.BytesIO(payload)
    return torch.load(source, weights_only=True, map_location="cpu")


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
