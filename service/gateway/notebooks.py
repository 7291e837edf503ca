"""What the gateway serves of a notebook file: its endpoints, its seed cells, its version.

A notebook is read the way stock notebook-http reads its seed notebook
(``kernel_gateway.notebook_http.cell.parser``): a code cell whose first line is
``# METHOD /path`` is an endpoint (several cells with the same annotation are run as one, in
order), ``# ResponseInfo METHOD /path`` sets that endpoint's status and headers, and every other
code cell seeds each kernel. What is added here:

* the notebook's **prefix**: ``""`` when it is served alone (its endpoints at the paths its cells
  annotate, as stock notebook-http does), ``/<stem>`` when several notebooks or a folder are
  served (``hello.ipynb``'s ``# GET /greet`` is ``GET /hello/greet``);
* its **version**: a hash of its code cells and kernel, sent with each answer, so that a client
  can tell which version of a notebook being reloaded answered it;
* each endpoint's **summary**, the first line of the Markdown cell just above it, and the
  **types it answers**, which a line of that cell may state (``Answers: image/png, text/html``;
  a cell's displayed output is only known once it runs), both for the description at
  ``/openapi.json``;
* every problem that would only show later (not JSON, not a notebook, no endpoint, two
  spellings of one route, a path the gateway answers itself) is a ``NotebookError`` naming the
  file, raised before any kernel starts.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

from kernel_gateway.notebook_http.cell.parser import APICellParser
from kernel_gateway.notebook_http.request_utils import parameterize_path

SUFFIX = ".ipynb"
DEFAULT_KERNEL = "python3"
# "Answers: image/png, `text/html`" in the Markdown cell above an endpoint (any case, bold or not)
ANSWERS_LINE = re.compile(r"^\W*answers\W*:(.*)$", re.IGNORECASE | re.MULTILINE)
MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+")
FOUND_PATHS = 1024  # request paths whose route a notebook version remembers
VERSION_CHARS = 12  # of the hash's hex digits: plenty to tell a file's versions apart
# Paths the gateway answers itself (``gradbook_service.gateway.personality``): a notebook
# served at the root may not claim them, nor may a notebook's stem take their first segment.
GATEWAY_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/_api")
DESCRIPTION_PATH = "/openapi.json"  # a notebook's own wins over the generated description


class NotebookError(ValueError):
    """A notebook the gateway cannot serve, and why: one line naming the file."""


@dataclass(frozen=True)
class Endpoint:
    """One ``METHOD /path`` of a notebook: the cells that run it and how its path matches."""

    method: str
    path: str  # as the notebook annotates it: /greet/:name
    source: str  # the endpoint cells, joined as stock notebook-http joins them
    response: str | None  # the ResponseInfo cells, if any
    summary: str  # the first line of the Markdown cell just above, or ""
    answers: tuple[str, ...] = ()  # the media types that cell's "Answers:" line states

    @property
    def key(self) -> str:
        """How the engine names it (``gradbook_service.gateway.engine``)."""
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Route:
    """A path of a notebook with the endpoints (one per method) served there."""

    path: str  # annotated, without the prefix
    pattern: re.Pattern[str]  # matches the whole request path, prefix included
    methods: dict[str, Endpoint]


@dataclass(frozen=True)
class Notebook:
    """One version of a served notebook file."""

    file: Path
    prefix: str
    kernel_name: str
    seeds: tuple[tuple[int, str], ...]  # (the cell's number counting from 1, its source)
    routes: tuple[Route, ...]  # in the order stock notebook-http registers them
    version: str
    cells: list = field(repr=False, compare=False, default_factory=list)
    # request path → its route, for the paths seen most recently: under load the same few
    # paths come again and again, and each would try the routes' patterns in turn
    found: dict[str, tuple[Route, dict[str, str]] | None] = field(
        repr=False, compare=False, default_factory=dict)

    @property
    def name(self) -> str:
        """The file's stem: the notebook's label in metrics, logs and health."""
        return self.file.stem

    @property
    def endpoints(self) -> dict[str, list[str | None]]:
        """What the kernels' runner runs: ``"METHOD /path"`` → [source, ResponseInfo source]."""
        return {endpoint.key: [endpoint.source, endpoint.response]
                for route in self.routes for endpoint in route.methods.values()}

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route serving the request path ``path`` and its path parameters, decoded."""
        if path in self.found:
            return self.found[path]
        result = None
        if path.startswith(self.prefix):
            for route in self.routes:
                if found := route.pattern.match(path):
                    result = route, {name: _unquote(value)
                                     for name, value in found.groupdict().items()}
                    break
        if len(self.found) >= FOUND_PATHS:  # paths are the clients' to choose: bounded
            self.found.clear()
        self.found[path] = result
        return result


def _unquote(value: str) -> str:
    """A path parameter as tornado gives a handler its arguments: %-decoded UTF-8."""
    return unquote_to_bytes(value).decode("utf-8", errors="replace")


def read_notebook(file: Path, prefix: str = "") -> Notebook:
    """Read ``file`` as a notebook served under ``prefix``; a ``NotebookError`` if it cannot be
    served."""
    try:
        content = json.loads(file.read_bytes())
    except FileNotFoundError:
        raise NotebookError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise NotebookError(f"{file}: a folder, not a notebook") from None
    except OSError as err:
        raise NotebookError(f"{file}: cannot be read: {err.strerror}") from None
    except (ValueError, RecursionError) as err:  # a save in progress, or not JSON at all
        raise NotebookError(f"{file}: not a notebook (not valid JSON: {err})") from None
    if not isinstance(content, dict) or not isinstance(content.get("cells"), list):
        raise NotebookError(f"{file}: not a notebook (no list of cells)")
    metadata = content.get("metadata") if isinstance(content.get("metadata"), dict) else {}
    kernelspec = metadata.get("kernelspec") if isinstance(metadata.get("kernelspec"), dict) else {}
    info = metadata.get("language_info") if isinstance(metadata.get("language_info"), dict) else {}
    language = str(info.get("name") or kernelspec.get("language") or "python").lower()
    if language != "python":
        raise NotebookError(f"{file}: a notebook of a {language} kernel; the engine runs Python "
                            "notebooks only")
    kernel_name = str(kernelspec.get("name") or DEFAULT_KERNEL)
    cells = []
    for number, cell in enumerate(content["cells"], start=1):
        if not isinstance(cell, dict):
            raise NotebookError(f"{file}: cell {number} is not a cell")
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            source = "".join(source)
        if not isinstance(source, str):
            raise NotebookError(f"{file}: cell {number} has no text source")
        cells.append((number, str(cell.get("cell_type")), source))
    return _parse(file, prefix, kernel_name, cells)


def _parse(file: Path, prefix: str, kernel_name: str,
           cells: list[tuple[int, str, str]]) -> Notebook:
    parser = APICellParser(comment_prefix="#")
    code = [source for _, kind, source in cells if kind == "code"]
    # the first endpoint cell of each METHOD /path → the Markdown cell above it
    notes: dict[str, str] = {}
    above = ""
    for _, kind, source in cells:
        if kind == "markdown":
            above = source
        elif kind == "code":
            endpoint, method = parser.get_cell_endpoint_and_verb(source)
            if endpoint is not None:
                notes.setdefault(f"{method} {endpoint}", above)
            above = ""
    responses = parser.endpoint_responses(code)
    routes, claimed = [], {}
    for path, sources in parser.endpoints(code):
        pattern = parameterize_path(prefix + path)
        shape = re.sub(r":\w+", ":", path)  # /a/:x and /a/:y are one route: which cell runs?
        for method in sources:
            if (other := claimed.get((method, shape))) is not None:
                raise NotebookError(f"{file}: two cells claim one endpoint: {method} {other} and "
                                    f"{method} {path}")
            claimed[(method, shape)] = path
        if not prefix and (path in GATEWAY_PATHS or path.startswith(tuple(
                f"{reserved}/" for reserved in GATEWAY_PATHS))):
            raise NotebookError(f"{file}: {path} is the gateway's own; choose another path "
                                f"(the gateway answers {', '.join(GATEWAY_PATHS)})")
        methods = {method: Endpoint(method, path, source, responses.get(path, {}).get(method),
                                    _first_line(notes.get(f"{method} {path}", "")),
                                    _answers(notes.get(f"{method} {path}", "")))
                   for method, source in sources.items()}
        routes.append(Route(path, re.compile(f"^{pattern}$"), methods))
    if not routes:
        raise NotebookError(f"{file}: no endpoint: no code cell begins with '# GET /path' (or "
                            "POST, PUT, DELETE)")
    seeds = tuple((number, source) for number, kind, source in cells
                  if kind == "code" and not parser.is_api_cell(source)
                  and not parser.is_api_response_cell(source))
    digest = hashlib.sha256(json.dumps([kernel_name, code]).encode()).hexdigest()
    return Notebook(file, prefix, kernel_name, seeds, tuple(routes), digest[:VERSION_CHARS],
                    [{"cell_type": kind, "source": source} for _, kind, source in cells])


def _first_line(markdown: str) -> str:
    """A Markdown cell's first line of text, without its heading marks."""
    for line in markdown.splitlines():
        if text := line.strip().lstrip("#").strip():
            return text
    return ""


