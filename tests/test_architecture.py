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


def test_every_attribution_module_is_imported_and_re_exported_by_the_package():
    """``xai/attributions/__init__.py`` imports each public module explicitly (so IDEs and type
    checkers follow it); importing runs ``@register``, so a module left out would be missing
    from the registry. A new method is its file plus one import line there.
    """
    import ast
    import importlib
    import pkgutil

    import xai.attributions as attributions

    init = Path(attributions.__file__)
    imported = {
        node.module.split(".")[2]
        for node in ast.walk(ast.parse(init.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xai.attributions.")
    }
    modules = pkgutil.iter_modules([str(init.parent)])
    public = {info.name for info in modules if not info.name.startswith("_")}
    assert public - imported == set(), "modules not imported in xai/attributions/__init__.py"
    for name in sorted(public - {"base"}):
        module = importlib.import_module(f"xai.attributions.{name}")
        for item in getattr(module, "__all__", ()):
            assert getattr(attributions, item) is getattr(module, item), (name, item)
            assert item in attributions.__all__, (name, item)
        for value in vars(module).values():  # every registered class of the module is exported
            if isinstance(value, type) and value.__module__ == module.__name__:
                if getattr(value, "name", None) in attributions.available():
                    assert attributions.get(value.name) is value
                    assert value.__name__ in attributions.__all__, (name, value.__name__)
