"""EVA: Explaining using Verified perturbation Analysis (Fel et al., CVPR 2023)."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xai._checks import check_positive_int
from xai._typing import LayerLike
from xai.adapter import Target
from xai.adapter.targets import CallableTarget, ClassTarget
from xai.attributions.base import Attribution, register
from xai.verify import (
    BOUNDS,
    DEFAULT_BUDGET,
    NORMS,
    BoundedModel,
    default_top_k,
    make_ball,
    margin_rows,
)
from xai.verify.propagate import RELU_LOWER

__all__ = ["EVA"]

DEFAULT_CHUNK = 16
"""Rows (bound computations) per chunk when ``batch_size`` is ``None``: the CROWN pass holds
``rows x top_k`` copies of the largest activation it reaches, so "no bound" is not an option."""


@register
class EVA(Attribution):
    r"""EVA: how much a verified bound on the adversarial overlap drops when a cell is frozen.

    For the explained class :math:`c` and the ball :math:`B = \{\delta : \|\delta\|_p \le
    \epsilon\}`, the *adversarial overlap* :math:`AO(x, B) = \max_{\delta \in B} \max_{j \ne c}
    f_j(x + \delta) - f_c(x + \delta)` is bounded from above by bound propagation
    (:mod:`xai.verify`), which covers the **whole** ball: :math:`\overline{AO}(x, B) =
    \max_{j \ne c} U_j` with :math:`U_j \ge f_j - f_c` on :math:`B`. The importance of a cell
    :math:`u` of a ``grid_size x grid_size`` grid (all channels) is

    .. math:: \mathrm{EVA}(x, u) = \overline{AO}(x, B) - \overline{AO}(x, B_u),\quad
              B_u = \{\delta \in B : \delta_u = 0\},

    the drop of the verified bound when :math:`u` is held at its value and only the rest of the
    image moves: large when freezing :math:`u` stops the rest of the input from pushing another
    class over :math:`c`. One bound computation per cell plus one for :math:`B`, i.e.
    ``grid_size**2 + 1`` per image, batched in chunks of ``batch_size`` rows (spec: EVA is
    deterministic; no subsets are sampled). Every pixel of a cell gets the cell's value
    (nearest upsampling of the ``grid_size x grid_size`` map); logits are bounded, a final
    softmax is stripped.

    With ``monotone=True`` (default) :math:`\overline{AO}(B_u)` is replaced by
    :math:`\min(\overline{AO}(B_u), \overline{AO}(B))`, also a valid bound since
    :math:`B_u \subseteq B`, so EVA is :math:`\ge 0`; IBP is monotone anyway, CROWN is not.

    What is this library's choice and not the paper's (whose full text and code could not be
    read, see the spec): the defaults below, the direction (the cell is *fixed*, the complement
    moves), the min-combination of IBP and CROWN-IBP (decomon's convention), ``top_k``. On deep
    networks not trained for verification (the real MobileNetV2) interval bounds saturate for
    any useful ``epsilon``: the map then carries little signal (see the benchmark).

    Args:
        model: a classifier built from the operations of :data:`xai.verify.SUPPORTED`
            (torchvision ResNets, VGGs, MobileNetV2); other models raise
            :class:`xai.verify.UnsupportedOperationError` naming the node.
        epsilon: radius of the ball, in the units of the inputs (no paper default could be
            read; it depends on the input normalization).
        grid_size: side of the grid of cells (default 8; ``grid_size = H`` is per-pixel).
        norm: ``"linf"`` (default) or ``"l2"``.
        bound: ``"crown"`` (default: min of CROWN-IBP and IBP) or ``"ibp"``; see
            :mod:`xai.verify`.
        relu_lower: lower ReLU slope of the CROWN pass (``"adaptive"``, ``"zero"``, ``"one"``,
            ``"same"``).
        monotone: clamp each cell's bound by the full ball's (EVA >= 0).
        top_k: CROWN only for the ``top_k`` competing classes with the largest IBP bound
            (default all up to 100 classes, else 10; sound either way).
        clip: ``(low, high)`` valid input range intersected with the ball (L-inf only).
        backward_budget: coefficients per bound the CROWN pass may carry before it stops on
            IBP boxes (memory control; see :class:`xai.verify.BoundedModel`).
        split: hybrid mode (the paper's scaling for large models, Fig. 3; **not verified**):
            the name of a submodule whose output separates input and output (e.g.
            ``"features.18"``). Each set is sampled with ``n_samples`` points (the first is
            ``x`` itself), the network runs up to ``split``, and the box of those activations
            is propagated through the rest. ``None`` (default): exact bounds.
        n_samples: points per set in the hybrid mode (default 16; the paper's N is unknown).
        batch_size: bound computations per chunk (``None``: 16); in the hybrid mode, forward
            passes per chunk.
        seed: seed of the hybrid mode's samples (shared by every image).
        progress: tqdm bar over the chunks.

    Returns (on call):
        ``(B, H, W)`` maps, >= 0 with ``monotone=True``, raw (not normalized).

    References:
        Fel, Ducoffe, Vigouroux, Cadène, Capelle, Nicodème, Serre, "Don't Lie to Me! Robust and
        Efficient Explainability with Verified Perturbation Analysis", CVPR 2023.
    """

    name: ClassVar[str] = "eva"
    accepts_additional_inputs: ClassVar[bool] = False  # the bounds trace model(x) alone

    # Settings used when the method is built from the registry (contract test, CLI demo,
    # report card): a 4x4 grid (17 bounds per image), CROWN on the 3 strongest competitors, and
    # for models over HYBRID_PARAMETERS parameters the hybrid mode split at ``layer`` with 8
    # samples per set (136 head forwards per image), which keeps a 224 px MobileNetV2 image to
    # a few seconds on 2 cores; exact bounds there take minutes and are vacuous.
    registry_defaults: ClassVar[dict] = {"epsilon": 0.05, "grid_size": 4, "top_k": 3}
    hybrid_defaults: ClassVar[dict] = {"n_samples": 8}
    HYBRID_PARAMETERS: ClassVar[int] = 1_000_000

    @classmethod
    def create(cls, model: nn.Module, *, layer: LayerLike | None = None, **kwargs: Any) -> EVA:
        """Registry construction with cheap settings (see ``registry_defaults``)."""
        defaults = dict(cls.registry_defaults)
        n_params = sum(p.numel() for p in model.parameters())
        if layer is not None and isinstance(layer, str) and n_params > cls.HYBRID_PARAMETERS:
            defaults.update(cls.hybrid_defaults, split=layer)
        return cls(model, **{**defaults, **kwargs})

    def __init__(
        self,
        model: nn.Module,
        epsilon: float,
        *,
        grid_size: int = 8,
        norm: str = "linf",
        bound: str = "crown",
        relu_lower: str = "adaptive",
        monotone: bool = True,
        top_k: int | None = None,
        clip: tuple[float | Tensor, float | Tensor] | None = None,
        backward_budget: int | None = DEFAULT_BUDGET,
        split: str | None = None,
        n_samples: int = 16,
        batch_size: int | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__(model, batch_size=batch_size, seed=seed, progress=progress)
        check_positive_int(n_samples, "n_samples")
        if split is not None and not isinstance(split, str):
            raise TypeError(f"split must be a submodule name (str), got {type(split).__name__}")
        if (
            isinstance(epsilon, bool)
            or not isinstance(epsilon, (int, float))
            or not (0 <= float(epsilon) < float("inf"))
        ):
            raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        check_positive_int(grid_size, "grid_size")
        check_positive_int(top_k, "top_k", allow_none=True)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if bound not in BOUNDS:
            raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
        if relu_lower not in RELU_LOWER:
            raise ValueError(f"relu_lower must be one of {RELU_LOWER}, got {relu_lower!r}")
        if clip is not None and norm != "linf":
            raise ValueError("clip is supported with norm='linf' only")
        self.epsilon = float(epsilon)
        self.grid_size = grid_size
        self.norm = norm
        self.bound = bound
        self.relu_lower = relu_lower
        self.monotone = monotone
        self.top_k = top_k
        self.clip = clip
        self.backward_budget = backward_budget
        self.split = split
        self.n_samples = n_samples

    def _attribute(self, inputs: Tensor, target: Target) -> Tensor:
        from tqdm.auto import tqdm

        n, _, h, w = inputs.shape
        s = self.grid_size
        if s > min(h, w):
            raise ValueError(
                f"grid_size={s} exceeds the image size {h}x{w}; use at most {min(h, w)}"
            )
        if not bool(torch.isfinite(inputs).all()):
            raise ValueError("inputs contain NaN or infinite values")
        model = self.model
        if _param_dtype(model, inputs.dtype) in (torch.float16, torch.bfloat16):
            # bounds are sums of many products: in half precision their rounding swamps the
            # score differences that EVA ranks, so a float32 copy is bounded (the model itself
            # is never changed)
            model = copy.deepcopy(model).float()
        x = inputs.to(_param_dtype(model, inputs.dtype))
        with torch.no_grad():
            bm = BoundedModel(model, x, backward_budget=self.backward_budget)
            logits = bm.forward(x)
        split = None if self.split is None else bm.graph.split_index(self.split)
        classes = _classes(target, logits)
        k = logits.shape[1]
        if k < 2:
            raise ValueError("EVA needs a classifier with at least 2 outputs")
        top_k = default_top_k(k) if self.top_k is None else self.top_k
        cell = _cell_index(h, w, s, x.device)  # (H, W) -> cell id
        n_sets = 1 + s * s
        # row r = image r // n_sets, set r % n_sets (0: the full ball, 1 + i: cell i fixed)
        masks = torch.ones(n_sets, h, w, dtype=x.dtype, device=x.device)
        masks[1:] = (cell[None] != torch.arange(s * s, device=x.device)[:, None, None]).to(x)
        overlap = x.new_empty(n * n_sets)
        size = self.batch_size or DEFAULT_CHUNK
        if split is not None:  # a chunk holds rows x n_samples head forwards
            size = max(1, size // self.n_samples)
        chunks = [slice(i, min(i + size, n * n_sets)) for i in range(0, n * n_sets, size)]
        with torch.no_grad():
            for part in tqdm(chunks, desc="EVA bounds", disable=not self.progress):
                idx = torch.arange(part.start, part.stop, device=x.device)
                image, subset = idx // n_sets, idx % n_sets
                mask = masks[subset][:, None].expand(-1, x.shape[1], -1, -1)
                ball = make_ball(x[image], self.epsilon, norm=self.norm, mask=mask, clip=self.clip)
                rows = margin_rows(classes[image], k, x.dtype)
                if split is None:
                    upper = bm.upper(
                        ball, rows, bound=self.bound, relu_lower=self.relu_lower, top_k=top_k
                    )
                else:
                    noise = torch.stack([self._noise(int(i), masks[i], x) for i in subset])
                    upper = bm.hybrid_upper(
                        ball,
                        rows,
                        split,
                        noise,
                        bound=self.bound,
                        relu_lower=self.relu_lower,
                        top_k=top_k,
                        chunk=self.batch_size or DEFAULT_CHUNK,
                    )
                overlap[part] = upper.amax(1)
        overlap = overlap.view(n, n_sets)
        full, fixed = overlap[:, :1], overlap[:, 1:]
        if self.monotone:
            fixed = torch.minimum(fixed, full)
        scores = full - fixed  # (N, s*s)
        return scores[:, cell]

    def _noise(self, subset: int, mask: Tensor, x: Tensor) -> Tensor:
        """``(n_samples, *in_shape)`` points of the unit ball, sample 0 at the center.

        Drawn from ``seed`` and the set's index only, so every image sees the same draws (a
        batch equals its samples one by one).
        """
        gen = torch.Generator().manual_seed(
            (0 if self.seed is None else int(self.seed)) * 1_000_003 + subset
        )
        shape = (self.n_samples, *x.shape[1:])
        if self.norm == "linf":
            noise = torch.rand(shape, generator=gen, dtype=x.dtype) * 2 - 1
        else:
            m = mask.cpu().expand(shape[1:])
            direction = torch.randn(shape, generator=gen, dtype=x.dtype) * m
            norms = direction.flatten(1).norm(dim=1).clamp_min(1e-30)
            radius = torch.rand(shape[0], generator=gen, dtype=x.dtype) ** (
                1.0 / max(1.0, float(m.sum()))
            )
            noise = direction * (radius / norms).view(-1, *([1] * (len(shape) - 1)))
        noise[0] = 0
        return noise.to(x.device)


def _param_dtype(model: nn.Module, default: torch.dtype) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return default


def _cell_index(h: int, w: int, s: int, device: torch.device) -> Tensor:
    """Pixel ``(i, j)`` belongs to cell ``(i*s//H, j*s//W)`` (nearest upsampling of s x s)."""
    rows = torch.arange(h, device=device) * s // h
    cols = torch.arange(w, device=device) * s // w
    return rows[:, None] * s + cols[None, :]


def _classes(target: Target, logits: Tensor) -> Tensor:
    """The explained class of each sample: EVA bounds ``f_j - f_c``, so it needs a class."""
    if isinstance(target, ClassTarget):  # also ProbabilityTarget: same class, same margin
        return target.indices(logits)
    if isinstance(target, CallableTarget):
        # accept callables that pick one logit per sample (out[:, k], out.gather(...)): their
        # gradient w.r.t. the logits is one-hot and they equal that logit
        probe = logits.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            scores = target(probe)
            (grad,) = torch.autograd.grad(scores.sum(), probe, allow_unused=True)
        if grad is not None:
            classes = grad.argmax(1)
            onehot = torch.nn.functional.one_hot(classes, logits.shape[1]).to(grad)
            picked = logits.gather(1, classes[:, None])[:, 0]
            if torch.equal(grad, onehot) and torch.allclose(scores.detach(), picked):
                return classes
    raise ValueError(
        "EVA explains the margin of one class: pass None, an int, one int per sample, or a "
        "callable that returns one logit per sample (e.g. lambda out: out[:, k]); got "
        f"{type(target).__name__}"
    )
