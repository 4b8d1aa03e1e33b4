r"""Net2Vec: concepts as learned weightings of a layer's filters (Fong & Vedaldi, CVPR 2018).

A concept ``c`` is embedded as a vector :math:`w_c \in \mathbb{R}^K` over the K filters of a
layer, learned by one of two probes:

* **segmentation**: the input is each filter's binarized map :math:`I_k = 1[a_k > T_k]`
  (thresholds as in :class:`~xai.concepts.NetworkDissection`); the concept's mask is
  :math:`M = \sigma(\mathrm{up}(\sum_k w_k I_k))`, trained with the paper's linear,
  :math:`\alpha`-balanced loss summed over pixels and averaged over images,
  :math:`L = -\frac{1}{N}\sum_x \sum_p [\alpha M_p L_p + (1-\alpha)(1-M_p)(1-L_p)]`,
  :math:`\alpha = 1 - \mathrm{mean}_x |L_c(x)| / (H_l W_l)`; scored by the set IoU of
  ``M > 0.5`` on images containing c.
* **classification**: does the image contain ``c``? ``logit = w . avgpool(a) + b`` with
  ``BCEWithLogitsLoss``, the larger class subsampled to the size of the smaller each epoch;
  scored by balanced accuracy.

Then the paper's comparisons: the probe against the best single filter
(:meth:`Net2Vec.single_filter_score`), how many filters a concept needs
(:meth:`Net2Vec.filters_needed`: retrain on the top-F filters by :math:`|w|`), and the cosine
similarity between concept embeddings (:meth:`Net2Vec.similarity`, :meth:`Net2Vec.nearest`).

All concepts are trained at once as one ``(C, K)`` matrix: their losses are independent (each
concept's term uses only its own weights and only the images that contain it, averaged over
those images within a minibatch), so this is C separate probes sharing minibatches. The paper
trains each probe on batches drawn from X_c only; the objective is the same, the minibatch
noise differs.

References:
    Fong & Vedaldi, "Net2Vec: Quantifying and Explaining how Concepts are Encoded by Filters in
    Deep Neural Networks", CVPR 2018 (code: ruthcfong/net2vec, ``linearprobe_pytorch.py``,
    ``linearprobe_disc_pytorch.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_inputs, check_positive_int
from xai._typing import LayerLike, ReshapeLike
from xai.adapter import ModelAdapter
from xai.concepts.dissection import (
    _Cache,
    _check_options,
    _iou_counts,
    concept_names,
    exact_thresholds,
    set_iou,
)

__all__ = ["FiltersNeeded", "Net2Vec"]

_DEFAULT: Any = object()
# Segmentation: linearprobe_pytorch.py defaults. Classification: the runs behind the paper's
# figures, inferred from their file suffix `_lr_1e-1_sgd_quant_1_epochs_30_iter_15`.
_TASK_DEFAULTS = {
    "segmentation": {"quantile": 0.005, "bias": False, "lr": 1e-4, "train_batch_size": 16,
                     "lr_step": None},
    "classification": {"quantile": None, "bias": True, "lr": 0.1, "train_batch_size": 64,
                       "lr_step": 15},
}  # fmt: skip
SEG_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 160, 192, 224)  # linearprobe_pytorch.py:373
CLS_SWEEP = (1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 80, 100, 128)  # ..._disc:186


@dataclass(frozen=True)
class FiltersNeeded:
    """How many filters each concept needs (Net2Vec, section 4.3).

    Attributes:
        sweep: ``(S,)`` the numbers of filters F tried (ending with K, all filters).
        scores: ``(C, S)`` validation score of the probe retrained on the top-F filters.
        critical: ``(C,)`` the smallest F reaching ``fraction`` of the all-filter score
            (segmentation: IoU_F >= 0.9 IoU_K; classification: acc_F >= 0.5 + 0.9 (acc_K - 0.5)).
        top_filters: ``(C, K)`` filters ranked by ``|w|`` of the all-filter probe.
        concepts: the C concept names.
    """

    sweep: Tensor
    scores: Tensor
    critical: Tensor
    top_filters: Tensor
    concepts: list[str]

    def shared_filters(self) -> Tensor:
        """``(K,)`` for each filter, how many concepts have it among their critical top-F."""
        k = self.top_filters.shape[1]
        counts = torch.zeros(k, dtype=torch.long)
        for c, f in enumerate(self.critical.tolist()):
            counts[self.top_filters[c, : int(f)]] += 1
        return counts

    def cumulative(self) -> tuple[Tensor, Tensor]:
        """``(fraction of filters F/K, fraction of concepts with critical F <= it)``."""
        k = self.top_filters.shape[1]
        frac = self.sweep.float() / k
        return frac, (self.critical[:, None] <= self.sweep[None]).float().mean(0)


class Net2Vec:
    """Learned concept embeddings over the filters of one layer (Fong & Vedaldi, CVPR 2018).

    Args:
        model: any ``nn.Module`` (never changed; activations through :mod:`xai.adapter`).
        layer: the layer probed (dotted name or module).
        task: ``"segmentation"`` (default) or ``"classification"``.
        quantile: binarization of the probe's input, :math:`I_k = 1[a_k > T_k]` with T_k the
            top-``quantile`` threshold; ``None`` uses raw activations (classification only).
            Default per task: 0.005 (segmentation), ``None`` (classification).
        bias: learn a bias per concept (default: off for segmentation, on for classification).
        lr: SGD learning rate (default 1e-4 for segmentation, the code's default with the
            loss summed over pixels; 0.1 for classification).
        momentum: SGD momentum (default 0.9, both probes).
        epochs: passes over the training images (default 30).
        train_batch_size: images per SGD step (default 16 segmentation, 64 classification).
        lr_step: multiply the learning rate by 0.1 every this many epochs (default: never for
            segmentation, 15 for classification).
        order: how binary maps reach label resolution, see :class:`NetworkDissection`
            (default ``"threshold_then_upsample"``, the Net2Vec code).
        batch_size: images per forward pass when caching activations (default 64).
        seed: seed of the initialization, the minibatch order and the class balancing.
        reshape: token-to-grid reshape for transformers.
        cache_dir: where the temporary activation caches go.
        progress: ``tqdm`` bars over the images and the epochs.

    Attributes set by :meth:`fit`:
        weights_: ``(C, K)`` the concept embeddings :math:`w_c`.
        bias_: ``(C,)`` (zeros without ``bias``).
        alpha_: ``(C,)`` the segmentation loss balance (ones for classification).
        thresholds_: ``(K,)`` the binarization thresholds (``None`` for raw inputs).
        concepts_: the C concept names that were fitted (concepts without positive training
            images, or without negatives for classification, are dropped with a warning).
        best_filter_: ``(C,)`` the best single filter per concept on the training data
            (segmentation: NetDissect set IoU; classification: the top-|w| filter).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike,
        *,
        task: str = "segmentation",
        quantile: float | None = _DEFAULT,
        bias: bool = _DEFAULT,
        lr: float = _DEFAULT,
        momentum: float = 0.9,
        epochs: int = 30,
        train_batch_size: int = _DEFAULT,
        lr_step: int | None = _DEFAULT,
        order: str = "threshold_then_upsample",
        batch_size: int = 64,
        seed: int = 0,
        reshape: ReshapeLike = None,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        if task not in _TASK_DEFAULTS:
            raise ValueError(f"task must be 'segmentation' or 'classification', got {task!r}")
        given = {"quantile": quantile, "bias": bias, "lr": lr,
                 "train_batch_size": train_batch_size, "lr_step": lr_step}  # fmt: skip
        opts = {k: (_TASK_DEFAULTS[task][k] if v is _DEFAULT else v) for k, v in given.items()}
        if opts["quantile"] is None:
            if task == "segmentation":
                raise ValueError("the segmentation probe needs a quantile (the paper: 0.005)")
            _check_options(0.5, order, batch_size)
        else:
            _check_options(opts["quantile"], order, batch_size)
        if not isinstance(opts["lr"], float | int) or opts["lr"] <= 0:
            raise ValueError(f"lr must be positive, got {opts['lr']!r}")
        check_positive_int(epochs, "epochs")
        check_positive_int(opts["train_batch_size"], "train_batch_size")
        check_positive_int(opts["lr_step"], "lr_step", allow_none=True)
        self.adapter = ModelAdapter(model, reshape=reshape)
        self.layer = self.adapter.resolve(layer)[0]
        self.model = model
        self.task = task
        self.quantile: float | None = opts["quantile"]
        self.bias = bool(opts["bias"])
        self.lr = float(opts["lr"])
        self.momentum = momentum
        self.epochs = epochs
        self.train_batch_size = cast(int, opts["train_batch_size"])  # checked above
        self.lr_step = cast("int | None", opts["lr_step"])
        self.order = order
        self.batch_size = batch_size
        self.seed = seed
        self.cache_dir = cache_dir
        self.progress = progress

    # ------------------------------------------------------------------------------ fitting

    def fit(self, data: Any, concepts: Sequence[str] | None = None) -> Net2Vec:
        """Learn one embedding per concept on ``data`` (one forward pass, then SGD on the cache).

        Args:
            data: training data, as for :meth:`NetworkDissection.fit`.
            concepts: names of the concepts to fit (default: every concept with training data).

        Returns:
            ``self`` with :attr:`weights_`, :attr:`bias_`, :attr:`alpha_`, ...
        """
        cache = self._collect(data)
        names = concept_names(data, cache.mask_shape[0])
        keep = self._usable(cache, names, concepts)
        self._names_all, self._keep = names, keep
        self.concepts_ = [names[i] for i in keep]
        self._train_cache = cache
        self.thresholds_ = (
            None if self.quantile is None else exact_thresholds(
                (a for _, a in cache.chunks(self.layer, self.batch_size)), self.quantile, cache.n
            )
        )  # fmt: skip
        k = cache.shapes[self.layer][0]
        self.weights_, self.bias_, self.alpha_ = self._train(cache, torch.ones(len(keep), k))
        if self.task == "segmentation":
            inter, on, _, label = _iou_counts(
                cache, self.layer, self._segmentation_thresholds(), self.order, self.batch_size
            )
            self.best_filter_ = set_iou(inter, on, label)[keep].argmax(1)
        else:
            self.best_filter_ = self.weights_.abs().argmax(1)
        return self

    def _usable(self, cache: _Cache, names: list[str], concepts: Sequence[str] | None) -> list[int]:
        if concepts is not None:
            unknown = [c for c in concepts if c not in names]
            if unknown:
                raise ValueError(f"unknown concepts {unknown}; the data has {names}")
            wanted = [names.index(c) for c in concepts]
        else:
            wanted = list(range(len(names)))
        n_pos = cache.present.sum(0)
        ok = n_pos > 0
        if self.task == "classification":
            ok &= n_pos < cache.n
        dropped = [names[i] for i in wanted if not ok[i]]
        if dropped:
            warnings.warn(
                f"concepts {dropped} have no positive (or, for classification, no negative) "
                "training image and are not fitted",
                stacklevel=3,
            )
        keep = [i for i in wanted if ok[i]]
        if not keep:
            raise ValueError("no concept has training images")
        return keep

    def _collect(self, data: Any) -> _Cache:
        return _Cache.collect(self.adapter, [self.layer], data, batch_size=self.batch_size,
                              progress=self.progress, cache_dir=self.cache_dir,
                              desc="net2vec")  # fmt: skip

    def _inputs(self, acts: Tensor) -> Tensor:
        """The probe's input: binarized maps, or raw activations when ``quantile is None``."""
        if self.thresholds_ is None:
            return acts.float()
        return (acts > self.thresholds_[None, :, None, None]).float()

    def _pooled(self, cache: _Cache) -> Tensor:
        """``(N, K)`` average-pooled probe inputs (classification)."""
        return torch.cat([self._inputs(a).mean((2, 3))
                          for _, a in cache.chunks(self.layer, self.batch_size)])  # fmt: skip

    def _train(self, cache: _Cache, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """SGD on the cache; ``mask (C, K)`` keeps the allowed filters of each concept."""
        from tqdm.auto import tqdm

        gen = torch.Generator().manual_seed(self.seed)
        c, k = mask.shape
        keep = self._keep
        present = cache.present[:, keep].float()  # (N, C)
        if self.task == "segmentation":
            init = torch.rand(c, k, generator=gen, dtype=torch.float64) * 2 - 1
            weights = (init / k**0.5).float()
        else:
            weights = torch.zeros(c, k)
            nn.init.kaiming_uniform_(weights, a=5**0.5, generator=gen)
        weights = (weights * mask).requires_grad_(True)
        bias = torch.zeros(c, requires_grad=self.bias)
        params = [weights, bias] if self.bias else [weights]
        # SGD with momentum as torch.optim.SGD (buf = m * buf + g; p -= lr * buf), written out:
        # importing torch.optim pulls in torch._dynamo (seconds) for a few lines of maths.
        buffers = [torch.zeros_like(p) for p in params]
        if self.task == "segmentation":
            pixels = float(np.prod(cache.mask_shape[1:]))
            coverage = cache.mask_counts[:, keep].double() / pixels
            alpha = 1 - (coverage * present).sum(0) / present.sum(0)
        else:
            alpha = torch.ones(c, dtype=torch.float64)
            pooled = self._pooled(cache)
        a32 = alpha.float()
        with torch.enable_grad():
            for epoch in tqdm(range(self.epochs), desc="probe", disable=not self.progress):
                lr = self.lr * 0.1 ** (epoch // self.lr_step if self.lr_step else 0)
                order = torch.randperm(cache.n, generator=gen)
                if self.task == "classification":
                    use = _balanced(present, gen)  # (N, C) 0/1: this epoch's subsample
                for i in range(0, cache.n, self.train_batch_size):
                    idx = order[i : i + self.train_batch_size].sort().values
                    w = weights * mask
                    if self.task == "segmentation":
                        sel = present[idx]  # (B, C)
                        if not bool(sel.any()):
                            continue
                        x = self._inputs(cache.activations(self.layer, idx.numpy()))
                        labels = cache.masks(idx.numpy()).float()[:, keep]
                        pred = self._seg_probs(x, w, bias, tuple(labels.shape[2:]))
                        a = a32[None, :, None, None]
                        gain = a * pred * labels + (1 - a) * (1 - pred) * (1 - labels)
                        per_image = -gain.flatten(2).sum(2)  # (B, C): summed over pixels
                        loss = ((per_image * sel).sum(0) / sel.sum(0).clamp_min(1)).sum()
                    else:
                        sel = use[idx]
                        if not bool(sel.any()):
                            continue
                        logits = pooled[idx] @ w.T + bias
                        bce = F.binary_cross_entropy_with_logits(
                            logits, present[idx], reduction="none"
                        )
                        loss = ((bce * sel).sum(0) / sel.sum(0).clamp_min(1)).sum()
                    grads = torch.autograd.grad(loss, params)
                    with torch.no_grad():
                        for p, g, buf in zip(params, grads, buffers, strict=True):
                            buf.mul_(self.momentum).add_(g)
                            p.sub_(lr * buf)
        return (weights * mask).detach(), bias.detach(), alpha

    @staticmethod
    def _seg_probs(x: Tensor, w: Tensor, bias: Tensor, size: tuple[int, ...]) -> Tensor:
        score = torch.einsum("ck,bkhw->bchw", w, x) + bias[None, :, None, None]
        if tuple(score.shape[2:]) != tuple(size):
            score = F.interpolate(score, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(score)

    # ---------------------------------------------------------------------------- scoring

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("call fit(data) first")

    def _segmentation_thresholds(self) -> Tensor:
        if self.thresholds_ is None:  # unreachable: the constructor requires a quantile
            raise RuntimeError("the segmentation probe has no thresholds")
        return self.thresholds_

    def predict(self, inputs: Tensor) -> Tensor:
        """Probe outputs: segmentation ``(B, C, H, W)`` probabilities at the input size;
        classification ``(B, C)`` probabilities that the image contains each concept. On the
        CPU, where the probes live (the model may be on any device).
        """
        self._check_fitted()
        check_inputs(inputs)
        with self.adapter.capture([self.layer]) as cap, torch.no_grad():
            self.adapter.forward(inputs, cap)
            acts = cap.activations[self.layer].float().cpu()
        x = self._inputs(acts)
        if self.task == "classification":
            return torch.sigmoid(x.mean((2, 3)) @ self.weights_.T + self.bias_)
        return self._seg_probs(x, self.weights_, self.bias_, tuple(inputs.shape[2:]))

    def score(self, data: Any, *, weights: Tensor | None = None) -> Tensor:
        """Validation score per fitted concept, ``(C,)``: set IoU of ``M > 0.5`` over the
        images containing the concept (segmentation) or balanced accuracy (classification).
        NaN where the data has no image of the concept (or, for accuracy, no negative).
        """
        self._check_fitted()
        return self._score(self._collect(data), self.weights_ if weights is None else weights,
                           self.bias_)  # fmt: skip

    def _score(self, cache: _Cache, weights: Tensor, bias: Tensor) -> Tensor:
        keep = self._keep
        present = cache.present[:, keep]
        if self.task == "classification":
            prob = torch.sigmoid(self._pooled(cache) @ weights.T + bias) > 0.5
            tpr = (prob & present).sum(0) / present.sum(0)
            tnr = (~prob & ~present).sum(0) / (~present).sum(0)
            return ((tpr + tnr) / 2).float()
        c = len(keep)
        inter = torch.zeros(c, dtype=torch.float64)
        union = torch.zeros(c, dtype=torch.float64)
        for s, acts in cache.chunks(self.layer, self.batch_size):
            labels = cache.masks(s)[:, keep]
            pred = self._seg_probs(self._inputs(acts), weights, bias, tuple(labels.shape[2:]))
            on = (pred > 0.5) & present[s][:, :, None, None]
            inter += (on & labels).flatten(2).sum((0, 2)).double()
            union += (on | labels).flatten(2).sum((0, 2)).double()
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))
        return torch.where(present.any(0), iou, torch.full_like(iou, float("nan"))).float()

    def single_filter_score(self, data: Any) -> Tensor:
        """``(C,)`` score of the best single filter chosen on the training data: its NetDissect
        set IoU (segmentation; same thresholds and order as the probe), or a probe retrained
        on that filter alone (classification).
        """
        self._check_fitted()
        cache = self._collect(data)
        if self.task == "segmentation":
            inter, on, _, label = _iou_counts(
                cache, self.layer, self._segmentation_thresholds(), self.order, self.batch_size
            )
            iou = set_iou(inter, on, label)[self._keep]
            return iou.gather(1, self.best_filter_[:, None])[:, 0].float()
        mask = F.one_hot(self.best_filter_, self.weights_.shape[1]).float()
        w, b, _ = self._train(self._train_cache, mask)
        return self._score(cache, w, b)

    def filters_needed(
        self, data: Any, sweep: Sequence[int] | None = None, fraction: float = 0.9
    ) -> FiltersNeeded:
        """Retrain from a fresh initialization on the top-F filters (by ``|w|``) for each F
        of ``sweep`` and score on ``data`` (validation).

        Args:
            data: validation data.
            sweep: the numbers of filters (default: the paper's, SEG_SWEEP or CLS_SWEEP, cut
                at K, plus K).
            fraction: the share of the all-filter score that counts as enough (default 0.9;
                for classification of the gain over chance 0.5).
        """
        self._check_fitted()
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        k = self.weights_.shape[1]
        base = SEG_SWEEP if self.task == "segmentation" else CLS_SWEEP
        values = sorted({int(f) for f in (base if sweep is None else sweep) if f < k} | {k})
        if any(f < 1 for f in values):
            raise ValueError(f"sweep values must be >= 1, got {list(sweep or [])}")
        cache = self._collect(data)
        ranked = self.weights_.abs().argsort(1, descending=True)
        scores = []
        for f in values:
            mask = torch.zeros_like(self.weights_)
            mask.scatter_(1, ranked[:, :f], 1.0)
            w, b, _ = self._train(self._train_cache, mask)
            scores.append(self._score(cache, w, b))
        table = torch.stack(scores, 1)  # (C, S)
        full = table[:, -1:]
        goal = fraction * full if self.task == "segmentation" else 0.5 + fraction * (full - 0.5)
        reached = table >= goal - 1e-12
        sweep_t = torch.tensor(values)
        critical = sweep_t[reached.float().argmax(1)]
        return FiltersNeeded(sweep_t, table, critical, ranked, list(self.concepts_))

    # ------------------------------------------------------------------------- embeddings

    def similarity(self) -> Tensor:
        """``(C, C)`` cosine similarity between the concept embeddings."""
        self._check_fitted()
        w = F.normalize(self.weights_.double(), dim=1)
        return (w @ w.T).float()

    def nearest(self, concept: str | int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` concepts whose embeddings are closest (cosine) to ``concept``."""
        sim = self.similarity()
        i = self.concepts_.index(concept) if isinstance(concept, str) else int(concept)
        order = sim[i].argsort(descending=True).tolist()
        return [(self.concepts_[j], float(sim[i, j])) for j in order if j != i][:k]


def _balanced(present: Tensor, gen: torch.Generator) -> Tensor:
    """``(N, C)`` 0/1: all of the smaller class of each concept and an equal random subsample
    of the larger one (linearprobe_disc_pytorch.py: redrawn every epoch).
    """
    n, c = present.shape
    use = torch.zeros(n, c)
    noise = torch.rand(n, c, generator=gen)
    for j in range(c):
        pos = present[:, j] > 0
        n_small = int(min(pos.sum(), (~pos).sum()))
        for group in (pos, ~pos):
            idx = group.nonzero()[:, 0]
            pick = idx[noise[idx, j].argsort()[:n_small]]
            use[pick, j] = 1.0
    return use
