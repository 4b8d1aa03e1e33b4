"""Execute every notebook in notebooks/ top to bottom (nbclient, kernel python3).

A notebook fails the test if any cell raises, or if a figure cell shows no image: every output that
displays a matplotlib Figure (its ``text/plain`` is ``<Figure size ...>``) must carry an
``image/png`` too, and every cell tagged ``figure`` (cell metadata ``tags``) must produce one. The
check is generic, so notebooks added later are covered without editing this file. A notebook whose
offline assets are missing is skipped: requirements come from the notebook's metadata
(``metadata["xai"]["requires"]``: any of ``mobilenet_v2``, ``fashion_mnist``, ``tuxpaint_stamps``,
``module:<name>``) and, for notebooks without that key, from the loaders their code calls.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
_BY_CALL = {
    "load_mobilenet_v2": "mobilenet_v2",
    "planted_shortcut_set": "fashion_mnist",
    "load_fashion_mnist": "fashion_mnist",
    "background_swap_set": "tuxpaint_stamps",
}


def _missing(requirement: str) -> str | None:
    """Why ``requirement`` is not met, or ``None``."""
    if requirement == "mobilenet_v2":
        from xai.data import mobilenet_v2_weights_path

        try:
            mobilenet_v2_weights_path()
        except FileNotFoundError as err:
            return str(err)
        return None
    if requirement == "fashion_mnist":
        from xai.data.shortcuts import fashion_mnist_available

        return None if fashion_mnist_available() else "apt-get install -y dataset-fashion-mnist"
    if requirement == "tuxpaint_stamps":
        from xai.data.shortcuts import tuxpaint_available

        return None if tuxpaint_available() else "apt-get install -y tuxpaint-stamps-default"
    if requirement.startswith("module:"):
        name = requirement.split(":", 1)[1]
        return None if importlib.util.find_spec(name) else f"pip install {name}"
    raise ValueError(f"unknown notebook requirement {requirement!r}")


def _requirements(nb) -> set[str]:
    found = set(nb.metadata.get("xai", {}).get("requires", []))
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    found |= {req for call, req in _BY_CALL.items() if call in source}
    return found


def _figure_cells_without_image(nb) -> list[str]:
    """Cells (``"cell N: first line"``) that displayed a Figure, or are tagged ``figure``,
    without an ``image/png`` output."""
    bad = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        datas = [
            o.get("data", {})
            for o in cell.get("outputs", [])
            if o.get("output_type") in ("display_data", "execute_result")
        ]
        figures = [d for d in datas if str(d.get("text/plain", "")).startswith("<Figure size")]
        tagged = "figure" in cell.get("metadata", {}).get("tags", [])
        if any("image/png" not in d for d in figures) or (
            tagged and not any("image/png" in d for d in datas)
        ):
            bad.append(f"cell {i}: {cell.source.strip().splitlines()[-1][:60]!r}")
    return bad


def notebook_tools():
    """``(nbformat, nbclient)``; skips the test without them or without a python3 kernel."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (pip install ipykernel)")
    return nbformat, nbclient


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    nbformat, nbclient = notebook_tools()
    nb = nbformat.read(path, as_version=4)
    for requirement in sorted(_requirements(nb)):
        reason = _missing(requirement)
        if reason:
            pytest.skip(f"{path.name} needs {requirement}: {reason}")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: saved outputs must be stripped"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the cell and the error
    bad = _figure_cells_without_image(nb)
    assert not bad, f"{path.name}: figure shown as text, not as an image: {bad}"
