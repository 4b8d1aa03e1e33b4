"""Model-free, deterministic sentences about attribution maps: :class:`Verbalizer`.

The template ("search-based, model-free") method of Feldhus et al. (2023), adapted from token
spans to image regions (spec ``verbalization.md`` sections 4 and 6): find salient regions
(:mod:`xai.verbalize.regions`), name them by position, size and, when masks are given, by the
object, concept or group they lie on, and fill the templates of
:class:`~xai.verbalize.Templates`. Every sentence comes with the numbers it quotes
(:class:`Description`, :class:`Comparison`), so they can be checked.

Example:
    >>> from xai.verbalize import Verbalizer
    >>> maps = torch.zeros(1, 90, 90); maps[0, :30, :30] = 1
    >>> Verbalizer()(maps, "cat")
    ["The prediction 'cat' relies mostly on a medium-sized region in the upper left (100.0% of
    the positive relevance, 11.1% of the image)."]

References:
    Feldhus et al., "Saliency Map Verbalization: Comparing Feature Importance Representations
    from Model-free and Instruction-based Methods", NLRSE @ ACL 2023 (arXiv 2210.07222).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from torch import Tensor

from xai._checks import check_positive_int
from xai.verbalize.regions import (
    THRESHOLDS,
    Region,
    as_maps,
    find_regions,
    grid_shares,
    label_masks,
)
from xai.verbalize.templates import ENGLISH, Templates

__all__ = [
    "Comparison", "Description", "LabelFact", "Verbalizer", "percent", "region_words"
]  # fmt: skip

Labels = Mapping[str, object] | Sequence[Mapping[str, object]] | None


def percent(x: float) -> str:
    """A share as the templates print it: ``format(100 x, ".1f")`` (``0.6667 -> "66.7"``)."""
    return format(100.0 * x, ".1f")


@dataclass(frozen=True)
class LabelFact:
    """A named area (object, concept, group mask) and the relevance on it.

    Attributes:
        name: the label.
        area: the mask's share of the image's pixels.
        share: share of the positive relevance inside the mask (NaN when the map has none).
        negative_share: share of the negative relevance inside the mask (NaN when none).
    """

    name: str
    area: float
    share: float
    negative_share: float


@dataclass(frozen=True)
class Description:
    """What :meth:`Verbalizer.describe` says about one map, and the numbers behind it.

    Attributes:
        target: the target's name used in the text.
        regions: the positive regions quoted (at most ``max_regions``), by share.
        against: the negative regions quoted (``sign="both"``), by share.
        labels: one :class:`LabelFact` per named area, by share (descending, stable).
        rest: share of the positive relevance outside the quoted regions.
        grid: ``(3, 3)`` share of the positive relevance per third of rows and columns.
        total_positive: ``sum(max(S, 0))``; ``total_negative``: ``sum(max(-S, 0))``.
        sentences: the sentences, in order; ``text``: them joined by spaces.
    """

    target: str
    regions: tuple[Region, ...]
    against: tuple[Region, ...]
    labels: tuple[LabelFact, ...]
    rest: float
    grid: np.ndarray
    total_positive: float
    total_negative: float
    sentences: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Comparison:
    """A comparison of two maps (two targets, two images or two methods) and its numbers.

    Attributes:
        names: the two names compared.
        regions: the regions of each map (two tuples).
        iou: IoU of the union of each map's quoted regions (NaN when both are empty).
        matches: ``(i, j, iou)`` for region ``i`` of the first map matched to region ``j`` of
            the second (method comparison only).
        text: the sentences joined by spaces.
    """

    names: tuple[str, str]
    regions: tuple[tuple[Region, ...], tuple[Region, ...]]
    iou: float
    text: str
    matches: tuple[tuple[int, int, float], ...] = field(default=())

    def __str__(self) -> str:
        return self.text


def region_words(
    region: Region, templates: Templates = ENGLISH, naming: str = "peak"
) -> dict[str, str]:
    """The template fields of a region: ``size``, ``position``, ``name`` (the label and
    "outside" suffixes), ``share`` and ``area`` (formatted by :func:`percent`).
    """
    t = templates
    name = ""
    if region.label is not None:
        name = (t.name_peak if naming == "peak" else t.name_majority).format(label=region.label)
    if region.outside is not None:
        name += t.outside.format(label=region.outside)
    return {
        "size": t.sizes[region.size],
        "position": t.positions[(region.row, region.col)],
        "name": name,
        "share": percent(region.share),
        "area": percent(region.area),
    }


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def _union(regions: Sequence[Region], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for r in regions:
        out |= r.mask.numpy()
    return out


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


class Verbalizer:
    """Describe ``(B, H, W)`` attribution maps in sentences, deterministically and model-free.

    Args:
        threshold: how salient pixels are chosen on ``a = max(S, 0) / max``: ``"mean"``
            (default, SMV's ``mean`` metric: pixels at or above the mean of the top
            ``floor(value * HW)`` values), ``"std"`` (``value * std(a)``, SMV's misnamed
            ``quantile``), ``"fraction_of_max"`` (``a >= value``) or ``"top_share"`` (the fewest
            pixels holding ``value`` of the positive relevance: the top-k share).
        value: the threshold's parameter (default 0.4, the value of every shipped SMV ``mean``
            config).
        min_area: regions smaller than this share of the image are dropped (default 0.01).
        merge_radius: bridge gaps up to ``2 * merge_radius`` pixels with a binary closing
            before the components are labelled (the role of SMV's convolution filters; default 0).
        max_regions: regions quoted per map (default 3).
        max_labels: named areas quoted per map (default ``None``: all given).
        sign: ``"positive"`` (default, SMV's ``sgn="+"``) or ``"both"``: also describe the
            negative evidence of signed maps.
        naming: ``"peak"`` (default): a region is on the first label whose mask contains its
            peak (coarse maps such as Grad-CAM spill over the background, but peak on the
            object); ``"majority"``: on the label holding the largest part of it, if at least
            ``min_overlap``.
        min_overlap: see ``naming`` (default 0.5).
        templates: the wording (default English, :data:`~xai.verbalize.ENGLISH`).

    Raises:
        ValueError: an unknown option or a value out of range.
    """

    def __init__(
        self,
        *,
        threshold: str = "mean",
        value: float = 0.4,
        min_area: float = 0.01,
        merge_radius: int = 0,
        max_regions: int = 3,
        max_labels: int | None = None,
        sign: str = "positive",
        naming: str = "peak",
        min_overlap: float = 0.5,
        templates: Templates = ENGLISH,
    ) -> None:
        if threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
        limit = 1.0 if threshold in ("fraction_of_max", "top_share", "mean") else float("inf")
        if not isinstance(value, (int, float)) or not 0.0 < value <= limit:
            raise ValueError(
                f"value for threshold={threshold!r} must be in (0, {limit}], got {value!r}"
            )
        if not 0.0 <= min_area < 1.0:
            raise ValueError(f"min_area is a share of the image in [0, 1), got {min_area!r}")
        if isinstance(merge_radius, bool) or not isinstance(merge_radius, int) or merge_radius < 0:
            raise ValueError(f"merge_radius must be an int >= 0, got {merge_radius!r}")
        check_positive_int(max_regions, "max_regions")
        check_positive_int(max_labels, "max_labels", allow_none=True)
        if sign not in ("positive", "both"):
            raise ValueError(f"sign must be 'positive' or 'both', got {sign!r}")
        if naming not in ("peak", "majority"):
            raise ValueError(f"naming must be 'peak' or 'majority', got {naming!r}")
        if not 0.0 < min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap!r}")
        if not isinstance(templates, Templates):
            raise TypeError(f"templates must be a Templates, got {type(templates).__name__}")
        self.threshold = threshold
        self.value = float(value)
        self.min_area = float(min_area)
        self.merge_radius = merge_radius
        self.max_regions = max_regions
        self.max_labels = max_labels
        self.sign = sign
        self.naming = naming
        self.min_overlap = float(min_overlap)
        self.templates = templates

    # ------------------------------------------------------------------------------ regions

    def _find(
        self,
        values: np.ndarray,
        masks: Mapping[str, np.ndarray],
        objects: Sequence[str],
        sign: str,
    ) -> tuple[Region, ...]:
        found = find_regions(
            values,
            threshold=self.threshold,
            value=self.value,
            min_area=self.min_area,
            merge_radius=self.merge_radius,
        )[: self.max_regions]
        return tuple(self._name(r, masks, objects, sign) for r in found)

    def _on(self, region: Region, mask: np.ndarray) -> bool:
        if self.naming == "peak":
            return bool(mask[region.peak])
        inside = np.logical_and(region.mask.numpy(), mask).sum() / region.mask.sum().item()
        return bool(inside >= self.min_overlap)

    def _name(
        self,
        region: Region,
        masks: Mapping[str, np.ndarray],
        objects: Sequence[str],
        sign: str,
    ) -> Region:
        label = None
        if self.naming == "peak":
            label = next((n for n, m in masks.items() if m[region.peak]), None)
        elif masks:
            r = region.mask.numpy()
            overlaps = [np.logical_and(r, m).sum() / r.sum() for m in masks.values()]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= self.min_overlap:
                label = list(masks)[best]
        present = [o for o in objects if o in masks]
        outside = None
        if present and not any(self._on(region, masks[o]) for o in present):
            outside = present[0]
        return replace(region, label=label, outside=outside, sign=sign)

    def regions(self, attributions: Tensor | np.ndarray) -> list[list[Region]]:
        """The quoted positive regions of each map (at most ``max_regions``, by share).

        Args:
            attributions: ``(B, H, W)`` or ``(H, W)`` tensor or array (any method's raw output).

        Returns:
            One list of :class:`~xai.verbalize.Region` per map.
        """
        maps = as_maps(attributions)
        return [list(self._find(np.maximum(m, 0.0), {}, (), "positive")) for m in maps]

    # -------------------------------------------------------------------------- sentences

    def _phrase(self, region: Region) -> dict[str, str]:
        return region_words(region, self.templates, self.naming)

    def _targets(self, target_names: object, batch: int) -> list[str]:
        if isinstance(target_names, (str, int)):
            return [str(target_names)] * batch
        if isinstance(target_names, Tensor):
            target_names = target_names.tolist()
        if not isinstance(target_names, Sequence) or len(target_names) != batch:
            raise ValueError(
                f"target_names must be one name or one per map ({batch}), got {target_names!r}"
            )
        return [str(t) for t in target_names]

    def describe(
        self,
        attributions: Tensor | np.ndarray,
        target_names: str | Sequence[str],
        labels: Labels = None,
        *,
        objects: str | Sequence[str] = (),
    ) -> list[Description]:
        """Sentences and their numbers for each map.

        Args:
            attributions: ``(B, H, W)`` or ``(H, W)`` maps, tensor or array, raw and signed.
            target_names: the explained class's name, one for all or one per map.
            labels: named areas: ``{name: mask}`` with ``(H, W)`` or ``(B, H, W)`` masks
                (non-zero = inside), or a list of one such mapping per map. Object and group
                masks (:func:`~xai.verbalize.ground_truth_labels`), thresholded concept maps
                (:func:`~xai.verbalize.concept_labels`), Net2Vec or Network-Dissection masks of
                named filters all fit. Dict order is the naming priority.
            objects: label names that are objects: a region on none of them is said to lie
                "outside the {object}" (names absent from a map's labels are ignored).

        Returns:
            One :class:`Description` per map.

        Raises:
            TypeError, ValueError: maps or labels of the wrong type or shape, or NaN maps.
        """
        maps = as_maps(attributions)
        b, h, w = maps.shape
        names = self._targets(target_names, b)
        masks = label_masks(labels, b, (h, w))
        objects = (objects,) if isinstance(objects, str) else tuple(objects)
        return [self._describe(maps[i], names[i], masks[i], objects) for i in range(b)]

    def _describe(
        self,
        s: np.ndarray,
        target: str,
        masks: Mapping[str, np.ndarray],
        objects: Sequence[str],
    ) -> Description:
        t = self.templates
        pos, neg = np.maximum(s, 0.0), np.maximum(-s, 0.0)
        total_pos, total_neg = float(pos.sum()), float(neg.sum())
        regions = self._find(pos, masks, objects, "positive")
        against = self._find(neg, masks, objects, "negative") if self.sign == "both" else ()
        rest = 1.0 - sum(r.share for r in regions) if regions else 1.0
        sentences = []
        if total_pos <= 0:
            sentences.append(t.empty.format(target=target))
        elif not regions:
            sentences.append(
                t.scattered.format(target=target, min_area=format(100 * self.min_area, "g"))
            )
        else:
            sentences.append(t.first.format(target=target, **self._phrase(regions[0])))
            sentences += [t.next.format(**self._phrase(r)) for r in regions[1:]]
            if float(percent(rest)) >= 5.0:
                sentences.append(t.rest.format(rest=percent(rest)))
        facts = []
        for name, m in masks.items():
            share = float(pos[m].sum() / total_pos) if total_pos > 0 else float("nan")
            neg_share = float(neg[m].sum() / total_neg) if total_neg > 0 else float("nan")
            facts.append(LabelFact(name, float(m.mean()), share, neg_share))
        facts.sort(key=lambda f: -f.share if total_pos > 0 else 0.0)
        if total_pos > 0:
            sentences += [
                t.label.format(label=f.name, area=percent(f.area), share=percent(f.share))
                for f in facts[: self.max_labels]
            ]
        sentences += [t.against.format(target=target, **self._phrase(r)) for r in against]
        return Description(
            target=target,
            regions=regions,
            against=against,
            labels=tuple(facts),
            rest=rest,
            grid=grid_shares(pos),
            total_positive=total_pos,
            total_negative=total_neg,
            sentences=tuple(sentences),
            text=" ".join(sentences),
        )

    def __call__(
        self,
        attributions: Tensor | np.ndarray,
        target_names: str | Sequence[str],
        labels: Labels = None,
        *,
        objects: str | Sequence[str] = (),
    ) -> list[str]:
        """One short paragraph per map (see :meth:`describe` for the arguments)."""
        return [d.text for d in self.describe(attributions, target_names, labels, objects=objects)]

    def listing(
        self,
        attributions: Tensor | np.ndarray,
        labels: Labels = None,
        *,
        objects: str | Sequence[str] = (),
    ) -> list[str]:
        """The regions of each map in order ("Region 1 in the upper left: 66.7% ..."), the
        image analogue of SMV's total order / top-k listing.
        """
        maps = as_maps(attributions)
        b, h, w = maps.shape
        masks = label_masks(labels, b, (h, w))
        objects = (objects,) if isinstance(objects, str) else tuple(objects)
        out = []
        for i in range(b):
            regions = self._find(np.maximum(maps[i], 0.0), masks[i], objects, "positive")
            lines = []
            for k, r in enumerate(regions, start=1):
                p = self._phrase(r)
                lines.append(
                    self.templates.listing.format(
                        index=k,
                        position=p["position"] + p["name"],
                        share=p["share"],
                        area=p["area"],
                    )
                )
            out.append(" ".join(lines))
        return out

    # ------------------------------------------------------------------------- comparisons

    def _pair(self, maps_a: object, maps_b: object) -> tuple[np.ndarray, np.ndarray]:
        a, b = as_maps(maps_a, "maps_a"), as_maps(maps_b, "maps_b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"maps_a has {a.shape[0]} maps, maps_b {b.shape[0]}: pair them")
        return a, b

    def _two(
        self, a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, kind: str
    ) -> list[Comparison]:
        t = self.templates
        part, none, whole = {
            "classes": (t.class_part, t.class_none, t.compare_classes),
            "images": (t.image_part, t.image_none, t.compare_images),
        }[kind]
        key = "target" if kind == "classes" else "image"
        out = []
        for i in range(a.shape[0]):
            found = []
            parts = []
            for m, name in ((a[i], name_a), (b[i], name_b)):
                regions = self._find(np.maximum(m, 0.0), {}, (), "positive")
                found.append(regions)
                if regions:
                    p = self._phrase(regions[0])
                    parts.append(
                        part.format(position=p["position"], share=p["share"], **{key: name})
                    )
                else:
                    parts.append(none.format(**{key: name}))
            text = whole.format(first=_capitalize(parts[0]), second=parts[1])
            iou = float("nan")
            if a.shape[1:] == b.shape[1:]:
                iou = _iou(_union(found[0], a.shape[1:]), _union(found[1], b.shape[1:]))
                if not np.isnan(iou):
                    text += " " + t.iou.format(iou=format(iou, ".2f"))
            out.append(Comparison((name_a, name_b), (found[0], found[1]), iou, text))
        return out

    def compare_classes(
        self,
        maps_a: Tensor | np.ndarray,
        name_a: str,
        maps_b: Tensor | np.ndarray,
        name_b: str,
    ) -> list[Comparison]:
        """Where the evidence for two targets lies, and how much their salient areas overlap.

        Args:
            maps_a: ``(B, H, W)`` maps of the images for target ``a``.
            name_a: the name of target ``a``.
            maps_b: ``(B, H, W)`` maps of the same images for target ``b`` (same method).
            name_b: the name of target ``b``.

        Returns:
            One :class:`Comparison` per image, e.g. "Evidence for 'cat' lies mostly in the upper
            left (100.0%); evidence for 'dog' lies mostly in the lower right (100.0%). Their
            salient areas overlap with IoU 0.00." (salient area = union of quoted regions).
        """
        a, b = self._pair(maps_a, maps_b)
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(f"maps of two classes must have one size, got {a.shape} and {b.shape}")
        return self._two(a, b, str(name_a), str(name_b), "classes")

    def compare_images(
        self,
        maps_a: Tensor | np.ndarray,
        maps_b: Tensor | np.ndarray,
        *,
        name_a: str = "the first image",
        name_b: str = "the second image",
    ) -> list[Comparison]:
        """Where the evidence lies in two images (e.g. an image and its edited copy), and the
        IoU of their salient areas when the maps have one size.

        Args:
            maps_a: ``(B, H, W)`` maps of the first images.
            maps_b: ``(B, H, W)`` maps of the second images (same method and target).
            name_a: how the first image is called (default ``"the first image"``).
            name_b: how the second image is called (default ``"the second image"``).

        Returns:
            One :class:`Comparison` per pair of images.
        """
        a, b = self._pair(maps_a, maps_b)
        return self._two(a, b, str(name_a), str(name_b), "images")

    def compare_methods(
        self,
        maps_1: Tensor | np.ndarray,
        name_1: str,
        maps_2: Tensor | np.ndarray,
        name_2: str,
        *,
        min_iou: float = 0.3,
    ) -> list[Comparison]:
        """Which regions two methods agree on (SMV's compare search, for regions).

        Regions of map 1, by share, are matched greedily to the unused region of map 2 with the
        highest IoU if it is at least ``min_iou``: "{m1} and {m2} agree on a region {pos} (IoU
        ...)."; the leftovers of each map: "Only {m} marks a region {pos} (x% of its positive
        relevance)."

        Args:
            maps_1: ``(B, H, W)`` maps of the first method.
            name_1: the first method's name.
            maps_2: ``(B, H, W)`` maps of the second method (same images and target).
            name_2: the second method's name.
            min_iou: least IoU of two regions that agree (default 0.3).

        Returns:
            One :class:`Comparison` per image.
        """
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou!r}")
        a, b = self._pair(maps_1, maps_2)
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"maps of two methods must have one size, got {a.shape} and {b.shape}: "
                "upsample both to the input size"
            )
        t = self.templates
        out = []
        for i in range(a.shape[0]):
            r1 = self._find(np.maximum(a[i], 0.0), {}, (), "positive")
            r2 = self._find(np.maximum(b[i], 0.0), {}, (), "positive")
            used: set[int] = set()
            matches = []
            for j, r in enumerate(r1):
                scores = [
                    (_iou(r.mask.numpy(), q.mask.numpy()), k)
                    for k, q in enumerate(r2)
                    if k not in used
                ]
                best = max(scores, key=lambda s: (s[0], -s[1]), default=(0.0, -1))
                if best[1] >= 0 and best[0] >= min_iou:
                    used.add(best[1])
                    matches.append((j, best[1], best[0]))
            sentences = [
                t.agree.format(
                    method_1=name_1,
                    method_2=name_2,
                    position=t.positions[(r1[j].row, r1[j].col)],
                    iou=format(v, ".2f"),
                )
                for j, _, v in matches
            ]
            matched_1 = {j for j, _, _ in matches}
            for name, regions, taken in ((name_1, r1, matched_1), (name_2, r2, used)):
                sentences += [
                    t.only.format(
                        method=name,
                        position=t.positions[(r.row, r.col)],
                        share=percent(r.share),
                    )
                    for k, r in enumerate(regions)
                    if k not in taken
                ]
            if not r1 and not r2:
                sentences.append(t.neither.format(method_1=name_1, method_2=name_2))
            iou = _iou(_union(r1, a.shape[1:]), _union(r2, b.shape[1:]))
            out.append(
                Comparison(
                    (str(name_1), str(name_2)), (r1, r2), iou, " ".join(sentences), tuple(matches)
                )
            )
        return out
