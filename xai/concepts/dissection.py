r"""Network Dissection: which filters of a layer fire on which labelled concepts.

For every filter ``k`` of a layer, the threshold :math:`T_k` is the top-``quantile`` value of
its activations over all positions of all images (:math:`P(a_k > T_k) \le q`, q = 0.005). The
filter's mask :math:`M_k(x)` is its activation map thresholded at :math:`T_k` and brought to
the label resolution; its agreement with concept ``c`` is the set IoU

.. math:: \mathrm{IoU}_{k,c} = \frac{\sum_x |M_k(x) \cap L_c(x)|}{\sum_x |M_k(x) \cup L_c(x)|}

summed over the images that contain ``c`` (Net2Vec's set IoU; ``iou="dataset"`` sums over
every image, NetDissect's dataset IoU). Counts are accumulated image by image, never
materializing the masks of the whole set.

Streaming: one forward pass over the data writes the captured activations and the label masks
(bit-packed) to a temporary folder on disk; thresholds (exact order statistics, a running
top-m per filter) and IoU counts are then read back in chunks of ``batch_size``. RAM does not
grow with the number of images (disk does, like NetDissect-Lite's feature memmaps), and each
image goes through the model once.

References:
    Bau, Zhou, Khosla, Oliva & Torralba, "Network Dissection: Quantifying Interpretability of
    Deep Visual Representations", CVPR 2017 (code: CSAILVision/NetDissect-Lite).
    Fong & Vedaldi, "Net2Vec: Quantifying and Explaining how Concepts are Encoded by Filters
    in Deep Neural Networks", CVPR 2018 (code: ruthcfong/net2vec).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai._checks import check_inputs, check_positive_int
from xai._typing import LayerLike, ReshapeLike
from xai.adapter import ModelAdapter

__all__ = [
    "ORDERS",
    "LayerDissection",
    "NetworkDissection",
    "concept_names",
    "exact_thresholds",
    "filter_masks",
]

ORDERS = ("threshold_then_upsample", "upsample_then_threshold")
_PAIRS_PER_BLOCK = 256  # (image, filter) maps upsampled at once when counting
INTERPRETABLE_IOU = 0.04  # NetDissect-Lite settings.py: a unit is interpretable above this IoU


# ------------------------------------------------------------------------------ data streaming


def concept_names(data: Any, n_concepts: int) -> list[str]:
    """The ``concepts`` attribute of a dataset (following ``Subset.dataset`` and
    ``DataLoader.dataset``), else ``["concept 0", ...]``.
    """
    for _ in range(4):
        names = getattr(data, "concepts", None)
        if names is not None:
            if len(names) != n_concepts:
                raise ValueError(
                    f"the data names {len(names)} concepts but its masks have {n_concepts}"
                )
            return list(names)
        data = getattr(data, "dataset", None)
        if data is None:
            break
    return [f"concept {i}" for i in range(n_concepts)]


def concept_kinds(data: Any) -> list[str] | None:
    """The ``kinds`` attribute of a dataset (object / texture / color), or ``None``."""
    for _ in range(4):
        kinds = getattr(data, "kinds", None)
        if kinds is not None:
            return list(kinds)
        data = getattr(data, "dataset", None)
        if data is None:
            break
    return None


def _batches(data: Any, batch_size: int) -> tuple[Iterable[tuple[Tensor, Tensor]], int | None]:
    """``(inputs (B, C, H, W), masks (B, n_concepts, H_l, W_l) bool)`` batches and the total."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        inputs, masks = data
        if not isinstance(masks, Tensor) or masks.dim() != 4 or inputs.dim() != 4:
            raise ValueError(
                "tensor data must be (inputs (N, C, H, W), masks (N, n_concepts, H_l, W_l)); "
                f"got shapes {tuple(inputs.shape)} and "
                f"{tuple(getattr(masks, 'shape', ()))}"
            )
        if masks.shape[0] != inputs.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks for {inputs.shape[0]} images")
        n = inputs.shape[0]
        return ((inputs[i : i + batch_size], masks[i : i + batch_size])
                for i in range(0, n, batch_size)), n  # fmt: skip
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return iter(loader), len(data)  # type: ignore[arg-type]
    if isinstance(data, DataLoader):
        total = len(data.dataset) if hasattr(data.dataset, "__len__") else None
        return iter(data), total
    if isinstance(data, Iterable):
        return iter(data), None
    raise TypeError(
        "data must be (inputs, masks) tensors, a Dataset of (image, masks) items or a "
        f"DataLoader of (inputs, masks) batches, got {type(data).__name__}"
    )


