"""The kernel's half of the gateway engine: it runs a batch of notebook-http requests in one
execution and sends each request's result back to the gateway on its own.

``gradbook_service.gateway.engine`` sends this module's source to each kernel of the pool once,
after the seed cells, with the notebook's endpoint cells; ``install`` compiles them once. From then
on a batch of requests costs one ``execute_request`` of one short line, the same for every batch,
while the requests themselves wait in an inbox file the gateway wrote: ``run`` reads them, takes
every request in turn, assigns its ``REQUEST``, runs its endpoint cell and then its ``ResponseInfo``
cell, each with stdout captured here, and publishes a ``gradbook_result`` message on IOPub. So the
body (what the endpoint cell printed) and the info (what the ``ResponseInfo`` cell printed) travel
as two separate fields of a message type no cell output produces: nothing a cell prints can be taken
for anything else.

A message handed to ZeroMQ is sent by its I/O thread a moment later; a kernel killed in that
moment (by the next request of the batch, say) would take a finished answer with it. So each
result is also written to a journal file of the gateway's choosing before it is published: a
write survives the death of the process that made it, and the gateway reads the journal of a
kernel that died in mid-batch for the answers that did not arrive.

What a cell sees is what stock notebook-http gives it: ``REQUEST`` as a JSON string in the
notebook's namespace, IPython syntax (magics) allowed, and, when the cell prints nothing, its last
expression's MIME bundle as the body (``{"text/plain": "42"}``). Requests run one after another,
so the state one leaves is what the next sees, exactly as if each had come alone. An exception
fails its own request only; its traceback is the cell's, from the cell's own line down.

What a cell *displays* is kept too, in the order Jupyter shows it: each ``display(...)``, then
the last expression's value, then the figures the cell drew (matplotlib's inline backend draws
and closes them after each cell, as in Jupyter). When the cell printed nothing, the answer is one
representation of one of them, if the request asked for a type (``choose``) or the
``ResponseInfo`` cell's ``Content-Type`` names one; otherwise the answer is stock's. A request
that asks for a stream (``options["stream"]``) has its printed lines published as they are
printed (``LineStream``), each in a ``gradbook_output`` message, before its result.

This module is sent as source, so it imports nothing from gradbook: any notebook-http kernel
with IPython can run it.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import linecache
import os
import sys
import threading
import time
import traceback
from typing import Any

from IPython import get_ipython

RESULT = "gradbook_result"  # the IOPub message type of one request's result
OUTPUT = "gradbook_output"  # … and of lines a streamed request printed, as it printed them
STREAM_INTERVAL_SECONDS = 0.01  # lines printed closer together than this share a message
MAX_TRACEBACK_CHARS = 16_000  # of a failed cell's traceback, the end is kept
# When no type decides, the richer of a bundle's types: Jupyter's own display order, text last.
RICHNESS = ("image/png", "image/jpeg", "image/svg+xml", "application/pdf", "text/html",
            "text/markdown", "text/latex", "application/json")
TEXT_TYPES = ("image/svg+xml", "application/javascript", "application/xml")


class Cell:
    """An endpoint cell's source, with IPython syntax turned into Python and compiled once: all
    statements, then the last one apart when it is an expression, since its value may be the
    body. The source is put in ``linecache`` under the cell's name, so that a traceback quotes
    the cell's lines."""

    def __init__(self, shell: Any, source: str, name: str) -> None:
        self.error: SyntaxError | None = None
        self.statements: Any = None
        self.expression: Any = None
        # IPython's convention: a cell ending in ';' shows no value
        self.quiet = source.rstrip().endswith(";")
        try:
            code = shell.transform_cell(source)
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)
            tree = ast.parse(code, name)
            last = tree.body[-1] if tree.body else None
            if isinstance(last, ast.Expr):
                tree.body.pop()
                self.expression = compile(ast.Expression(last.value), name, "eval")
            self.statements = compile(tree, name, "exec")
        except SyntaxError as err:  # reported by each request to this endpoint, as stock does
            self.error = err

    def run(self, namespace: dict[str, Any], out: Any) -> Any:
        """Run the cell in ``namespace`` with its stdout going to ``out``; the value it shows
        (its last expression's, unless that is ``None`` or the cell ends in ';')."""
        if self.error is not None:
            raise self.error
        with contextlib.redirect_stdout(out):
            exec(self.statements, namespace)
            value = None if self.expression is None else eval(self.expression, namespace)
        return None if self.quiet else value


