"""Every notebook in notebooks/ runs top to bottom under papermill, and is stored clean.

Notebooks are discovered, not listed: a new notebook is tested as soon as it exists. Each runs
with ``notebooks/`` as working directory (as Jupyter does), with its own output folder under
``build/notebooks/`` and, where the notebook asks for them in its metadata
(``"gradbook": {"ci_parameters": {...}}``), smaller parameters that keep the suite fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402 (tools/ is no package)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUILD = ROOT / "build" / "notebooks"
CELL_SECONDS = 60


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
    """Run ``path`` (with its CI parameters) like Jupyter would, from ``notebooks/``, as the
    book's build does (``tools/build_book.py``'s ``run_notebook``: a cell that times out, as a
    kernel left waiting by papermill's rare lost reply does, runs the notebook once more)."""
    parameters = read(path)["metadata"].get("gradbook", {}).get("ci_parameters", {})
    output_dir = output.parent / output.stem
    output_dir.mkdir(parents=True, exist_ok=True)
    build_book.run_notebook(path, output, {**parameters, "output_dir": str(output_dir)},
                            CELL_SECONDS)


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


# A derivation that is wrong must fail its notebook with an AssertionError. For each derivation
# notebook: {kind of mistake: (formula as it stands in the notebook, the same formula broken)}, or
# a list of such pairs for a mistake made in several formulas at once. Kinds used: "dropped
# factor", "@ for *" / "* for @" (matrix vs element-wise product), "missing transpose", "wrong sum
# axis", "mean for sum", "wrong sign", "wrong index", a slope, weights or delta taken from the
# wrong place or layer, a dropped or misshapen bias gradient. Each formula must occur in exactly
# one cell of its notebook. To add a notebook, add one entry.
Breakage = tuple[str, str] | list[tuple[str, str]]
BREAKAGES: dict[str, dict[str, Breakage]] = {
    "02_one_layer_scalar": {
        "dropped factor": ("delta1 = (y_hat - y) * y_hat * (1.0 - y_hat)",
                           "delta1 = (y_hat - y) * y_hat"),
        "dropped input": ("W1_grad = X.T @ delta1  # eq. (2.5)", "W1_grad = delta1  # eq. (2.5)"),
        "wrong sign": ("delta1 = (y_hat - y) * y_hat", "delta1 = (y - y_hat) * y_hat"),
        # one number each: only the wide check (several examples, inputs, units) sees these
        "* for @": ("W1_grad = X.T @ delta1  # eq. (2.5)", "W1_grad = X.T * delta1  # eq. (2.5)"),
        "missing transpose": ("W1_grad = X.T @ delta1  # eq. (2.5)",
                              "W1_grad = X @ delta1  # eq. (2.5)"),
        "mean for sum": ("W1_grad = X.T @ delta1  # eq. (2.5)",
                         "W1_grad = X.T @ delta1 / len(X)  # eq. (2.5)"),
        "slope taken at l1, not at z1": (
            "delta1 = (y_hat - y) * y_hat * (1.0 - y_hat)",
            "delta1 = (y_hat - y) * sigmoid(y_hat) * (1.0 - sigmoid(y_hat))"),
    },
    "03_one_layer_vector": {
        "dropped factor": ("delta1 = (y_hat - y) * y_hat * (1.0 - y_hat)",
                           "delta1 = (y_hat - y) * (1.0 - y_hat)"),
        "missing transpose": ("W1_grad = X.T @ delta1  # eq. (3.6)",
                              "W1_grad = delta1 @ X  # eq. (3.6)"),
        "wrong index": ("W1_grad[j, 0] = delta1[0, 0] * X[0, j]",
                        "W1_grad[j, 0] = delta1[0, 0] * X[0, 0]"),
        "* for @": ("W1_grad = X.T @ delta1  # eq. (3.6)", "W1_grad = X.T * delta1  # eq. (3.6)"),
        "X without its transpose": ("W1_grad = X.T @ delta1  # eq. (3.6)",
                                    "W1_grad = X @ delta1  # eq. (3.6)"),
        "off-by-one index": ("W1_grad[j, 0] = delta1[0, 0] * X[0, j]",
                             "W1_grad[j, 0] = delta1[0, 0] * X[0, j - 1]"),
    },
    "04_one_layer_batch": {
        "dropped factor": ("delta1 = (Y_hat - Y) * Y_hat * (1.0 - Y_hat)",
                           "delta1 = (Y_hat - Y) * Y_hat"),
        "* for @": ("W1_grad = X.T @ delta1  # eq. (4.6)", "W1_grad = X.T * delta1.T  # eq. (4.6)"),
        "missing transpose": ("W1_grad = X.T @ delta1  # eq. (4.6)",
                              "W1_grad = delta1.T @ X  # eq. (4.6)"),
        "wrong sum axis": ("np.sum(X * delta1, axis=0, keepdims=True).T",
                           "np.sum(X * delta1, axis=1, keepdims=True).T"),
        "mean for sum": ("W1_grad = X.T @ delta1  # eq. (4.6)",
                         "W1_grad = X.T @ delta1 / len(X)  # eq. (4.6)"),
        # the worked example's last gradient entry is 0: only the random batches see this
        "off-by-one index": ("for j in range(d):", "for j in range(d - 1):"),
    },
    "05_two_layer_one_hidden_node": {
        "dropped factor": ("delta1 = (delta2 @ W2.T) * l1 * (1 - l1)",
                           "delta1 = (delta2 @ W2.T) * l1"),
        "dropped factor, output layer": ("delta2 = (l2 - y) * l2 * (1 - l2)",
                                         "delta2 = (l2 - y) * (1 - l2)"),
        "* for @, backward through W2": ("delta1 = (delta2 @ W2.T) *", "delta1 = (delta2 * W2) *"),
        "* for @, gradient of W2": ("W2_grad = l1.T @ delta2", "W2_grad = l1 * delta2"),
        "missing transpose": ("W2_grad = l1.T @ delta2", "W2_grad = delta2.T @ l1"),
        "* for @, gradient of W1": ("W1_grad = X.T @ delta1  # (5.10)",
                                    "W1_grad = X.T * delta1.T  # (5.10)"),
        "* for every @ of (5.7)-(5.10)": [("delta1 = (delta2 @ W2.T) *",
                                           "delta1 = (delta2 * W2.T) *"),
                                          ("W2_grad = l1.T @ delta2", "W2_grad = l1.T * delta2"),
                                          ("W1_grad = X.T @ delta1  # (5.10)",
                                           "W1_grad = X.T * delta1  # (5.10)")],
        "slope of the wrong layer": ("delta1 = (delta2 @ W2.T) * l1 * (1 - l1)",
                                     "delta1 = (delta2 @ W2.T) * l2 * (1 - l2)"),
        # right for a single hidden node: only the check with 2 and 3 hidden nodes sees these
        "wrong sum axis": ("delta1 = (delta2 @ W2.T) * l1 * (1 - l1)",
                           "delta1 = (delta2 @ W2.T).sum(axis=1, keepdims=True) * l1 * (1 - l1)"),
        "broadcasting shortcut": ("W2_grad = l1.T @ delta2",
                                  "W2_grad = np.sum(l1 * delta2, axis=0, keepdims=True)"),
        "mean for sum": ("W1_grad = X.T @ delta1  # (5.10)",
                         "W1_grad = X.T @ delta1 / len(X)  # (5.10)"),
    },
    "06_two_layer_two_hidden_nodes": {
        "dropped factor": ("delta1 = back * l1 * (1 - l1)", "delta1 = back * l1"),
        "dropped factor, output layer": ("delta2 = (l2 - y) * l2 * (1 - l2)",
                                         "delta2 = (l2 - y) * l2"),
        "missing transpose": ("W2_grad = l1.T @ delta2", "W2_grad = delta2 @ l1"),
        "dropped slope in the W1 gradient": ("W1_grad = X.T @ delta1", "W1_grad = X.T @ back"),
        # one example and one output: broadcasting gives these the right numbers; the wide check
        # (several examples and outputs) does not
        "* for @, backward through W2": ("back = delta2 @ W2.T", "back = delta2 * W2.T"),
        "* for @, gradient of W1": ("W1_grad = X.T @ delta1", "W1_grad = X.T * delta1"),
        "* for every @ of (6.2)-(6.4)": [("back = delta2 @ W2.T", "back = delta2 * W2.T"),
                                         ("W2_grad = l1.T @ delta2", "W2_grad = l1.T * delta2"),
                                         ("W1_grad = X.T @ delta1", "W1_grad = X.T * delta1")],
        "mean for sum": ("W1_grad = X.T @ delta1", "W1_grad = X.T @ delta1 / len(X)"),
    },
    "07_two_layer_batch": {
        "dropped factor": ("delta1 = back * l1 * (1 - l1)", "delta1 = back * l1"),
        "dropped factor, output layer": ("delta2 = (l2 - Y) * l2 * (1 - l2)  # (6.1), σ'(z2)",
                                         "delta2 = (l2 - Y)  # (6.1), σ'(z2)"),
        "missing transpose": ("W2_grad = l1.T @ delta2", "W2_grad = delta2.T @ l1"),
        "mean for sum": ("W1_grad = X.T @ delta1", "W1_grad = X.T @ delta1 / n"),
        "* for @": ("back = delta2 @ W2.T", "back = delta2 * W2.T"),
        "slope taken at l1, not at z1": (
            "delta1 = back * l1 * (1 - l1)", "delta1 = back * sigmoid(l1) * (1 - sigmoid(l1))"),
        # XOR has one output, where this gives the right numbers; the check on two outputs does not
        "* for @, the vectorised runs": ("delta1s = (delta2s @ W2s.transpose(0, 2, 1))",
                                         "delta1s = (delta2s * W2s.transpose(0, 2, 1))"),
    },
    "08_any_depth": {
        "dropped factor": ("delta = (deltas[0] @ Ws[k - 1].T) * df(ls[k - 1])",
                           "delta = deltas[0] @ Ws[k - 1].T"),
        "dropped factor, output layer": ("delta_K = (Y_hat - Y) * df(Y_hat) if",
                                         "delta_K = (Y_hat - Y) if"),
        "wrong sum axis": ("return [delta.sum(axis=0) for delta in deltas]",
                           "return [delta.sum(axis=1) for delta in deltas]"),
        "mean for sum": ("return [delta.sum(axis=0) for delta in deltas]",
                         "return [delta.mean(axis=0) for delta in deltas]"),
        "missing transpose": ("[l.T @ delta for l, delta", "[delta.T @ l for l, delta"),
        "slope of the wrong layer": ("* df(ls[k - 1])", "* df(ls[k])"),
        "weights of the wrong layer": ("(deltas[0] @ Ws[k - 1].T)", "(deltas[0] @ Ws[k].T)"),
        "reversed delta list": ("deltas.insert(0, delta)", "deltas.append(delta)"),
        "dropped bias gradient": ("else bias_gradients(deltas))",
                                  "else [np.zeros_like(b) for b in biases])"),
        "bias gradient kept 2-D": ("return [delta.sum(axis=0) for delta in deltas]",
                                   "return [delta.sum(axis=0, keepdims=True) for delta in deltas]"),
        "output slope on the softmax": ("else Y_hat - Y  # (8.1) or (8.5)",
                                        "else (Y_hat - Y) * df(Y_hat)  # (8.1) or (8.5)"),
        "sigmoid slope taken at l, not at z": (
            "lambda l: l * (1 - l)", "lambda l: sigmoid(l) * (1 - sigmoid(l))"),
        "relu slope 1 at z <= 0": ("(l > 0).astype(np.float64)", "(l >= 0).astype(np.float64)"),
    },
}
def replacements(breakage: Breakage) -> list[tuple[str, str]]:
    """The (formula, broken) pairs of one breakage: a single pair, or several made together."""
    return breakage if isinstance(breakage, list) else [breakage]