def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError(
            "each item must be (image, masks) with masks (n_concepts, H_l, W_l) bool; "
            f"got {type(batch).__name__}"
        )
    inputs, masks = batch[0], batch[1]
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        raise ValueError("batched images must be a floating tensor (B, C, H, W)")
    if not isinstance(masks, Tensor) or masks.dim() != 4 or masks.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"batched masks must be (B, n_concepts, H_l, W_l) for B={inputs.shape[0]} images, "
            f"got {tuple(getattr(masks, 'shape', ()))}"
        )
    if masks.dtype != torch.bool:
        if masks.is_floating_point() or not bool(((masks == 0) | (masks == 1)).all()):
            raise TypeError(f"masks must be bool (or 0/1 integers), got {masks.dtype}")
        masks = masks.bool()
    if torch.isnan(inputs).any():
        raise ValueError("the images contain NaN")
    return inputs, masks


# ------------------------------------------------------------------------- activation cache


def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-free model): the data follow."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class _Cache:
    """Activations of some layers and the label masks of a data set, on disk.

    Written once by :meth:`collect` (one forward per image), read back in chunks. The folder
    is deleted when the cache is garbage-collected.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="xai-dissect-", dir=cache_dir)
        self.path = Path(self._dir.name)
        self.n = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.mask_shape: tuple[int, ...] = ()
        self.present: Tensor = torch.zeros(0, 0, dtype=torch.bool)
        self.mask_counts: Tensor = torch.zeros(0, 0, dtype=torch.int64)
        self._names: dict[str, int] = {}  # layer name -> file number

    @classmethod
    def collect(
        cls,
        adapter: ModelAdapter,
        names: Sequence[str],
        data: Any,
        *,
        batch_size: int,
        progress: bool,
        cache_dir: str | Path | None = None,
        desc: str = "dissect",
    ) -> _Cache:
        from tqdm.auto import tqdm

        self = cls(cache_dir)
        present, counts = [], []
        batches, total = _batches(data, batch_size)
        with contextlib.ExitStack() as stack:
            files = {n: stack.enter_context(open(self.path / f"{i}.f32", "wb"))
                     for i, n in enumerate(names)}  # fmt: skip
            mask_file = stack.enter_context(open(self.path / "masks.bits", "wb"))
            bar = stack.enter_context(tqdm(total=total, desc=desc, unit="img",
                                           disable=not progress))  # fmt: skip
            cap = stack.enter_context(adapter.capture(list(names)))
            stack.enter_context(torch.no_grad())
            for batch in batches:
                inputs, masks = _unpack(batch)
                if self.mask_shape and tuple(masks.shape[1:]) != self.mask_shape:
                    raise ValueError(
                        f"masks change shape from {self.mask_shape} to "
                        f"{tuple(masks.shape[1:])}; all images need the same concepts "
                        "and label size"
                    )
                self.mask_shape = tuple(masks.shape[1:])
                adapter.forward(inputs.to(_device(adapter.module)), cap)
                for name in names:
                    act = cap.activations[name].float()
                    if not torch.isfinite(act).all():
                        raise ValueError(f"layer {name!r} produced NaN or infinite values")
                    self.shapes[name] = tuple(act.shape[1:])
                    files[name].write(act.cpu().numpy().tobytes())
                flat = masks.reshape(masks.shape[0], -1).cpu().numpy()
                mask_file.write(np.packbits(flat, axis=1).tobytes())
                present.append(masks.flatten(2).any(2).cpu())
                counts.append(masks.flatten(2).sum(2).cpu())
                self.n += inputs.shape[0]
                bar.update(inputs.shape[0])
        if self.n == 0:
            raise ValueError("the data is empty")
        self.present = torch.cat(present)
        self.mask_counts = torch.cat(counts)
        self._names = {n: i for i, n in enumerate(names)}
        return self

    def activations(self, name: str, index: slice | np.ndarray) -> Tensor:
        """``(B, K, h, w)`` float32 activations of images ``index`` of a layer."""
        shape = self.shapes[name]
        rows = _read_rows(self.path / f"{self._names[name]}.f32", index,
                          int(np.prod(shape)), np.float32)  # fmt: skip
        return torch.from_numpy(rows).reshape(-1, *shape)

    def masks(self, index: slice | np.ndarray) -> Tensor:
        """``(B, C, H_l, W_l)`` bool masks of images ``index``."""
        n_bits = int(np.prod(self.mask_shape))
        packed = _read_rows(self.path / "masks.bits", index, (n_bits + 7) // 8, np.uint8)
        bits = np.unpackbits(packed, axis=1, count=n_bits)
        return torch.from_numpy(bits.astype(bool)).reshape(-1, *self.mask_shape)

    def chunks(self, name: str, batch_size: int) -> Iterator[tuple[slice, Tensor]]:
        for i in range(0, self.n, batch_size):
            s = slice(i, min(i + batch_size, self.n))
            yield s, self.activations(name, s)


def _read_rows(path: Path, index: slice | np.ndarray, row: int, dtype: type) -> np.ndarray:
    """Rows ``index`` of a file of fixed-size rows, by plain reads (not a memmap, whose pages
    would count in the process's RSS as the whole cache is read).
    """
    size = np.dtype(dtype).itemsize * row
    with open(path, "rb") as fh:
        if isinstance(index, slice):
            fh.seek(index.start * size)
            count = (index.stop - index.start) * row
            return np.fromfile(fh, dtype=dtype, count=count).reshape(-1, row)
        out: np.ndarray = np.empty((len(index), row), dtype=dtype)
        for j, i in enumerate(np.asarray(index).tolist()):
            fh.seek(i * size)
            out[j] = np.fromfile(fh, dtype=dtype, count=row)
        return out


# --------------------------------------------------------------------------- the two maths


def exact_thresholds(chunks: Iterable[Tensor], quantile: float, total: int) -> Tensor:
    r"""Per-filter top-``quantile`` thresholds over all positions of all chunks, exactly.

    :math:`T_k` is the m-th largest value of filter k, :math:`m = \lfloor q N h w \rfloor + 1`,
    so that at most a fraction ``q`` of positions satisfy :math:`a_k > T_k` (strict). A running
    top-m per filter is kept, never the whole data (``torch.quantile`` refuses more than 2^24
    elements anyway).

    Args:
        chunks: ``(B, K, h, w)`` activation chunks covering the data once.
        quantile: q in (0, 1).
        total: N, the number of images over all chunks.

    Returns:
        ``(K,)`` float32 thresholds.
    """
    top: Tensor | None = None
    m = None
    for chunk in chunks:
        flat = chunk.float().transpose(0, 1).reshape(chunk.shape[1], -1)
        if m is None:
            m = math.floor(quantile * total * chunk.shape[2] * chunk.shape[3]) + 1
        both = flat if top is None else torch.cat([top, flat], 1)
        top = both.topk(min(m, both.shape[1]), dim=1).values
    assert top is not None and m is not None
    if top.shape[1] < m:
        raise ValueError(f"quantile {quantile} asks for the {m}-th largest of fewer values")
    return top[:, m - 1].contiguous()


def filter_masks(
    activations: Tensor, thresholds: Tensor, size: tuple[int, int], order: str
) -> Tensor:
    """Binary masks of every filter at label resolution, ``(B, K, H_l, W_l)`` bool.

    ``"threshold_then_upsample"`` (Net2Vec): ``bilinear(1[a > T]) > 0.5``;
    ``"upsample_then_threshold"`` (NetDissect): ``bilinear(a) > T``. Bilinear with
    ``align_corners=False``; no resizing when the sizes already match.

    Args:
        activations: ``(B, K, h, w)``.
        thresholds: ``(K,)``, or any shape broadcastable to ``(B, K, 1, 1)``.
        size: the label resolution ``(H_l, W_l)``.
        order: one of :data:`ORDERS`.
    """
    t = thresholds.to(activations.dtype)
    t = t[None, :, None, None] if t.dim() == 1 else t
    if tuple(activations.shape[2:]) == tuple(size):
        return activations > t
    if order == "threshold_then_upsample":
        binary = (activations > t).float()
        return F.interpolate(binary, size=size, mode="bilinear", align_corners=False) > 0.5
    up = F.interpolate(activations.float(), size=size, mode="bilinear", align_corners=False)
    return up > t


def _iou_counts(
    cache: _Cache, name: str, thresholds: Tensor, order: str, batch_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Accumulated ``intersection (C, K)``, ``mask size on images with c (C, K)``,
    ``mask size on all images (K,)``, ``label size (C,)`` as float64.

    Sparse on purpose: with q = 0.005 most (image, filter) pairs have no activation above
    T_k and an empty mask in both orders (a bilinear value is a convex combination of its
    neighbours), so only the pairs that fire are upsampled, and only their "on" pixels are
    looked up in the labels. The counts are the same as the dense sums.
    """
    size = (cache.mask_shape[1], cache.mask_shape[2])  # (C, H_l, W_l) -> (H_l, W_l)
    c = cache.mask_shape[0]
    k = cache.shapes[name][0]
    inter = torch.zeros(k, c, dtype=torch.float64)
    on_present = torch.zeros(c, k, dtype=torch.float64)
    on_all = torch.zeros(k, dtype=torch.float64)
    for s, acts in cache.chunks(name, batch_size):
        fires = (acts > thresholds[None, :, None, None]).flatten(2).any(2)  # (B, K)
        per_image = torch.zeros(acts.shape[0], k)
        labels = cache.masks(s).permute(0, 2, 3, 1)  # (B, H_l, W_l, C)
        # blocks of pairs bound the upsampled maps in memory (not up to B * K maps at once)
        for block in fires.nonzero().split(_PAIRS_PER_BLOCK):
            img, filt = block[:, 0], block[:, 1]
            per_pair = thresholds[filt][:, None, None, None]
            maps = filter_masks(acts[img, filt][:, None], per_pair, size, order)[:, 0]
            pair, y, x = maps.nonzero(as_tuple=True)
            per_image[img, filt] = torch.bincount(pair, minlength=len(img)).float()
            hits = labels[img[pair], y, x].double()  # (n_on, C): concepts under each on-pixel
            inter.index_add_(0, filt[pair], hits)
        on_present += cache.present[s].double().T @ per_image.double()
        on_all += per_image.sum(0).double()
    label = cache.mask_counts.sum(0).double()
    return inter.T.contiguous(), on_present, on_all, label


def set_iou(inter: Tensor, on: Tensor, label: Tensor) -> Tensor:
    """``inter / (on + label - inter)``, 0 where the union is empty."""
    union = on + label[:, None] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-20), torch.zeros_like(inter))