class Displays:
    """What cells display while this is entered: each MIME bundle ``display()`` publishes
    (IPython's ``display_pub``), kept here instead of going to IOPub."""

    def __init__(self, shell: Any) -> None:
        self.publisher = shell.display_pub
        self.bundles: list[dict[str, Any]] = []

    def publish(self, data: dict[str, Any], metadata: Any = None, *args: Any,
                **kwargs: Any) -> None:
        self.bundles.append(data)

    def clear_output(self, wait: bool = False) -> None:
        self.bundles.clear()

    def __enter__(self) -> Displays:
        self.publisher.publish, self.publisher.clear_output = self.publish, self.clear_output
        return self

    def __exit__(self, *exc: Any) -> None:
        for name in ("publish", "clear_output"):  # the class's methods again
            self.publisher.__dict__.pop(name, None)


def draw_figures(shell: Any) -> None:
    """Display, then close, the figures a cell drew, as matplotlib's inline backend does after
    each cell in Jupyter (its ``post_execute`` hook, which the runner's one execution per batch
    would call only once); a figure that fails to draw raises here. Nothing without pyplot on
    the inline backend."""
    inline = sys.modules.get("matplotlib_inline.backend_inline")
    if inline is None or inline.flush_figures not in shell.events.callbacks["post_execute"]:
        return
    if not inline.show._draw_called:
        return
    try:
        if inline.InlineBackend.instance().close_figures:
            inline.show(True)
        else:
            inline.flush_figures()
    finally:
        inline.show._draw_called = False
        inline.show._to_draw = []


class LineStream(io.TextIOBase):
    """A streamed request's stdout: each line printed is published as soon as it is complete,
    in ``OUTPUT`` messages; lines printed within ``STREAM_INTERVAL_SECONDS`` of the last message
    wait for the next (at most that long, sent by a timer thread), so a cell printing in a tight
    loop sends a message per interval, not per line."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self.send = send  # send(lines)
        self.lock = threading.Lock()
        self.partial = ""
        self.lines: list[str] = []
        self.sent = 0.0
        self.timer: threading.Timer | None = None
        self.printed = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.printed = self.printed or bool(text)
            *complete, self.partial = (self.partial + text).split("\n")
            if complete:
                self.lines.extend(complete)
                self._due()
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self._send()

    def end(self) -> None:
        """Send what is left, the last line too if it has no newline."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
            if self.partial:
                self.lines.append(self.partial)
                self.partial = ""
            self._send()

    def _due(self) -> None:
        wait = self.sent + STREAM_INTERVAL_SECONDS - time.monotonic()
        if wait <= 0:
            self._send()
        elif self.timer is None:
            self.timer = threading.Timer(wait, self._on_timer)
            self.timer.daemon = True
            self.timer.start()

    def _on_timer(self) -> None:
        with self.lock:
            self._send()

    def _send(self) -> None:
        self.timer = None
        if self.lines:
            lines, self.lines = self.lines, []
            self.send(lines)
            self.sent = time.monotonic()


def media_type(content_type: Any) -> str:
    """``text/html; charset=utf-8`` → ``text/html``."""
    return str(content_type).split(";")[0].strip().lower()


def choose(outputs: list[dict[str, Any]],
           accept: list[list[Any]]) -> tuple[int, str] | None:
    """The type, and the output, the request's ``accept`` ranges (``[[range, q], …]``,
    e.g. ``[["image/*", 1.0]]``) like best among ``outputs``: the highest quality, then the
    most specific range that allows it, then the earliest output, then the richer type. Each
    type's quality is that of the most specific range matching it (RFC 9110, 12.5.1).
    ``(output's index, type)``, or ``None`` if no output has a type the request allows."""
    qualities = {text: q for text, q in reversed(accept)}  # the first of a range repeated
    best: tuple[Any, ...] | None = None
    for index, bundle in enumerate(outputs):
        for kind in bundle:
            mime = media_type(kind)
            major = mime.split("/")[0]
            for specificity, name in ((2, mime), (1, f"{major}/*"), (0, "*/*")):
                if name in qualities:
                    q = qualities[name]
                    if q > 0:
                        rank = RICHNESS.index(mime) if mime in RICHNESS else len(RICHNESS)
                        key = (q, specificity, -index, -rank)
                        if best is None or key > best[0]:
                            best = (key, index, kind)
                    break
    return None if best is None else (best[1], best[2])


