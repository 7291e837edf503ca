"""Every exercise in notebooks/ has a hidden answer that checks itself, and the check has teeth.

The convention (shared by all notebooks, relied on by the book's renderer): a Markdown heading
that starts with ``Exercise`` opens an exercise, which ends at the next heading of the same or a
higher level, or at the next ``Exercise`` heading. Within it, the answer is a code cell tagged
``solution`` and ``hide-cell``, folded (``"jupyter": {"source_hidden": true}``), whose metadata
lists deliberate wrong answers, ``"gradbook": {"wrong": [[find, replace], ...]}``. Each wrong
answer, made in that cell alone, must stop the notebook with an ``AssertionError``: an answer
whose check cannot fail checks nothing.

Notebooks, exercises and wrong answers are discovered, not listed, so an exercise is tested as
soon as it exists.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import papermill
import pytest
from test_notebooks import NOTEBOOKS, execute, read

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
# notebooks that must hold at least one exercise (the issue asks for them there)
MUST_HAVE_EXERCISES = ("08_", "11_")


@dataclass
class Exercise:
    """One exercise: its heading, where it is, and the code cells up to its end."""

    notebook: Path
    title: str
    level: int
    cell: int  # index of the Markdown cell holding the heading
    solutions: list[int] = field(default_factory=list)  # code cells tagged "solution"

    @property
    def id(self) -> str:
        return f"{self.notebook.stem[:2]}-{slug(self.title)}"


def slug(text: str) -> str:
    """A short, readable test id: 'Exercise 11.1: leaky relu' → 'exercise-11.1-leaky-relu'."""
    words = re.sub(r"[^0-9A-Za-z.]+", "-", text).strip("-").lower()
    return words[:48].rstrip("-")


def source(cell: dict) -> str:
    return "".join(cell["source"])


def headings(cell: dict) -> list[tuple[int, str]]:
    """(level, text) of each Markdown heading in ``cell``, skipping fenced code blocks."""
    found, fenced = [], False
    for line in source(cell).splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            found.append((len(match.group(1)), match.group(2)))
    return found


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def exercises(path: Path) -> tuple[list[Exercise], list[int]]:
    """The exercises of the notebook at ``path``, and the solution cells outside any exercise."""
    found: list[Exercise] = []
    orphans: list[int] = []
    open_: Exercise | None = None
    for i, cell in enumerate(read(path)["cells"]):
        if cell["cell_type"] == "markdown":
            for level, text in headings(cell):
                if open_ is not None and (level <= open_.level or text.startswith("Exercise")):
                    open_ = None
                if text.startswith("Exercise"):
                    open_ = Exercise(path, text, level, i)
                    found.append(open_)
        elif cell["cell_type"] == "code" and "solution" in tags(cell):
            (open_.solutions if open_ is not None else orphans).append(i)
    return found, orphans


def wrong_answers(cell: dict) -> list:
    return cell.get("metadata", {}).get("gradbook", {}).get("wrong", [])


EXERCISES = [exercise for path in NOTEBOOKS for exercise in exercises(path)[0]]
WRONG = [
    pytest.param(exercise, index, k, pair,
                 id=f"{exercise.id}-wrong{k + 1}" if len(exercise.solutions) < 2
                 else f"{exercise.id}-cell{index}-wrong{k + 1}")
    for exercise in EXERCISES
    for index in exercise.solutions
    for k, pair in enumerate(wrong_answers(read(exercise.notebook)["cells"][index]))
]


@pytest.mark.parametrize("prefix", MUST_HAVE_EXERCISES)
def test_these_notebooks_have_exercises(prefix: str):
    paths = [path for path in NOTEBOOKS if path.name.startswith(prefix)]
    assert paths, f"no notebook {prefix}*.ipynb"
    for path in paths:
        assert exercises(path)[0], f"{path.name}: no Markdown heading starting 'Exercise'"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_solution_belongs_to_an_exercise(path: Path):
    orphans = exercises(path)[1]
    assert not orphans, (f"{path.name}: code cells {orphans} are tagged 'solution' but follow no "
                         "heading starting 'Exercise' (their wrong answers would never run)")


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: e.id)
def test_an_exercise_has_a_hidden_answer_with_wrong_answers(exercise: Exercise):
    where = f"{exercise.notebook.name}, '{exercise.title}'"
    assert exercise.solutions, f"{where}: no code cell tagged 'solution' before the exercise ends"
    cells = read(exercise.notebook)["cells"]
    for index in exercise.solutions:
        cell, at = cells[index], f"{where}, cell {index}"
        assert {"solution", "hide-cell"} <= set(tags(cell)), f"{at}: tags {tags(cell)}"
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True, (
            f"{at}: the answer is not folded (metadata jupyter.source_hidden)")
        pairs = wrong_answers(cell)
        assert pairs, f"{at}: no wrong answers in metadata gradbook.wrong"
        for pair in pairs:
            assert isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(s, str) for s in pair), f"{at}: {pair!r} is not [find, replace]"
            find, replace = pair
            assert source(cell).count(find) == 1, (
                f"{at}: {find!r} occurs {source(cell).count(find)} times, not once")
            assert find != replace, f"{at}: the wrong answer {pair!r} changes nothing"


@pytest.mark.parametrize("exercise, index, k, pair", WRONG)
def test_a_wrong_answer_fails_its_notebook(tmp_path: Path, exercise: Exercise, index: int,
                                           k: int, pair: list[str]):
    find, replace = pair
    nb = copy.deepcopy(read(exercise.notebook))
    cell = nb["cells"][index]
    assert source(cell).count(find) == 1 and find != replace, f"{exercise.id}: {pair!r}"
    cell["source"] = source(cell).replace(find, replace)
    mutant = tmp_path / exercise.notebook.name
    mutant.write_text(json.dumps(nb), encoding="utf-8")
    with pytest.raises(papermill.PapermillExecutionError, match="AssertionError"):
        execute(mutant, tmp_path / f"{exercise.notebook.stem}_wrong{k + 1}.ipynb")
