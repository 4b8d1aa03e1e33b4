"""Packaging: the API reference builds from the docstrings with warnings as errors, and the
distribution metadata is complete (issue 18)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_api_reference_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "attributions" / "index.html").read_text()
    assert "GradCAM" in page and "Grad-CAM" in page  # rendered from the docstrings


def test_distribution_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] != "xai"  # taken on the package index by an unrelated project
    assert meta["license"] == "Apache-2.0"
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(meta["urls"])
    assert any(c.startswith("Programming Language :: Python :: 3") for c in meta["classifiers"])
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()
    docs = set(meta["optional-dependencies"]["docs"])
    assert docs <= set(meta["optional-dependencies"]["test"])  # setup.sh installs them
