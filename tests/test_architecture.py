"""Structural rules: only the adapter touches hooks; benchmarks are never collected."""

from __future__ import annotations

import re
from pathlib import Path

import xai

PACKAGE = Path(xai.__file__).parent
HOOK_CALL = re.compile(r"\.register_\w*hook\s*\(|\.register_hook\s*\(")


def test_only_the_adapter_registers_hooks():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "adapter":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if HOOK_CALL.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "hooks registered outside xai/adapter:\n" + "\n".join(offenders)


def test_no_module_backward_hooks_anywhere():
    for path in PACKAGE.rglob("*.py"):
        assert "register_full_backward_hook" not in path.read_text(), path


def test_benchmarks_define_no_tests():
    root = PACKAGE.parent / "benchmarks"
    for path in root.glob("*.py"):
        assert path.name.startswith("bench_"), path
        assert not re.search(r"^def test_", path.read_text(), re.M), path
