"""Structural rules: only the adapter touches hooks; benchmarks are never collected; no import
cycle between the package's modules.
"""

from __future__ import annotations

import ast
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


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules of the package it imports``, from the source: every ``import``
    statement counts, also inside functions and under ``if TYPE_CHECKING:`` (a typing import
    is a dependency too). ``from package import name`` points at the submodule
    ``package.name`` when there is one; relative imports are resolved.
    """
    root = package.name

    def name_of(path: Path) -> str:
        parts = path.relative_to(package.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    files = {name_of(p): p for p in package.rglob("*.py")}

    def known(name: str) -> str | None:  # the longest prefix that is a module of the package
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        parent = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(a.name) for a in node.names if a.name.split(".")[0] == root)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from .x import y, from .. import z
                    anchor = parent.split(".")[: len(parent.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != root:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in files else known(base))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` (depth-first search), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_sees_relative_absolute_and_local_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import a\n")
    (pkg / "a.py").write_text("import os\nfrom .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import g\n    import pkg.sub.c\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"
    )
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub.b"},
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a", "pkg.sub.c"},
        "pkg.sub.c": {"pkg.a"},
    }
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Cycles tolerated for now, each named with its reason; only a cycle wholly inside one group
# passes, and the test fails on a stale group. None are left: keep it that way.
KNOWN_CYCLES: list[set[str]] = []


def test_no_import_cycle_between_modules():
    graph = import_graph()
    for group in KNOWN_CYCLES:
        inside = {m: graph.get(m, set()) & group for m in group}
        assert find_cycle(inside), f"no cycle left in {sorted(group)}: remove it from KNOWN_CYCLES"
    rest = {
        m: {n for n in deps if not any({m, n} <= group for group in KNOWN_CYCLES)}
        for m, deps in graph.items()
    }
    cycle = find_cycle(rest)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


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