# ----------------------------------------------------------------------------- the results


@dataclass(frozen=True)
class LayerDissection:
    """Network Dissection of one layer.

    Attributes:
        layer: the layer's dotted name.
        thresholds: ``(K,)`` per-filter thresholds :math:`T_k`.
        iou: ``(C, K)`` IoU of every (concept, filter) pair.
        concepts: the C concept names.
        kinds: the kind of each concept (``object``, ``texture``, ``color``) when the data
            says, else ``None``.
        top_images: ``(K, n_top)`` indices of the images where each filter's maximum is
            highest (largest first), for :func:`xai.visualize.top_patches`.
        empty_filters: filters whose mask is empty on every image (saturated or dead).
    """

    layer: str
    thresholds: Tensor
    iou: Tensor
    concepts: list[str]
    kinds: list[str] | None = None
    top_images: Tensor | None = None
    empty_filters: list[int] = field(default_factory=list)

    @property
    def best_filter(self) -> Tensor:
        """``(C,)`` the filter with the highest IoU for each concept."""
        return self.iou.argmax(1)

    @property
    def best_iou(self) -> Tensor:
        """``(C,)`` that filter's IoU."""
        return self.iou.amax(1)

    @property
    def unit_label(self) -> Tensor:
        """``(K,)`` each filter's top concept (argmax over concepts)."""
        return self.iou.argmax(0)

    @property
    def unit_iou(self) -> Tensor:
        """``(K,)`` each filter's IoU with its top concept."""
        return self.iou.amax(0)

    def summary(self, threshold: float = INTERPRETABLE_IOU) -> dict[str, Any]:
        """Per-layer counts: filters, interpretable filters (top IoU > ``threshold``, 0.04 as
        in NetDissect-Lite), and the number of interpretable filters per concept and per kind.
        """
        good = self.unit_iou > threshold
        labels = self.unit_label[good].tolist()
        per_concept = {n: 0 for n in self.concepts}
        for c in labels:
            per_concept[self.concepts[c]] += 1
        per_kind: dict[str, int] = {}
        if self.kinds is not None:
            per_kind = {kind: 0 for kind in dict.fromkeys(self.kinds)}
            for c in labels:
                per_kind[self.kinds[c]] += 1
        return {
            "layer": self.layer,
            "n_filters": int(self.iou.shape[1]),
            "n_interpretable": int(good.sum()),
            "n_unique_concepts": len(set(labels)),
            "per_concept": {n: v for n, v in per_concept.items() if v},
            "per_kind": per_kind,
            "mean_unit_iou": float(self.unit_iou.mean()),
        }


