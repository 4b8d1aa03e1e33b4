"""The shard machinery shared by the Ray audit engine and the batch explanations.

The data are cut into shards of consecutive samples (:func:`_shards`). A Ray Data pipeline
(``Dataset.map_batches`` with an actor pool, one actor per CPU or GPU slot, each holding its own
copy of the model and explainer, :class:`_ShardWorker`) processes one shard per task
(:func:`_run_shards`): either the audit statistics of :mod:`xai.audit.distributed` or the maps of
:mod:`xai.audit.dataset_maps`.

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

from xai.audit.state import AuditState


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