def _answers(markdown: str) -> tuple[str, ...]:
    """The media types a Markdown cell's ``Answers:`` lines state, in order."""
    found = (MEDIA_TYPE.findall(line) for line in ANSWERS_LINE.findall(markdown))
    return tuple(dict.fromkeys(media.lower() for types in found for media in types))


def notebook_files(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """The notebook files ``paths`` name, each with its prefix: a lone file is served at the
    root, anything else (several files, a folder) each under ``/<stem>``. A ``NotebookError``
    for a path that is no notebook or folder, and for two notebooks of one stem."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(folder_notebooks(path))
        elif not path.exists():
            raise NotebookError(f"{path}: no such file or folder")
        elif path.suffix != SUFFIX:
            raise NotebookError(f"{path}: not a notebook (a notebook's name ends in {SUFFIX})")
        else:
            files.append(path.resolve())
    if len(paths) == 1 and not paths[0].is_dir():
        return [(files[0], "")]
    return [(file, prefix) for file, prefix in zip(files, prefixes(files), strict=True)]


def folder_notebooks(folder: Path) -> list[Path]:
    """The notebooks a served folder holds: its ``*.ipynb`` files, not in subfolders, not
    hidden (Jupyter's own ``.~name.ipynb`` and checkpoints stay out)."""
    return sorted(path.resolve() for path in folder.glob(f"*{SUFFIX}")
                  if is_served_name(path.name) and path.is_file())


def is_served_name(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith((".", "~"))


def prefixes(files: Iterable[Path]) -> list[str]:
    """``/<stem>`` for each file; a ``NotebookError`` for a stem taken twice, or one that is a
    path of the gateway's own."""
    seen: dict[str, Path] = {}
    result = []
    for file in files:
        prefix = prefix_of(file)
        if (other := seen.get(prefix)) is not None and other != file:
            raise NotebookError(f"{file} and {other} would both be served under {prefix}/; "
                                "rename one")
        seen[prefix] = file
        result.append(prefix)
    return result


def prefix_of(file: Path) -> str:
    prefix = "/" + file.stem
    if prefix in (*GATEWAY_PATHS, DESCRIPTION_PATH) or not re.fullmatch(r"/[\w.~-]+", prefix):
        raise NotebookError(f"{file}: cannot be served under {prefix}/ (a path of the "
                            "gateway's own, or not a plain name); rename it")
    return prefix
