"""Render the notebooks executed by `make docs` (build/docs/*.ipynb) as HTML a reader can browse.

Usage: python tools/build_docs.py SRC_DIR OUT_DIR MATHJAX_URL

The notebooks themselves are not changed; only the rendered copy is. For each notebook:

* papermill's injected-parameters cell and its run metadata (paths, parameters) are dropped,
  and the cells are numbered again without the gap it leaves;
* absolute paths of the machine that built the docs are made relative to the repository root;
* carriage-return progress output (a text tqdm bar) is reduced to its last state;
* long text outputs (the OpenAPI document, 1000-value histories, the playground page) are cut,
  with a note saying so;
* widgets, which have no state in a static page, become a note;
* every image gets alt text: the cell's first comment line, else the section heading above it.

Then it writes OUT_DIR/index.html linking the pages in reading order (01 … 11, then api), with
one line on each taken from the notebook table of README.md.
"""

from __future__ import annotations

import base64
import html
import os
import re
import sys
from pathlib import Path

import nbformat
from bs4 import BeautifulSoup
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
MAX_CHARS = 3000  # a text output longer than this is cut in the rendered copy
MAX_LINES = 60
KEEP_CHARS = 1500
KEEP_LINES = 30
WIDGET = "application/vnd.jupyter.widget-view+json"
IMAGES = ("image/png", "image/jpeg", "image/gif")


def scrub_paths(text: str) -> str:
    """Absolute paths of this machine -> paths relative to the repository root (or ~)."""
    root = str(ROOT)
    text = text.replace(root + os.sep, "").replace(root, ".")
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        text = re.sub(re.escape(home) + r"(?=/|\b)", "~", text)
    return text


def scrub(node):
    if isinstance(node, str):
        return scrub_paths(node)
    if isinstance(node, list):
        return [scrub(x) for x in node]
    if isinstance(node, dict):
        return type(node)({k: scrub(v) for k, v in node.items()})
    return node


def carriage_returns(text: str) -> str:
    """What a terminal shows: each line keeps only what follows its last carriage return."""
    text = re.sub(r"\r+\n", "\n", text)
    lines = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def shorten(text: str) -> str:
    lines = text.split("\n")
    if len(text) <= MAX_CHARS and len(lines) <= MAX_LINES:
        return text
    kept = "\n".join(lines[:KEEP_LINES])[:KEEP_CHARS]
    cut = len(text) - len(kept)
    return (
        f"{kept} …\n\n[Shortened in this rendered copy: {cut:,} more characters "
        f"({len(text):,} in all). Run the notebook to see the whole output.]"
    )


def heading_of(source: str) -> str | None:
    for line in source.splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            return re.sub(r"[`*$\\]", "", m.group(1)).strip()
    return None


def alt_text(cell, section: str | None, title: str) -> str:
    first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
    if first.startswith("#") and not first.startswith("#!"):
        comment = first.lstrip("#").strip()
        if comment:
            return f"{comment} ({title})" if section is None else f"{comment} ({section})"
    return f"Figure: {section or title}"


def image_html(mime: str, data: str, alt: str) -> str:
    data = "".join(data.split()) if isinstance(data, str) else data
    return f'<img alt="{html.escape(alt, quote=True)}" src="data:{mime};base64,{data}">'


def add_alt(fragment: str, alt: str) -> str:
    if "<img" not in fragment:
        return fragment
    soup = BeautifulSoup(fragment, "html.parser")
    changed = False
    for img in soup.find_all("img"):
        if not img.get("alt"):
            img["alt"] = alt
            changed = True
    return str(soup) if changed else fragment


def coalesce(outputs: list) -> list:
    """Consecutive outputs of one stream as one (a text bar writes each update separately)."""
    merged: list = []
    for out in outputs:
        last = merged[-1] if merged else None
        if (
            out.output_type == "stream"
            and last is not None
            and last.output_type == "stream"
            and last.name == out.name
        ):
            last.text += out.text
        else:
            merged.append(out)
    return merged


