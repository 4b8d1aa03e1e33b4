"""The audit finds a planted shortcut (and not in a clean twin), reports parse, errors are clear.

Ground truth: a 4x4 white patch planted on 95% of Fashion-MNIST "shirt" images; a small CNN
trained on them learns it (its shirt accuracy drops when the patch is removed), a twin trained
on the same images without any patch cannot use it.
"""

from __future__ import annotations

import base64
import json

import pytest
import torch

from xai.audit import AuditResult, audit, write_report
from xai.data.shortcuts import (
    fashion_mnist_available,
    planted_shortcut_set,
    train_small_cnn,
)

needs_fmnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="apt-get install -y dataset-fashion-mnist"
)
SHIRT = 6


@pytest.fixture(scope="module")
def one_thread():
    """Training is much faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def planted(one_thread):
    train = planted_shortcut_set(3000, shortcut_class=SHIRT)
    twin = planted_shortcut_set(3000, shortcut_class=SHIRT, planted=False)
    test = planted_shortcut_set(600, split="test", shortcut_class=SHIRT, seed=1)
    return {"test": test, "shortcut": train_small_cnn(train), "clean": train_small_cnn(twin)}


@pytest.fixture(scope="module")
def results(planted):
    test = planted["test"]
    kw = {
        "labels": test.labels,
        "masks": test.masks,
        "groups": test.groups,
        "class_names": test.class_names,
        "group_names": test.group_names,
        "progress": False,
    }
    return {k: audit(planted[k], test.inputs, **kw) for k in ("shortcut", "clean")}


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@needs_fmnist
def test_planted_set_is_a_real_shortcut(planted):
    # independent of the audit: the shortcut model needs the patch, the twin does not
    test = planted["test"]
    shirts = (test.labels == SHIRT) & (test.groups == 1)
    removed = test.inputs.clone()
    y0, x0, y1, x1 = test.info["patch_box"]
    removed[:, :, y0:y1, x0:x1] = 0.0
    with torch.no_grad():
        with_patch = (planted["shortcut"](test.inputs[shirts]).argmax(1) == SHIRT).float().mean()
        without = (planted["shortcut"](removed[shirts]).argmax(1) == SHIRT).float().mean()
    assert with_patch > 0.9 and without < with_patch - 0.3
    assert test.shortcut_masks[shirts][:, y0:y1, x0:x1].all()
    assert not test.shortcut_masks[~shirts].any()
    assert not (test.masks & test.shortcut_masks).any()


@needs_fmnist
def test_audit_flags_the_planted_class_and_locates_the_patch(results, planted):
    result = results["shortcut"]
    assert result.flagged_classes == [SHIRT]
    flag = next(f for f in result.flags if f["kind"] == "fixed_location")
    assert _overlap(flag["box"], planted["test"].info["patch_box"])
    shirt = next(r for r in result.classes if r["class"] == SHIRT)
    assert shirt["hotspots"][0]["share"] > 0.8 and shirt["hotspots"][0]["outside"] > 0.9
    assert shirt["pointing"] < 0.2
    # per (class, group): the model is right on patched shirts, wrong on the few without
    rows = {r["group"]: r for r in result.class_groups if r["class"] == SHIRT}
    assert rows[1]["accuracy"] > rows[0]["accuracy"]


@needs_fmnist
def test_clean_twin_is_not_flagged(results):
    result = results["clean"]
    assert SHIRT not in result.flagged_classes
    assert result.flags == []


@needs_fmnist
def test_tables_match_a_direct_computation(results, planted):
    test, result = planted["test"], results["shortcut"]
    from xai.attributions import Saliency

    maps = Saliency(planted["shortcut"])(test.inputs[:50], target=test.labels[:50]).double()
    pos = maps.clamp_min(0)
    mass = (pos * test.masks[:50]).flatten(1).sum(1) / pos.flatten(1).sum(1)
    found = torch.tensor(result.samples["mass_inside"][:50], dtype=torch.float64)
    torch.testing.assert_close(found, mass, rtol=1e-5, atol=1e-6)
    for row in result.classes:
        sel = test.labels == row["class"]
        assert row["n"] == int(sel.sum())
    n_patched = int((test.groups == 1).sum())
    assert next(r for r in result.groups if r["group"] == 1)["n"] == n_patched
    assert result.mean_maps.shape == (10, 28, 28)
    assert result.hotspot_counts.sum() <= len(test)


@needs_fmnist
def test_dataset_loader_and_resume_agree_with_tensors(planted, tmp_path):
    test = planted["test"].subset(slice(0, 200))
    model = planted["shortcut"]
    ref = audit(
        model,
        test.inputs,
        labels=test.labels,
        masks=test.masks,
        groups=test.groups,
        batch_size=50,
        progress=False,
    )
    from_set = audit(model, test, batch_size=50, progress=False)
    loader = torch.utils.data.DataLoader(test, batch_size=50)
    from_loader = audit(model, loader, progress=False)
    assert from_set.samples == ref.samples == from_loader.samples
    ckpt = tmp_path / "state.pt"
    audit(
        model,
        test.subset(slice(0, 100)),
        batch_size=50,
        checkpoint=ckpt,
        checkpoint_every=1,
        progress=False,
    )
    resumed = audit(model, test, batch_size=50, checkpoint=ckpt, progress=False)
    assert resumed.samples == ref.samples
    torch.testing.assert_close(resumed.mean_maps, ref.mean_maps)


@needs_fmnist
@pytest.mark.parametrize("fmt", ["html", "markdown"])
def test_report_files_exist_and_parse(results, tmp_path, fmt):
    result = results["shortcut"]
    paths = write_report(result, tmp_path / fmt, format=fmt)
    assert paths["report"].is_file() and paths["json"].is_file()
    data = json.loads(paths["json"].read_text())
    assert [f["class"] for f in data["flags"]] == [f["class"] for f in result.flags]
    assert len(data["classes"]) == 10 and len(data["samples"]["index"]) == len(
        result.samples["index"]
    )
    text = paths["report"].read_text()
    assert ("<table" in text) if fmt == "html" else ("| class | name |" in text)
    for row in result.classes:
        assert row["name"] in text
    assert "hot spot at a fixed location" in text
    chunks = text.split("data:image/png;base64,")[1:]
    assert len(chunks) >= 4
    png = base64.b64decode(chunks[0].split("'")[0].split(")")[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _tiny():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 3)
    )


def test_no_masks_no_groups_and_model_untouched():
    torch.manual_seed(0)
    model = _tiny().train()
    x = torch.rand(12, 1, 8, 8)
    y = torch.arange(12) % 3
    result = audit(model, x, labels=y, batch_size=5, min_samples=100, progress=False)
    assert isinstance(result, AuditResult) and model.training
    assert result.groups == [] and result.flags == []
    assert all(r["mass_inside"] != r["mass_inside"] for r in result.classes)  # NaN: no masks
    json.dumps(result.to_dict(), allow_nan=False)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (
            {"data": torch.rand(4, 8, 8), "labels": torch.zeros(4, dtype=torch.long)},
            ValueError,
            "(B, C, H, W)",
        ),
        ({"data": torch.rand(4, 1, 8, 8)}, ValueError, "labels="),
        (
            {"data": torch.rand(4, 1, 8, 8), "labels": torch.zeros(3, dtype=torch.long)},
            ValueError,
            "rows",
        ),
        (
            {
                "data": torch.rand(4, 1, 8, 8),
                "labels": torch.zeros(4, dtype=torch.long),
                "masks": torch.ones(4, 7, 7),
            },
            ValueError,
            "masks of shape",
        ),
        (
            {
                "data": torch.rand(4, 1, 8, 8),
                "labels": torch.zeros(4, dtype=torch.long),
                "explainer": 3,
            },
            TypeError,
            "registry name",
        ),
        (
            {
                "data": torch.rand(4, 1, 8, 8),
                "labels": torch.zeros(4, dtype=torch.long),
                "explainer": "grad_cma",
            },
            ValueError,
            "grad_cam",
        ),
        (
            {
                "data": torch.rand(4, 1, 8, 8),
                "labels": torch.zeros(4, dtype=torch.long),
                "target": "truth",
            },
            ValueError,
            "'label' or 'prediction'",
        ),
        (
            {
                "data": torch.rand(4, 1, 8, 8),
                "labels": torch.zeros(4, dtype=torch.long),
                "batch_size": 0,
            },
            ValueError,
            "batch_size",
        ),
        (
            {
                "data": torch.rand(4, 1, 8, 8),
                "labels": torch.zeros(4, dtype=torch.long),
                "mass_threshold": 1.5,
            },
            ValueError,
            "mass_threshold",
        ),
        ({"data": [1, 2, 3], "labels": None}, ValueError, "(inputs, labels"),
        ({"data": 42}, TypeError, "data must be"),
        (
            {"data": torch.rand(0, 1, 8, 8), "labels": torch.zeros(0, dtype=torch.long)},
            ValueError,
            "empty",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, fragment):
    data = kwargs.pop("data")
    with pytest.raises(error, match=None) as info:
        audit(_tiny(), data, progress=False, **kwargs)
    assert fragment in str(info.value)


def test_bad_model_and_report_arguments(tmp_path):
    with pytest.raises(TypeError, match="torch.nn.Module"):
        audit("model", torch.rand(2, 1, 8, 8), labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="AuditResult"):
        write_report({"flags": []}, tmp_path)
    result = audit(
        _tiny(), torch.rand(3, 1, 8, 8), labels=torch.zeros(3, dtype=torch.long), progress=False
    )
    with pytest.raises(ValueError, match="'html' or 'markdown'"):
        write_report(result, tmp_path, format="pdf")


@needs_fmnist
def test_concepts_of_the_flagged_class(planted, tmp_path):
    test = planted["test"]
    result = audit(
        planted["shortcut"],
        test,
        class_names=test.class_names,
        concepts=3,
        concept_layer="features",
        progress=False,
    )
    assert list(result.concepts) == result.flagged_classes == [SHIRT]
    rows = result.concepts[SHIRT]
    assert len(rows) == 3
    assert [r["importance"] for r in rows] == sorted((r["importance"] for r in rows), reverse=True)
    # one of the shirt's concepts lives where the patch is
    assert any(_overlap(r["box"], test.info["patch_box"]) for r in rows)
    text = write_report(result, tmp_path)["report"].read_text()
    assert "Concepts of the audited classes" in text
    with pytest.raises(ValueError, match="concept_layer"):
        audit(planted["shortcut"], test, concepts=2, progress=False)
