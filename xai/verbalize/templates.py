"""Every word the verbalizers write, in one frozen dataclass of format strings.

To translate, build ``Templates(first=..., ...)`` (or ``dataclasses.replace(ENGLISH, ...)``) and
pass it as ``Verbalizer(templates=...)``. Placeholders are ``str.format`` fields; numbers arrive
already formatted (``"66.7"``, IoU ``"0.83"``) and the ``%`` sign is part of the template.

The English wording follows the spec (``shared/specs/verbalization.md`` section 4), which adapts
the summary templates of Feldhus et al. (2023) from token spans to image regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ENGLISH", "Templates"]


def _positions() -> dict[tuple[str, str], str]:
    return {
        ("upper", "left"): "in the upper left",
        ("upper", "center"): "at the top",
        ("upper", "right"): "in the upper right",
        ("middle", "left"): "on the left",
        ("middle", "center"): "in the center",
        ("middle", "right"): "on the right",
        ("lower", "left"): "in the lower left",
        ("lower", "center"): "at the bottom",
        ("lower", "right"): "in the lower right",
    }


def _sizes() -> dict[str, str]:
    return {"small": "small", "medium": "medium-sized", "large": "large"}


@dataclass(frozen=True)
class Templates:
    """Format strings of every sentence (English by default).

    Attributes:
        positions: ``(row, col)`` -> phrase, rows ``upper/middle/lower``, columns
            ``left/center/right`` (the 3x3 table of the spec).
        sizes: ``small/medium/large`` -> adjective.
        name_peak: suffix when the region's peak lies on a label (``naming="peak"``).
        name_majority: suffix when most of the region lies on a label (``naming="majority"``).
        outside: suffix when the region is not on an object label (``objects=``).
        first, next, rest: the summary: most relevant region, the others, what is left.
        scattered: positive relevance exists but no region is large enough.
        empty: no positive relevance at all.
        label: one sentence per named area (object, concept, group mask).
        against: negative evidence (``sign="both"``).
        listing: the total order of regions (:meth:`Verbalizer.listing`).
        class_part, class_none, compare_classes, iou: comparison of two targets.
        image_part, image_none, compare_images: comparison of two images.
        agree, only, neither: comparison of two methods.
        prompt_*: the instruction-based prompt (Feldhus et al., SMV-GPT, adapted to images).
        audit_*: sentences of :func:`xai.verbalize.describe_audit` and the report card.
    """

    positions: dict[tuple[str, str], str] = field(default_factory=_positions)
    sizes: dict[str, str] = field(default_factory=_sizes)
    name_peak: str = " peaking on the {label}"
    name_majority: str = " on the {label}"
    outside: str = " outside the {label}"
    first: str = (
        "The prediction '{target}' relies mostly on a {size} region {position}{name} "
        "({share}% of the positive relevance, {area}% of the image)."
    )
    next: str = "A {size} region {position}{name} is also salient ({share}%)."
    rest: str = "The remaining {rest}% lies outside these regions."
    scattered: str = (
        "The positive relevance for '{target}' is scattered: no region of at least "
        "{min_area}% of the image stands out."
    )
    empty: str = "No region stands out for '{target}'."
    label: str = (
        "The {label} covers {area}% of the image and holds {share}% of the positive relevance."
    )
    against: str = (
        "A {size} region {position}{name} speaks against '{target}' "
        "({share}% of the negative relevance)."
    )
    listing: str = (
        "Region {index} {position}: {share}% of the positive relevance, {area}% of the image."
    )
    class_part: str = "evidence for '{target}' lies mostly {position} ({share}%)"
    class_none: str = "no region stands out for '{target}'"
    compare_classes: str = "{first}; {second}."
    iou: str = "Their salient areas overlap with IoU {iou}."
    image_part: str = "in {image} the evidence lies mostly {position} ({share}%)"
    image_none: str = "in {image} no region stands out"
    compare_images: str = "{first}; {second}."
    agree: str = "{method_1} and {method_2} agree on a region {position} (IoU {iou})."
    only: str = "Only {method} marks a region {position} ({share}% of its positive relevance)."
    neither: str = "Neither {method_1} nor {method_2} marks a region."
    prompt_regions: str = "Image regions with importance scores:"
    prompt_region: str = (
        "{index}. a {size} region {position}{name}: {share}% of the positive relevance, "
        "{area}% of the image"
    )
    prompt_no_region: str = "(no region stands out)"
    prompt_rest: str = "Outside these regions: {rest}% of the positive relevance"
    prompt_against: str = "Image regions that speak against '{target}':"
    prompt_against_region: str = (
        "{index}. a {size} region {position}{name}: {share}% of the negative relevance, "
        "{area}% of the image"
    )
    prompt_labels: str = "Named areas:"
    prompt_label: str = "- the {label}: {area}% of the image, {share}% of the positive relevance"
    prompt_grid: str = (
        "Share of the positive relevance in a 3x3 grid (rows from top to bottom, columns from "
        "left to right):"
    )
    prompt_grid_rows: tuple[str, str, str] = ("upper", "middle", "lower")
    prompt_context: str = (
        "The {model} has predicted this {text} as '{target}'. The scores behind each region "
        "indicate how important it was for the {model} to predict '{target}'. The scores have "
        "been determined after the {model} has already made its prediction. The {model} cannot "
        "base its prediction on the scores, only on the {text} itself."
    )
    prompt_commonsense: str = (
        "Based on the importance scores, briefly explain in simple language why the {model} "
        "predicted this {text} as '{target}':"
    )
    prompt_saliency: str = (
        "In a nutshell, what are the most important regions or objects in the {text} for the "
        "'{target}' prediction?"
    )
    audit_outside: str = (
        "On average {inside}% of the positive relevance for '{name}' lies inside the object, "
        "which covers {area}% of the image: the attribution lies mostly outside the object."
    )
    audit_fixed: str = (
        "{share}% of the '{name}' maps peak in the same cell {position} (rows {y0}-{y1}, "
        "columns {x0}-{x1}){where}."
    )
    audit_fixed_where: str = "; {outside}% of those peaks lie outside the object"
    audit_example: str = "In image {index}, {sentence}"
    audit_none: str = "No class is flagged."
    card_row: str = (
        "{method} on the {set}: {mass}% of the positive relevance lies on {truth} on average, "
        "and the maximum falls on it in {pointing}% of the images."
    )


ENGLISH = Templates()
