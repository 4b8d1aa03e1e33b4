"""Scoring many perturbed copies of a batch: the one loop of every perturbation method and metric.

Score-CAM, Sobol, the perturbation metrics and concept importance all do the same thing: build
perturbed inputs chunk by chunk (memory bounded by ``batch_size``), run the model through
:meth:`ModelAdapter.forward` (so that bound additional inputs follow each row's sample), and
score each row with the target of the sample it was made from. :func:`score_rows` is that
loop; :func:`chunks` the slicing; :func:`freeze` fixes an argmax target once on the clean batch.

The fastest chunk size depends on the hardware and the model (on a small CPU one image per
forward can beat 32; on a GPU larger chunks win), so ``batch_size="auto"`` measures it on the
run's own first chunks (see :func:`score_rows`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from xai._typing import TargetLike
from xai.adapter.capture import ModelAdapter
from xai.adapter.targets import Target, as_target

__all__ = [
    "AUTO_MAX_CHUNK",
    "BatchSize",
    "as_adapter",
    "check_batch_size",
    "chunks",
    "freeze",
    "score_rows",
    "tracked",
]

BatchSize = int | Literal["auto"] | None
"""A chunk size: at most this many rows per forward, ``"auto"`` (timed), or ``None`` (all)."""

AUTO_MAX_CHUNK = 64
"""Largest chunk ``batch_size="auto"`` tries (bounds the memory of one chunk)."""


def check_batch_size(value: object, name: str = "batch_size") -> None:
    """Raise a ``ValueError`` unless ``value`` is a positive int, ``"auto"`` or ``None``."""
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, 'auto' or None, got {value!r}")


class _AutoChunk:
    """Chunk sizes for ``batch_size="auto"``: time growing sizes, then keep the fastest.

    The first chunk (one row) warms the model up untimed (lazy allocations, cuDNN autotuning);
    then chunks of 1, 2, 4, ... rows up to :data:`AUTO_MAX_CHUNK` are timed, growing while the
    rows per second improve. The first size slower than the best so far ends the tuning, and
    the best size is used for every later chunk.
    """

    def __init__(self, cap: int = AUTO_MAX_CHUNK) -> None:
        self.cap = cap
        self.size = 1
        self.warm = False
        self.tuning = True
        self.best_size, self.best_rate = 1, 0.0

    def record(self, n: int, seconds: float) -> None:
        """Account for a chunk of ``n`` rows that took ``seconds`` and pick the next size."""
        if not self.warm:
            self.warm = True
            return
        rate = n / max(seconds, 1e-9)
        if rate > self.best_rate and n == self.size:
            self.best_size, self.best_rate = self.size, rate
        if rate < self.best_rate or n < self.size or self.size >= self.cap:
            self.tuning, self.size = False, self.best_size
        else:
            self.size = min(2 * self.size, self.cap)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock measures it (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunks(total: int, size: int | None) -> list[slice]:
    """Slices covering ``range(total)`` in chunks of at most ``size`` (``None``: one chunk)."""
    size = size or total
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


def tracked(items: Sequence[slice], progress: bool, desc: str) -> Iterable[slice]:
    """``items``, wrapped in a ``tqdm`` bar labelled ``desc`` when ``progress`` is true."""
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)


def as_adapter(model: nn.Module | ModelAdapter) -> ModelAdapter:
    """``model`` wrapped in a :class:`ModelAdapter` (cheap: no hook, no copy); an adapter
    passes through.
    """
    return model if isinstance(model, ModelAdapter) else ModelAdapter(model)


def freeze(model: nn.Module | ModelAdapter, inputs: Tensor, target: TargetLike | Target) -> Target:
    """Normalize ``target``, check it against the batch and fix an argmax from a clean forward.

    A target that needs no argmax (class indices, a callable, a task target) costs no forward:
    it is validated against the model's output by the caller's first forward. The clean forward
    runs under ``torch.no_grad()`` through :meth:`ModelAdapter.forward` (additional inputs
    included).

    Args:
        model: the model or its adapter.
        inputs: the clean batch ``(B, ...)``.
        target: any accepted target form, see :func:`xai.adapter.as_target`.
    """
    tgt = as_target(target)
    tgt.check_batch(inputs.shape[0])
    if not tgt.needs_freeze:
        return tgt
    with torch.no_grad():
        outputs = as_adapter(model).forward(inputs)
    frozen = tgt.freeze(outputs)
    frozen(outputs)  # validates class indices against the output now, not mid-run
    return frozen


def score_rows(
    model: nn.Module | ModelAdapter | Callable[[Tensor], Tensor],
    target: Target,
    n_rows: int,
    build: Callable[[Tensor], Tensor],
    sample_of_row: Tensor,
    *,
    batch_size: BatchSize,
    progress: bool = False,
    desc: str = "scoring",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Target scores ``(n_rows,)`` of perturbed inputs built and scored chunk by chunk.

    Runs under ``torch.no_grad()``; the caller keeps the model in eval mode (``preserved``).

    Args:
        model: the model or its adapter; every forward goes through
            :meth:`ModelAdapter.forward` with ``rows=sample_of_row[chunk]`` (bound additional
            inputs follow the rows). Any other callable ``inputs -> outputs`` (e.g. the head
            of a model split at a layer) is called as it is.
        target: a frozen target of the clean batch (:func:`freeze`); row ``j`` is scored with
            ``target.select(sample_of_row[j])``.
        n_rows: how many perturbed inputs in total.
        build: ``rows (n,) -> inputs (n, ...)``, the perturbed inputs of those rows (``rows``
            is an ``arange`` on ``sample_of_row``'s device). Only one chunk's inputs exist at
            a time, so memory is bounded by ``batch_size``.
        sample_of_row: ``(n_rows,)`` index of the clean sample each row was made from.
        batch_size: at most this many perturbed inputs per forward (``None``: all at once).
            ``"auto"``: the chunk size with the most rows per second, measured on this run's
            first chunks: one untimed warm-up row, then chunks of 1, 2, 4, ... rows (at most
            :data:`AUTO_MAX_CHUNK`, and ``n_rows``) while the rate improves; the best size
            scores all remaining rows. Every row is still computed exactly once; results
            differ from a fixed size only by the float rounding of the batch composition
            (which may vary from run to run). On CUDA the device is synchronized at the end
            of the few timed chunks only.
        progress: show a ``tqdm`` bar over the chunks.
        desc: the bar's label.
        dtype: dtype of the returned scores; ``None``: the model's score dtype promoted to at
            least float32 (half precision models are accumulated in float32).
    """
    forward: Callable[..., Tensor]
    if isinstance(model, (nn.Module, ModelAdapter)):
        adapter = as_adapter(model)
        forward = functools.partial(adapter.forward, capture=None)
    elif callable(model):
        forward = lambda inputs, rows: model(inputs)  # noqa: E731
    else:
        raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
    check_batch_size(batch_size)
    device = sample_of_row.device
    out = []

    def score(part: slice) -> Tensor:
        rows = torch.arange(part.start, part.stop, device=device)
        samples = sample_of_row[part]
        outputs = forward(build(rows), rows=samples)
        scores = target.select(samples)(outputs).detach()
        out.append(scores.to(dtype or torch.promote_types(scores.dtype, torch.float32)))
        return scores

    with torch.no_grad():
        if batch_size != "auto":
            for part in tracked(chunks(n_rows, batch_size), progress, desc):
                score(part)
            return torch.cat(out)
        auto, start = _AutoChunk(), 0
        bar = _bar(n_rows, progress, desc)
        while start < n_rows:
            part = slice(start, min(start + auto.size, n_rows))
            clock = time.perf_counter()
            scores = score(part)
            if auto.tuning:
                _sync(scores.device)
                auto.record(part.stop - part.start, time.perf_counter() - clock)
            if bar is not None:
                bar.update(part.stop - part.start)
            start = part.stop
        if bar is not None:
            bar.close()
    return torch.cat(out)


def _bar(total: int, progress: bool, desc: str) -> Any:
    """A ``tqdm`` bar over ``total`` rows when ``progress`` is true, else ``None``."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="row")
