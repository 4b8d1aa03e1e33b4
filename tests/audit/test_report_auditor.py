"""The audit report as an auditor reads it (issue 18): glossary, group accuracy gaps with an
interval, colorbars and pixel axes, captions true without masks, print-resolution figures."""

from __future__ import annotations

import base64
import io
import math
import re

import numpy as np
import pytest
import torch

from tests._models import TinyConvNet
from xai.audit import AuditResult, audit, write_report
from xai.audit.report import GLOSSARY, PRINT_DPI, figures, group_accuracy_flags


def _result(rows_cg, classes, min_samples=5):
    return AuditResult(
        classes=classes,
        groups=[],
        class_groups=rows_cg,
        flags=[],
        samples={},
        mean_maps=torch.zeros(1, 4, 4),
        hotspot_counts=torch.zeros(1, 2, 2),
        worst={},
        config={"min_samples": min_samples},
    )


def _wilson_closed_form(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_group_accuracy_gap_is_flagged_beyond_the_wilson_interval():
    classes = [
        {"class": 0, "name": "shirt", "n": 120, "accuracy": (19 + 30) / 120},
        {"class": 1, "name": "coat", "n": 120, "accuracy": (10 + 55) / 120},
    ]
    cg = [
        {
            "class": 0,
            "name": "shirt",
            "group": 1,
            "group_name": "patch",
            "n": 20,
            "accuracy": 19 / 20,
        },
        {
            "class": 0,
            "name": "shirt",
            "group": 0,
            "group_name": "no patch",
            "n": 100,
            "accuracy": 30 / 100,
        },
        {
            "class": 1,
            "name": "coat",
            "group": 1,
            "group_name": "patch",
            "n": 20,
            "accuracy": 10 / 20,
        },
        {
            "class": 1,
            "name": "coat",
            "group": 0,
            "group_name": "no patch",
            "n": 100,
            "accuracy": 55 / 100,
        },
    ]
    flags = group_accuracy_flags(_result(cg, classes))
    # shirt: 95% of 20 vs 30% of the rest, far outside; coat: 50% of 20 vs 55%, inside
    assert [(f["class"], f["group"]) for f in flags] == [(0, 1), (0, 0)]
    low, high = _wilson_closed_form(19, 20)
    np.testing.assert_allclose(flags[0]["accuracy_ci"], [low, high], rtol=1e-9)
    assert flags[0]["rest_accuracy"] == pytest.approx(0.30)
    assert flags[1]["rest_accuracy"] == pytest.approx(0.95)
    # small cells are never flagged
    assert group_accuracy_flags(_result(cg, classes, min_samples=21)) == []


def _png_size(b64: str) -> tuple[int, int]:
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    return img.size


def test_report_without_masks_glossary_colorbars_and_print_resolution(tmp_path, monkeypatch):
    x = torch.rand(12, 3, 16, 16)
    y = torch.tensor([0, 1] * 6)
    g = torch.tensor([0] * 6 + [1] * 6)
    result = audit(
        TinyConvNet(n_classes=2),
        x,
        labels=y,
        groups=g,
        group_names=["a", "b"],
        min_samples=2,
        progress=False,
    )
    figs = figures(result)
    for key in ("mean_maps", "hotspots"):
        fig = figs[key]
        labels = [ax.get_ylabel() for ax in fig.axes]
        assert any("share" in lab or "mean" in lab for lab in labels), key  # the colorbar
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert all(ax.axison for ax in panels) and panels[0].get_ylabel() == "y (px)"
        assert panels[0].get_images()[0].get_extent() == [0, 16, 16, 0]
    paths = write_report(result, tmp_path, format="html")
    page = paths["report"].read_text()
    assert "mask outline" not in page and "no masks were given" in page
    assert "<h2>Columns</h2>" in page and GLOSSARY["pointing"] in page
    widths = [_png_size(b)[0] for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", page)]
    fig_w = figs["mean_maps"].get_size_inches()[0]
    assert widths and max(widths) >= 0.7 * fig_w * PRINT_DPI
    monkeypatch.setattr("xai.audit.report.PRINT_DPI", 40)  # the Markdown text only
    md = write_report(result, tmp_path, format="markdown")["report"].read_text()
    assert "## Columns" in md and "- **accuracy**:" in md and "Group accuracy gaps" in md
