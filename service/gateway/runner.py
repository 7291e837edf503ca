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
fails its own request only.

This module is sent as source, so it imports nothing from gradbook: any notebook-http kernel
with IPython can run it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import traceback
from typing import Any

from IPython import get_ipython

RESULT = "gradbook_result"  # the IOPub message type of one request's result


class Cell:
    """An endpoint cell's source, with IPython syntax turned into Python and compiled once: all
    statements, then the last one apart when it is an expression, since its value may be the
    body."""

    def __init__(self, shell: Any, source: str, name: str) -> None:
        self.error: SyntaxError | None = None
        self.statements: Any = None
        self.expression: Any = None
        # IPython's convention: a cell ending in ';' shows no value
        self.quiet = source.rstrip().endswith(";")
        try:
            tree = ast.parse(shell.transform_cell(source), name)
            last = tree.body[-1] if tree.body else None
            if isinstance(last, ast.Expr):
                tree.body.pop()
                self.expression = compile(ast.Expression(last.value), name, "eval")
            self.statements = compile(tree, name, "exec")
        except SyntaxError as err:  # reported by each request to this endpoint, as stock does
            self.error = err

    def run(self, namespace: dict[str, Any], shell: Any) -> str:
        """Run the cell in ``namespace``; what it printed, else its value's MIME bundle as JSON,
        else ''."""
        if self.error is not None:
            raise self.error
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(self.statements, namespace)
            value = None if self.expression is None else eval(self.expression, namespace)
        if printed.tell() or value is None or self.quiet:
            return printed.getvalue()
        bundle, _ = shell.display_formatter.format(value)
        return json.dumps(bundle)


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
        """Serve each ``[endpoint, REQUEST]`` of the batch in the inbox in order, publishing
        each result as soon as it is known. Called by the one line the gateway executes."""
        with open(self.inbox, encoding="utf-8") as inbox:
            batch = json.load(inbox)
        os.unlink(self.inbox)  # read once: the requests need not wait on disk for the next batch
        # The gateway sends the next batch only once it has every answer of this one, so
        # emptying the journal here loses nothing. Its first line names the batch, so that the
        # results of an earlier one are never taken for this one's.
        with open(self.journal, "w", encoding="utf-8") as journal:
            journal.write(json.dumps({"batch": batch["batch"]}) + "\n")
            for index, (endpoint, request) in enumerate(batch["requests"]):
                result, interrupted = self.serve(endpoint, request)
                content = {"index": index, **result}
                journal.write(json.dumps(content) + "\n")
                journal.flush()  # in the operating system's hands: it outlives this process
                self.publish(content)
                if interrupted:  # the gateway interrupted the kernel: the rest of the batch waits
                    raise KeyboardInterrupt

    def serve(self, endpoint: str, request: str) -> tuple[dict[str, Any], bool]:
        """One request's ``{"body", "info"}`` or ``{"error"}``, and whether it was interrupted."""
        cell, info = self.cells[endpoint]
        namespace = self.shell.user_ns
        namespace["REQUEST"] = request
        try:
            body = cell.run(namespace, self.shell)
            return {"body": body, "info": None if info is None else info.run(namespace,
                                                                              self.shell)}, False
        except BaseException as err:  # SystemExit too: it fails this request, not the kernel
            error = {"ename": type(err).__name__, "evalue": str(err)[:1000],
                     "traceback": traceback.format_exc()}
            return {"error": error}, isinstance(err, KeyboardInterrupt)

    def publish(self, content: dict[str, Any]) -> None:
        kernel = self.shell.kernel
        kernel.send_response(kernel.iopub_socket, RESULT, content, ident=RESULT.encode())


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
