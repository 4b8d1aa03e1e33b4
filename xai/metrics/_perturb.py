"""Shared machinery of the perturbation metrics: features, rankings, baselines.

Conventions (shared by every perturbation metric):

- **Features** are pixels (``patch_size=1``) or non-overlapping ``patch_size`` x ``patch_size``
  patches (the last row/column of patches may be smaller); a patch's relevance is the **sum** of
  its pixels' relevance (zero-padded, as in Quantus' region perturbation). All channels of a
  pixel are perturbed together (the same mask across channels). Videos and volumes
  ``(B, C, T, H, W)`` have voxels and ``patch_size`` cubes as features, in ``(t, h, w)``
  row-major order.
- **Ranking**: most relevant first (``"morf"``) is a *stable* sort by descending relevance, so
  ties are broken by the lower flattened (row-major) feature index; ``"lerf"`` is a stable sort
  by ascending relevance, ties again by the lower index.
- **Scores** are the target's output (the logit for class targets) under ``torch.no_grad()``,
  computed in chunks of at most ``batch_size`` perturbed inputs across samples and steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

BaselineLike = float | int | str | Tensor | Callable[[Tensor], Tensor]
BASELINES = ("zero", "mean", "min", "blur")


def feature_layout(maps: Tensor, patch_size: int) -> tuple[Tensor, Tensor]:
    """Per-feature relevance ``(B, F)`` and the feature index of each pixel ``(H, W)``.

    ``patch_size=1`` makes every pixel a feature; larger patches sum the relevance of their
    pixels (the image is zero-padded to a multiple of ``patch_size``). Video maps
    ``(B, T, H, W)`` give ``(T, H, W)`` indices of voxels or ``patch_size`` cubes.
    """
    batch, *spatial = maps.shape
    if patch_size == 1:
        assign = torch.arange(math.prod(spatial), device=maps.device).view(spatial)
        return maps.flatten(1), assign
    grid = [math.ceil(n / patch_size) for n in spatial]
    pad = [
        p for g, n in zip(grid[::-1], spatial[::-1], strict=True) for p in (0, g * patch_size - n)
    ]
    padded = F.pad(maps, pad)
    split = [d for g in grid for d in (g, patch_size)]
    sums = padded.view(batch, *split).sum(tuple(range(2, 2 * len(grid) + 1, 2)))
    return sums.flatten(1), _cell_index(
        [torch.arange(n, device=maps.device) // patch_size for n in spatial], grid
    )


def _cell_index(cells: list[Tensor], grid: list[int]) -> Tensor:
    """Row-major cell index ``(*spatial)`` from each axis' cell ``(n_axis,)`` in a ``grid``."""
    index = torch.zeros((), dtype=torch.long, device=cells[0].device)
    for axis, (cell, size) in enumerate(zip(cells, grid, strict=True)):
        shape = [1] * len(cells)
        shape[axis] = -1
        index = index * size + cell.view(shape)
    return index


def grid_layout(spatial: Sequence[int], grid_size: int | None, device: torch.device) -> Tensor:
    """Feature index ``(H, W)`` of a ``grid_size`` x ``grid_size`` grid of cells covering the
    image (nearest-neighbour upsampling of the grid, as Xplique's mu-fidelity); ``None``: pixels.
    ``spatial`` is ``(H, W)``, or ``(T, H, W)`` for a ``grid_size`` cube grid over a video.
    """
    if grid_size is None:
        return torch.arange(math.prod(spatial), device=device).view(tuple(spatial))
    cells = [torch.arange(n, device=device) * grid_size // n for n in spatial]
    return _cell_index(cells, [grid_size] * len(spatial))


def rank_positions(scores: Tensor, order: str = "morf") -> Tensor:
    """Position ``(B, F)`` of every feature in the perturbation order (0 = perturbed first).

    ``"morf"``: stable sort by descending relevance; ``"lerf"``: stable sort by ascending
    relevance. Ties go to the lower feature index in both cases.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    ranked = torch.sort(scores, dim=1, descending=order == "morf", stable=True).indices
    positions = torch.empty_like(ranked)
    arange = torch.arange(scores.shape[1], device=scores.device).expand_as(ranked)
    positions.scatter_(1, ranked, arange)
    return positions


def gaussian_blur(inputs: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Per-channel Gaussian blur with reflect padding (RISE's insertion baseline: 11, sigma 5).

    Blurs the last two axes: videos ``(B, C, T, H, W)`` are blurred frame by frame.
    """
    kernel_size = min(kernel_size, 2 * min(inputs.shape[-2:]) - 1)
    kernel_size -= 1 - kernel_size % 2
    half = kernel_size // 2
    coords = torch.arange(kernel_size, dtype=inputs.dtype, device=inputs.device) - half
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    planes = inputs.reshape(-1, 1, *inputs.shape[-2:])
    pad = F.pad(planes, (half, half, half, half), mode="reflect") if half else planes
    out = F.conv2d(F.conv2d(pad, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return out.view(inputs.shape)


def resolve_baseline(baseline: BaselineLike, inputs: Tensor) -> Tensor:
    """The replacement values ``(B, C, H, W)`` (or ``(B, C, T, H, W)``) for a baseline.

    Args:
        baseline: a number (constant), ``"zero"``, ``"mean"`` (each sample's per-channel mean),
            ``"min"`` (each sample's minimum over all channels: Quantus' ``"black"``),
            ``"blur"`` (Gaussian blur, kernel 11, sigma 5: RISE's insertion start), a tensor
            broadcastable to the inputs, or a callable ``inputs -> (B, C, H, W)``.
        inputs: the clean batch.

    Raises:
        ValueError: an unknown name or a shape that cannot be broadcast.
    """
    if isinstance(baseline, bool):
        raise TypeError("baseline must be a number, a name, a tensor or a callable, not a bool")
    if isinstance(baseline, (int, float)):
        return torch.full_like(inputs, float(baseline))
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros_like(inputs)
        if baseline == "mean":
            spatial = tuple(range(2, inputs.dim()))
            return inputs.mean(spatial, keepdim=True).expand_as(inputs).clone()
        if baseline == "min":
            return (
                inputs.amin(tuple(range(1, inputs.dim())), keepdim=True).expand_as(inputs).clone()
            )
        if baseline == "blur":
            return gaussian_blur(inputs)
        raise ValueError(
            f"unknown baseline {baseline!r}; use a number, one of {', '.join(BASELINES)}, a "
            "tensor broadcastable to the inputs or a callable inputs -> baseline"
        )
    if isinstance(baseline, Tensor):
        try:
            return baseline.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs).clone()
        except RuntimeError:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} cannot be broadcast to the inputs "
                f"{tuple(inputs.shape)}"
            ) from None
    if callable(baseline):
        out = baseline(inputs)
        if not isinstance(out, Tensor) or out.shape != inputs.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"a baseline callable must return a tensor shaped like the inputs "
                f"{tuple(inputs.shape)}, got {shape}"
            )
        return out.to(dtype=inputs.dtype)
    raise TypeError(
        f"baseline must be a number, a name, a tensor or a callable, got {type(baseline).__name__}"
    )