def clean_outputs(cell, alt: str) -> list:
    outputs = []
    for out in coalesce(cell.get("outputs", [])):
        kind = out.output_type
        if kind == "stream":
            out.text = carriage_returns(out.text)
        elif kind in ("display_data", "execute_result"):
            data = out.data
            if WIDGET in data:
                note = "[An interactive widget: run the notebook in Jupyter to use it.]"
                out.data = {"text/plain": note}
                outputs.append(out)
                continue
            for mime in IMAGES:
                if mime in data:
                    out.data = {"text/html": image_html(mime, data[mime], alt)}
                    break
            else:
                if "image/svg+xml" in data:
                    svg = data["image/svg+xml"]
                    svg = "".join(svg) if isinstance(svg, list) else svg
                    encoded = base64.b64encode(svg.encode("utf-8")).decode("ascii")
                    out.data = {"text/html": image_html("image/svg+xml", encoded, alt)}
                elif "text/html" in data:
                    data["text/html"] = add_alt(data["text/html"], alt)
            if "text/plain" in out.data and len(out.data) == 1:
                out.data["text/plain"] = shorten(out.data["text/plain"])
        elif kind == "error":
            out.traceback = [scrub_paths(line) for line in out.traceback]
        outputs.append(out)
    for out in outputs:
        if out.output_type == "stream":
            out.text = shorten(out.text)
    return outputs


def renumber(nb) -> None:
    """In [1], In [2], … without the gap the dropped parameters cell leaves (In [1], In [3])."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or cell.get("execution_count") is None:
            continue
        count += 1
        cell.execution_count = count
        for out in cell.get("outputs", []):
            if out.get("output_type") == "execute_result":
                out.execution_count = count


def prepare(nb):
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    renumber(nb)
    run = nb.metadata.pop("papermill", {})
    nb.metadata["papermill"] = {k: run[k] for k in ("duration", "version") if k in run}
    title = next((heading_of(c.source) for c in nb.cells if c.cell_type == "markdown"), None)
    title = title or "notebook"
    section = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            section = heading_of(cell.source) or section
        elif cell.cell_type == "code":
            cell.outputs = clean_outputs(cell, alt_text(cell, section, title))
    nb.metadata = scrub(nb.metadata)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [scrub(o) for o in cell.outputs]
    return nb, title


def descriptions() -> dict[str, str]:
    """One line per notebook: the README table `| `stem` | what it derives or shows |`."""
    lines = {}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for m in re.finditer(r"^\| `([\w]+)` \| (.+?) \|\s*$", readme, re.MULTILINE):
        lines.setdefault(m.group(1), m.group(2))
    return lines


def inline_markdown(text: str) -> str:
    text = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def reading_order(paths: list[Path]) -> list[Path]:
    """01 … 11 by number, then everything else (api) by name."""

    def key(p: Path):
        m = re.match(r"(\d+)_", p.stem)
        return (0, int(m.group(1)), p.stem) if m else (1, 0, p.stem)

    return sorted(paths, key=key)


def write_index(out_dir: Path, pages: list[tuple[str, str]]) -> None:
    lines = descriptions()
    items = "\n".join(
        f'  <li><a href="{html.escape(stem)}.html">{html.escape(title)}</a>'
        f"<br>{inline_markdown(lines.get(stem, ''))}</li>"
        for stem, title in pages
    )
    (out_dir / "index.html").write_text(
        f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradbook: the notebooks</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; }}
li {{ margin-bottom: 0.8rem; }}
code {{ font-size: 0.95em; }}
</style>
</head>
<body>
<h1>gradbook: the notebooks</h1>
<p>Neural-network gradients derived step by step, in reading order. Each page is the notebook
run at its default parameters by <code>make docs</code>; long outputs are shortened here.</p>
<ol>
{items}
</ol>
</body>
</html>
""",
        encoding="utf-8",
    )


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    src, out_dir, mathjax_url = Path(argv[1]), Path(argv[2]), argv[3]
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(mathjax_url=mathjax_url)
    pages = []
    for path in reading_order(list(src.glob("*.ipynb"))):
        nb, title = prepare(nbformat.read(path, as_version=4))
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        target = out_dir / f"{path.stem}.html"
        target.write_text(body, encoding="utf-8")
        print(f"wrote {target} ({len(body) // 1024} KiB)")
        pages.append((path.stem, title))
    write_index(out_dir, pages)
    print(f"wrote {out_dir / 'index.html'} ({len(pages)} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
