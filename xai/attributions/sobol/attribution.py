"""The Sobol attribution method (Fel et al., NeurIPS 2021): black-box, forward passes only."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_positive_int, warn
from xai._spatial import interpolation
from xai.adapter import Target, freeze, score_rows
from xai.attributions.base import Attribution, register
from xai.attributions.sobol.estimators import Estimator, estimate, get_estimator
from xai.attributions.sobol.perturbations import Perturbation, get_perturbation
from xai.attributions.sobol.samplers import Sampler, design_matrix, sample

__all__ = ["SobolAttribution"]

_MASK_MODES = ("nearest", "bilinear")
_MAP_MODES = ("bicubic", "bilinear", "nearest")


@register
class SobolAttribution(Attribution):
    r"""Sobol attribution: total-order Sobol indices of low-resolution masks of the image.

    A mask :math:`M \in [0, 1]^d` over a ``grid_size x grid_size`` grid (:math:`d` cells) is
    treated as :math:`d` independent uniform random variables. The image is perturbed with the
    upsampled mask, :math:`F(M) = f(\tau(x, \mathrm{up}(M)))`, and each cell's total-order
    index :math:`S_{T_i} = \mathbb{E}_{M_{\sim i}}[\mathrm{Var}_{M_i}(F \mid M_{\sim i})]
    / \mathrm{Var}(F)` measures everything the cell does to the score, alone and in
    interaction with the others.

    Masks are the Saltelli design (:mod:`xai.attributions.sobol.samplers`): ``n_designs`` rows
    of two matrices ``A``, ``B`` and of ``C_i`` (``A`` with column ``i`` from ``B``), i.e.
    ``n_designs * (d + 2)`` forward passes per image (grid 8, 32 designs: 2,112; the paper's
    ImageNet setting grid 11: 3,936). The design is drawn once, at construction, and shared by
    every image (a batch therefore equals its samples one by one). Perturbed images are built
    on the inputs' device in chunks of ``batch_size`` and scored under ``torch.no_grad()``;
    memory is bounded by ``batch_size`` whatever ``grid_size`` and ``n_designs`` are. An
    argmax target (``None``) is fixed on the clean input first.

    Estimation noise: at the paper's ``n_designs=32`` the map is a noisy estimate. A model that
    reads a single cell gets, on that cell, :math:`\mathrm{mean}((A_i - B_i)^2) / (2\,
    \mathrm{Var})`, 1 in expectation but between 0.25 and 1.75 across cells for a 32-point
    scrambled Sobol net (a few column pairs ``(i, d + i)`` of a short high-dimensional Sobol
    sequence are strongly correlated; 0.2 to 1.0 unscrambled), within 0.2% of 1 at 256 points
    for grid 4. Cells the model ignores get exactly 0 whatever ``n_designs``. Increase
    ``n_designs`` when per-cell values matter more than the ranking.

    Args:
        model: the model to explain (only its forward pass is used).
        grid_size: side of the mask grid (default 8, the reference codes; the paper's ImageNet
            experiments use 11). Must not exceed the image size.
        n_designs: ``N``, the number of designs per matrix (the paper's and reference codes'
            ``nb_design``; default 32 as in the paper and xplique). A power of two for the Sobol
            sampler: otherwise a ``ValueError`` names the nearest powers.
        sampler: ``"sobol"`` (default, scipy's ``qmc.Sobol``), ``"halton"``,
            ``"latin_hypercube"``, ``"random"``, or a callable ``(dim, n, seed) -> (n, dim)``.
        scramble: scramble the Sobol / Halton sequence with ``seed`` (default ``True``: an
            unbiased randomized-QMC estimate; the reference codes do not scramble, which puts
            the all-zero mask in ``A`` and ``B``).
        estimator: ``"jansen"`` (default, as in the paper), ``"homma"`` (= ``"saltelli"``),
            ``"janon"``, ``"glen_isaacs"`` or a callable; formulas in
            :mod:`xai.attributions.sobol.estimators`.
        order: ``"total"`` (default, the paper's map) or ``"first"`` (first-order indices).
        variance: the output variance of the estimators: ``"pooled"`` (``A`` and ``B``,
            default, SALib) or ``"a"`` (``A`` alone, ddof 1, the reference codes). It scales
            each image's map by one factor.
        perturbation: ``"inpainting"`` (default, towards ``baseline`` 0), ``"blur"`` (towards a
            10x10 box blur), ``"amplitude"``, a :class:`~xai.attributions.sobol.perturbations.
            Perturbation` or a callable ``(x, masks) -> x'`` with ``x`` ``(n, C, H, W)`` (often
            a broadcast view of one image: never modify it in place) and ``masks``
            ``(n, 1, H, W)``; see :mod:`xai.attributions.sobol.perturbations`.
        perturbation_kwargs: keyword arguments of a named perturbation, e.g.
            ``{"baseline": "mean"}`` or ``{"kernel_size": 5}``.
        mask_interpolation: upsampling of the masks to the image: ``"nearest"`` (default, as in
            the torch reference and xplique: crisp cells) or ``"bilinear"``.
        map_interpolation: upsampling of the ``grid_size x grid_size`` index map to the image:
            ``"bicubic"`` (default, all reference codes; can overshoot slightly below 0 or
            above the cell values, not clipped), ``"bilinear"`` or ``"nearest"``.
        upsample: ``False`` returns the grid-resolution map ``(B, grid_size, grid_size)``.
        temporal_grid_size: cells along the time (depth) axis of videos and volumes
            ``(B, C, T, H, W)``, whose masks cover a ``(t, grid_size, grid_size)`` grid and
            whose maps are ``(B, T, H, W)`` (``None``, default: ``min(grid_size, T)``):
            ``n_designs * (t * grid_size**2 + 2)`` forward passes per clip. Bilinear and
            bicubic upsampling become trilinear there.
        batch_size: perturbed images per forward pass (default 64, the paper's timing setting);
            ``None`` evaluates everything at once.
        seed: seed of the design (scrambling or random draws; ``None`` means 0).
        progress: show a ``tqdm`` progress bar over the forward chunks.
        reference: ``True`` reproduces the authors' PyTorch reference code exactly: an
            unscrambled Sobol design, the Jansen estimator on the variance of block ``A``,
            inpainting towards 0, nearest mask upsampling and bicubic map upsampling; it
            overrides ``sampler``, ``scramble``, ``estimator``, ``order``, ``variance``,
            ``perturbation``, ``mask_interpolation`` and ``map_interpolation`` (``grid_size``
            and ``n_designs`` keep their values; the reference defaults are 8 and 32).

    Returns (of ``__call__``):
        ``(B, H, W)`` indices (``(B, grid_size, grid_size)`` with ``upsample=False``), raw:
        total-order indices lie in ``[0, 1]`` up to estimation error; constant scores give 0.

    Raises:
        ValueError: a grid larger than the image (at call time), ``n_designs`` not a power of
            two for the Sobol sampler, an unknown sampler / estimator / perturbation / order /
            interpolation name (the message lists the valid ones).

    References:
        Fel, Cadène, Chalvidal, Cord, Vigouroux & Serre, "Look at the Variance! Efficient
        Black-box Explanations with Sobol-based Sensitivity Analysis", NeurIPS 2021.

    Example:
        >>> explainer = SobolAttribution(model, grid_size=8, n_designs=32, batch_size=64)
        >>> maps = explainer(images, target=None)  # (B, H, W)
    """

    stochastic = True
    input_ranks = (4, 5)

    def __init__(
        self,
        model: nn.Module,
        *,
        grid_size: int = 8,
        n_designs: int = 32,
        sampler: str | Sampler = "sobol",
        scramble: bool = True,
        estimator: str | Estimator = "jansen",
        order: str = "total",
        variance: str = "pooled",
        perturbation: str | Perturbation | Callable[[Tensor, Tensor], Tensor] = "inpainting",
        perturbation_kwargs: dict | None = None,
        mask_interpolation: str = "nearest",
        map_interpolation: str = "bicubic",
        upsample: bool = True,
        temporal_grid_size: int | None = None,
        batch_size: int | None = 64,
        seed: int | None = None,
        progress: bool = False,
        reference: bool = False,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)
        if reference:
            sampler, scramble, estimator, order, variance = "sobol", False, "jansen", "total", "a"
            perturbation, perturbation_kwargs = "inpainting", None
            mask_interpolation, map_interpolation = "nearest", "bicubic"
        self.reference = reference
        check_positive_int(grid_size, "grid_size")
        check_positive_int(n_designs, "n_designs")
        if order not in ("total", "first"):
            raise ValueError(f"order must be 'total' or 'first', got {order!r}")
        if variance not in ("pooled", "a"):
            raise ValueError(f"variance must be 'pooled' or 'a', got {variance!r}")
        if mask_interpolation not in _MASK_MODES:
            raise ValueError(
                f"mask_interpolation must be one of {_MASK_MODES}, got {mask_interpolation!r}"
            )
        if map_interpolation not in _MAP_MODES:
            raise ValueError(
                f"map_interpolation must be one of {_MAP_MODES}, got {map_interpolation!r}"
            )
        self.grid_size = grid_size
        self.n_designs = n_designs
        self.estimator = get_estimator(estimator)
        self.order = order
        self.variance = variance
        self.perturbation = get_perturbation(perturbation, **(perturbation_kwargs or {}))
        self.mask_interpolation = mask_interpolation
        self.map_interpolation = map_interpolation
        self.upsample = upsample
        check_positive_int(temporal_grid_size, "temporal_grid_size", allow_none=True)
        self.temporal_grid_size = temporal_grid_size
        self._sample = functools.partial(sample, sampler=sampler, seed=seed, scramble=scramble)
        self._designs: dict[int, Tensor] = {}
        self.masks = self._design(grid_size**2)
        """``(n_designs * (d + 2), d)`` float64: the design ``[A; B; C_1; ...; C_d]``."""

    def _design(self, cells: int) -> Tensor:
        """The design of a ``cells``-cell grid, drawn once per grid (images: at construction)."""
        if cells not in self._designs:
            a, b = self._sample(cells, self.n_designs)
            self._designs[cells] = design_matrix(a, b)
        return self._designs[cells]

    def _grid(self, spatial: list[int]) -> tuple[int, ...]:
        """Cells per spatial axis: ``(s, s)`` for images, ``(t, s, s)`` for videos."""
        s = self.grid_size
        grid = (s,) * len(spatial)
        if len(spatial) == 3:
            grid = (self.temporal_grid_size or min(s, spatial[0]), s, s)
        if any(g > n for g, n in zip(grid, spatial, strict=True)):
            size = "x".join(map(str, spatial))
            what, fix = "image", f"use grid_size <= {min(spatial[-2:])}"
            if len(spatial) == 3:
                what, fix = "clip", f"{fix} and temporal_grid_size <= {spatial[0]}"
            raise ValueError(
                f"the grid {'x'.join(map(str, grid))} (grid_size={s}) is larger than the {what} "
                f"({size}); {fix}"
            )
        return grid

    @property
    def n_forwards(self) -> int:
        """Forward passes per explained image: ``n_designs * (grid_size**2 + 2)``."""
        return self.masks.shape[0]

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        b, _, *spatial = inputs.shape
        grid = self._grid(spatial)
        target = freeze(self.adapter, inputs, target)
        design_matrix = self._design(math.prod(grid))
        per_image = design_matrix.shape[0]
        masks = design_matrix.to(device=inputs.device, dtype=inputs.dtype)
        masks = masks.view(per_image, 1, *grid)
        mask_mode = interpolation(self.mask_interpolation, len(grid))
        reference = self.perturbation.reference(inputs)

        def perturbed(rows: Tensor) -> Tensor:
            # row r of the flattened (image, design) product is image r // M, design r % M
            up = F.interpolate(masks[rows % per_image], size=spatial, mode=mask_mode)
            sl = slice(int(rows[0]), int(rows[-1]) + 1)
            x, ref = self._rows(inputs, reference, rows // per_image, sl, per_image)
            return self.perturbation(x, up, ref)

        # float64 scores where the device has it (not MPS); the estimator runs on the CPU
        scores = score_rows(
            self.adapter,
            target,
            b * per_image,
            perturbed,
            torch.arange(b, device=inputs.device).repeat_interleave(per_image),
            batch_size=self.batch_size,
            progress=self.progress,
            desc="Sobol",
            dtype=torch.float32 if inputs.device.type == "mps" else torch.float64,
        )
        per_row = scores.cpu().double().view(b, per_image)
        flat = (per_row == per_row[:, :1]).all(1)
        if bool(flat.any()):
            low = inputs.dtype in (torch.float16, torch.bfloat16)
            hint = (
                f"a {inputs.dtype} model may round small changes away: explain a float32 copy"
                if low
                else "use a larger grid_size or another perturbation"
            )
            warn(
                f"SobolAttribution: the target score of sample(s) {flat.nonzero()[:, 0].tolist()} "
                f"does not change under the {per_image} perturbations, so their maps are all "
                f"zero; {hint}"
            )
        indices = estimate(
            per_row,
            self.n_designs,
            math.prod(grid),
            estimator=self.estimator,
            variance=self.variance,
        )
        maps = (indices.total if self.order == "total" else indices.first).view(b, 1, *grid)
        if self.upsample and tuple(spatial) != grid:
            map_mode = interpolation(self.map_interpolation, len(grid))
            kw = {} if map_mode == "nearest" else {"align_corners": False}
            maps = F.interpolate(maps, size=spatial, mode=map_mode, **kw)
        return maps[:, 0]

    @staticmethod
    def _rows(
        inputs: Tensor, reference: Tensor | None, image: Tensor, sl: slice, per_image: int
    ) -> tuple[Tensor, Tensor | None]:
        """The images (and references) of a chunk's rows; a chunk within one image gets a
        broadcast view instead of a copy (most chunks when ``per_image > batch_size``).
        """
        first, last = sl.start // per_image, (sl.stop - 1) // per_image
        if first != last:
            return inputs[image], None if reference is None else reference[image]
        n = sl.stop - sl.start
        x = inputs[first : first + 1].expand(n, *inputs.shape[1:])
        if reference is None:
            return x, None
        return x, reference[first : first + 1].expand(n, *reference.shape[1:])

    def __repr__(self) -> str:
        return (
            f"SobolAttribution({type(self.model).__name__}, grid_size={self.grid_size}, "
            f"n_designs={self.n_designs}, perturbation={self.perturbation!r})"
        )
