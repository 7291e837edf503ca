"""The book: every notebook executed, then rendered with Sphinx and MyST-NB (``make docs``).

Usage: python tools/build_book.py [--ci] [--build DIR]

Three steps, each into a folder of its own under DIR (``build/`` by default):

1. ``DIR/docs``: every ``notebooks/*.ipynb`` executed by papermill from ``notebooks/`` (as
   Jupyter runs it), at its default parameters, or with ``--ci`` at the smaller
   ``"gradbook": {"ci_parameters": …}`` of its metadata (what the tests use);
2. ``DIR/book``: the Sphinx source, made fresh: a prepared copy of each executed notebook
   (``prepare``), the index page (one line per notebook, in reading order) and the pages of
   ``book/`` with the picture they show;
3. ``DIR/html``: ``sphinx-build -c book``, then MathJax 2 from ``jupyter-server-mathjax``
   (STIX fonts only) into ``_static/mathjax``, so equations show offline.

Notebooks are discovered (``notebooks/*.ipynb``, sorted: 01 … 12, then api), so a new one
appears in the book by itself. Cells are folded by their tags (``hide-input``, ``hide-cell``,
``remove-cell``), which MyST-NB reads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill
from nbclient.exceptions import CellTimeoutError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"  # conf.py, the extra pages, _static
PICTURES = [ROOT / "docs" / "playground.png"]  # shown by book/playground.md
STIX = (  # MathJax 2's local configuration: the STIX web fonts it ships, no image fonts
    'MathJax.Hub.Config({"HTML-CSS": '
    '{availableFonts: [], webFont: "STIX-Web", imageFont: null}});\n'
    'MathJax.Ajax.loadComplete("[MathJax]/config/local/stix.js");\n'
)


MAX_CHARS, MAX_LINES = 3000, 60  # a text output longer than this is cut in the book
KEEP_CHARS, KEEP_LINES = 1500, 30
WIDGET = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "[An interactive widget: run the notebook in Jupyter to use it.]"
IMAGES = ("image/png", "image/jpeg", "image/gif", "image/svg+xml")


# -- the executed copy, prepared for the book ------------------------------------------------------
def scrub(node: object, paths: dict[str, str]) -> object:
    """Paths of the machine that built the book, written as ``paths`` says: the build folder
    as ``build``, the repository as ``.``, the home folder as ``~``."""
    if isinstance(node, str):
        for path, short in paths.items():
            node = node.replace(path + os.sep, short + os.sep).replace(path, short)
        return node
    if isinstance(node, list):
        return [scrub(item, paths) for item in node]
    if isinstance(node, dict):
        return type(node)({key: scrub(value, paths) for key, value in node.items()})
    return node


def terminal(text: str) -> str:
    """What a terminal shows of a stream: each line only after its last carriage return (a
    text progress bar writes every state of itself)."""
    lines = []
    for line in re.sub(r"\r+\n", "\n", text).split("\n"):
        parts = [part for part in line.split("\r") if part]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def shorten(text: str) -> str:
    """A long text output (the OpenAPI document, long histories) cut, with a note."""
    lines = text.split("\n")
    if len(text) <= MAX_CHARS and len(lines) <= MAX_LINES:
        return text
    kept = "\n".join(lines[:KEEP_LINES])[:KEEP_CHARS]
    return (f"{kept} …\n\n[Shortened in the book: {len(text) - len(kept):,} more characters "
            f"({len(text):,} in all). Run the notebook to see the whole output.]")


def heading(source: str) -> str | None:
    match = re.search(r"^#+\s+(.+)$", source, flags=re.M)
    return match.group(1).strip() if match else None


def alt_text(source: str, section: str) -> str:
    """A figure's alt text: the cell's first comment line, else the section it is in."""
    first = source.lstrip().split("\n", 1)[0]
    comment = first.lstrip("#").strip() if first.startswith("#") else ""
    section = re.sub(r"[`*$\\]", "", section)  # the heading's Markdown and TeX marks
    return f"{comment} ({section})" if comment else f"Figure: {section}"


def outputs(cell: nbformat.NotebookNode) -> list:
    """The cell's outputs as the book shows them: streams merged and cut, widgets as a note."""
    merged: list = []
    for out in cell.get("outputs", []):
        last = merged[-1] if merged else None
        if (out.output_type == "stream" and last is not None
                and last.output_type == "stream" and last.name == out.name):
            last.text += out.text
        else:
            merged.append(out)
    for out in merged:
        if out.output_type == "stream":
            out.text = shorten(terminal(out.text))
        elif out.output_type in ("display_data", "execute_result"):
            if WIDGET in out.data:
                out.data = {"text/plain": WIDGET_NOTE}
            elif set(out.data) == {"text/plain"}:
                out.data["text/plain"] = shorten(out.data["text/plain"])
    return merged


