"""The report card: one row per (set, method), metrics in range, the planted patch found."""

from __future__ import annotations

import json
import math

import pytest
import torch

from xai.audit.report_card import format_table, main, report_card
from xai.data.shortcuts import fashion_mnist_available

needs_fmnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="apt-get install -y dataset-fashion-mnist"
)


@pytest.fixture(scope="module")
def card():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield report_card(
            ["shortcut"], ["saliency", "grad_cam", "salient_relevance"], n_images=4, progress=False
        )
    finally:
        torch.set_num_threads(before)


@needs_fmnist
def test_rows_and_ranges(card):
    assert card["set"] == ["shortcut"] * 3
    assert card["method"] == ["saliency", "grad_cam", "salient_relevance"]
    assert card["error"] == ["", "", ""]
    for i in range(3):
        assert 0.0 <= card["pointing_game"][i] <= 1.0
        assert 0.0 <= card["relevance_mass"][i] <= 1.0
        assert math.isfinite(card["deletion"][i]) and math.isfinite(card["insertion"][i])
        # NaN where a map is constant (Spearman undefined: Grad-CAM is all zero on this model)
        rand = card["randomization"][i]
        assert math.isnan(rand) or -1.0 <= rand <= 1.0
    # the shortcut model reads the 4x4 patch (2% of the image): gradients point at it
    saliency = card["method"].index("saliency")
    assert card["pointing_game"][saliency] == 1.0
    assert card["randomization"][saliency] < 0.5  # gradients depend on the weights
    assert card["relevance_mass"][saliency] > 5 * 16 / 784
    text = format_table(card)
    assert "pointing" in text and "saliency" in text


@needs_fmnist
def test_main_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "card.json"
    code = main(
        [
            "--sets",
            "shortcut",
            "--methods",
            "saliency",
            "--n-images",
            "2",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    assert "saliency" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["method"] == ["saliency"]


def test_errors(capsys):
    with pytest.raises(ValueError, match="unknown set"):
        report_card(["imagenet"])
    with pytest.raises(ValueError, match="grad_cam"):
        report_card(["shortcut"], ["grad_cma"])
    with pytest.raises(ValueError, match="n_images"):
        report_card(["shortcut"], ["saliency"], n_images=0)
    assert main(["--sets", "nope"]) == 2
    assert "unknown set" in capsys.readouterr().err
