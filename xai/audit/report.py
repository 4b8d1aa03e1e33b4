"""A self-contained audit report: HTML or Markdown with embedded PNG figures, plus JSON.

The report holds the flags, the per-class, per-group and per-(class, group) tables, the mean
map and hot-spot grid of each class, the share of relevance inside the masks, and overlays of
the worst cases of the flagged classes. Figures are base64 PNGs inside the file, so the report
is one file to mail or attach; ``report.json`` holds the same numbers for machines.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xai.audit.audit import AuditResult

__all__ = ["figures", "write_report"]

_CLASS_COLUMNS = (
    "class",
    "name",
    "n",
    "accuracy",
    "mass_inside",
    "mass_inside_ci",
    "area_inside",
    "pointing",
    "hotspots",
    "flags",
)  # concepts: own table
_GROUP_COLUMNS = ("group", "name", "n", "accuracy", "mass_inside", "area_inside", "pointing")
_CG_COLUMNS = ("class", "name", "group", "group_name", "n", "accuracy", "mass_inside", "pointing")


def _fmt(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if column == "hotspots":
        return "; ".join(
            f"rows {h['box'][0]}-{h['box'][2] - 1}, cols {h['box'][1]}-"
            f"{h['box'][3] - 1}: {h['share']:.0%}"
            for h in value[:2]
        )
    if column == "flags":
        return ", ".join(value)
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], float):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figures(
    result: AuditResult,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_classes: int = 4,
) -> dict[str, Any]:
    """The report's matplotlib figures: ``mean_maps``, ``hotspots``, ``mass_inside`` (with
    masks) and ``worst`` (overlays of the worst cases of the flagged classes, or of the
    ``max_classes`` classes with the least mass inside when none is flagged)."""
    from matplotlib.figure import Figure

    from xai.visualize import overlay

    rows = result.classes
    names = {r["class"]: r["name"] for r in rows}
    flagged = set(result.flagged_classes)
    figs: dict[str, Any] = {}
    n = len(rows)
    cols = min(n, 5)
    nrow = math.ceil(n / cols)
    for key, data, title in (
        ("mean_maps", result.mean_maps, "mean positive map"),
        ("hotspots", result.hotspot_counts, "hot-spot counts"),
    ):
        fig = Figure(figsize=(2.2 * cols, 2.3 * nrow))
        for i, r in enumerate(rows):
            ax = fig.add_subplot(nrow, cols, i + 1)
            ax.imshow(np.asarray(data[r["class"]], dtype=np.float64), cmap="inferno")
            mark = " ⚑" if r["class"] in flagged else ""
            ax.set_title(f"{r['name']}{mark}", fontsize=9, color="red" if mark else "black")
            ax.set_axis_off()
        fig.suptitle(f"{title} per class", fontsize=10)
        figs[key] = fig
    if result.config.get("has_masks"):
        fig = Figure(figsize=(max(4.0, 0.6 * n + 1), 3))
        ax = fig.add_subplot()
        x = np.arange(n)
        mass = [r["mass_inside"] for r in rows]
        ax.bar(x, mass, color=["tab:red" if r["class"] in flagged else "tab:blue" for r in rows])
        ax.scatter(
            x,
            [r["area_inside"] for r in rows],
            color="black",
            marker="_",
            s=200,
            label="mask area (uniform map)",
            zorder=3,
        )
        ax.axhline(result.config["mass_threshold"], color="gray", ls="--", lw=1, label="threshold")
        ax.set_xticks(x, [r["name"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("relevance inside mask")
        ax.legend(fontsize=7)
        figs["mass_inside"] = fig
    chosen = [c for c in sorted(flagged) if result.worst.get(c)]
    if not chosen:
        by_mass = sorted(rows, key=lambda r: np.nan_to_num(r["mass_inside"], nan=2.0))
        chosen = [r["class"] for r in by_mass if result.worst.get(r["class"])]
    chosen = chosen[:max_classes]
    if chosen:
        k = max(len(result.worst[c]) for c in chosen)
        fig = Figure(figsize=(2.2 * k, 2.4 * len(chosen)))
        for i, c in enumerate(chosen):
            for j, ex in enumerate(result.worst[c]):
                ax = fig.add_subplot(len(chosen), k, i * k + j + 1)
                overlay(ex["image"], ex["map"], mean=mean, std=std, ax=ax)
                if ex["mask"] is not None:
                    ax.contour(
                        np.asarray(ex["mask"], dtype=float),
                        levels=[0.5],
                        colors="cyan",
                        linewidths=0.8,
                    )
                mass = ex["mass_inside"]
                pred = names.get(ex["prediction"], ex["prediction"])
                inside = "" if math.isnan(mass) else f", in {mass:.0%}"
                ax.set_title(f"{names.get(c, c)} #{ex['index']}\npred {pred}{inside}", fontsize=7)
        figs["worst"] = fig
    return figs


def _html_table(rows: list[dict], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c), c))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|!#~])")


def _md(text: object) -> str:
    """User text made inert in Markdown, as ``html.escape`` does for the HTML report: HTML
    tags are escaped (``<script>`` shows as text), line breaks become spaces (a name cannot
    end a table row or start a heading) and Markdown punctuation, ``|`` included, is
    backslash-escaped (a name cannot add a table column, a link or an image)."""
    flat = " ".join(str(text).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def _md_table(rows: list[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_md(_fmt(r.get(c), c)) for c in columns) + " |")
    return "\n".join(lines)


_CONCEPT_COLUMNS = ("class", "name", "concept", "importance", "mass_inside", "box")


def _concept_rows(result: AuditResult) -> list[dict]:
    names = {r["class"]: r["name"] for r in result.classes}
    return [
        {"class": c, "name": names.get(c, str(c)), **row}
        for c, rows in sorted(result.concepts.items())
        for row in rows
    ]


_CAPTIONS = {
    "mass_inside": "Share of positive relevance inside the object mask per class (bars) and "
    "the mask's area share, what a uniform map scores (black ticks).",
    "mean_maps": "Mean max-normalized positive map per class (⚑: flagged).",
    "hotspots": "Where each class's maps peak (counts on the hot-spot grid).",
    "worst": "Worst cases (least relevance inside the mask; cyan: mask outline).",
}


def write_report(
    result: AuditResult,
    out: str | Path,
    *,
    format: str = "html",
    title: str = "Attribution audit",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` (or ``report.md``) with embedded figures and ``report.json``.

    Args:
        result: an :class:`~xai.audit.AuditResult`.
        out: output folder (created).
        format: ``"html"`` (default) or ``"markdown"``.
        title: the report's title.
        mean, std: the inputs' normalization, to display the images of the worst cases.

    Returns:
        ``{"report": path, "json": path}``.

    Raises:
        TypeError: ``result`` is not an AuditResult.
        ValueError: an unknown format.
    """
    if not isinstance(result, AuditResult):
        raise TypeError(
            f"result must be an AuditResult from xai.audit.audit(), got {type(result).__name__}"
        )
    if format not in ("html", "markdown"):
        raise ValueError(f"format must be 'html' or 'markdown', got {format!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    json_path = folder / "report.json"
    json_path.write_text(json.dumps(payload, indent=1, allow_nan=False))
    images = {k: _png(f) for k, f in figures(result, mean=mean, std=std).items()}
    cfg = result.config
    summary = (
        f"{cfg['n_images']} images, explainer {cfg['explainer']}, target "
        f"{cfg['target']}, masks {'yes' if cfg['has_masks'] else 'no'}; "
        f"{len(result.flags)} flag(s) on {len(result.flagged_classes)} class(es)."
    )
    flag_lines = [f"{f['name']} (class {f['class']}): {f['message']}" for f in result.flags] or [
        "No class flagged."
    ]
    order = ["mass_inside", "mean_maps", "hotspots", "worst"]
    if format == "html":
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            (
                f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
                "max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
                "td,th{border:1px solid #ccc;padding:3px 6px}.flag{color:#b00}</style></head><body>"
            ),
            f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p><h2>Flags</h2><ul>",
            *[f"<li class='flag'>{html.escape(line)}</li>" for line in flag_lines],
            "</ul><h2>Per class</h2>",
            _html_table(result.classes, _CLASS_COLUMNS),
        ]
        if result.groups:
            parts += [
                "<h2>Per group</h2>",
                _html_table(result.groups, _GROUP_COLUMNS),
                "<h2>Per class and group</h2>",
                _html_table(result.class_groups, _CG_COLUMNS),
            ]
        if result.concepts:
            parts += [
                "<h2>Concepts of the audited classes</h2>",
                _html_table(_concept_rows(result), _CONCEPT_COLUMNS),
            ]
        parts.append("<h2>Figures</h2>")
        for key in order:
            if key in images:
                parts.append(
                    f"<figure><img alt='{key}' src='data:image/png;base64,{images[key]}'>"
                    f"<figcaption>{html.escape(_CAPTIONS[key])}</figcaption></figure>"
                )
        parts.append("</body></html>")
        path = folder / "report.html"
        path.write_text("\n".join(parts), encoding="utf-8")
    else:
        parts = [
            f"# {_md(title)}",
            "",
            _md(summary),
            "",
            "## Flags",
            "",
            *[f"- {_md(line)}" for line in flag_lines],
            "",
            "## Per class",
            "",
            _md_table(result.classes, _CLASS_COLUMNS),
            "",
        ]
        if result.groups:
            parts += [
                "## Per group",
                "",
                _md_table(result.groups, _GROUP_COLUMNS),
                "",
                "## Per class and group",
                "",
                _md_table(result.class_groups, _CG_COLUMNS),
                "",
            ]
        if result.concepts:
            parts += [
                "## Concepts of the audited classes",
                "",
                _md_table(_concept_rows(result), _CONCEPT_COLUMNS),
                "",
            ]
        parts += ["## Figures", ""]
        for key in order:
            if key in images:
                parts += [
                    f"![{key}](data:image/png;base64,{images[key]})",
                    "",
                    f"*{_CAPTIONS[key]}*",
                    "",
                ]
        path = folder / "report.md"
        path.write_text("\n".join(parts), encoding="utf-8")
    return {"report": path, "json": json_path}