def prepare(nb: nbformat.NotebookNode, paths: dict[str, str]) -> nbformat.NotebookNode:
    """The executed notebook as the book shows it (the notebook in ``notebooks/`` is unchanged):
    papermill's injected parameters and run metadata gone, outputs cleaned (``outputs``), alt
    text on every figure (MyST-NB's ``mystnb.image.alt``), no path of this machine."""
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    section = heading(nb.cells[0].source) if nb.cells else None
    section = section or "notebook"
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "markdown":
            section = heading(cell.source) or section
        elif cell.cell_type == "code":
            tags = cell.metadata.setdefault("tags", [])
            if "solution" in tags and not {"hide-cell", "remove-cell"} & set(tags):
                tags.append("hide-cell")  # an exercise's answer stays folded until clicked
            cell.outputs = outputs(cell)
            if any(mime in out.get("data", {}) for out in cell.outputs for mime in IMAGES):
                options = cell.metadata.setdefault("mystnb", {}).setdefault("image", {})
                options.setdefault("alt", alt_text(cell.source, section))
    return scrub(nb, paths)


def summary(nb: nbformat.NotebookNode) -> tuple[str, str]:
    """A notebook's title (its first heading) and one sentence on it: its metadata's
    ``"gradbook": {"summary": …}`` if given; else, from the prose that opens it (lists left
    out), the first sentence that names something in bold (the notebook's new idea), else the
    first sentence."""
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), "")
    title = heading(first) or "Untitled"
    given = nb.metadata.get("gradbook", {}).get("summary")
    if given:
        return title, given
    prose = [" ".join(p.split()) for p in re.split(r"\n\s*\n", first)
             if p.strip() and not re.match(r"\s*(#|[*+-] |\d+\. )", p)]
    sentences = [s for p in prose for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*`$])", p)]
    bold = [s for s in sentences if "**" in s]
    return title, (bold or sentences or [""])[0]


def notebooks() -> list[Path]:
    """The book's chapters in reading order: ``notebooks/*.ipynb`` sorted by name."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def run_notebook(path: Path, target: Path, parameters: dict, cell_seconds: float = 60) -> None:
    """Run ``path`` with papermill from ``notebooks/``, as Jupyter would, into ``target``.

    A cell gets ``cell_seconds`` (the slowest takes a few seconds). Once in a few hundred runs
    on a loaded machine a notebook's kernel sits idle while papermill waits for a reply that
    never comes (nteract/papermill#711, jupyter/jupyter_client#922): then the cell times out and
    the notebook runs once more in a new kernel. A cell that is really too slow, or hangs, times
    out twice and fails."""
    for attempt in (1, 2):
        try:
            papermill.execute_notebook(str(path), str(target), parameters=parameters,
                                       cwd=str(NOTEBOOKS), kernel_name="python3",
                                       progress_bar=False, execution_timeout=cell_seconds)
            return
        except CellTimeoutError:
            if attempt == 2:
                raise
            print(f"{path.name}: a cell timed out; running the notebook again", file=sys.stderr)


def execute(paths: list[Path], out: Path, ci: bool = False) -> list[Path]:
    """Run each notebook with papermill into ``out/<stem>.ipynb`` (its files: ``out/<stem>/``)."""
    out.mkdir(parents=True, exist_ok=True)
    executed = []
    for path in paths:
        metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
        parameters = metadata.get("gradbook", {}).get("ci_parameters", {}) if ci else {}
        target = out / path.name
        start = time.monotonic()
        run_notebook(path, target, {**parameters, "output_dir": str(out / path.stem)})
        print(f"executed {path.name} in {time.monotonic() - start:.0f} s", flush=True)
        executed.append(target)
    return executed


def index_page(chapters: list[tuple[str, str, str]], pages: list[str]) -> str:
    """The index (MyST Markdown): a line per notebook (its title and one sentence), then the
    hidden table of contents that orders the book (previous/next follow it)."""
    lines = [
        "# gradbook: the notebooks",
        "",
        "Neural-network gradients derived step by step, each one checked against finite "
        "differences, then trained and served. Every page is a notebook as `make docs` ran it "
        "at its default parameters; long outputs are shortened, and exercise solutions stay "
        "folded until you open them.",
        "",
    ]
    lines += [f"- [{title}]({stem}.ipynb): {sentence}" for stem, title, sentence in chapters]
    lines += ["", "Beside the notebooks: [the playground](playground.md), the page the service "
              "(`make serve`) shows at `/` to try the models, their training and gradients.", ""]
    lines += ["```{toctree}", ":hidden:", ":maxdepth: 1", ""]
    lines += [stem for stem, _, _ in chapters] + pages + ["```", ""]
    return "\n".join(lines)


def stage(executed: list[Path], source: Path) -> None:
    """The Sphinx source folder: prepared notebooks, the index, the pages of ``book/``."""
    home = os.path.expanduser("~")
    paths = {str(source.parent): "build", str(ROOT): ".", **({home: "~"} if home != "/" else {})}
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    chapters = []
    for path in executed:
        nb = prepare(nbformat.read(path, as_version=4), paths)
        nbformat.write(nb, source / path.name)
        chapters.append((path.stem, *summary(nb)))
    pages = sorted(p.stem for p in BOOK.glob("*.md"))
    for page in BOOK.glob("*.md"):
        shutil.copy(page, source / page.name)
    for picture in PICTURES:
        shutil.copy(picture, source / picture.name)
    (source / "index.md").write_text(index_page(chapters, pages), encoding="utf-8")


def copy_mathjax(html: Path) -> None:
    """MathJax 2 with the STIX fonts only, at ``_static/mathjax`` (``mathjax_path`` in conf.py)."""
    import jupyter_server_mathjax

    target = html / "_static" / "mathjax"
    if target.exists():
        shutil.rmtree(target)
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(static, target)
    (target / "config" / "local").mkdir(parents=True, exist_ok=True)
    (target / "config" / "local" / "stix.js").write_text(STIX, encoding="utf-8")


def render(source: Path, html: Path) -> list[str]:
    """``sphinx-build`` with ``book/conf.py``, then MathJax; Sphinx's warnings (printed as
    they come, not fatal) are returned."""
    if html.exists():
        shutil.rmtree(html)
    warnings = source.parent / "sphinx-warnings.txt"
    subprocess.run(  # -E -d: read every page afresh, its pickles beside the book, not in it
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-E", "-w", str(warnings),
         "-d", str(source.parent / "doctrees"), "-c", str(BOOK), str(source), str(html)],
        check=True)
    copy_mathjax(html)
    return [line for line in warnings.read_text(encoding="utf-8").splitlines() if line.strip()]


def build(build_dir: Path, ci: bool = False) -> list[str]:
    """All three steps (the book is ``build_dir/html/index.html``); Sphinx's warnings."""
    start = time.monotonic()
    executed = execute(notebooks(), build_dir / "docs", ci=ci)
    stage(executed, build_dir / "book")
    warnings = render(build_dir / "book", build_dir / "html")
    print(f"built the book in {time.monotonic() - start:.0f} s ({len(warnings)} warnings)",
          flush=True)
    return warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true",
                        help="run each notebook with its ci_parameters (smaller, faster)")
    parser.add_argument("--build", type=Path, default=ROOT / "build",
                        help="folder for docs/, book/ and html/ (default: build/)")
    args = parser.parse_args(argv)
    build(args.build.resolve(), ci=args.ci)
    print(f"open {args.build / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
