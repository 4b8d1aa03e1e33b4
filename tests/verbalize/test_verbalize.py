"""Model-free verbalization: exact sentences on planted maps, numbers parsed back, properties.

The expected sentences are written by hand from the spec (``shared/specs/verbalization.md``
sections 4 and 7) for 90x90 maps whose shares follow from the planted blocks in closed form
(e.g. blocks of 1 and 0.5 on 900 pixels each: 900 / 1350 = 66.7%). Random planted blobs are
checked against shares computed here from the blob sizes and values, not by the library.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from xai.verbalize import (
    ENGLISH,
    InstructionVerbalizer,
    Verbalizer,
    build_prompt,
    check,
    concept_labels,
    position,
)


def block(*blocks: tuple[slice, slice, float], size: int = 90) -> torch.Tensor:
    s = torch.zeros(size, size, dtype=torch.float64)
    for rows, cols, v in blocks:
        s[rows, cols] = v
    return s


UL = (slice(0, 30), slice(0, 30), 1.0)
LR_HALF = (slice(60, 90), slice(60, 90), 0.5)
T1 = (
    "The prediction 'cat' relies mostly on a medium-sized region in the upper left "
    "(100.0% of the positive relevance, 11.1% of the image)."
)
T2 = (
    "The prediction 'cat' relies mostly on a medium-sized region in the upper left "
    "(66.7% of the positive relevance, 11.1% of the image). A medium-sized region in the lower "
    "right is also salient (33.3%)."
)


def mask(rows: slice, cols: slice, size: int = 90) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[rows, cols] = True
    return m


def gaussian() -> np.ndarray:
    y, x = np.mgrid[0:90, 0:90]
    return np.exp(-((y - 45.0) ** 2 + (x - 20.0) ** 2) / (2 * 12.0**2))


# ------------------------------------------------------------------ exact sentences (spec 7)


def test_one_blob():
    assert Verbalizer()(block(UL), "cat") == [T1]


def test_two_blobs():
    assert Verbalizer()(block(UL, LR_HALF), "cat") == [T2]


def test_two_blobs_named_by_labels():
    s = block(UL, LR_HALF)
    bird = {"bird": mask(slice(0, 40), slice(0, 40))}
    assert Verbalizer()(s, "cat", bird) == [
        (
            "The prediction 'cat' relies mostly on a medium-sized region in the upper left peaking "
            "on the bird (66.7% of the positive relevance, 11.1% of the image). A medium-sized "
            "region in the lower right is also salient (33.3%). The bird covers 19.8% of the image "
            "and holds 66.7% of the positive relevance."
        )
    ]
    grass = {"grass": mask(slice(45, 90), slice(0, 90))}
    assert Verbalizer()(s, "cat", grass) == [
        (
            "The prediction 'cat' relies mostly on a medium-sized region in the upper left "
            "(66.7% of the positive relevance, 11.1% of the image). A medium-sized region in the "
            "lower right peaking on the grass is also salient (33.3%). The grass covers 50.0% of "
            "the image and holds 33.3% of the positive relevance."
        )
    ]
    # majority naming: the whole upper-left region lies on the bird
    assert " on the bird (66.7%" in Verbalizer(naming="majority")(s, "cat", bird)[0]


def test_region_outside_the_object():
    s = block((slice(1, 11), slice(1, 11), 1.0), (slice(40, 80), slice(30, 60), 0.1))
    labels = {
        "patch": mask(slice(1, 11), slice(1, 11)),
        "shirt": mask(slice(30, 85), slice(20, 70)),
    }
    text = Verbalizer()(s, "shirt", labels, objects=["shirt"])[0]
    # 0.1 * 1200 / (100 + 0.1 * 1200) = 54.5% on the shirt; the patch is outside it
    assert text == (
        "The prediction 'shirt' relies mostly on a medium-sized region at the bottom peaking on "
        "the shirt (54.5% of the positive relevance, 14.8% of the image). A small region in the "
        "upper left peaking on the patch outside the shirt is also salient (45.5%). The shirt "
        "covers 34.0% of the image and holds 54.5% of the positive relevance. The patch covers "
        "1.2% of the image and holds 45.5% of the positive relevance."
    )


def test_gaussian_and_rest():
    assert Verbalizer()(gaussian(), "dog") == [
        (
            "The prediction 'dog' relies mostly on a medium-sized region on the left (76.9% of the "
            "positive relevance, 14.8% of the image). "
            "The remaining 23.1% lies outside these regions."
        )
    ]


def test_compare_classes():
    (c,) = Verbalizer().compare_classes(block(UL), "cat", block((*LR_HALF[:2], 1.0)), "dog")
    assert c.text == (
        "Evidence for 'cat' lies mostly in the upper left (100.0%); evidence for 'dog' lies "
        "mostly in the lower right (100.0%). Their salient areas overlap with IoU 0.00."
    )
    assert c.iou == 0.0
    (c,) = Verbalizer().compare_classes(block(UL), "cat", torch.zeros(90, 90), "dog")
    assert c.text == (
        "Evidence for 'cat' lies mostly in the upper left (100.0%); no region stands out for "
        "'dog'. Their salient areas overlap with IoU 0.00."
    )


def test_compare_methods():
    lrp = block((slice(0, 30), slice(5, 30), 1.0), (slice(60, 90), slice(0, 30), 0.5))
    (c,) = Verbalizer().compare_methods(block(UL), "Grad-CAM", lrp, "LRP")
    # IoU 750 / 900; 0.5 * 900 / (750 + 450) = 37.5%
    assert c.text == (
        "Grad-CAM and LRP agree on a region in the upper left (IoU 0.83). Only LRP marks a "
        "region in the lower left (37.5% of its positive relevance)."
    )
    assert c.matches == ((0, 0, pytest.approx(750 / 900)),)
    (c,) = Verbalizer().compare_methods(torch.zeros(90, 90), "A", torch.zeros(90, 90), "B")
    assert c.text == "Neither A nor B marks a region."


def test_compare_images():
    (c,) = Verbalizer().compare_images(block(UL), block(UL, LR_HALF))
    assert c.text == (
        "In the first image the evidence lies mostly in the upper left (100.0%); in the second "
        "image the evidence lies mostly in the upper left (66.7%). Their salient areas overlap "
        "with IoU 0.50."
    )
    # different sizes: no IoU
    (c,) = Verbalizer().compare_images(block(UL), block(UL, size=60), name_b="the crop")
    assert c.text.endswith("in the crop the evidence lies mostly in the upper left (100.0%).")


def test_signed_map_negative_evidence():
    s = block(UL, (*LR_HALF[:2], -0.5))
    assert Verbalizer(sign="both")(s, "cat") == [
        T1 + " A medium-sized region in the lower right speaks against 'cat' (100.0% of the "
        "negative relevance)."
    ]
    assert Verbalizer()(s, "cat") == [T1]  # sign="positive" ignores negative evidence


def test_empty_negative_only_and_scattered_maps():
    assert Verbalizer()(torch.zeros(90, 90), "cat") == ["No region stands out for 'cat'."]
    neg = block((*LR_HALF[:2], -1.0))
    assert Verbalizer(sign="both")(neg, "cat") == [
        (
            "No region stands out for 'cat'. A medium-sized region in the lower right speaks "
            "against 'cat' (100.0% of the negative relevance)."
        )
    ]
    one_pixel = block((slice(5, 6), slice(5, 6), 1.0))
    assert Verbalizer()(one_pixel, "cat") == [
        (
            "The positive relevance for 'cat' is scattered: no region of at least 1% of the image "
            "stands out."
        )
    ]


def test_centroid_on_a_third_boundary_is_center():
    # centroid 29.5: 3 * (29.5 + 0.5) = 90 is not < 90, so the middle third (half-open bins)
    s = block((slice(20, 40), slice(20, 40), 1.0))
    assert "a small region in the center (100.0%" in Verbalizer()(s, "x")[0]
    assert position(29.5, 29.49, 90, 90) == ("middle", "left")


def test_listing_and_top_share_and_merge():
    s = block(UL, LR_HALF)
    assert Verbalizer().listing(s) == [
        (
            "Region 1 in the upper left: 66.7% of the positive relevance, 11.1% of the image. "
            "Region 2 in the lower right: 33.3% of the positive relevance, 11.1% of the image."
        )
    ]
    # top share 0.5: the 675 brightest pixels hold half; ties keep the whole block of ones
    assert Verbalizer(threshold="top_share", value=0.5)(s, "cat") == [
        (
            "The prediction 'cat' relies mostly on a medium-sized region in the upper left "
            "(66.7% of the positive relevance, 11.1% of the image). "
            "The remaining 33.3% lies outside these regions."
        )
    ]
    gap = block((slice(30, 60), slice(10, 40), 1.0), (slice(30, 60), slice(42, 72), 1.0))
    assert len(Verbalizer().regions(gap)[0]) == 2
    (merged,) = Verbalizer(merge_radius=1).regions(gap)[0]
    assert merged.share == pytest.approx(1.0) and merged.area == pytest.approx(62 * 30 / 8100)


def test_translated_templates():
    german = replace(
        ENGLISH,
        first="Die Vorhersage '{target}' stützt sich vor allem auf eine {size} Region {position}"
        "{name} ({share} % der positiven Relevanz, {area} % des Bildes).",
        sizes={"small": "kleine", "medium": "mittelgroße", "large": "große"},
        positions={**ENGLISH.positions, ("upper", "left"): "oben links"},
    )
    assert Verbalizer(templates=german)(block(UL), "Katze") == [
        (
            "Die Vorhersage 'Katze' stützt sich vor allem auf eine mittelgroße Region oben links "
            "(100.0 % der positiven Relevanz, 11.1 % des Bildes)."
        )
    ]


# ---------------------------------------------------------- numbers parsed back, properties

FIRST = re.compile(r"\((\d+\.\d)% of the positive relevance, (\d+\.\d)% of the image\)")
NEXT = re.compile(r"is also salient \((\d+\.\d)%\)")
LABEL = re.compile(r"The (\w+) covers (\d+\.\d)% of the image and holds (\d+\.\d)% of the")
REST = re.compile(r"The remaining (\d+\.\d)% lies")


def planted_blobs(seed: int) -> tuple[np.ndarray, list[tuple[float, float]], dict, np.ndarray]:
    """1-3 separated rectangles (values in [0.5, 1], each over 1% of the image), their expected
    (share, area) by share, a rectangular label and its expected share."""
    rng = np.random.default_rng(seed)
    s = np.zeros((64, 80))
    expected = []
    for top, left in ((2, 3), (34, 30), (8, 55))[: rng.integers(1, 4)]:
        h, w, v = rng.integers(8, 15), rng.integers(8, 17), rng.uniform(0.5, 1.0)
        s[top : top + h, left : left + w] = v
        expected.append((v * h * w, h * w / s.size))
    total = sum(e[0] for e in expected)
    expected = sorted(((m / total, a) for m, a in expected), reverse=True)
    labels = {"rect": np.zeros(s.shape, bool)}
    labels["rect"][rng.integers(0, 30) :, rng.integers(0, 40) :] = True
    return s, expected, labels, s[labels["rect"]].sum() / s.sum()


@pytest.mark.parametrize("seed", range(8))
def test_every_number_quoted_is_the_measured_share(seed):
    s, expected, labels, rect_share = planted_blobs(seed)
    (d,) = Verbalizer().describe(s, "x", labels)
    first = FIRST.findall(d.text)
    assert len(first) == 1
    quoted = [float(first[0][0])] + [float(v) for v in NEXT.findall(d.text)]
    assert quoted == pytest.approx([100 * e[0] for e in expected], abs=0.05)
    assert float(first[0][1]) == pytest.approx(100 * expected[0][1], abs=0.05)
    ((name, area, share),) = LABEL.findall(d.text)
    assert name == "rect"
    assert float(area) == pytest.approx(100 * labels["rect"].mean(), abs=0.05)
    assert float(share) == pytest.approx(100 * rect_share, abs=0.05)
    assert not REST.findall(d.text)  # the blobs hold all the relevance
    assert [r.share for r in d.regions] == pytest.approx([e[0] for e in expected], abs=1e-12)
    assert check(d.text, d).ok  # the template text passes its own check


def test_shares_rest_and_grid_on_a_gaussian():
    g = gaussian()
    (d,) = Verbalizer(max_regions=1).describe(g, "dog")
    (r,) = d.regions
    m = r.mask.numpy()
    assert r.share == pytest.approx(g[m].sum() / g.sum(), abs=1e-12)
    assert d.rest == pytest.approx(1 - r.share, abs=1e-12)
    assert 0 <= r.share <= 1 and m.mean() == pytest.approx(r.area)
    rows = [g[:30].sum(), g[30:60].sum(), g[60:].sum()]
    assert d.grid.sum(1) == pytest.approx(np.array(rows) / g.sum(), abs=1e-12)
    assert float(REST.findall(d.text)[0]) == pytest.approx(100 * (1 - r.share), abs=0.05)


def test_scale_sign_transpose_and_determinism():
    s = block(UL, LR_HALF, (slice(35, 55), slice(70, 85), 0.7))
    v = Verbalizer()
    text = v(s, "cat")[0]
    assert v(s * 3.7, "cat")[0] == text and v(s * 1e-6, "cat")[0] == text
    noisy = s.clone()
    noisy[40:90, 0:40] = -torch.rand(50, 40, generator=torch.Generator().manual_seed(0))
    assert v(noisy, "cat")[0] == text
    both = Verbalizer(sign="both")
    assert both(noisy, "cat")[0].startswith(text + " A ")
    swap = {
        "in the upper right": "in the lower left", "in the lower left": "in the upper right",
        "at the top": "on the left", "on the left": "at the top",
        "at the bottom": "on the right", "on the right": "at the bottom",
    }  # fmt: skip
    expected = re.sub("|".join(swap), lambda m: swap[m.group(0)], text)
    assert v(s.T.contiguous(), "cat")[0] == expected
    assert v(s.numpy(), "cat") == v(s, "cat") == [text]


def test_batch_and_per_sample_labels():
    maps = torch.stack([block(UL), block(UL, LR_HALF)])
    bird = mask(slice(0, 40), slice(0, 40))
    per_sample = [{"bird": bird}, {"tree": ~bird}]
    texts = Verbalizer()(maps, ["cat", "dog"], per_sample)
    assert "peaking on the bird" in texts[0] and "tree" not in texts[0]
    assert texts[1].startswith("The prediction 'dog'") and "peaking on the tree" in texts[1]
    stacked = Verbalizer()(maps, "cat", {"bird": torch.stack([bird, ~bird])})
    assert "peaking on the bird" in stacked[0] and "on the bird is also salient" in stacked[1]


# -------------------------------------------------------------------------- instruction path

T2_PROMPT = """Image regions with importance scores:
1. a medium-sized region in the upper left: 66.7% of the positive relevance, 11.1% of the image
2. a medium-sized region in the lower right: 33.3% of the positive relevance, 11.1% of the image
Share of the positive relevance in a 3x3 grid (rows from top to bottom, columns from left to \
right):
upper: 66.7% 0.0% 0.0%
middle: 0.0% 0.0% 0.0%
lower: 0.0% 0.0% 33.3%
The image classifier has predicted this image as 'cat'. The scores behind each region indicate \
how important it was for the image classifier to predict 'cat'. The scores have been determined \
after the image classifier has already made its prediction. The image classifier cannot base its \
prediction on the scores, only on the image itself.
Based on the importance scores, briefly explain in simple language why the image classifier \
predicted this image as 'cat':"""


def test_prompt_of_two_blobs_and_check():
    seen = []

    def fake(prompt: str) -> str:
        seen.append(prompt)
        return "It is 66.7% in the upper left."

    (r,) = InstructionVerbalizer(fake)(block(UL, LR_HALF), "cat")
    assert seen == [T2_PROMPT] and r.prompt == T2_PROMPT
    assert r.text == "It is 66.7% in the upper left." and r.check.ok
    assert r.check.numbers == (66.7,) and r.check.positions == ("in the upper left",)
    assert r.check.coverage == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    for wrong, field in (("Mostly 90% of it.", "unsupported_numbers"),
                         ("Look in the lower left.", "unsupported_positions")):  # fmt: skip
        (bad,) = InstructionVerbalizer(lambda p, w=wrong: w)(block(UL, LR_HALF), "cat")
        assert not bad.check.ok and getattr(bad.check, field)
    (both,) = InstructionVerbalizer(lambda p: "33,3 % in the lower right and 66.7 % at the top")(
        block(UL, LR_HALF), "cat"
    )
    assert both.check.unsupported_positions == ("at the top",)
    assert both.check.numbers == (33.3, 66.7) and not both.check.unsupported_numbers
    assert both.check.coverage == pytest.approx((0.0, 1 / 3, 1 / 3))


def test_prompt_contains_every_fact():
    s = block(UL, LR_HALF, (slice(35, 45), slice(40, 50), -1.0))
    s = s + torch.from_numpy(0.1 * gaussian())
    labels = {"bird": mask(slice(0, 40), slice(0, 40)), "grass": mask(slice(45, 90), slice(0, 90))}
    v = Verbalizer(sign="both")
    (d,) = v.describe(s, "cat", labels, objects="bird")
    seen = []
    llm = InstructionVerbalizer(
        lambda p: seen.append(p) or "fine", verbalizer=v, objective="saliency"
    )
    (r,) = llm(s, "cat", labels, objects="bird")
    (prompt,) = seen
    assert r.description.text == d.text and d.rest > 0.05 and d.against
    for sentence in d.sentences:  # every number and phrase of the model-free text
        for number in re.findall(r"\d+\.\d%", sentence):
            assert number in prompt, number
    for region in (*d.regions, *d.against):
        words = ENGLISH.positions[(region.row, region.col)]
        assert f"{ENGLISH.sizes[region.size]} region {words}" in prompt
        assert f"{100 * region.share:.1f}% of the" in prompt
        assert f"{100 * region.area:.1f}% of the image" in prompt
    assert "outside the bird" in prompt
    for fact in d.labels:
        assert f"the {fact.name}: {100 * fact.area:.1f}% of the image, " \
               f"{100 * fact.share:.1f}% of the positive relevance" in prompt  # fmt: skip
    for cell in d.grid.ravel():
        assert f"{100 * cell:.1f}%" in prompt
    assert f"Outside these regions: {100 * d.rest:.1f}%" in prompt
    assert "what are the most important regions or objects in the image for the 'cat'" in prompt
    assert prompt == build_prompt(d, objective="saliency")


def test_instruction_errors():
    with pytest.raises(TypeError, match="callable"):
        InstructionVerbalizer("gpt")
    with pytest.raises(ValueError, match="objective"):
        InstructionVerbalizer(str, objective="poetry")

    def broken(prompt: str) -> str:
        raise RuntimeError("offline")

    with pytest.raises(RuntimeError, match="offline"):
        InstructionVerbalizer(broken)(block(UL), "cat")
    with pytest.raises(TypeError, match="return a str"):
        InstructionVerbalizer(lambda p: None)(block(UL), "cat")


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("maps", "error", "fragment"),
    [
        (block(UL).masked_fill(mask(slice(0, 2), slice(0, 2)), float("nan")), ValueError, "NaN"),
        (torch.full((2, 8, 8), float("inf")), ValueError, "samples \\[0, 1\\]"),
        (torch.zeros(1, 3, 8, 8), ValueError, "sum\\(1\\)"),
        (torch.zeros(0, 8, 8), ValueError, "empty"),
        ([[0.0, 1.0]], TypeError, "numpy array"),
    ],
)
def test_bad_maps(maps, error, fragment):
    with pytest.raises(error, match=fragment):
        Verbalizer()(maps, "cat")


def test_bad_options_and_labels():
    for kwargs, fragment in (
        ({"threshold": "median"}, "threshold"),
        ({"value": 0.0}, "value"),
        ({"threshold": "fraction_of_max", "value": 2.0}, "value"),
        ({"min_area": 1.0}, "min_area"),
        ({"merge_radius": -1}, "merge_radius"),
        ({"max_regions": 0}, "max_regions"),
        ({"sign": "negative"}, "sign"),
        ({"naming": "first"}, "naming"),
        ({"min_overlap": 0}, "min_overlap"),
    ):
        with pytest.raises(ValueError, match=fragment):
            Verbalizer(**kwargs)
    v = Verbalizer()
    with pytest.raises(ValueError, match="resize masks"):
        v(block(UL), "cat", {"bird": torch.ones(10, 10)})
    with pytest.raises(TypeError, match="mapping"):
        v(block(UL), "cat", "bird")
    with pytest.raises(ValueError, match="one per map"):
        v(torch.zeros(2, 9, 9), ["cat"])
    with pytest.raises(ValueError, match="2 label mappings for 1"):
        v(block(UL), "cat", [{}, {}])
    with pytest.raises(ValueError, match="pair them"):
        v.compare_methods(torch.zeros(2, 9, 9), "a", torch.zeros(1, 9, 9), "b")
    with pytest.raises(ValueError, match="upsample"):
        v.compare_methods(torch.zeros(1, 9, 9), "a", torch.zeros(1, 8, 8), "b")


# ------------------------------------------------------------------------- concept labels


def test_concept_maps_name_regions():
    maps = torch.zeros(2, 3, 20, 20, dtype=torch.float64)
    maps[:, 0, :10, :10] = torch.linspace(0.1, 1.0, 100, dtype=torch.float64).reshape(10, 10)
    maps[:, 1, 15:, 15:] = 1.0
    labels = concept_labels(maps, ["stripes", "collar", "sleeve"], concepts=[1, 0])
    assert list(labels[0]) == ["collar", "stripes"]  # the given order is the naming priority
    # 90th percentile of 400 values: the 40 largest of the ramp (and nothing of the empty map)
    assert int(labels[0]["stripes"].sum()) == 40 and int(labels[0]["collar"].sum()) == 25
    assert bool(labels[1]["stripes"][9, 9]) and not bool(labels[1]["stripes"][0, 0])
    s = torch.zeros(2, 20, 20)
    s[:, 6:10, 2:8] = 1.0
    texts = Verbalizer()(s, "shirt", labels)
    assert all("peaking on the stripes" in t for t in texts)
    with pytest.raises(ValueError, match="3 concepts"):
        concept_labels(maps, ["a"])
    with pytest.raises(ValueError, match="indices"):
        concept_labels(maps, concepts=[5])
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        concept_labels(maps[0])


# ------------------------------------------------------------------------------- captions


def test_overlay_caption(tmp_path):
    from xai.visualize import add_caption, overlay, save

    text = Verbalizer()(block(UL, LR_HALF), "cat")[0]
    image = torch.rand(3, 90, 90, generator=torch.Generator().manual_seed(0))
    ax = overlay(image, block(UL, LR_HALF), caption=text)
    (caption,) = ax.texts
    assert caption.get_text().replace("\n", " ") == text
    ax2 = add_caption(overlay(image, block(UL)), text, width=30)
    assert max(len(line) for line in ax2.texts[0].get_text().splitlines()) <= 30
    path = save(ax.figure, tmp_path / "caption.png", dpi=60)
    assert path.stat().st_size > 0
    with pytest.raises(TypeError, match="caption"):
        add_caption(ax, 3)
