"""Per-batch scoring of an audit: explain one batch, score every map, vectorized over the batch.

The share of positive relevance inside the object mask is
:class:`~xai.metrics.localization.RelevanceMassAccuracy` (Arras et al. 2022) and the hit is
:class:`~xai.metrics.localization.PointingGame` without tolerance (Zhang et al. 2016): the
audit calls their batched scoring kernels directly, without the per-call validation of the
metric front (the audit checks its batch once here).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from xai._checks import check_inputs
from xai.adapter.targets import class_indices
from xai.attributions.base import Attribution
from xai.audit.state import BatchStats
from xai.metrics.localization import PointingGame, RelevanceMassAccuracy

__all__ = ["batch_stats"]

_MASS = RelevanceMassAccuracy("positive")
_POINTING = PointingGame(tolerance=0)


def _check_batch(
    method: Any,
    x: Tensor,
    y: Tensor | None,
    m: Tensor | None,
    g: Tensor | None,
    image_size: tuple[int, int] | None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Validated ``(labels, masks, groups)`` of one batch: labels and groups ``(n,)`` long on
    the CPU, masks ``(n, H, W)`` bool on the images' device.
    """
    if not isinstance(method, Attribution) or not isinstance(x, Tensor) or x.dim() != 4:
        # an Attribution checks its inputs itself (shape, dtype, NaN/Inf): one pass, not two;
        # any other callable gets the check here (argmax(NaN) is 0)
        check_inputs(x, name="inputs")
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
        m = (m if m.dtype == torch.bool else m != 0).to(x.device)
    if g is not None:
        g = g.reshape(-1).long().cpu()
        if g.shape[0] != n:
            raise ValueError(f"got {g.shape[0]} group ids for {n} images")
        if bool((g < 0).any()):
            raise ValueError("group ids must be non-negative integers")
    return y, m, g


def _explain(method: Any, model: nn.Module, x: Tensor, y: Tensor, target: str) -> tuple:
    """``(maps, logits, explained classes)``: the predictions come from the explainer's own
    forward pass on the clean batch when it makes one, else from one extra forward through
    :meth:`ModelAdapter.forward <xai.adapter.ModelAdapter.forward>` (the output unwrapped).
    """
    from xai.adapter import ModelAdapter, preserved
    from xai.adapter.observe import observe_outputs

    tgt = y.to(x.device)
    maps = logits = None
    if target == "label":
        with observe_outputs(model, x) as seen:
            maps = method(x, target=tgt)
        logits = seen.outputs
    if logits is None:
        with preserved(model), torch.no_grad():
            model.eval()
            logits = ModelAdapter(model).forward(x)
    if target == "prediction":
        tgt = logits.argmax(1)
        maps = method(x, target=tgt)
    return maps, logits, tgt


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

    Args:
        method: the explainer, ``method(x, target=classes) -> (n, H, W)``.
        model: the classifier it explains.
        x: images ``(n, C, H, W)``.
        y: labels ``(n,)``.
        m: object masks ``(n, H, W)`` (non-zero = object) or ``None``.
        g: group ids ``(n,)`` or ``None``.
        start: the sample index of the batch's first image.
        grid_size: side of the hot-spot grid.
        target: explain the ``"label"`` or the ``"prediction"``.
        image_size: the size of the images seen so far (all must match), or ``None``.

    The model's predictions come from the explainer's own forward pass on the clean batch when
    it makes one (:func:`xai.adapter.observe.observe_outputs`), else from one extra forward.

    Raises:
        ValueError: shapes that do not match, labels/groups of the wrong length or kind.
    """
    y, m, g = _check_batch(method, x, y, m, g, image_size)
    n, _, h, w = x.shape
    maps, logits, tgt = _explain(method, model, x, y, target)
    if not isinstance(maps, Tensor) or tuple(maps.shape) != (n, h, w):
        raise ValueError(
            f"the explainer returned {tuple(getattr(maps, 'shape', ()))}, expected ({n}, {h}, {w})"
            " maps at the input resolution"
        )
    return _statistics(maps.detach(), logits, tgt, x, y, m, g, start, grid_size)


def _statistics(
    raw: Tensor,
    logits: Tensor,
    tgt: Tensor,
    x: Tensor,
    y: Tensor,
    m: Tensor | None,
    g: Tensor | None,
    start: int,
    grid_size: int,
) -> BatchStats:
    """The per-sample statistics of maps ``raw`` ``(n, H, W)`` (see :func:`batch_stats`)."""
    n, h, w = raw.shape
    # peaks, hits and the positive part in the maps' own dtype (float32 -> float64 is exact
    # and monotone: the same numbers as in float64, with half the memory traffic); ratios and
    # sums in float64
    maps = raw if raw.is_floating_point() else raw.double()
    flat = maps.flatten(1)
    peak_value, peak = flat.max(1)
    has_peak = peak_value > 0  # an all-zero/negative map has no hot spot
    rows, cols = peak // w, peak % w
    scores = logits.gather(1, tgt.to(logits.device)[:, None])[:, 0].double().to(maps.device)
    nan = torch.full((n,), float("nan"), dtype=torch.float64, device=maps.device)
    # the positive part in float64, once: the mass kernel's own clamp leaves it unchanged, and
    # it becomes the normalized map in place below
    pos = flat.clamp_min(0).double()
    if m is not None:
        mass = _MASS._score(pos.view(n, h, w), m)  # NaN for a map without positive relevance
        hit = torch.where(has_peak, _POINTING._score(maps, m), nan)
        area = m.flatten(1).sum(1).double() / (h * w)
        badness = torch.where(torch.isnan(mass), -scores, -mass)
    else:
        mass = hit = area = nan
        badness = -scores
    badness = torch.nan_to_num(badness, nan=-math.inf)
    norm = pos.div_(peak_value.double().clamp_min(1e-300)[:, None]).view(n, h, w)
    cells = (rows * grid_size // h) * grid_size + cols * grid_size // w
    minus_one = torch.full_like(rows, -1)
    columns = {
        "index": torch.arange(start, start + n),
        "label": y,
        "prediction": logits.argmax(1).cpu(),
        "group": torch.full((n,), -1, dtype=torch.long) if g is None else g,
        "mass_inside": mass.cpu(), "area_inside": area.cpu(), "hit": hit.cpu(),
        "peak_row": torch.where(has_peak, rows, minus_one).cpu(),
        "peak_col": torch.where(has_peak, cols, minus_one).cpu(),
        "badness": badness.cpu(),
    }  # fmt: skip
    return BatchStats(
        columns, norm.cpu(), has_peak.cpu(), cells.cpu(), x, raw, None if m is None else m
    )
