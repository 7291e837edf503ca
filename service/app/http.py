"""What an endpoint cell wraps around its endpoint function: the request in, the response out.

The kernel gateway assigns each request to ``REQUEST`` as a JSON string
``{"body", "args", "path", "headers"}``; an endpoint cell runs
``info = respond(endpoint, REQUEST)``, which prints the response body and returns its status
and headers, which the ``ResponseInfo`` cell prints. The kernel keeps no reference to the body.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gradbook_service.app.errors import to_http
from gradbook_service.app.jobs import QUEUE_RETRY_SECONDS
from gradbook_service.gateway import accept, tracing
from gradbook_service.gateway.body import ENCODING, JSON, is_json
from gradbook_service.gateway.errors import RETRY_AFTER as GATEWAY_RETRY_AFTER
from gradbook_service.gateway.errors import ServiceError, error_body, new_error_id

from gradbook.validation import brief

RETRY_AFTER = {**GATEWAY_RETRY_AFTER, 429: QUEUE_RETRY_SECONDS}  # seconds to wait, by status


@dataclass(frozen=True)
class Request:
    """A request as the gateway passes it; ``json()`` decodes the body for endpoints taking one."""

    body: Any = None
    path: Mapping[str, str] = field(default_factory=dict)
    args: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)
    encoding: str | None = None  # "base64": the body is bytes the gateway base64-encoded

    def json(self) -> Any:
        """The body as the JSON value the client sent, ``None`` when there is none.

        The gateway personality has already decoded a JSON body
        (``gradbook_service.gateway.body``), checked and
        bounded; any other media type (a form, which is curl's default, or text) is refused with
        415 rather than guessed at, an empty one too: an empty form is what a web page's form
        sends across sites. A JSON string stays a string: it is not decoded twice.
        """
        content_type = self.header("Content-Type")
        if self.body in ("", None) and not content_type:
            return None
        if not is_json(content_type):
            media_type = str(content_type).split(";")[0].strip() or "no Content-Type"
            raise ServiceError(415, f"send the body as JSON with 'Content-Type: {JSON}', not "
                               f"{brief(media_type)}")
        # no body at all, not a body that is the JSON string "" (which decodes to "" too)
        return None if self.body == "" and self.size == 0 else self.body

    def header(self, name: str) -> str:
        """The value of header ``name`` (any case), '' when absent."""
        name = name.lower()
        return str(next((v for k, v in self.headers.items() if k.lower() == name), ""))

    @property
    def streamed(self) -> bool:
        """Whether the client asked for Server-Sent Events (``Accept: text/event-stream``):
        then each line the cell prints reaches it as it is printed."""
        return accept.streams(accept.ranges(self.header("Accept")))

    @property
    def size(self) -> int:
        """The body's length in bytes, as the gateway received it (its Content-Length)."""
        try:
            return max(int(self.header("Content-Length") or 0), 0)
        except ValueError:
            return 0


@dataclass(frozen=True)
class Response:
    """A status, a text ``body`` and headers. An empty body is not printed: the answer is then
    what the cell displayed (a figure it drew), in the type the headers name."""

    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": JSON})

    @property
    def info(self) -> str:
        """The JSON a ``ResponseInfo`` cell prints."""
        return json.dumps({"status": self.status, "headers": dict(self.headers)})


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        status, json.dumps(payload, allow_nan=False), {"Content-Type": JSON, **(headers or {})}
    )


def parse_request(REQUEST: str | Mapping[str, Any]) -> Request:
    """The gateway's ``REQUEST`` (a JSON string, or a dict in hand-written samples) parsed."""
    request = json.loads(REQUEST) if isinstance(REQUEST, str) else REQUEST
    return Request(
        request.get("body"),
        request.get("path") or {},
        request.get("args") or {},
        request.get("headers") or {},
        request.get(ENCODING),
    )


def forget_printed_output(shell: Any) -> None:
    """Keep ``shell`` (IPython) from holding on to what cells print.

    IPython 9 copies all printed output into ``history_manager.outputs`` under the execution
    count, which does not advance for the gateway's executions, so a serving kernel would keep
    every response it ever printed and grow until it dies. Clearing after each run keeps it flat.
    """
    shell.events.register("post_execute", shell.history_manager.outputs.clear)


ErrorBody = Callable[[ServiceError], Any]


def serve(endpoint: Callable[[Request], Response], REQUEST: str | Mapping[str, Any],
          errors: ErrorBody = error_body) -> Response:
    """Run ``endpoint`` on ``REQUEST``; errors become JSON error responses (``errors`` gives
    their body: gradbook's ``{"error": {"status", "message"}}`` unless a protocol says
    otherwise), never tracebacks."""
    try:
        request = parse_request(REQUEST)
        with tracing.continuing(request.header("traceparent")):  # the gateway's request span
            return endpoint(request)
    except Exception as err:
        error = to_http(err)
        if error.status >= 500:  # the service's fault: the details go to the service log,
            error_id = new_error_id()  # under an id the answer gives
            fault_log().exception("%s failed (error %s)",
                                  getattr(endpoint, "__name__", "an endpoint"), error_id)
            error = ServiceError(error.status, error.message, id=error_id, **error.details)
        retry = {"Retry-After": str(RETRY_AFTER[error.status])} if error.status in RETRY_AFTER \
            else {}
        return json_response(errors(error), error.status, retry)


def fault_log() -> logging.Logger:
    """The log of a kernel's faults: the service's log (the gateway's standard error, which
    kernels share), in its format (``GRADBOOK_LOG_FORMAT``), never the cell's output."""
    log = logging.getLogger("gradbook.kernel")
    if not log.handlers:
        from gradbook_service.app.settings import Settings
        from gradbook_service.gateway import logs

        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(logs.formatter(Settings().log_format))
        log.addHandler(handler)
        log.propagate = False  # ipykernel's own handlers would print it again
    return log


def respond(endpoint: Callable[[Request], Response], REQUEST: str | Mapping[str, Any],
            errors: ErrorBody = error_body) -> str:
    """What an endpoint cell does: ``serve`` the request, print the body, and return the
    ``info`` for the ``ResponseInfo`` cell to print. The body is not kept: a kernel holding on
    to its last response would hold up to the response limit for good."""
    response = serve(endpoint, REQUEST, errors)
    if response.body:
        print(response.body)
    return response.info
