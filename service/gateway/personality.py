"""Kernel gateway personality: notebook-http for one notebook or many, with what a
product-facing service needs around it.

Stock notebook-http turns each ``# METHOD /path`` cell of one seed notebook into an endpoint
run on a pooled kernel. This personality keeps that contract (the same ``REQUEST``, the same
``ResponseInfo`` cells, so any notebook-http notebook of a Python kernel runs unchanged) and
adds:

* several notebooks on one gateway, each with a pool of its own, under ``/<stem>`` (one alone
  at the root), and reload when a file changes (``gradbook_service.gateway.served``,
  ``gradbook_service.gateway.reload``): every answer names its notebook's version in
  ``X-Gradbook-Notebook-Version``;
* the engine (``gradbook_service.gateway.engine``, ``gradbook_service.gateway.runner``): one
  kernel execution per request instead of two or three, and under load one execution for a
  whole batch of queued requests; body and response info come back as separate fields of one
  message that no cell output can forge;
* the gateway's token (``auth_token``, set from ``GRADBOOK_TOKEN``) guards every endpoint of
  the notebooks, ``/openapi.json`` and ``/metrics``; ``/healthz``, ``/readyz``, ``/docs`` and
  the page at ``/`` (``page``, sent by the gateway itself: nothing a client without the token
  sends reaches a kernel or a queue) need none. The token stays in the gateway: kernels never
  see the ``Authorization`` header;
* a request for a host the service does not know (``Host``) gets 403, and so does a request
  that changes state sent by a browser for a page of another site, unless it carries the token
  (``gradbook_service.gateway.origins``): web pages cannot use a service on loopback;
* memory is bounded by design (``gradbook_service.gateway.capacity``): connections, bytes of
  requests and answers held (503 past either), the size of a request's head;
* ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness) are answered by the gateway
  itself (``HealthHandler``), never queued behind kernels;
* a body over ``GRADBOOK_MAX_BODY_BYTES``, or any body sent to a GET or DELETE, gets 413 before
  it reaches a kernel, and is dropped as it arrives rather than held (``EndpointHandler``); an
  answer over ``GRADBOOK_MAX_RESPONSE_BYTES`` is a 500;
* the body is decoded and checked in the gateway (``gradbook_service.gateway.body``):
  malformed or deeply nested JSON never costs a kernel execution;
* requests wait for a free kernel in a bounded queue (503 past ``GRADBOOK_MAX_QUEUE``), and one
  whose client disconnects while it waits leaves the queue without running; a JSON body waits
  as its own text, not decoded (``gradbook_service.gateway.body.request_json``);
* every error is JSON ``{"error": {"status", "message"}}``; a failing cell gives a 500 with a
  short error ``id`` that the log line holding its traceback names, and the exception and the
  cell's traceback in ``exception`` only when ``GRADBOOK_DEBUG`` is on; no response names the
  server software (no ``Server`` header);
* what a cell displays (a figure it draws, ``display(...)``, its value) is its answer when it
  prints nothing, in the type ``Accept`` asks for (``gradbook_service.gateway.accept``; 406
  with the types it has if none suits), or the one its ``ResponseInfo`` sets as
  ``Content-Type``; a request that asks for no type gets stock's answer;
* ``Accept: text/event-stream`` streams what the cell prints, a Server-Sent Event per line as it
  is printed, then an ``end`` (or ``error``) event (``gradbook_service.gateway.events``); a
  client that closes the stream interrupts the cell;
* kernels talk to the gateway over Unix sockets in a folder private to the service's user, not
  over TCP, where any local user could read their answers (``engine.kernel_channels``);
* a kernel that stops is replaced by a newly seeded one; a request whose kernel stops under it
  gets 503 instead of hanging forever, and a request whose cell runs past
  ``GRADBOOK_REQUEST_TIMEOUT`` gets 504 while its kernel is interrupted;
* every response names the kernel that served it in ``X-Gradbook-Kernel``;
* ``GET /metrics``: Prometheus metrics of requests, latency, batches, queues, kernels and
  reloads, by notebook;
* ``GET /openapi.json`` describes the notebooks from their annotations
  (``gradbook_service.gateway.description``) unless a notebook at the root serves its own; the
  stock Swagger path, which lists every operation as "200 Success", redirects to it.

An application served by the gateway adds a page at ``/`` and its own health check
(``NotebookPersonality.page`` and ``check``); the gateway knows nothing else of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import importlib
import json
import logging
import re
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from gradbook_service.gateway import (
    accept,
    apidocs,
    body,
    description,
    events,
    logs,
    runner,
    tracing,
)
from gradbook_service.gateway.capacity import ByteBudget, limit_server
from gradbook_service.gateway.engine import (
    BatchingKernelPool,
    Job,
    Result,
    SeedError,
    SpareKernels,
    kernel_channels,
    make_exchange,
)
from gradbook_service.gateway.errors import (
    RETRY_AFTER,
    ServiceError,
    error_body,
    new_error_id,
    to_http,
)
from gradbook_service.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gradbook_service.gateway.metrics import Metrics
from gradbook_service.gateway.notebooks import (
    DEFAULT_KERNEL,
    DESCRIPTION_PATH,
    Notebook,
    NotebookError,
    folder_notebooks,
    notebook_files,
    read_notebook,
)
from gradbook_service.gateway.origins import HostPolicy, cross_site
from gradbook_service.gateway.reload import watch
from gradbook_service.gateway.served import Served, ServedNotebook, Version
from gradbook_service.gateway.settings import GatewaySettings
from jupyter_server.utils import url_path_join
from kernel_gateway.notebook_http.handlers import NotebookAPIHandler
from kernel_gateway.notebook_http.request_utils import headers_to_dict, parse_args
from tornado.httputil import HTTPInputError, parse_body_arguments
from tornado.iostream import StreamClosedError
from tornado.log import app_log
from tornado.web import RequestHandler, stream_request_body
from traitlets import Bool, List, Unicode
from traitlets.config.configurable import LoggingConfigurable

PAGE_PATH = "/"  # the page the gateway serves itself (NotebookPersonality.page)
DOCS_PATH = "/docs"  # Swagger UI on the description (gradbook_service.gateway.apidocs)
HEALTH_PATH = "/healthz"
INFERENCE_LIVE = "/v2/health/live"  # the Open Inference Protocol's (NotebookPersonality
INFERENCE_READY = "/v2/health/ready"  # .inference_health)
READY_PATH = "/readyz"
OPENAPI_PATH = DESCRIPTION_PATH
SWAGGER_PATH = "/_api/spec/swagger.json"  # stock notebook-http's description: a redirect
SPARE_RELOADS = 2  # reloads' worth of kernels started ahead when reloads are on
RESYNC_SECONDS = (0.0, 1.0)  # after the watch begins: changes made while kernels started
SETTLE_TRIES, SETTLE_PAUSE_SECONDS = 10, 0.1  # a notebook read at the start, mid-save
METRICS_PATH = "/metrics"
BODILESS = ("GET", "HEAD", "DELETE")  # methods whose endpoints take no body: its limit is 0
NO_CONTENT = (204, 304)  # statuses whose responses carry no body
KERNEL_HEADER = "X-Gradbook-Kernel"
VERSION_HEADER = "X-Gradbook-Notebook-Version"  # the version of the notebook that answered
DISCARD_LIMIT_BYTES = 1 << 30  # a refused body up to this size is read and dropped, not cut off
UNMATCHED = "(no endpoint)"  # the metrics label of a path that matches no endpoint
TOKEN_SCHEMES = ("token", "bearer")  # Authorization: <scheme> <the token>
CHALLENGE = 'Bearer realm="gradbook"'  # the WWW-Authenticate of a 401
# The page's policy: its own inline script and style (by hash), requests to this service only,
# never inside another site's frame.
HTML = "text/html; charset=utf-8"
# What a cell displays as HTML or SVG is answered in a sandbox: its scripts run, but in an
# origin of their own, never with this service's (a cell may echo what a client sent).
SANDBOX = "sandbox allow-scripts allow-popups"
PAGE_POLICY = ("default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")


class ServiceHandler:
    """What every handler of the service shares: JSON errors ``{"error": {"status",
    "message"}}`` (with ``Retry-After`` on a 503), no ``Server`` header naming the software
    and its version to whoever asks, and no answer to a host the service does not know.

    ``hosts`` is set by the personality, for all handlers of the process."""

    kernel_id: str | None = None
    metrics: Metrics | None = None
    notebook = ""  # the metrics label: the notebook's stem ("" for the gateway's own paths)
    endpoint = UNMATCHED  # the metrics label: the notebook's annotated path
    version: Version | None = None  # the notebook version the request is bound to
    hosts = HostPolicy("127.0.0.1")

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> Any:
        if (refusal := self.host_refusal()) is not None:
            return self.fail(refusal)
        return super().prepare()  # type: ignore[misc]

    def host_refusal(self) -> ServiceError | None:
        """A 403 for a ``Host`` the service does not answer to
        (``gradbook_service.gateway.origins``)."""
        host = self.request.headers.get("Host")
        if self.hosts.allows(host):
            return None
        return ServiceError(403, f"this service does not answer to the host {(host or '')[:100]!r};"
                                 " add it to GRADBOOK_ALLOWED_HOSTS if it is yours")

    def on_finish(self) -> None:
        if self.metrics is not None:
            self.metrics.observe(self.request.method, self.notebook, self.endpoint,
                                 self.get_status(), self.request.request_time())

    def token_refusal(self) -> ServiceError | None:
        """A 401 unless the request carries the gateway's token, if one is set: as
        ``Authorization: token <value>`` or ``Bearer <value>``, the two forms Jupyter Server
        takes. Compared in constant time."""
        token = self.settings.get("kg_auth_token")
        if not token:
            return None
        scheme, _, sent = self.request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() in TOKEN_SCHEMES and hmac.compare_digest(sent.strip().encode(),
                                                                   token.encode()):
            return None
        return ServiceError(401, "send the service's token as 'Authorization: token <value>' "
                                 "(or 'Bearer <value>')")

    def fail(self, error: ServiceError) -> None:
        self.send_error(error.status, error=error)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Called by ``fail`` with ``error``, or by tornado for its own errors (a phrase only)."""
        error = kwargs.get("error") or ServiceError(status_code)
        self.set_header("Content-Type", "application/json")
        if status_code in RETRY_AFTER:
            self.set_header("Retry-After", str(RETRY_AFTER[status_code]))
        if status_code == 401:
            self.set_header("WWW-Authenticate", CHALLENGE)
        if status_code == 405 and getattr(self, "sources", None):  # an endpoint's methods
            self.set_header("Allow", ", ".join(sorted(self.sources)))
        if self.kernel_id is not None:
            self.set_header(KERNEL_HEADER, self.kernel_id)
        if self.version is not None:
            self.set_header(VERSION_HEADER, self.version.notebook.version)
        self.finish(json.dumps(error_body(error)))


