"""Lint and types are part of the test suite (issue 21): ruff (pycodestyle, pyflakes, import order,
pyupgrade, bugbear, pydocstyle Google, annotations), ruff's formatter and mypy, all configured in
pyproject.toml. CI runs only pytest, so these checks run here; each fails with the tool's report.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what ruff checks and formats (notebooks are executed by tests/test_notebooks.py, not linted)
LINTED = ["xai", "tests", "benchmarks", "scripts"]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <args>`` in the repository root with pyproject.toml's configuration."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def _report(proc: subprocess.CompletedProcess[str], fix: str) -> str:
    """The tool's summary line first (pytest's short summary shows it), then its report."""
    lines = (proc.stdout.strip() or proc.stderr.strip() or "no output").splitlines()
    summary = next((line for line in reversed(lines) if line.startswith("Found")), lines[-1])
    return f"{summary} Fix with: {fix}\n{proc.stdout[-12000:]}\n{proc.stderr[-3000:]}"


def test_ruff_check():
    _require("ruff")
    proc = _run("ruff", "check", "--no-cache", "--output-format", "concise", *LINTED)
    assert proc.returncode == 0, _report(proc, "ruff check --fix FILE (then fix the rest by hand)")


def test_ruff_format():
    _require("ruff")
    proc = _run("ruff", "format", "--no-cache", "--check", "--diff", *LINTED)
    assert proc.returncode == 0, _report(proc, "ruff format FILE")


@pytest.mark.slow
def test_mypy(request, tmp_path_factory):
    _require("mypy")
    # incremental cache in pytest's own cache folder (git-ignored by pytest): 30-95 s cold on
    # 2 busy cores, ~6 s warm; a temporary folder when the cache plugin is off (-p no:cacheprovider)
    store = getattr(request.config, "cache", None)
    cache = store.mkdir("mypy") if store is not None else tmp_path_factory.mktemp("mypy")
    proc = _run("mypy", "--config-file", "pyproject.toml", "--cache-dir", str(cache))
    assert proc.returncode == 0, _report(proc, "real annotations (narrow, commented ignores only)")