MUTATIONS = [(stem, replacements(breakage), kind) for stem, kinds in BREAKAGES.items()
             for kind, breakage in kinds.items()]


def test_every_derivation_notebook_has_two_kinds_of_breakage():
    """Each derivation notebook, 02 to 08, fails for at least two kinds of mistake."""
    for stem in ["02_one_layer_scalar", "03_one_layer_vector", "04_one_layer_batch",
                 "05_two_layer_one_hidden_node", "06_two_layer_two_hidden_nodes",
                 "07_two_layer_batch", "08_any_depth"]:
        assert len(BREAKAGES.get(stem, {})) >= 2, stem


@pytest.mark.parametrize("stem, pairs, kind", MUTATIONS,
                         ids=[f"{m[0][:2]}-{m[2]}" for m in MUTATIONS])
def test_a_broken_derivation_fails_its_notebook(tmp_path: Path, stem: str,
                                                pairs: list[tuple[str, str]], kind: str):
    nb = read(ROOT / "notebooks" / f"{stem}.ipynb")
    for formula, broken in pairs:
        assert broken != formula, f"{stem}, {kind}: the breakage changes nothing"
        cells = [c for c in nb["cells"] if formula in "".join(c["source"])]
        assert len(cells) == 1, f"{stem}: the formula to break is no longer there: {formula}"
        cells[0]["source"] = "".join(cells[0]["source"]).replace(formula, broken)
    mutant = tmp_path / f"{stem}_broken.ipynb"
    mutant.write_text(json.dumps(nb), encoding="utf-8")
    with pytest.raises(papermill.PapermillExecutionError, match="AssertionError"):
        execute(mutant, tmp_path / f"{stem}_broken_run.ipynb")
