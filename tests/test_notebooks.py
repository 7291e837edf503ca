"""Every notebook in notebooks/ runs top to bottom under papermill, and is stored clean.

Notebooks are discovered, not listed: a new notebook is tested as soon as it exists. Each runs
with ``notebooks/`` as working directory (as Jupyter does), with its own output folder under
``build/notebooks/`` and, where the notebook asks for them in its metadata
(``"gradbook": {"ci_parameters": {...}}``), smaller parameters that keep the suite fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUILD = ROOT / "build" / "notebooks"


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path: Path):
    nb = read(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    dirty = [i for i, c in enumerate(code) if c["outputs"] or c["execution_count"]]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs or execution counts"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one code cell tagged 'parameters'"
    assert "output_dir" in "".join(tagged[0]["source"]), f"{path.name}: parameters lack output_dir"
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_papermill(path: Path):
    parameters = read(path)["metadata"].get("gradbook", {}).get("ci_parameters", {})
    output_dir = BUILD / path.stem
    output_dir.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(
            str(path),
            str(BUILD / path.name),
            parameters={**parameters, "output_dir": str(output_dir)},
            cwd=str(path.parent),
            progress_bar=False,
            kernel_name="python3",
        )
    except papermill.PapermillExecutionError as err:
        pytest.fail(
            f"{path.name}: cell {err.cell_index} (execution {err.exec_count}) raised "
            f"{err.ename}: {err.evalue}\n--- cell source ---\n{err.source}",
            pytrace=False,
        )