# ------------------------------------------------------------------------- the main class


def _check_options(quantile: float, order: str, batch_size: int) -> None:
    if not isinstance(quantile, float | int) or not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r} (the paper: 0.005)")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    check_positive_int(batch_size, "batch_size")


class NetworkDissection:
    """Network Dissection (Bau et al., CVPR 2017) of one or several layers, streamed.

    Args:
        model: any ``nn.Module``; never changed (hooks via :mod:`xai.adapter`, removed on exit).
        layer: a layer (dotted name or module) or a list of them, dissected in one pass.
        quantile: top fraction of activations kept per filter (default 0.005, NetDissect-Lite
            ``settings.py`` and Net2Vec ``quantprobe.py``).
        order: ``"threshold_then_upsample"`` (default, Net2Vec's code: threshold at layer
            resolution, bilinear-upsample the binary map, keep > 0.5) or
            ``"upsample_then_threshold"`` (NetDissect-Lite: upsample activations, then > T).
        iou: ``"set"`` (default, Net2Vec: sums over the images that contain the concept) or
            ``"dataset"`` (NetDissect: sums over every image).
        batch_size: images per forward pass and per chunk read back (default 64).
        n_top: images kept per filter for the top-activation figures (default 8).
        reshape: token-to-grid reshape for transformers (see :class:`xai.adapter.ModelAdapter`).
        cache_dir: where the temporary activation cache goes (default: the system temp dir).
        progress: show a ``tqdm`` bar over the images.

    Images are moved to the model's device; the counts are accumulated on the CPU.

    Attributes set by :meth:`fit`:
        results_: ``{layer name: LayerDissection}``.
        thresholds_: ``{layer name: (K,) thresholds}``.

    Example:
        >>> nd = NetworkDissection(model, ["features.3", "features.14"]).fit(BrodenLite(300))
        >>> nd.results_["features.14"].unit_label          # (K,) top concept per filter
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerLike | Sequence[LayerLike],
        *,
        quantile: float = 0.005,
        order: str = "threshold_then_upsample",
        iou: str = "set",
        batch_size: int = 64,
        n_top: int = 8,
        reshape: ReshapeLike = None,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ) -> None:
        _check_options(quantile, order, batch_size)
        if iou not in ("set", "dataset"):
            raise ValueError(f"iou must be 'set' or 'dataset', got {iou!r}")
        check_positive_int(n_top, "n_top")
        self.adapter = ModelAdapter(model, reshape=reshape)
        layers: list[LayerLike] = [layer] if isinstance(layer, (str, nn.Module)) else list(layer)
        if not layers:
            raise ValueError("give at least one layer")
        self.layers = [self.adapter.resolve(one)[0] for one in layers]
        self.model = model
        self.quantile = float(quantile)
        self.order = order
        self.iou = iou
        self.batch_size = batch_size
        self.n_top = n_top
        self.cache_dir = cache_dir
        self.progress = progress

    def fit(self, data: Any) -> NetworkDissection:
        """Thresholds and IoU of every filter of every layer on ``data`` (one forward pass).

        Args:
            data: ``(inputs (N, C, H, W), masks (N, n_concepts, H_l, W_l))`` tensors, a
                Dataset of ``(image, masks)`` items (e.g. :class:`xai.data.BrodenLite`) or a
                DataLoader of such batches. Concept names come from its ``concepts``.

        Returns:
            ``self``, with :attr:`results_` and :attr:`thresholds_`.
        """
        cache = self._collect(data)
        self.thresholds_ = {
            name: exact_thresholds(
                (a for _, a in cache.chunks(name, self.batch_size)), self.quantile, cache.n
            )
            for name in self.layers
        }
        self.results_ = self._results(cache, data, self.thresholds_)
        return self

    def score(self, data: Any) -> dict[str, LayerDissection]:
        """IoU on other data (e.g. a validation split) with the thresholds fitted by :meth:`fit`."""
        if not hasattr(self, "thresholds_"):
            raise RuntimeError("call fit(data) before score(data)")
        return self._results(self._collect(data), data, self.thresholds_)

    def unit_masks(self, inputs: Tensor, layer: LayerLike | None = None) -> Tensor:
        """Each filter's mask on ``inputs`` at the input resolution, with the fitted
        thresholds and :attr:`order`: ``(B, K, H, W)`` bool (for figures).

        Args:
            inputs: ``(B, C, H, W)`` images.
            layer: one of the dissected layers (default: the first).
        """
        if not hasattr(self, "thresholds_"):
            raise RuntimeError("call fit(data) first")
        name = self.layers[0] if layer is None else self.adapter.resolve(layer)[0]
        if name not in self.thresholds_:
            raise ValueError(f"layer {name!r} was not dissected; choose from {self.layers}")
        check_inputs(inputs)
        with self.adapter.capture([name]) as cap, torch.no_grad():
            self.adapter.forward(inputs, cap)
            acts = cap.activations[name].float().cpu()
        size = (int(inputs.shape[2]), int(inputs.shape[3]))
        return filter_masks(acts, self.thresholds_[name], size, self.order)

    def summary(self, threshold: float = INTERPRETABLE_IOU) -> list[dict[str, Any]]:
        """:meth:`LayerDissection.summary` of every layer, in the order given."""
        if not hasattr(self, "results_"):
            raise RuntimeError("call fit(data) first")
        return [self.results_[name].summary(threshold) for name in self.layers]

    def _collect(self, data: Any) -> _Cache:
        return _Cache.collect(self.adapter, self.layers, data, batch_size=self.batch_size,
                              progress=self.progress, cache_dir=self.cache_dir)  # fmt: skip

    def _results(
        self, cache: _Cache, data: Any, thresholds: dict[str, Tensor]
    ) -> dict[str, LayerDissection]:
        names = concept_names(data, cache.mask_shape[0])
        kinds = concept_kinds(data)
        out = {}
        for name in self.layers:
            inter, on_present, on_all, label = _iou_counts(
                cache, name, thresholds[name], self.order, self.batch_size
            )
            on = on_present if self.iou == "set" else on_all[None].expand_as(inter)
            empty = torch.nonzero(on_all == 0).flatten().tolist()
            if empty:
                warnings.warn(
                    f"layer {name!r}: {len(empty)} filter(s) have an empty mask on every image "
                    f"(e.g. {empty[:5]}): saturated at their maximum or never active, so their "
                    "IoU is 0; a larger quantile may help",
                    stacklevel=3,
                )
            out[name] = LayerDissection(
                layer=name,
                thresholds=thresholds[name],
                iou=set_iou(inter, on, label).float(),
                concepts=names,
                kinds=kinds,
                top_images=_top_images(cache, name, self.n_top, self.batch_size),
                empty_filters=empty,
            )
        return out


def _top_images(cache: _Cache, name: str, n_top: int, batch_size: int) -> Tensor:
    """``(K, n_top)`` image indices with the highest per-image maximum of each filter."""
    values: Tensor | None = None
    index: Tensor | None = None
    for s, acts in cache.chunks(name, batch_size):
        peak = acts.flatten(2).amax(2).T  # (K, B)
        ids = torch.arange(s.start, s.stop).expand_as(peak)
        if values is not None and index is not None:
            peak, ids = torch.cat([values, peak], 1), torch.cat([index, ids], 1)
        values, order = peak.topk(min(n_top, peak.shape[1]), dim=1)
        index = ids.gather(1, order)
    assert index is not None
    return index
