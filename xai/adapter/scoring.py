"""Scoring many perturbed copies of a batch: the one loop of every perturbation method and metric.

Score-CAM, Sobol, the perturbation metrics and concept importance all do the same thing: build
perturbed inputs chunk by chunk (memory bounded by ``batch_size``), run the model through
:meth:`ModelAdapter.forward` (so that bound additional inputs follow each row's sample), and
score each row with the target of the sample it was made from. :func:`score_rows` is that
loop; :func:`chunks` the slicing; :func:`freeze` fixes an argmax target once on the clean batch.

The fastest chunk size depends on the hardware and the model (on a small CPU one image per
forward can beat 32; on a GPU larger chunks win), so ``batch_size="auto"`` measures it on the
run's own chunks and remembers it per model, input kind, device and thread count (see
:func:`score_rows`, :func:`auto_batch_sizes`, :func:`reset_auto_batch_sizes`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from xai._typing import TargetLike
from xai.adapter.capture import ModelAdapter
from xai.adapter.targets import Target, as_target

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_MAX_CHUNK",
    "AutoChoice",
    "auto_batch_sizes",
    "reset_auto_batch_sizes",
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


AUTO_REPEATS = 2
"""Timed chunks per tried size; the fastest counts, so one preempted chunk does not decide."""

AUTO_BUDGET = 0.125
"""Share of the rows scored for a model and key that timing sizes above 1 may take: each call
adds this fraction of its rows to a credit, each timed row of a trial size spends one."""

AUTO_RECHECK = 16
"""A finished choice is checked again (its size and the next timed anew) once the calls since
have added this many times its size to the credit: a choice made under another load does not
stay for good, at a cost of a few percent of those rows at most."""

AUTO_MARGIN = 0.1
"""Growing goes on only while a size's time per row is this fraction below the best's (one
size within the margin either way is allowed)."""

AutoKey = tuple[tuple[int, ...], torch.dtype, torch.device, int]
"""What an :class:`AutoChoice` is remembered for besides the model: the shape of one perturbed
input (without the batch axis), its dtype, its device, and ``torch.get_num_threads()``."""


@dataclass
class AutoChoice:
    """What ``batch_size="auto"`` learned for one model and one :data:`AutoKey`.

    Attributes:
        size: the chunk size used for the rows that are not timed.
        seconds_per_row: the fastest time per row measured at each tried size.
        done: tuning is over (a larger size was not faster, or the cap was reached). Otherwise
            the next call resumes with ``trial`` when its own row budget allows it.
        trial: the next size to time.
        flat: the last tried size was neither clearly faster nor clearly slower than the best;
            one more size is tried, then a size that is not clearly faster ends the tuning.
        credit: rows that timing sizes above 1 may still take (see :data:`AUTO_BUDGET`).
        pending: the times per row of ``trial`` measured so far (fewer than
            :data:`AUTO_REPEATS`).
    """

    size: int = 1
    seconds_per_row: dict[int, float] = field(default_factory=dict)
    done: bool = False
    trial: int = 1
    flat: bool = False
    credit: float = 0.0
    pending: list[float] = field(default_factory=list)


_TUNED: weakref.WeakKeyDictionary[Any, dict[AutoKey, AutoChoice]] = weakref.WeakKeyDictionary()
"""Every :class:`AutoChoice` per model, weakly keyed: a collected model takes its own along."""

_clock: Callable[[], float] = time.perf_counter
"""The clock of the tuner (the tests replace it with a fake one)."""


def _owner(model: object) -> object:
    """The object a choice is remembered on: the module of an adapter, else ``model`` itself."""
    return model.module if isinstance(model, ModelAdapter) else model


def auto_batch_sizes(model: nn.Module | Callable[..., Any]) -> dict[AutoKey, AutoChoice]:
    """What ``batch_size="auto"`` has learned for ``model`` (a copy), by :data:`AutoKey`.

    Example: ``{((3, 224, 224), torch.float32, device(type='cpu'), 1): AutoChoice(size=2,
    ...)}``. The choices are kept as long as the model lives; :func:`reset_auto_batch_sizes`
    forgets them, and an int ``batch_size`` bypasses the tuner altogether.
    """
    try:
        known = _TUNED.get(_owner(model), {})
    except TypeError:  # not weakly referenceable: nothing is remembered for it
        return {}
    return {key: copy.deepcopy(choice) for key, choice in known.items()}


def reset_auto_batch_sizes(model: nn.Module | Callable[..., Any] | None = None) -> None:
    """Forget what ``batch_size="auto"`` learned for ``model`` (``None``: for every model).

    Useful after the machine's load or the thread count changed in a way the key does not
    see (other processes, another GPU job): the next call tunes again.
    """
    if model is None:
        _TUNED.clear()
        return
    with contextlib.suppress(TypeError, KeyError):
        del _TUNED[_owner(model)]


def _key(inputs: Tensor) -> AutoKey:
    """The :data:`AutoKey` of perturbed inputs ``(n, ...)``: what the best chunk size depends
    on besides the model.
    """
    return tuple(inputs.shape[1:]), inputs.dtype, inputs.device, torch.get_num_threads()


def _remembered(model: object, key: AutoKey) -> tuple[AutoChoice, bool]:
    """The choice remembered for ``model`` and ``key`` (a new one if none) and whether it was
    known. A model that cannot be weakly referenced gets a fresh choice every call.
    """
    try:
        known = _TUNED.setdefault(_owner(model), {})
    except TypeError:
        return AutoChoice(), False
    found = key in known
    return known.setdefault(key, AutoChoice()), found


class _AutoChunk:
    """Chunk sizes for ``batch_size="auto"``: time growing sizes, keep the fastest.

    Sizes 1, 2, 4, ... up to ``cap`` are each timed on :data:`AUTO_REPEATS` chunks, the fastest
    per row counting (load only ever slows a chunk down, so one preempted chunk does not decide);
    a first chunk faster than the best by twice :data:`AUTO_MARGIN` is not timed again. The
    fastest size measured is used. Growing goes on while a size is at least
    :data:`AUTO_MARGIN` faster per row than the best before it; a size within the margin
    allows one more try; anything else ends the tuning. A timed
    chunk of ``s > 1`` rows is run only when it fits in the rows left and in the choice's
    credit, to which every call adds :data:`AUTO_BUDGET` of its rows: sizes above 1 take at
    most that share of all the rows scored for the model and key. A long run tunes at once,
    short calls (many batches) a size every few calls, each resuming where the last stopped.
    Once :data:`AUTO_RECHECK` times the chosen size has been added to the credit since, the
    chosen size and the next are timed again.

    Args:
        choice: the state, shared by every call for the same model and key.
        n_rows: the rows of this call.
        cap: the largest size tried.
        warm: whether the model has run on such inputs before (else the first chunk, one row,
            is an untimed warm-up: lazy allocations, cuDNN autotuning).
    """

    def __init__(
        self, choice: AutoChoice, n_rows: int, cap: int = AUTO_MAX_CHUNK, warm: bool = False
    ) -> None:
        self.choice = choice
        self.cap = cap
        self.warm = warm
        self.stopped = False  # this call's rows or the credit are spent; the choice stays open
        choice.credit += AUTO_BUDGET * n_rows
        if choice.done and choice.size < cap and choice.credit >= AUTO_RECHECK * choice.size:
            # re-time the chosen size and the next one: the load may have changed since
            choice.done, choice.flat, choice.trial, choice.pending = False, False, choice.size, []
            choice.credit = AUTO_REPEATS * 3 * choice.size

    @property
    def tuning(self) -> bool:
        """Whether the next chunk is timed."""
        return not (self.warm and (self.choice.done or self.stopped))

    def next_size(self, remaining: int) -> int:
        """Rows in the next chunk, when ``remaining`` rows are left."""
        choice = self.choice
        if not self.warm:
            return 1
        if choice.done or self.stopped:
            return min(choice.size, self.cap)
        trial = min(choice.trial, self.cap)
        if trial > 1 and trial > min(remaining, choice.credit):
            self.stopped = True
            return min(choice.size, self.cap)
        return trial

    def record(self, n: int, seconds: float) -> None:
        """Account for a chunk of ``n`` rows that took ``seconds``."""
        choice = self.choice
        if not self.warm:
            self.warm = True
            return
        if not self.tuning or n != min(choice.trial, self.cap):
            return  # the last, shorter chunk of the run: not a measurement of the size
        choice.pending.append(seconds / n)
        if n > 1:
            choice.credit -= n
        best = choice.seconds_per_row.get(choice.size) if n != choice.size else None
        decisive = best is not None and choice.pending[-1] < best * (1 - 2 * AUTO_MARGIN)
        if len(choice.pending) < AUTO_REPEATS and not decisive:
            return
        per_row, choice.pending = min(choice.pending), []
        choice.seconds_per_row[n] = per_row
        if best is None or per_row < best:
            choice.size = n  # the fastest measured
        if best is None or per_row < best * (1 - AUTO_MARGIN):
            choice.flat = False
        elif per_row < best * (1 + AUTO_MARGIN) and not choice.flat:
            choice.flat = True  # no clear difference: one more size may still be faster
        else:
            choice.done = True
        if n >= self.cap:
            choice.done = True
        if choice.done:
            choice.credit = 0.0  # the check again waits for AUTO_RECHECK * size of new credit
            logger.debug("batch_size='auto': %d rows per forward, %s", choice.size, choice)
        else:
            choice.trial = min(2 * n, self.cap)


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
    return freeze_scored(model, inputs, target)[0]


def freeze_scored(
    model: nn.Module | ModelAdapter, inputs: Tensor, target: TargetLike | Target
) -> tuple[Target, Tensor | None]:
    """:func:`freeze`, and the frozen target's scores ``(B,)`` of the clean batch when its
    forward ran (an argmax target), else ``None``: a caller whose perturbed rows include the
    clean inputs (step 0 of a deletion curve) can take these instead of running them again.
    """
    tgt = as_target(target)
    tgt.check_batch(inputs.shape[0])
    if not tgt.needs_freeze:
        return tgt, None
    with torch.no_grad():
        outputs = as_adapter(model).forward(inputs)
    frozen = tgt.freeze(outputs)
    scores = frozen(outputs)  # validates class indices against the output now, not mid-run
    return frozen, scores.detach()


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
            ``"auto"``: the chunk size with the most rows per second, measured on the run's own
            chunks (:class:`_AutoChunk`): a warm-up row, then sizes 1, 2, 4, ... (at most
            :data:`AUTO_MAX_CHUNK`) each timed twice while they are clearly faster, sizes above
            1 taking at most an eighth of the rows (:data:`AUTO_BUDGET`, counted over the
            calls); the fastest size scores the other rows. The choice is
            remembered per model (weakly) and :data:`AutoKey` (input shape, dtype, device,
            torch thread count): later calls reuse it without timing, or resume the tuning
            where a short run had to stop. Inspect it with :func:`auto_batch_sizes`, forget
            it with :func:`reset_auto_batch_sizes`; an int bypasses it. Every row is computed
            exactly once; results differ from a fixed size only by the float rounding of the
            batch composition. On CUDA the device is synchronized after timed chunks only.
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

    def score(part: slice, inputs: Tensor | None = None) -> Tensor:
        rows = torch.arange(part.start, part.stop, device=device)
        samples = sample_of_row[part]
        outputs = forward(build(rows) if inputs is None else inputs, rows=samples)
        scores = target.select(samples)(outputs).detach()
        out.append(scores.to(dtype or torch.promote_types(scores.dtype, torch.float32)))
        return scores

    with torch.no_grad():
        if batch_size != "auto":
            for part in tracked(chunks(n_rows, batch_size), progress, desc):
                score(part)
            return torch.cat(out)
        bar = _bar(n_rows, progress, desc)
        start, auto = 0, None
        while start < n_rows:
            if auto is None:  # the first row tells the key: shape, dtype, device of an input
                clock = _clock()
                first = build(torch.arange(0, 1, device=device))
                choice, known = _remembered(model, _key(first))
                auto = _AutoChunk(choice, n_rows, AUTO_MAX_CHUNK, warm=known)
                # a known choice sizes the first chunk too (else it is a one-row warm-up)
                part = slice(0, min(choice.size, AUTO_MAX_CHUNK, n_rows) if known else 1)
                if part.stop > 1:
                    first = torch.cat([first, build(torch.arange(1, part.stop, device=device))])
                scores = score(part, first)
            else:
                part = slice(start, min(start + auto.next_size(n_rows - start), n_rows))
                clock = _clock()
                scores = score(part)
            if auto.tuning:
                _sync(scores.device)
                auto.record(part.stop - part.start, _clock() - clock)
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
