"""Grounded sentences on the planted-shortcut set: the patch is named, outside the garment.

Ground truth: a 4x4 white patch at rows/cols 1-4 of 95% of Fashion-MNIST "shirt" images; a
small CNN trained on them relies on it (tests/audit/test_audit.py checks that removing it breaks
the class). Its gradient maps must then be described as peaking on the planted patch, in the
upper left, outside the shirt, and the audit report and the report card must say so in words.
Skips without ``apt-get install dataset-fashion-mnist``.
"""

from __future__ import annotations

import re

import pytest
import torch

from xai.attributions import Saliency
from xai.audit import audit, write_report
from xai.audit.report_card import format_table, report_card
from xai.data.shortcuts import fashion_mnist_available, planted_shortcut_set, train_small_cnn
from xai.verbalize import PATCH_NAME, Verbalizer, describe_audit, ground_truth_labels

pytestmark = pytest.mark.skipif(
    not fashion_mnist_available(), reason="apt-get install -y dataset-fashion-mnist"
)
SHIRT = 6


@pytest.fixture(scope="module")
def planted():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions are faster on one thread on a shared CPU
    try:
        model = train_small_cnn(planted_shortcut_set(3000, shortcut_class=SHIRT))
        test = planted_shortcut_set(300, split="test", shortcut_class=SHIRT, seed=1)
        yield model, test
    finally:
        torch.set_num_threads(before)


def test_shortcut_is_described_outside_the_object(planted):
    model, test = planted
    pick = ((test.labels == SHIRT) & (test.groups == 1)).nonzero()[:6, 0]
    maps = Saliency(model)(test.inputs[pick], target=test.labels[pick])
    labels = ground_truth_labels(test, pick)
    assert list(labels[0]) == [PATCH_NAME, "shirt"]
    descriptions = Verbalizer().describe(maps, "shirt", labels, objects=test.class_names)
    for d, m, lab in zip(descriptions, maps, labels, strict=True):
        top = d.regions[0]
        assert (top.label, top.outside, top.row, top.col) == (PATCH_NAME, "shirt", "upper", "left")
        assert re.match(
            r"The prediction 'shirt' relies mostly on a (small|medium-sized) region in the upper "
            r"left peaking on the planted patch outside the shirt \(",
            d.text,
        )
        # the quoted patch share is the share measured here from the map and the patch mask
        pos = m.double().clamp_min(0)
        patch = float(pos[lab[PATCH_NAME]].sum() / pos.sum())
        (quoted,) = re.findall(r"The planted patch covers 2\.0% of the image and holds "
                               r"(\d+\.\d)% of the positive relevance", d.text)  # fmt: skip
        assert float(quoted) == pytest.approx(100 * patch, abs=0.05)
        assert patch > 5 * 16 / 784  # far more than the patch's area share


def test_audit_report_and_card_state_flags_in_words(planted, tmp_path):
    model, test = planted
    result = audit(
        model, test.inputs, labels=test.labels, masks=test.masks, groups=test.groups,
        class_names=test.class_names, group_names=test.group_names, progress=False,
    )  # fmt: skip
    assert SHIRT in result.flagged_classes
    shirt = next(r for r in result.classes if r["class"] == SHIRT)
    for flag in (f for f in result.flags if f["class"] == SHIRT):
        if flag["kind"] == "outside_object":
            assert flag["sentence"] == (
                f"On average {100 * shirt['mass_inside']:.1f}% of the positive relevance for "
                f"'shirt' lies inside the object, which covers {100 * shirt['area_inside']:.1f}% "
                "of the image: the attribution lies mostly outside the object."
            )
        else:
            assert flag["kind"] == "fixed_location"
            assert flag["sentence"].startswith(
                f"{100 * flag['share']:.1f}% of the 'shirt' maps peak in the same cell in the "
                "upper left (rows 0-3, columns 0-3); "
            )
    (paragraph,) = [p for p in describe_audit(result) if "'shirt'" in p]
    assert "In image " in paragraph and "upper left peaking" not in paragraph
    assert re.search(r"region in the upper left outside the shirt \(\d+\.\d% of the", paragraph)
    html = write_report(result, tmp_path / "html")["report"].read_text()
    assert "<h2>In words</h2>" in html and "upper left outside the shirt" in html
    md = write_report(result, tmp_path / "md", format="markdown")["report"].read_text()
    assert "## In words" in md and paragraph in md

    card = report_card(["shortcut"], ["saliency"], n_images=2, n_steps=2, n_randomized=1,
                       progress=False)  # fmt: skip
    (summary,) = card["summary"]
    (mass,) = re.findall(r"(\d+\.\d)% of the positive relevance lies on the planted patch", summary)
    assert float(mass) == pytest.approx(100 * card["relevance_mass"][0], abs=0.05)
    assert re.search(
        r"First image: The prediction 'shirt' relies mostly on a (small|medium-sized) region in "
        r"the upper left peaking on the planted patch outside the shirt",
        summary,
    )
    assert summary in format_table(card)