def representation(kind: str, data: Any) -> tuple[str, bool]:
    """One type's data of a MIME bundle as text for the gateway, and whether that text is
    base64 (bytes, which Jupyter's bundles keep base64-encoded): text types as they are, JSON
    types encoded, any other type's data base64."""
    if isinstance(data, (bytes, bytearray)):
        return base64.b64encode(data).decode("ascii"), True
    mime = media_type(kind)
    if mime == "application/json" or mime.endswith("+json"):
        return (data if isinstance(data, str) else json.dumps(data)), False
    if mime.startswith("text/") or mime in TEXT_TYPES or mime.endswith("+xml"):
        return str(data), False
    return str(data), True


def offered(outputs: list[dict[str, Any]]) -> list[str]:
    """Every type of ``outputs``, once each, in order."""
    return list(dict.fromkeys(media_type(kind) for bundle in outputs for kind in bundle))


def content_type(info: str | None) -> str | None:
    """The media type a ``ResponseInfo`` cell's output sets as ``Content-Type``, if any."""
    try:
        headers = json.loads(info or "{}").get("headers") or {}
        return next((media_type(value) for name, value in headers.items()
                     if str(name).lower() == "content-type"), None)
    except (ValueError, AttributeError, TypeError):  # the gateway says what is wrong with it
        return None


def cell_traceback(err: BaseException) -> str:
    """``err``'s traceback from the cell's own frame down (the runner's frames left out), its
    end kept if it is long."""
    frames = err.__traceback__
    while frames is not None and not frames.tb_frame.f_code.co_filename.startswith("<"):
        frames = frames.tb_next
    text = "".join(traceback.format_exception(type(err), err, frames))
    return text if len(text) <= MAX_TRACEBACK_CHARS else "…" + text[-MAX_TRACEBACK_CHARS:]