@stream_request_body
class EndpointHandler(ServiceHandler, NotebookAPIHandler):
    """Runs an endpoint's cells on a pooled kernel, like ``NotebookAPIHandler``, with the checks
    and error handling described in the module docstring.

    The body is streamed in (``data_received``) so that one over the limit is dropped as it
    arrives instead of being held whole, and so that tornado's own limit (a bare 400 past
    100 MB) never applies. A refused request is answered once its body has been read: answering
    while the client still sends would close the connection under it (a reset, in which the
    answer is lost). A client that waits for ``100 Continue`` is answered at once instead.
    Endpoints of a GET or DELETE take no body: their limit is 0 bytes.

    What the request holds is counted in the gateway's ``ByteBudget`` (``held``): its declared
    body before a byte is read, then the request as the kernel gets it, then the answer until
    it is written; a request that does not fit gets 503 (``gradbook_service.gateway.capacity``).
    """

    def initialize(self, max_body_bytes: int, metrics: Metrics, budget: ByteBudget,
                   endpoint: str = UNMATCHED, public: bool = False,
                   sources: tuple[str, ...] = ("GET",)) -> None:
        self.endpoint, self.metrics = endpoint, metrics
        self.sources = sources  # the methods served at this path
        self.public = public  # answered without the token (health)
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.held = 0  # bytes this request counts in the budget
        self.received = bytearray()
        self.body_json, self.body_size = "", 0  # the body, decoded and checked, as JSON text
        self.body_bytes = False  # whether it is bytes, base64-encoded
        self.refusal: ServiceError | None = None
        self.waiting: asyncio.Future[Result] | None = None  # queued, or running on a kernel
        self.streaming: Job | None = None  # a streamed request's job, queued or running
        self.debug = False  # whether a 500 answers the exception (GRADBOOK_DEBUG)
        self.traced: tracing.RequestSpan | None = None  # its span, when tracing is on
        self.error_id: str | None = None

    def prepare(self) -> None:
        """Decide from the headers alone whether the request is refused."""
        self.refusal = self.host_refusal() or self.resolve()
        if self.refusal is not None and self.refusal.status == 404:
            return self.fail(self.refusal)
        if self.request.method == "OPTIONS":  # a CORS preflight, answered by CORSMixin
            if self.refusal is not None:
                self.fail(self.refusal)
            return
        if self.request.method in BODILESS:
            self.max_body_bytes = 0
        self.request.connection.set_max_body_size(max(self.max_body_bytes, DISCARD_LIMIT_BYTES))
        self.refusal = self.refusal or self._refusal()
        declared = self._declared_length()
        if self.refusal is None and declared > 0:  # counted before a byte of it is read
            self._hold(declared)
        waits = self.request.headers.get("Expect", "").lower() == "100-continue"
        if self.refusal is not None and (waits or declared > DISCARD_LIMIT_BYTES):
            self.fail(self.refusal)

    def resolve(self) -> ServiceError | None:
        """Find what serves the path (a fixed path: itself); a 404 if nothing does."""
        return None

    def _hold(self, size: int) -> bool:
        """Count ``size`` bytes for this request in place of what it held; if they do not fit,
        refuse it (503) and hold nothing."""
        if size > self.held and not self.budget.take(size - self.held):
            self.refusal = ServiceError(503, self.budget.full_message())
            self._release()
            return False
        if size <= self.held:
            self.budget.change(self.held, size)
        self.held = size
        return True

    def _release(self) -> None:
        self.budget.change(self.held, 0)
        self.held = 0

    def _refusal(self) -> ServiceError | None:
        method = self.request.method
        if not self.public and (refusal := self.token_refusal()):
            return refusal
        if not self.public and cross_site(method, self.request.headers):
            return ServiceError(403, f"{method} {self.request.path[:100]} was sent by a web page "
                                     "of another site; such requests need the service's token")
        if method not in self.sources:
            allowed = ", ".join(sorted(self.sources))
            return ServiceError(405, f"{method} is not supported here; use {allowed}")
        chunked = "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        if self.max_body_bytes == 0 and (chunked or self._declared_length() > 0):
            return ServiceError(413, f"{method} {self.request.path} takes no request body")
        if (size := self._declared_length()) > self.max_body_bytes:
            message = f"the body has {size} bytes; the limit is {self.max_body_bytes}"
            return ServiceError(413, message)
        return None

    def _declared_length(self) -> int:
        """The Content-Length, 0 if absent (tornado itself refuses a malformed one)."""
        try:
            return int(self.request.headers.get("Content-Length", "0"))
        except ValueError:
            return 0

    def data_received(self, chunk: bytes) -> None:
        size = len(self.received) + len(chunk)
        if self.refusal is None and size > self.max_body_bytes:
            message = f"the body has more than {self.max_body_bytes} bytes, the limit"
            self.refusal = ServiceError(413, message)
        elif self.refusal is None and size > self.held:
            self._hold(size)  # a body sent in chunks is counted as it arrives
        if self.refusal is None:
            self.received += chunk
        else:  # refused: what arrives is dropped, and nothing is held
            self.received = bytearray()
            self._release()

    def on_connection_close(self) -> None:
        """The client went away: a request still waiting for a kernel leaves the queue unrun."""
        super().on_connection_close()
        if self.waiting is not None:
            self.waiting.cancel()
        if self.streaming is not None:  # its cell is interrupted if it runs
            self.pool.abandon(self.streaming)
        self._release()
        self._leave()

    def on_finish(self) -> None:
        super().on_finish()
        if self.traced is not None:
            self.traced.end(self.get_status(), self.error_id)
        if self.waiting is None and self.streaming is None:  # refused, or answered by the
            self._release()  # gateway: nothing left to write
        self._leave()

    def _leave(self) -> None:
        """The request is done with its notebook's version (once)."""
        version, self.version = self.version, None
        if version is not None:
            version.leave()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self._handle_request()

    # notebook-http has no PATCH (or HEAD) cells: those answer the 405 ``prepare`` decided
    post = put = delete = patch = head = get

    async def _handle_request(self) -> None:
        if self.refusal is not None:
            return self.fail(self.refusal)
        raw, self.received = bytes(self.received), bytearray()
        content_type = self.request.headers.get("Content-Type", "")
        try:  # form fields, which the non-streaming handler has tornado parse
            parse_body_arguments(content_type, raw, self.request.body_arguments,
                                 self.request.files)
            # kept on the handler, not in this frame, which lives as long as the request waits
            self.body_json, self.body_bytes = body.request_json(content_type, raw,
                                                                self.request.body_arguments)
        except HTTPInputError as err:
            return self.fail(ServiceError(400, f"the body is malformed: {err}"))
        except ServiceError as err:
            return self.fail(err)
        self.body_size = len(raw)
        del raw
        await self._answer()

    def _request_text(self) -> str:
        """``REQUEST`` as stock notebook-http makes it, ``{"body", "args", "path", "headers"}``,
        as JSON text around the body's own. The headers are the client's but for the gateway's
        token, which stays here, and a ``Content-Length`` that is the body's, also when it came
        in chunks. The body's text is let go: from here on the request holds its size once."""
        body_json, self.body_json = self.body_json, ""
        headers = headers_to_dict(self.request.headers)
        if self.settings.get("kg_auth_token"):
            headers.pop("Authorization", None)
        if self.traced is not None:  # the cell may continue the trace
            self.traced.inject(headers)
        if self.body_size and "Content-Length" not in headers:
            headers["Content-Length"] = str(self.body_size)
        args = json.dumps(parse_args(self.request.query_arguments))
        encoding = f', "{body.ENCODING}": "base64"' if self.body_bytes else ""
        return (f'{{"body": {body_json}, "args": {args}, "path": {json.dumps(self.path_kwargs)}, '
                f'"headers": {json.dumps(headers)}{encoding}}}')

    async def _answer(self) -> None:
        """Run the request on a kernel and answer what its cells printed (or displayed)."""
        error, response = None, None
        if (tracer := tracing.tracer()) is not None:
            method = self.request.method
            self.traced = tracing.RequestSpan(
                tracer, f"{method} {self.endpoint}", self.request.headers,
                {"http.request.method": method, "http.route": self.endpoint,
                 "gradbook.notebook": getattr(self, "notebook", "")})
        try:
            request = self._request_text()
            if not self._hold(len(request)):
                raise self.refusal  # type: ignore[misc]
            key = f"{self.request.method} {self.endpoint}"
            accepted = accept.ranges(self.request.headers.get("Accept"))
            options = None if accepted is None else {"accept": accepted}
            if accept.streams(accepted):
                return await self._stream(Job(key, request, {**options, "stream": True}))
            self.waiting = asyncio.ensure_future(self.pool.submit(key, request, options))
            del request  # the queue holds it, as long as it waits and runs
            response = self._respond(await self.waiting)
            self.budget.change(self.held, len(response))  # the answer, until it is written
            self.held = len(response)
        except asyncio.CancelledError:  # the client went away while waiting: nothing ran
            return None
        except Exception as err:  # every failure becomes a JSON error response
            error = self._failure(err)
        if error is not None:
            self._release()
            self.fail(error)
        else:
            if self.get_status() in NO_CONTENT:  # tornado refuses even an empty body there
                response = None
            try:
                with contextlib.suppress(StreamClosedError):  # the client left: nobody to tell
                    await self.finish(response)
            finally:
                self._release()

    async def _stream(self, job: Job) -> None:
        """Answer ``job`` as Server-Sent Events: each line its cell prints as it is printed,
        then the ``end`` event with the status and headers of its ``ResponseInfo``, or an
        ``error`` event. The stream is bounded like any answer: past
        ``GRADBOOK_MAX_RESPONSE_BYTES``, or if the gateway's byte budget is spent, the cell is
        interrupted and the stream ends with an error."""
        lines: list[str] = []
        arrived = asyncio.Event()

        def on_output(new: list[str]) -> None:
            lines.extend(new)
            arrived.set()

        job.on_output = on_output
        job.future.add_done_callback(lambda _: arrived.set())
        await self.pool.enqueue(job)  # a full queue is a 503 like any other
        self.streaming = job
        self.set_header("Content-Type", events.CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Accel-Buffering", "no")  # for a proxy in front: pass each event on
        self.set_header("Vary", "Accept")
        sent, last = 0, None
        try:
            await self.flush()  # the headers: the client knows the stream is open
            while last is None:
                await arrived.wait()
                arrived.clear()
                if job.future.cancelled():  # the client left: the cell was interrupted
                    return
                chunk, lines[:] = events.data(lines), []
                sent += len(chunk)
                if sent > self.max_response_bytes:  # the notebook's fault: a 500
                    self.pool.abandon(job)
                    last = ServiceError(500, f"{job.endpoint} printed more than "
                                        f"{self.max_response_bytes} bytes to its stream, the "
                                        "limit (GRADBOOK_MAX_RESPONSE_BYTES); it was interrupted")
                    app_log.error("%s %s: %s", self.request.method, self.request.path,
                                  last.message)
                    break
                if not self._hold(len(chunk)):
                    self.pool.abandon(job)
                    last = self.refusal
                    break
                if chunk:
                    self.write(chunk)
                    await self.flush()
                if job.future.done() and not lines:  # lines that came during the flush
                    last = self._stream_end(job.future)  # go first
        except StreamClosedError:  # the client left: its cell is interrupted
            self.pool.abandon(job)
            return
        finally:
            self._release()
        if isinstance(last, ServiceError):
            end = events.last(events.ERROR, error_body(last))
        else:
            end = events.last(events.END, last)
        with contextlib.suppress(StreamClosedError):
            await self.finish(end)

    def _stream_end(self, future: asyncio.Future[Result]) -> dict[str, Any] | ServiceError:
        """What the last event of a stream says: ``{"status", "headers"}``, or the error."""
        try:
            info = self._info(future.result())
            return {"status": info.get("status", 200), "headers": info.get("headers", {})}
        except Exception as err:
            return self._failure(err)

    def _failure(self, err: BaseException) -> ServiceError:
        """The error to answer for ``err``. A 500's details go to the log, under an id the
        answer gives; with ``GRADBOOK_DEBUG`` on, the answer has them too."""
        error = to_http(err)
        if error.status != 500:
            return error
        error_id = self.error_id = new_error_id()
        if isinstance(err, CellError):  # the cell's traceback: the gateway's says nothing more
            app_log.error("%s %s failed (error %s): %s", self.request.method, self.request.path,
                          error_id, err)
        else:
            app_log.error("%s %s failed (error %s)", self.request.method, self.request.path,
                          error_id, exc_info=err)
        details: dict[str, Any] = {"id": error_id}
        if self.debug:
            details["exception"] = exception_details(err)
        what = "the endpoint's cell raised" if isinstance(err, CellError) else "internal error"
        return ServiceError(500, f"{what}; the service log has the details under error "
                                 f"{error_id}", **details)

    def _info(self, result: Result) -> dict[str, Any]:
        """The status and headers the ``ResponseInfo`` cell printed (none: ``{}``)."""
        self.kernel_id = result.kernel_id
        self.batch_size = result.batch  # for the access log (log_request)
        if self.traced is not None and result.timing is not None:
            self.traced.ran(*result.timing, batch=result.batch, kernel=result.kernel_id)
        if result.error is not None:
            raise CellError(result.error)
        if result.info is None:
            return {}
        try:
            info = json.loads(result.info)
            if not isinstance(info, dict) or not isinstance(info.get("headers", {}), dict):
                raise ValueError
            return info
        except ValueError:  # the notebook's fault, not the client's: a 500, not a 400
            raise RuntimeError(f"ResponseInfo {self.request.method} {self.endpoint} "
                               f"printed {result.info[:200]!r}") from None

    def _respond(self, result: Result) -> bytes | str:
        """Set status and headers from the ``ResponseInfo`` cell's output; return the body:
        what the cell printed, or the representation of an output it displayed."""
        info = self._info(result)
        if result.offers is not None:
            types = ", ".join(result.offers)
            raise ServiceError(406, f"{self.request.method} {self.endpoint} answers {types}; "
                                    "the request's Accept allows none of them",
                               available=result.offers)
        self.set_status(info.get("status", 200))
        self.set_header("Vary", "Accept")
        if result.type is None:
            self.set_header("Content-Type", "text/plain")
        else:
            self.set_header("Content-Type", with_charset(result.type))
            if result.type in ("text/html", "image/svg+xml"):
                self.set_header("Content-Security-Policy", SANDBOX)
        for header, value in info.get("headers", {}).items():
            self.set_header(header, value)
        self.set_header(KERNEL_HEADER, self.kernel_id)
        answer: bytes | str = result.body
        if result.base64:
            try:
                answer = base64.b64decode(answer)
            except ValueError:
                raise RuntimeError(f"{self.request.method} {self.endpoint} displayed "
                                   f"{result.type} data that is not base64") from None
        # the notebook's fault: a 500 (an error it answers may say why in more, as gradbook's
        # API does when the answer itself would be too large)
        if len(answer) > self.max_response_bytes and self.get_status() < 400:
            raise RuntimeError(f"{self.request.method} {self.endpoint} answered {len(answer)} "
                               f"bytes; the limit is {self.max_response_bytes} "
                               "(GRADBOOK_MAX_RESPONSE_BYTES)")
        return answer


class NotebookHandler(EndpointHandler):
    """Every path of the served notebooks: the request is bound to the notebook version that
    serves its path when its headers arrive (``Served.resolve``), runs on that version's pool,
    and its answer names the version (``X-Gradbook-Notebook-Version``)."""

    def initialize(self, served: Served, max_response_bytes: int,  # type: ignore[override]
                   debug: bool = False, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.served = served
        self.max_response_bytes = max_response_bytes
        self.debug = debug

    def resolve(self) -> ServiceError | None:
        path = self.request.path
        if (match := self.served.resolve(path)) is None:
            return ServiceError(404, f"no endpoint {path[:100]}; see GET {OPENAPI_PATH}")
        self.notebook, self.endpoint = match.served.name, match.route.path
        self.sources = tuple(match.route.methods)
        self.path_kwargs = match.path_kwargs
        self.version, self.pool = match.version, match.version.pool
        self.version.enter()
        self.set_header(VERSION_HEADER, self.version.notebook.version)
        return None


class HealthHandler(EndpointHandler):
    """``GET /healthz`` and ``GET /readyz``, answered by the gateway process from what it knows,
    so they answer at once however busy the kernels are (an orchestrator that saw a health check
    hang behind two long requests would restart a healthy service). No token: they say only
    whether the service is well, and of each notebook its kernels, version and last reload. As
    an endpoint it refuses other methods and any body the same way.

    Liveness (``/healthz``): every kernel process of every notebook's pool is alive. Readiness
    (``/readyz``, "send me traffic"): that, every pool has started (its kernels are seeded),
    and a request sent now to any notebook would not be refused for a full queue
    (``GRADBOOK_MAX_QUEUE``). An application served by the gateway may add its own check
    (``NotebookPersonality.check``, e.g. gradbook's store), run in a thread. Either answers
    503 with what is wrong, naming the notebook.
    """

    def initialize(self, served: Served, readiness: bool,  # type: ignore[override]
                   check: Any = None, inference: bool = False, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.served, self.readiness, self.check = served, readiness, check
        self.inference = inference  # the Open Inference Protocol's form of the answer

    async def _answer(self) -> None:
        problems, notebooks = [], {}
        for served in list(self.served.notebooks.values()):
            entry: dict[str, Any] = {"path": served.prefix or "/", "version": None,
                                     "kernels": 0, "reload": served.status.as_json()}
            notebooks[served.name] = entry
            if (version := served.current) is None:  # a folder's new notebook, not served yet
                if self.readiness and served.reloading and not served.reloading.done():
                    problems.append(f"{served.name}: its kernels are starting")
                continue
            pool = version.pool
            for kernel_id in list(pool.kernel_clients):
                if not await pool.is_running(kernel_id):
                    problems.append(f"{served.name}: kernel {kernel_id} stopped; it is being "
                                    "replaced")
            if self.readiness and not pool.ready.is_set():
                problems.append(f"{served.name}: the kernels are starting")
            if self.readiness and pool.full():
                problems.append(f"{served.name}: every kernel is busy and {len(pool.queue)} "
                                "requests wait, the most allowed")
            entry.update(version=version.notebook.version, kernels=len(pool.kernel_clients))
        extra: dict[str, Any] = {}
        if self.check is not None:  # in a thread: a slow answer holds no other request
            loop = asyncio.get_running_loop()
            try:
                extra = await loop.run_in_executor(None, self.check, self.readiness)
            except Unwell as err:
                problems.append(str(err))
        self.set_header("Content-Type", "application/json")
        if self.inference:  # {"live": true}; a failure is {"error": "…"} (the protocol's)
            self.set_status(503 if problems else 200)
            if problems:
                self.set_header("Retry-After", str(RETRY_AFTER[503]))
            return self.finish(json.dumps({"error": "; ".join(problems)} if problems else
                                          {"ready" if self.readiness else "live": True}))
        if problems:
            return self.fail(ServiceError(503, "; ".join(problems)))
        kernels = sum(entry["kernels"] for entry in notebooks.values())
        self.finish(json.dumps({"status": "ok", "kernels": kernels, **extra,
                                "notebooks": notebooks}))


class Unwell(Exception):  # noqa: N818 (it is what a check raises: the service is unwell)
    """Raised by an application's health check (``NotebookPersonality.check``): what is wrong,
    for the 503 of ``/healthz`` or ``/readyz``."""


class DescriptionHandler(ServiceHandler, RequestHandler):
    """``GET /openapi.json`` for notebooks that do not describe themselves: their paths,
    methods and path parameters from the annotations, each summary from the Markdown cell above
    the endpoint, and the statuses the gateway itself answers
    (``gradbook_service.gateway.description``); made from the versions serving now."""

    endpoint = OPENAPI_PATH
    sources = ("GET",)

    def initialize(self, served: Served, metrics: Metrics, token: bool,
                   max_body_bytes: int, request_timeout: float) -> None:
        self.served, self.metrics, self.token = served, metrics, token
        self.max_body_bytes, self.request_timeout = max_body_bytes, request_timeout

    def get(self) -> None:
        if refusal := self.token_refusal():
            return self.fail(refusal)
        notebooks = [version.notebook for _, version in self.served.versions()]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(description.describe(
            notebooks, token=self.token, max_body_bytes=self.max_body_bytes,
            request_timeout=self.request_timeout)))


class PageHandler(EndpointHandler):
    """``GET /`` (the personality's ``page``), ``GET /docs`` and Swagger UI's files: sent by the
    gateway itself, so that no request for them, with the token or without, takes a kernel or a
    place in the queue. As an endpoint it refuses other methods and any body the same way; it
    needs no token (the pages ask their user for it). A page's Content-Security-Policy lets it
    run its own inline script and style and this service's files only (``page_policy``), talk to
    this service only, and be framed by no other site."""

    def initialize(self, page: Page, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.page = page

    def compute_etag(self) -> str:
        return self.page.etag  # the page does not change: hashed once, not per request

    async def _answer(self) -> None:
        self.set_header("Content-Type", self.page.content_type)
        self.set_header("X-Content-Type-Options", "nosniff")
        if self.page.policy:
            self.set_header("Content-Security-Policy", self.page.policy)
            self.set_header("X-Frame-Options", "DENY")
            self.set_header("Referrer-Policy", "no-referrer")
        self.finish(self.page.body)


class Page:
    """A page (or a file it loads) as the gateway sends it: its bytes, ETag and, for HTML, its
    policy, made once."""

    def __init__(self, body: str | bytes, content_type: str = HTML) -> None:
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.etag = f'"{hashlib.sha1(self.body).hexdigest()}"'
        self.policy = page_policy(self.body.decode()) if content_type == HTML else ""


def page_policy(html: str) -> str:
    """The Content-Security-Policy of ``html``: its inline ``<script>`` and ``<style>`` elements
    allowed by their SHA-256 hashes, nothing else of the kind."""
    def hashes(tag: str) -> str:
        found = re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", html, flags=re.S | re.I)
        digests = (base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
                   for text in found)
        return " ".join(f"'sha256-{digest}'" for digest in digests)

    def sources(tag: str, linked: str) -> str:  # the inline ones, and 'self' if it links any
        own = "'self'" if re.search(linked, html, flags=re.I) else ""
        return " ".join(filter(None, [own, hashes(tag)])) or "'none'"

    return PAGE_POLICY.format(script=sources("script", r"<script\s[^>]*\bsrc="),
                              style=sources("style", r"<link\s[^>]*\brel=.stylesheet"))


class CellError(Exception):
    """An endpoint or ``ResponseInfo`` cell raised; its traceback goes to the log."""

    def __init__(self, error: dict[str, str]) -> None:
        super().__init__(f"{error['ename']}: {error['evalue']}\n{error['traceback']}")
        self.error = error


def exception_details(err: BaseException) -> dict[str, str]:
    """What a 500 answers of ``err`` with ``GRADBOOK_DEBUG`` on: a cell's exception with the
    cell's traceback, or the gateway's own."""
    if isinstance(err, CellError):
        return {"name": err.error["ename"], "message": err.error["evalue"],
                "traceback": err.error["traceback"]}
    return {"name": type(err).__name__, "message": str(err)[:1000],
            "traceback": "".join(traceback.format_exception(err))[-runner.MAX_TRACEBACK_CHARS:]}


def with_charset(media_type: str) -> str:
    """The ``Content-Type`` of a displayed output: text types say they are UTF-8."""
    textual = media_type.startswith("text/") or media_type == "image/svg+xml"
    return f"{media_type}; charset=utf-8" if textual else media_type


class MetricsHandler(ServiceHandler, RequestHandler):
    """``GET /metrics``: the Prometheus text format, from the gateway without a kernel."""

    endpoint = METRICS_PATH
    sources = ("GET",)  # its methods, for the Allow header of a 405 (ServiceHandler.write_error)

    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        if refusal := self.token_refusal():
            return self.fail(refusal)
        self.set_header("Content-Type", METRICS_CONTENT_TYPE)
        self.finish(self.metrics.text())


class OpenAPIRedirectHandler(ServiceHandler, RequestHandler):
    """The stock Swagger path, which the gateway's log announces, leads to ``/openapi.json``."""

    sources = ("GET",)  # its methods, for the Allow header of a 405 (ServiceHandler.write_error)

    def initialize(self, url: str) -> None:
        self.url = url

    def get(self) -> None:
        self.redirect(self.url, permanent=True)


class NotebookPersonality(LoggingConfigurable):
    """The gateway's personality: notebook-http for one notebook or several, each with its
    own ``BatchingKernelPool``, reloaded when its file changes if ``GRADBOOK_RELOAD`` is on.

    An application served by the gateway (gradbook's API) adds a page at ``/`` and a check of
    its own to ``/healthz`` and ``/readyz``; the gateway knows nothing else of it.
    """

    notebooks = List(
        Unicode(), config=True,
        help="The notebook files and folders to serve: one file at the root, anything else "
        "each notebook under /<its stem>")
    page = Unicode(
        "", config=True,
        help="A function, 'module:name', that returns the HTML page the gateway serves itself at "
        "GET / (no kernel, no token); empty: none")
    inference_health = Bool(
        False, config=True,
        help="Also answer the Open Inference Protocol's server health, GET /v2/health/live and "
        "/v2/health/ready, as /healthz and /readyz are answered ({\"live\": true})")
    check = Unicode(
        "", config=True,
        help="A function, 'module:name', that /healthz and /readyz call (in a thread) with "
        "whether readiness is asked: it returns fields to add to their answer, or raises "
        "gradbook_service.gateway.personality.Unwell; empty: none")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.service_settings = GatewaySettings(parent=self)
        ServiceHandler.hosts = HostPolicy(settings.host, settings.allowed_hosts)
        self.budget = ByteBudget(settings.max_pending_bytes)
        self.exchange = make_exchange()
        kernel_channels(self.parent.kernel_manager, self.exchange)
        self.served = Served()
        self.metrics = Metrics(queue_depths=self._queue_depths,
                               pending_bytes=lambda: self.budget.used)
        self.paths = [Path(path) for path in self.notebooks]
        if not self.paths and self.parent.seed_uri:  # the stock command, with our api
            self.paths = [Path(self.parent.seed_uri)]
            # The engine seeds its kernels; the gateway's kernel manager must not as well.
            self.parent.kernel_manager._seed_source = None
        if not self.paths:
            raise NotebookError("no notebook to serve: name one (NotebookPersonality.notebooks, "
                                "or the gateway's seed_uri)")
        # --KernelGatewayApp.prespawn_count, when the gateway is started as stock, else ours
        self.kernels = self.parent.prespawn_count or settings.kernels
        # with reloads on, kernels started ahead (SpareKernels): enough for two reloads, so
        # that saves in quick succession find spares that have finished starting
        self.spares = (SpareKernels(self.parent.kernel_manager, SPARE_RELOADS * self.kernels)
                       if settings.reload else None)
        self.kernel_names = set(self.parent.kernel_spec_manager.find_kernel_specs())
        for file, prefix in notebook_files(self.paths):
            self.served.add(ServedNotebook(file, prefix, self._pool, self._reloaded, self._read))
        for prefix, served in self.served.notebooks.items():  # read now, for the routes;
            served.first(self._read(served.file, prefix, settle=True))  # started later
        self.failure: str | None = None  # why the gateway could not start serving
        self.watching: asyncio.Task[None] | None = None
        self.removed: list[ServedNotebook] = []  # deleted from a folder, maybe still ending

    def _read(self, file: Path, prefix: str, settle: bool = False) -> Notebook:
        """The notebook as it will run: a kernel this machine does not have (a notebook saved
        elsewhere names its own, "conda-env-…") is replaced by Python's own, saying so. With
        ``settle``, a file being saved is given a moment."""
        notebook = _read_settled(file, prefix) if settle else read_notebook(file, prefix)
        if notebook.kernel_name not in self.kernel_names:
            app_log.warning("%s names the kernel %r, which is not installed here; it runs on %r",
                            file, notebook.kernel_name, DEFAULT_KERNEL)
            notebook = dataclasses.replace(notebook, kernel_name=DEFAULT_KERNEL)
        return notebook

    def _pool(self, notebook: Notebook) -> BatchingKernelPool:
        settings = self.service_settings
        pool = BatchingKernelPool(notebook, self.parent.kernel_manager, self.exchange,
                                  self.kernels, settings.max_queue, settings.max_batch,
                                  settings.request_timeout, self.spares)
        pool.on_batch = self.metrics.batch_size.labels(notebook.name).observe
        pool.on_replace = self.metrics.kernels_replaced.labels(notebook.name).inc
        return pool

    def _reloaded(self, notebook: str, result: str) -> None:
        self.metrics.reloads.labels(notebook, result).inc()

    def _queue_depths(self) -> dict[str, int]:
        return {served.name: len(version.pool.queue) for served, version in
                self.served.versions()}

    async def init_configurables(self) -> None:
        self.parent.web_app.settings["log_function"] = log_request
        settings = self.service_settings
        limit_server(self.parent.http_server, settings.max_connections, settings.body_timeout)
        if self.spares is not None:  # starting beside the pools, ready about when they are
            for served in self.served.notebooks.values():
                self.spares.keep(served.current.notebook.kernel_name)
        try:
            await asyncio.gather(*(served.start() for served in self.served.notebooks.values()))
        except (NotebookError, SeedError) as err:
            self.failure = f"cannot serve {err}"
            app_log.critical("%s", self.failure)
            self.parent.stop()
            return
        except Exception as err:  # a kernel that cannot start: stop rather than hang requests
            self.failure = f"cannot start the kernels: {type(err).__name__}: {err}"
            app_log.critical("%s", self.failure, exc_info=err)
            self.parent.stop()
            return
        for served in self.served.notebooks.values():
            app_log.info("serving %s at %s/ (version %s, %d kernels)", served.file,
                         served.prefix, served.current.notebook.version, self.kernels)
        if settings.reload:
            self.watching = asyncio.ensure_future(watch(self.paths, self._changed))
            # what changed while the kernels started, before the watch began, is caught up
            for delay in RESYNC_SECONDS:
                self.parent.io_loop.call_later(delay, self._resync)

    def _resync(self) -> None:
        """Serve what the files hold now if a change was missed: every served notebook whose
        file holds another version, and every notebook added to or deleted from a served
        folder."""
        for served in list(self.served.notebooks.values()):
            if not served.file.is_file():
                self._changed(served.file, False)
            elif served.stale():
                served.reload()
        for folder in (path for path in self.paths if path.is_dir()):
            for file in folder_notebooks(folder):
                if all(served.file != file for served in self.served.notebooks.values()):
                    self._changed(file, True)

    def _changed(self, file: Path, exists: bool) -> None:
        """A served notebook's file, or a notebook of a served folder, changed."""
        served = next((each for each in self.served.notebooks.values() if each.file == file),
                      None)
        if served is not None and exists:
            served.reload()
        elif served is not None and any(file.parent == path.resolve() for path in self.paths
                                        if path.is_dir()):  # deleted from a served folder
            del self.served.notebooks[served.prefix]
            app_log.info("%s was deleted: no longer served", file)
            served.remove()
            self.removed = [each for each in self.removed if each.retiring] + [served]
        elif served is not None:
            app_log.warning("%s was deleted; its last version still serves", file)
        elif exists and (prefix := self.served.prefix_for(file)) is not None:
            added = ServedNotebook(file, prefix, self._pool, self._reloaded, self._read)
            self.served.add(added)
            added.reload()

    def create_request_handlers(self) -> list[tuple[Any, ...]]:
        def route_of(path: str) -> str:
            return url_path_join("/", self.parent.base_url, path)

        claimed = {route.path for served, version in self.served.versions() if not served.prefix
                   for route in version.notebook.routes}  # a notebook served at the root
        settings = self.service_settings
        gateway = {"metrics": self.metrics, "max_body_bytes": 0, "public": True,
                   "budget": self.budget}
        check = _function(self.check) if self.check else None
        health = {**gateway, "served": self.served, "check": check}
        handlers: list[tuple[Any, ...]] = [
            (route_of(METRICS_PATH), MetricsHandler, {"metrics": self.metrics}),
            (route_of(HEALTH_PATH), HealthHandler,
             {**health, "endpoint": HEALTH_PATH, "readiness": False}),
            (route_of(READY_PATH), HealthHandler,
             {**health, "endpoint": READY_PATH, "readiness": True}),
            (route_of(SWAGGER_PATH), OpenAPIRedirectHandler, {"url": route_of(OPENAPI_PATH)})]
        if self.inference_health:
            for path, readiness in ((INFERENCE_LIVE, False), (INFERENCE_READY, True)):
                if path in claimed:
                    raise NotebookError(f"the notebook has an endpoint at {path}, which the "
                                        "gateway answers itself (inference_health)")
                handlers.append((route_of(path), HealthHandler, {
                    **health, "endpoint": path, "readiness": readiness, "inference": True}))
        if OPENAPI_PATH not in claimed:
            handlers.append((route_of(OPENAPI_PATH), DescriptionHandler, {
                "served": self.served, "metrics": self.metrics,
                "token": bool(self.parent.auth_token), "max_body_bytes": settings.max_body_bytes,
                "request_timeout": settings.request_timeout}))
        if self.page:
            if PAGE_PATH in claimed:
                raise NotebookError(f"the notebook has an endpoint at {PAGE_PATH}, where the "
                                    f"gateway serves the page {self.page}: keep one of them")
            page = Page(_function(self.page)())
            handlers.append((route_of(PAGE_PATH), PageHandler,
                             {**gateway, "endpoint": PAGE_PATH, "page": page}))
        handlers.append((route_of(DOCS_PATH), PageHandler,
                         {**gateway, "endpoint": DOCS_PATH, "page": Page(apidocs.page())}))
        for name, content_type in apidocs.ASSETS.items():
            path = f"{DOCS_PATH}/{name}"
            handlers.append((route_of(path), PageHandler, {
                **gateway, "endpoint": path,
                "page": Page(apidocs.asset(name), content_type)}))
        handlers.append((route_of(".*"), NotebookHandler, {
            "served": self.served, "metrics": self.metrics, "budget": self.budget,
            "max_body_bytes": settings.max_body_bytes,
            "max_response_bytes": settings.max_response_bytes, "debug": settings.debug}))
        return handlers

    async def shutdown(self) -> None:
        """Stop watching, shut down every notebook's kernels, and send the last spans."""
        if self.watching is not None:
            self.watching.cancel()
        served = [*self.served.notebooks.values(), *self.removed]
        await asyncio.gather(*(each.stop() for each in served), return_exceptions=True)
        if self.spares is not None:
            await self.spares.shutdown()
        # any kernel still running (a reload's, cut short by the stop): none outlives the gateway
        manager = self.parent.kernel_manager
        for kernel_id in list(manager.list_kernel_ids()):
            with contextlib.suppress(Exception):  # gone meanwhile
                await manager.shutdown_kernel(kernel_id, now=True)
        shutil.rmtree(self.exchange, ignore_errors=True)
        tracing.shutdown()


def _read_settled(file: Path, prefix: str) -> Notebook:
    """``read_notebook``, given a moment to settle if the file is being saved."""
    for _ in range(SETTLE_TRIES - 1):
        try:
            return read_notebook(file, prefix)
        except NotebookError:
            time.sleep(SETTLE_PAUSE_SECONDS)
    return read_notebook(file, prefix)


def _function(name: str) -> Any:
    """The function ``module:name`` names."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def log_request(handler: RequestHandler) -> None:
    """The access line of a request (``gradbook_service.gateway.logs``): method, path (no query
    string), status, milliseconds, and the kernel that served it and the size of the batch it
    ran in, if a kernel did. Successes at info level, client errors as warnings, server errors
    as errors, except the 503s of ``/healthz`` and ``/readyz``: a service that is starting, or
    replacing a kernel, answering its probes, at info level.

    Kept cheap, as it runs for every request: one record whose text is formatted only by the
    handler, no summary built beforehand (tornado's ``_request_summary``) and nothing copied."""
    status = handler.get_status()
    if status < 400 or (status == 503 and isinstance(handler, HealthHandler)):
        level = logging.INFO
    else:
        level = logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    ms = 1000 * request.request_time()
    kernel = getattr(handler, "kernel_id", None)
    if kernel is None:
        logs.access_log.log(level, logs.ACCESS_TEXT, request.method, request.path, status, ms)
    else:
        logs.access_log.log(level, logs.ACCESS_KERNEL_TEXT, request.method, request.path, status,
                            ms, kernel, getattr(handler, "batch_size", None))


def create_personality(*, parent: Any, log: Any) -> NotebookPersonality:
    return NotebookPersonality(parent=parent, log=log)
