"""The command line: one-line errors, and the demo on the real model."""

from __future__ import annotations

import json

import pytest

from xai.cli import main


def test_unknown_method_suggests_close_names(capsys):
    assert main(["demo", "--methods", "grad_cm", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean grad_cam" in err


def test_bad_image_path_and_unknown_photo(capsys, mobilenet, tmp_path):
    assert (
        main(["demo", "--methods", "grad_cam", "--images", "/no/such.jpg", "--out", str(tmp_path)])
        == 2
    )
    assert "no image at '/no/such.jpg'" in capsys.readouterr().err
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert (
        main(["demo", "--methods", "grad_cam", "--images", str(bad), "--out", str(tmp_path)]) == 2
    )
    assert "cannot read" in capsys.readouterr().err
    assert (
        main(["demo", "--methods", "grad_cam", "--images", "chelsee", "--out", str(tmp_path)]) == 2
    )
    assert "did you mean chelsea" in capsys.readouterr().err


def test_out_must_be_a_folder(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "grad_cam" in out and "score_cam" in out


@pytest.mark.real_model
def test_demo_writes_figures_and_table(mobilenet, tmp_path, monkeypatch):
    import xai.cli

    monkeypatch.setattr(xai.cli, "_SECTIONS", [])  # the sections have their own tests
    assert (
        main(
            [
                "demo",
                "--methods",
                "grad_cam,saliency",
                "--images",
                "chelsea,coffee",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["class"] for r in summary["images"]] == ["Egyptian cat", "espresso"]
    assert set(summary["seconds_per_image"]) == {"grad_cam", "saliency"}
    assert (tmp_path / "methods_grid.png").stat().st_size > 10_000
    assert (tmp_path / "methods_grid.pdf").exists()


def test_demo_settings_are_constructor_arguments_of_registered_methods():
    import inspect

    import xai.cli
    from tests._models import TinyConvNet
    from xai.attributions import available, get

    for name, settings in xai.cli.DEMO_SETTINGS.items():
        assert name in available(), f"DEMO_SETTINGS names an unknown method {name!r}"
        params = inspect.signature(get(name).__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            # options passed on (**kwargs): the constructor itself validates them
            rest = {k: v for k, v in settings.items() if k != "layer"}
            get(name).create(TinyConvNet(), layer="features", **rest)
        else:
            assert set(settings) - {"layer"} <= set(params), name
    # a method without an entry (e.g. added later) gets its defaults and the demo layer
    assert xai.cli.demo_settings("no_such_method") == {
        "layer": xai.cli.DEMO_LAYER,
        "batch_size": xai.cli.DEMO_BATCH_SIZE,
    }
    assert xai.cli.demo_settings("sobol_attribution", full=True)["layer"] == xai.cli.DEMO_LAYER
    assert "grid_size" not in xai.cli.demo_settings("sobol_attribution", full=True)


@pytest.mark.real_model
def test_demo_skips_a_method_that_cannot_run(mobilenet, tmp_path, monkeypatch, capsys):
    import xai.cli
    from xai.attributions import base
    from xai.attributions.cam import GradCAM

    class NeedsAttention(GradCAM):
        """A transformer-only method."""

        name = "needs_attention"

        def __init__(self, model, layer, **kwargs):
            raise ValueError("no attention modules in MobileNetV2; give a ViT")

    monkeypatch.setitem(base._REGISTRY, "needs_attention", NeedsAttention)
    monkeypatch.setattr(xai.cli, "_SECTIONS", [])
    assert (
        main(
            [
                "demo",
                "--methods",
                "needs_attention,hires_cam",
                "--images",
                "chelsea",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "skipped needs_attention: ValueError: no attention" in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["seconds_per_image"]) == ["hires_cam"]
    assert "needs_attention" in summary["skipped"]
    assert "skipped" in (tmp_path / "summary.txt").read_text()
