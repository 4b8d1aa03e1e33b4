"""The audit's flags in sentences: :func:`flag_sentence` and :func:`describe_audit`.

:func:`xai.audit.audit` stores :func:`flag_sentence` in each flag (``flag["sentence"]``) and
:func:`xai.audit.write_report` prints :func:`describe_audit` under "In words": per flagged class,
its flags, then the worst case described by :class:`~xai.verbalize.Verbalizer` with its object
mask as a named area ("... a small region in the upper left outside the shirt ...").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from xai.verbalize.regions import position
from xai.verbalize.templates import ENGLISH, Templates
from xai.verbalize.verbalizer import Verbalizer, percent

if TYPE_CHECKING:
    from xai.audit.result import AuditResult

__all__ = ["describe_audit", "flag_sentence"]


def _row(result: AuditResult, cls: int) -> dict[str, Any]:
    return next(r for r in result.classes if r["class"] == cls)


def flag_sentence(flag: dict, result: AuditResult, templates: Templates = ENGLISH) -> str:
    """One sentence stating an audit flag with its numbers.

    ``outside_object``: "On average 2.4% of the positive relevance for 'shirt' lies inside the
    object, which covers 41.0% of the image: ..."; ``fixed_location``: "95.0% of the 'shirt'
    maps peak in the same cell in the upper left (rows 0-3, columns 0-3); 100.0% of those
    peaks lie outside the object." (the position is the cell centre's third of the image).
    """
    t = templates
    row = _row(result, flag["class"])
    if flag["kind"] == "outside_object":
        return t.audit_outside.format(
            name=row["name"], inside=percent(row["mass_inside"]), area=percent(row["area_inside"])
        )
    if flag["kind"] == "fixed_location":
        y0, x0, y1, x1 = flag["box"]
        h, w = result.config["image_size"]
        words = t.positions[position((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2, h, w)]
        outside = row["hotspots"][0]["outside"] if row["hotspots"] else float("nan")
        where = "" if math.isnan(outside) else t.audit_fixed_where.format(outside=percent(outside))
        return t.audit_fixed.format(
            share=percent(flag["share"]), name=row["name"], position=words,
            y0=y0, y1=y1 - 1, x0=x0, x1=x1 - 1, where=where,
        )  # fmt: skip
    return str(flag.get("message", flag["kind"]))


def describe_audit(result: AuditResult, *, verbalizer: Verbalizer | None = None) -> list[str]:
    """One paragraph per flagged class: its flags, then its worst case in words.

    Args:
        result: an :class:`~xai.audit.AuditResult`.
        verbalizer: describes the worst case's map (default ``Verbalizer()``; its templates
            are used for every sentence).

    Returns:
        Paragraphs (strings), or one saying that no class is flagged.
    """
    verbalizer = verbalizer if verbalizer is not None else Verbalizer()
    t = verbalizer.templates
    names = {r["class"]: r["name"] for r in result.classes}
    paragraphs = []
    for cls in result.flagged_classes:
        sentences = [flag_sentence(f, result, t) for f in result.flags if f["class"] == cls]
        worst = result.worst.get(cls) or []
        if worst:
            ex = worst[0]
            name = names.get(cls, str(cls))
            target = names.get(ex["prediction"], str(ex["prediction"]))
            target = target if result.config.get("target") == "prediction" else name
            labels = None if ex["mask"] is None else {name: ex["mask"]}
            text = verbalizer(ex["map"], target, labels, objects=name)[0]
            sentences.append(
                t.audit_example.format(index=ex["index"], sentence=text[:1].lower() + text[1:])
            )
        paragraphs.append(" ".join(sentences))
    return paragraphs or [t.audit_none]