def check_baseline(baseline: BaselineLike) -> None:
    """Validate a baseline at construction time (names and types)."""
    if isinstance(baseline, bool) or not (
        isinstance(baseline, (int, float, str, Tensor)) or callable(baseline)
    ):
        raise TypeError(
            "baseline must be a number, a name, a tensor or a callable, got "
            f"{type(baseline).__name__}"
        )
    if isinstance(baseline, str) and baseline not in BASELINES:
        raise ValueError(
            f"unknown baseline {baseline!r}; use a number, one of {', '.join(BASELINES)}, a "
            "tensor broadcastable to the inputs or a callable inputs -> baseline"
        )


def noisy_linear_imputation(
    image: Tensor, removed: Tensor, noise: float, generator: torch.Generator | None
) -> Tensor:
    """Fill the ``removed`` pixels ``(H, W)`` of ``image`` ``(C, H, W)`` by ROAD's imputation.

    Each removed pixel equals the weighted mean of its valid 8 neighbours (weight 1/6 for the
    direct and 1/12 for the diagonal ones, renormalized at the border), removed neighbours being
    unknowns too: one sparse linear system per image, shared by the channels, solved with SciPy.
    Gaussian noise of standard deviation ``noise`` is added to the imputed values.

    References:
        Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods",
        ICML 2022.
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    flat_removed = removed.flatten().cpu().numpy()
    unknown = np.flatnonzero(flat_removed)
    if unknown.size == 0:
        return image.clone()
    values = image.detach().reshape(channels, -1).cpu().double().numpy()
    var_id = np.full(height * width, -1, dtype=np.int64)
    var_id[unknown] = np.arange(unknown.size)
    rows_u, cols_u = np.divmod(unknown, width)
    diag = np.zeros(unknown.size)
    rhs = np.zeros((unknown.size, channels))
    a_rows, a_cols, a_vals = [], [], []
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for dy, dx in offsets:
        weight = 1 / 12 if dy and dx else 1 / 6
        ny, nx = rows_u + dy, cols_u + dx
        valid = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        idx = np.flatnonzero(valid)
        neighbour = ny[idx] * width + nx[idx]
        diag[idx] += weight
        is_unknown = flat_removed[neighbour]
        known_rows = idx[~is_unknown]
        rhs[known_rows] += weight * values[:, neighbour[~is_unknown]].T
        a_rows.append(idx[is_unknown])
        a_cols.append(var_id[neighbour[is_unknown]])
        a_vals.append(np.full(int(is_unknown.sum()), -weight))
    a_rows.append(np.arange(unknown.size))
    a_cols.append(np.arange(unknown.size))
    a_vals.append(diag)
    matrix = coo_matrix(
        (np.concatenate(a_vals), (np.concatenate(a_rows), np.concatenate(a_cols))),
        shape=(unknown.size, unknown.size),
    ).tocsc()
    solution = spsolve(matrix, rhs).reshape(unknown.size, channels)
    out = image.detach().clone().reshape(channels, -1)
    filled = torch.as_tensor(solution.T, dtype=image.dtype, device=image.device)
    if noise:
        filled = filled + noise * torch.randn(
            filled.shape, generator=generator, dtype=filled.dtype, device="cpu"
        ).to(filled.device)
    out[:, torch.as_tensor(unknown, device=image.device)] = filled
    return out.view_as(image)
