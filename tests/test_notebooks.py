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


def execute(path: Path, output: Path) -> None:
    """Run ``path`` (with its CI parameters) like Jupyter would, from ``notebooks/``."""
    parameters = read(path)["metadata"].get("gradbook", {}).get("ci_parameters", {})
    output_dir = output.parent / output.stem
    output_dir.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(path),
        str(output),
        parameters={**parameters, "output_dir": str(output_dir)},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
        kernel_name="python3",
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_under_papermill(path: Path):
    try:
        execute(path, BUILD / path.name)
    except papermill.PapermillExecutionError as err:
        pytest.fail(
            f"{path.name}: cell {err.cell_index} (execution {err.exec_count}) raised "
            f"{err.ename}: {err.evalue}\n--- cell source ---\n{err.source}",
            pytrace=False,
        )


# A derivation that is wrong must fail its notebook: each mutation drops one factor of a formula.
MUTATIONS = [
    ("02_one_layer_scalar",
     "delta1 = (y_hat - y) * y_hat * (1.0 - y_hat)", "delta1 = (y_hat - y) * y_hat"),
    ("06_two_layer_two_hidden_nodes",
     "delta1 = back * l1 * (1 - l1)", "delta1 = back * l1"),
    ("08_any_depth",
     "delta = (deltas[0] @ Ws[k - 1].T) * df(ls[k - 1])", "delta = deltas[0] @ Ws[k - 1].T"),
]


@pytest.mark.parametrize("stem, formula, broken", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_broken_derivation_fails_its_notebook(tmp_path: Path, stem: str, formula: str,
                                                broken: str):
    nb = read(ROOT / "notebooks" / f"{stem}.ipynb")
    cells = [c for c in nb["cells"] if formula in "".join(c["source"])]
    assert len(cells) == 1, f"{stem}: the formula to break is no longer there: {formula}"
    cells[0]["source"] = "".join(cells[0]["source"]).replace(formula, broken)
    mutant = tmp_path / f"{stem}_broken.ipynb"
    mutant.write_text(json.dumps(nb), encoding="utf-8")
    with pytest.raises(papermill.PapermillExecutionError, match="AssertionError"):
        execute(mutant, tmp_path / f"{stem}_broken_run.ipynb")
