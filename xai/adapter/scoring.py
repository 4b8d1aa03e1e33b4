"""Scoring many perturbed copies of a batch: the one loop of every perturbation method and metric.

Score-CAM, Sobol, the perturbation metrics and concept importance all do the same thing: build
perturbed inputs chunk by chunk (memory bounded by ``batch_size``), run the model through
:meth:`ModelAdapter.forward` (so that bound additional inputs follow each row's sample), and
score each row with the target of the sample it was made from. :func:`score_rows` is that
loop; :func:`chunks` the slicing; :func:`freeze` fixes an argmax target once on the clean batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from xai._typing import TargetLike
from xai.adapter.capture import ModelAdapter
from xai.adapter.targets import Target, as_target

__all__ = ["as_adapter", "chunks", "freeze", "score_rows", "tracked"]


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
    batch_size: int | None,
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
    device = sample_of_row.device
    out = []
    with torch.no_grad():
        for part in tracked(chunks(n_rows, batch_size), progress, desc):
            rows = torch.arange(part.start, part.stop, device=device)
            samples = sample_of_row[part]
            outputs = forward(build(rows), rows=samples)
            scores = target.select(samples)(outputs).detach()
            out.append(scores.to(dtype or torch.promote_types(scores.dtype, torch.float32)))
    return torch.cat(out)