class Runner:
    """Runs batches of requests on this kernel's notebook namespace."""

    def __init__(self, endpoints: dict[str, list[str | None]], inbox: str, journal: str) -> None:
        self.shell = get_ipython()
        self.inbox, self.journal = inbox, journal
        self.cells = {
            key: (Cell(self.shell, cell, f"<{key}>"),
                  None if info is None else Cell(self.shell, info, f"<ResponseInfo {key}>"))
            for key, (cell, info) in endpoints.items()
        }

    def run(self) -> None:
        """Serve each ``[endpoint, REQUEST, options]`` of the batch in the inbox in order,
        publishing each result as soon as it is known. Called by the one line the gateway
        executes."""
        with open(self.inbox, encoding="utf-8") as inbox:
            batch = json.load(inbox)
        os.unlink(self.inbox)  # read once: the requests need not wait on disk for the next batch
        # The gateway sends the next batch only once it has every answer of this one, so
        # emptying the journal here loses nothing. Its first line names the batch, so that the
        # results of an earlier one are never taken for this one's.
        with open(self.journal, "w", encoding="utf-8") as journal:
            journal.write(json.dumps({"batch": batch["batch"]}) + "\n")
            for index, (endpoint, request, options) in enumerate(batch["requests"]):
                began = time.perf_counter()
                result, interrupted = self.serve(index, endpoint, request, options or {})
                content = {"index": index, **result, "seconds": time.perf_counter() - began}
                journal.write(json.dumps(content) + "\n")
                journal.flush()  # in the operating system's hands: it outlives this process
                self.publish(RESULT, content)
                if interrupted:  # the gateway interrupted the kernel: the rest of the batch waits
                    raise KeyboardInterrupt

    def serve(self, index: int, endpoint: str, request: str,
              options: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """One request's ``{"body", "info"}`` (with ``"type"`` and ``"base64"`` when the body
        is a displayed output, ``"offers"`` when none suits the request) or ``{"error"}``, and
        whether it was interrupted."""
        cell, info = self.cells[endpoint]
        namespace = self.shell.user_ns
        namespace["REQUEST"] = request
        stream = options.get("stream", False)
        out: Any = LineStream(lambda lines: self.publish(
            OUTPUT, {"index": index, "lines": lines})) if stream else io.StringIO()
        try:
            try:
                with Displays(self.shell) as displays:
                    value = cell.run(namespace, out)
                    shown = len(displays.bundles)  # the value comes after these, then figures
                    draw_figures(self.shell)
            finally:
                if stream:
                    out.end()
            response = None if info is None else self._info(info, namespace)
            result: dict[str, Any] = {"body": "", "info": response}
            if stream:
                return result, False
            if printed := out.getvalue():
                return {**result, "body": printed}, False
            outputs, bundle = displays.bundles, None
            if value is not None:
                bundle, _ = self.shell.display_formatter.format(value)
                outputs.insert(shown, bundle)
            result.update(self.answer(outputs, bundle, options.get("accept"), response))
            return result, False
        except BaseException as err:  # SystemExit too: it fails this request, not the kernel
            with contextlib.suppress(Exception):  # figures drawn before the error are closed
                with Displays(self.shell):
                    draw_figures(self.shell)
            error = {"ename": type(err).__name__, "evalue": str(err)[:1000],
                     "traceback": cell_traceback(err)}
            return {"error": error}, isinstance(err, KeyboardInterrupt)

    def _info(self, info: Cell, namespace: dict[str, Any]) -> str:
        """What the ``ResponseInfo`` cell prints (what it displays is dropped, as stock does)."""
        printed = io.StringIO()
        with Displays(self.shell):
            info.run(namespace, printed)
            draw_figures(self.shell)
        return printed.getvalue()

    def answer(self, outputs: list[dict[str, Any]], value: dict[str, Any] | None,
               accept: list[list[Any]] | None, info: str | None) -> dict[str, Any]:
        """The body of a cell that printed nothing: the representation of an output of the
        type its ``ResponseInfo`` names, else of the type the request asks for (``accept``;
        none suiting: the types there are), else stock's answer, the ``value``'s bundle."""
        wanted = content_type(info)
        choice = choose(outputs, [[wanted, 1.0]]) if wanted else None
        if choice is None and accept is not None:
            choice = choose(outputs, accept)
            if choice is None and outputs:
                return {"offers": offered(outputs)}
        if choice is not None:
            index, kind = choice
            body, encoded = representation(kind, outputs[index][kind])
            return {"body": body, "type": media_type(kind), "base64": encoded}
        return {} if value is None else {"body": json.dumps(value)}

    def publish(self, kind: str, content: dict[str, Any]) -> None:
        kernel = self.shell.kernel
        kernel.send_response(kernel.iopub_socket, kind, content, ident=kind.encode())


def install(endpoints: dict[str, list[str | None]], inbox: str, journal: str) -> None:
    """Compile ``endpoints`` (``"METHOD /path"`` → [cell source, ResponseInfo source or None])
    into this module's ``runner``, which reads each batch from the file ``inbox`` (written by
    the gateway) and keeps its results in the file ``journal``."""
    global runner
    runner = Runner(endpoints, inbox, journal)
    close_subprocess_pipe(get_ipython().kernel)


def close_subprocess_pipe(kernel: Any) -> None:
    """Stop listening on the TCP port of 127.0.0.1 where ipykernel takes the output of the
    kernel's forked subprocesses. The gateway gives the kernel's channels private Unix sockets;
    this port, which every local user can connect to (and fill the kernel's log with "Bad pipe
    message" lines), would be its last door to the network. What forked subprocesses print
    then stays out of the answers, as stderr already does."""
    thread = getattr(kernel, "iopub_thread", None)
    stream = getattr(thread, "_pipe_in", None)
    if stream is None:
        return
    thread._pipe_flag = False
    thread.io_loop.add_callback(stream.close)  # the socket is its thread's: closed there


runner: Runner | None = None
