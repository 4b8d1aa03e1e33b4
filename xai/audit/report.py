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
from typing import TYPE_CHECKING, Any

import numpy as np

from xai.audit.audit import AuditResult
from xai.verbalize.audit import describe_audit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["GLOSSARY", "figures", "group_accuracy_flags", "write_report"]

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


PRINT_DPI = 300
"""Resolution of the embedded figures (print quality; the HTML scales them to the page)."""


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PRINT_DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _print_width(b64: str) -> str:
    """CSS width of an embedded PNG at its print size (pixels / PRINT_DPI inches)."""
    header = base64.b64decode(b64[:32])  # the PNG signature and IHDR: width at bytes 16-20
    return f"{int.from_bytes(header[16:20], 'big') / PRINT_DPI:.2f}in"


def figures(
    result: AuditResult,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_classes: int = 4,
) -> dict[str, Any]:
    """The report's matplotlib figures: ``mean_maps``, ``hotspots``, ``mass_inside`` (with
    masks) and ``worst`` (overlays of the worst cases of the flagged classes, or of the
    ``max_classes`` classes with the least mass inside when none is flagged).
    """
    from matplotlib.figure import Figure

    from xai.visualize import overlay

    rows = result.classes
    names = {r["class"]: r["name"] for r in rows}
    flagged = set(result.flagged_classes)
    figs: dict[str, Any] = {}
    n = len(rows)
    cols = min(n, 5)
    nrow = math.ceil(n / cols)
    h, w = result.mean_maps.shape[-2:]
    counts = result.hotspot_counts.double()
    shares = counts / counts.flatten(1).sum(1).clamp_min(1)[:, None, None]
    for key, data, title, label in (
        ("mean_maps", result.mean_maps, "mean positive map", "mean normalized map"),
        ("hotspots", shares, "hot-spot share", "share of maps peaking here"),
    ):
        fig = Figure(figsize=(2.4 * cols + 0.8, 2.4 * nrow), layout="constrained")
        axes = []
        for i, r in enumerate(rows):
            ax = fig.add_subplot(nrow, cols, i + 1)
            im = ax.imshow(
                np.asarray(data[r["class"]], dtype=np.float64),
                cmap="inferno",
                vmin=0.0,
                vmax=1.0,
                extent=(0, w, h, 0),
                interpolation="nearest",
            )
            mark = " ⚑" if r["class"] in flagged else ""
            ax.set_title(f"{r['name']}{mark}", fontsize=9, color="red" if mark else "black")
            ax.tick_params(labelsize=6)
            if i % cols == 0:
                ax.set_ylabel("y (px)", fontsize=7)
            if i >= n - cols:
                ax.set_xlabel("x (px)", fontsize=7)
            axes.append(ax)
        cbar = fig.colorbar(im, ax=axes, shrink=0.8)
        cbar.set_label(label, fontsize=8)
        cbar.ax.tick_params(labelsize=7)
        fig.suptitle(f"{title} per class (image coordinates)", fontsize=10)
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
        fig = Figure(figsize=(2.2 * k + 0.6, 2.4 * len(chosen)), layout="constrained")
        fig.suptitle("colour: each map divided by its 99.5th percentile", fontsize=8)
        for i, c in enumerate(chosen):
            for j, ex in enumerate(result.worst[c]):
                ax = fig.add_subplot(len(chosen), k, i * k + j + 1)
                overlay(
                    ex["image"],
                    ex["map"],
                    mean=mean,
                    std=std,
                    ax=ax,
                    colorbar=j == len(result.worst[c]) - 1,
                )
                if ex["mask"] is not None:
                    ax.contour(
                        np.asarray(ex["mask"], dtype=float),
                        levels=[0.5],
                        colors="cyan",
                        linewidths=0.8,
                    )
                mass = ex["mass_inside"]
                pred = names.get(ex["prediction"], ex["prediction"])
                inside = "" if math.isnan(mass) else f", in mask {mass:.0%}"
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
    backslash-escaped (a name cannot add a table column, a link or an image).
    """
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


def _captions(has_masks: bool) -> dict[str, str]:
    """Figure captions, true with and without masks."""
    worst = (
        "Worst cases: the images of each shown class with the least positive relevance inside "
        "the object mask (cyan: mask outline)."
        if has_masks
        else "Lowest-scoring cases: the images of each shown class with the lowest target "
        "score (no masks were given, so nothing is said about the object)."
    )
    return {
        "mass_inside": "Share of positive relevance inside the object mask per class (bars; red: "
        "flagged) and the mask's area share, what a uniform map scores (black ticks).",
        "mean_maps": "Mean max-normalized positive map per class, in image pixels (⚑: flagged).",
        "hotspots": "Where each class's maps peak: share of the class's maps whose maximum falls "
        "in each cell of the hot-spot grid, in image pixels.",
        "worst": worst,
    }


GLOSSARY = {
    "n": "number of images",
    "accuracy": "share of images whose predicted class is the label",
    "mass_inside": "mean share of positive relevance inside the object mask ('–': no masks)",
    "mass_inside_ci": "95% bootstrap interval of mass_inside",
    "area_inside": "mean share of the image covered by the mask: what a uniform map scores",
    "pointing": "share of images whose map maximum lies inside the mask (pointing game)",
    "hotspots": "grid cells (pixel rows, cols) where most maps peak, with the share of maps",
    "flags": "outside_object: mass_inside below the threshold and the mask area; "
    "fixed_location: most maps peak in one cell (outside the object with masks)",
    "group": "group id (from the groups given to the audit); group_name its name",
    "accuracy_ci": "95% Wilson interval of the group's accuracy",
    "rest_accuracy": "accuracy of the other images of the same class",
}
"""One line per report column, shown under the tables."""


def _wilson(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def group_accuracy_flags(result: AuditResult) -> list[dict]:
    """(class, group) cells whose accuracy differs from the rest of the class beyond its
    interval: the accuracy of the class's other images lies outside the group's 95% Wilson
    interval. Cells or rests with fewer than ``min_samples`` images are not flagged.

    Returns:
        One dict per flag: ``class``, ``name``, ``group``, ``group_name``, ``n``, ``accuracy``,
        ``accuracy_ci``, ``rest_n``, ``rest_accuracy`` and ``message``.
    """
    by_class = {r["class"]: r for r in result.classes}
    min_n = int(result.config.get("min_samples", 5))
    flags = []
    for row in result.class_groups:
        cls = by_class.get(row["class"])
        if cls is None or math.isnan(row["accuracy"]):
            continue
        n, rest_n = row["n"], cls["n"] - row["n"]
        if n < min_n or rest_n < min_n:
            continue
        k = round(row["accuracy"] * n)
        rest_acc = (round(cls["accuracy"] * cls["n"]) - k) / rest_n
        low, high = _wilson(k, n)
        if low <= rest_acc <= high:
            continue
        flags.append({
            "class": row["class"], "name": row["name"], "group": row["group"],
            "group_name": row["group_name"], "n": n, "accuracy": row["accuracy"],
            "accuracy_ci": [low, high], "rest_n": rest_n, "rest_accuracy": rest_acc,
            "message": f"accuracy {row['accuracy']:.0%} (95% CI {low:.0%}-{high:.0%}, n={n}) "
            f"for group {row['group_name']} against {rest_acc:.0%} for the rest of the class "
            f"(n={rest_n})",
        })  # fmt: skip
    return flags


_NO_GAP = "No group's accuracy differs from the rest of its class beyond its 95% interval."
_GAP_COLUMNS = ("class", "name", "group_name", "n", "accuracy", "accuracy_ci", "rest_n",
                "rest_accuracy")  # fmt: skip


def _glossary(columns: set[str]) -> list[tuple[str, str]]:
    return [(c, text) for c, text in GLOSSARY.items() if c in columns]


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
        mean: per-channel mean of the inputs' normalization, to display the images of the worst
            cases (default: none).
        std: per-channel standard deviation of that normalization.

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
    gaps = group_accuracy_flags(result)
    payload["group_accuracy_flags"] = gaps
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
    words = describe_audit(result)  # the flags and worst cases in sentences (xai.verbalize)
    order = ["mass_inside", "mean_maps", "hotspots", "worst"]
    captions = _captions(bool(cfg.get("has_masks")))
    shown = (
        set(_CLASS_COLUMNS)
        | (set(_GROUP_COLUMNS) | set(_CG_COLUMNS) if result.groups else set())
        | (set(_GAP_COLUMNS) if gaps else set())
    )
    glossary = _glossary(shown)
    gap_lines = [f"{g['name']} (class {g['class']}): {g['message']}" for g in gaps]
    if format == "html":
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            (
                f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
                "max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
                "td,th{border:1px solid #ccc;padding:3px 6px}.flag{color:#b00}"
                "img{max-width:100%;height:auto}dt{font-weight:bold}</style></head><body>"
            ),
            f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p><h2>Flags</h2><ul>",
            *[f"<li class='flag'>{html.escape(line)}</li>" for line in flag_lines],
            "</ul><h2>In words</h2>",
            *[f"<p>{html.escape(p)}</p>" for p in words],
            "<h2>Per class</h2>",
            _html_table(result.classes, _CLASS_COLUMNS),
        ]
        if result.groups:
            parts += [
                "<h2>Per group</h2>",
                _html_table(result.groups, _GROUP_COLUMNS),
                "<h2>Per class and group</h2>",
                _html_table(result.class_groups, _CG_COLUMNS),
                "<h3>Group accuracy gaps</h3><ul>",
                *[f"<li class='flag'>{html.escape(line)}</li>" for line in gap_lines],
                "</ul>" + _html_table(gaps, _GAP_COLUMNS) if gaps else f"<li>{_NO_GAP}</li></ul>",
            ]
        if result.concepts:
            parts += [
                "<h2>Concepts of the audited classes</h2>",
                _html_table(_concept_rows(result), _CONCEPT_COLUMNS),
            ]
        parts += ["<h2>Columns</h2><dl>",
                  *[f"<dt>{html.escape(c)}</dt><dd>{html.escape(t)}</dd>" for c, t in glossary],
                  "</dl>", "<h2>Figures</h2>"]  # fmt: skip
        for key in order:
            if key in images:
                parts.append(
                    f"<figure><img alt='{key}' style='width:{_print_width(images[key])}' "
                    f"src='data:image/png;base64,{images[key]}'>"
                    f"<figcaption>{html.escape(captions[key])}</figcaption></figure>"
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
            "## In words",
            "",
            *[f"{_md(p)}\n" for p in words],
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
                "### Group accuracy gaps",
                "",
                *([f"- {_md(line)}" for line in gap_lines] or [_NO_GAP]),
                "",
                *([_md_table(gaps, _GAP_COLUMNS), ""] if gaps else []),
            ]
        if result.concepts:
            parts += [
                "## Concepts of the audited classes",
                "",
                _md_table(_concept_rows(result), _CONCEPT_COLUMNS),
                "",
            ]
        parts += ["## Columns", "", *[f"- **{c}**: {t}" for c, t in glossary], "", "## Figures", ""]
        for key in order:
            if key in images:
                parts += [
                    f"![{key}](data:image/png;base64,{images[key]})",
                    "",
                    f"*{captions[key]}*",
                    "",
                ]
        path = folder / "report.md"
        path.write_text("\n".join(parts), encoding="utf-8")
    return {"report": path, "json": json_path}
