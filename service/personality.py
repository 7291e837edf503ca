"""Kernel gateway personality: notebook-http with what a product-facing service needs around it.

Stock notebook-http turns each ``# METHOD /path`` cell of the seed notebook into an endpoint run
on a pooled kernel. This personality keeps that contract (the same ``REQUEST``, the same
``ResponseInfo`` cells, so any notebook-http notebook of a Python kernel runs unchanged) and adds:

* the engine (``service.engine``, ``service.runner``): one kernel execution per request instead
  of two or three, and under load one execution for a whole batch of queued requests; body and
  response info come back as separate fields of one message that no cell output can forge;
* the gateway's token (``auth_token``, set from ``GRADBOOK_TOKEN``) guards every endpoint except
  ``/healthz``, ``/readyz`` and the notebook's page at ``/`` (which asks its user for the token);
* ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness) are answered by the gateway itself
  (``HealthHandler``), never queued behind kernels;
* a body over ``GRADBOOK_MAX_BODY_BYTES``, or any body sent to a GET or DELETE, gets 413 before
  it reaches a kernel, and is dropped as it arrives rather than held (``EndpointHandler``);
* the body is decoded and checked in the gateway (``service.body``): malformed or deeply nested
  JSON never costs a kernel execution;
* requests wait for a free kernel in a bounded queue (503 past ``GRADBOOK_MAX_QUEUE``), and one
  whose client disconnects while it waits leaves the queue without running;
* every error is JSON ``{"error": {"status", "message"}}``; a failing cell gives a 500 whose
  details stay in the log; no response names the server software (no ``Server`` header);
* a kernel that stops is replaced by a newly seeded one; a request whose kernel stops under it
  gets 503 instead of hanging forever, and a request whose cell runs past
  ``GRADBOOK_REQUEST_TIMEOUT`` gets 504 while its kernel is interrupted;
* a ``ResponseInfo`` may add ``"body_encoding": "base64"``: the body is decoded to bytes here
  (cell output is text, so binary bodies such as PNGs travel base64-encoded);
* every response names the kernel that served it in ``X-Gradbook-Kernel``;
* ``GET /metrics``: Prometheus metrics of requests, latency, batches, queue and kernels;
* the stock Swagger handler, which lists every operation as "200 Success", is replaced by a
  redirect to the notebook's own accurate ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
from typing import Any

from jupyter_server.utils import url_path_join
from kernel_gateway.base.handlers import NotFoundHandler
from kernel_gateway.notebook_http import NotebookHTTPPersonality
from kernel_gateway.notebook_http.handlers import NotebookAPIHandler, parameterize_path
from kernel_gateway.notebook_http.request_utils import headers_to_dict, parse_args
from kernel_gateway.notebook_http.swagger.handlers import SwaggerSpecHandler
from tornado.concurrent import Future
from tornado.httputil import HTTPInputError, parse_body_arguments
from tornado.iostream import StreamClosedError
from tornado.log import access_log, app_log
from tornado.web import RequestHandler, stream_request_body

from gradbook.store import ModelStore, Store, StoreError, open_store
from service import body
from service.engine import BatchingKernelPool, Result
from service.errors import ServiceError, error_body, to_http
from service.http import BODY_ENCODING
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.metrics import Metrics
from service.settings import Settings

PUBLIC_ENDPOINTS = {"/"}  # notebook endpoints answered without the token: the playground page
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
OPENAPI_PATH = "/openapi.json"
METRICS_PATH = "/metrics"
BODILESS = ("GET", "HEAD", "DELETE")  # methods whose endpoints take no body: its limit is 0
NO_CONTENT = (204, 304)  # statuses whose responses carry no body
KERNEL_HEADER = "X-Gradbook-Kernel"
DISCARD_LIMIT_BYTES = 1 << 30  # a refused body up to this size is read and dropped, not cut off
UNMATCHED = "(no endpoint)"  # the metrics label of a path that matches no endpoint


class ServiceHandler:
    """What every handler of the service shares: JSON errors ``{"error": {"status",
    "message"}}`` (with ``Retry-After`` on a 503), and no ``Server`` header naming the software
    and its version to whoever asks."""

    kernel_id: str | None = None
    metrics: Metrics | None = None
    endpoint = UNMATCHED  # the metrics label: the notebook's annotated path

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def on_finish(self) -> None:
        if self.metrics is not None:
            self.metrics.observe(self.request.method, self.endpoint, self.get_status(),
                                 self.request.request_time())

    def token_refusal(self) -> ServiceError | None:
        """A 401 unless the request carries the gateway's token, if one is set."""
        token = self.settings.get("kg_auth_token")
        sent = self.request.headers.get("Authorization", "")
        if token and not hmac.compare_digest(sent.encode(), f"token {token}".encode()):
            return ServiceError(401, "send the service's token as 'Authorization: token <value>'")
        return None

    def fail(self, error: ServiceError) -> None:
        self.send_error(error.status, error=error)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Called by ``fail`` with ``error``, or by tornado for its own errors (a phrase only)."""
        error = kwargs.get("error") or ServiceError(status_code)
        self.set_header("Content-Type", "application/json")
        if status_code == 503:
            self.set_header("Retry-After", "1")
        if status_code == 405 and getattr(self, "sources", None):  # an endpoint's methods
            self.set_header("Allow", ", ".join(sorted(self.sources)))
        if self.kernel_id is not None:
            self.set_header(KERNEL_HEADER, self.kernel_id)
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
    """

    def initialize(self, endpoint: str, max_body_bytes: int, metrics: Metrics,
                   public: bool = False, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.endpoint, self.metrics = endpoint, metrics
        self.public = public  # answered without the token
        self.max_body_bytes = max_body_bytes
        self.received = bytearray()
        self.refusal: ServiceError | None = None
        self.waiting: asyncio.Future[Result] | None = None  # queued, or running on a kernel

    def prepare(self) -> None:
        """Decide from the headers alone whether the request is refused."""
        if self.request.method == "OPTIONS":  # CORS preflight, answered by CORSMixin
            return
        if self.request.method in BODILESS:
            self.max_body_bytes = 0
        self.request.connection.set_max_body_size(max(self.max_body_bytes, DISCARD_LIMIT_BYTES))
        self.refusal = self._refusal()
        declared = self._declared_length()
        waits = self.request.headers.get("Expect", "").lower() == "100-continue"
        if self.refusal is not None and (waits or declared > DISCARD_LIMIT_BYTES):
            self.fail(self.refusal)

    def _refusal(self) -> ServiceError | None:
        method = self.request.method
        if not self.public and (refusal := self.token_refusal()):
            return refusal
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
        if self.refusal is None and len(self.received) + len(chunk) > self.max_body_bytes:
            message = f"the body has more than {self.max_body_bytes} bytes, the limit"
            self.refusal = ServiceError(413, message)
            self.received = bytearray()
        if self.refusal is None:
            self.received += chunk

    def on_connection_close(self) -> None:
        """The client went away: a request still waiting for a kernel leaves the queue unrun."""
        super().on_connection_close()
        if self.waiting is not None:
            self.waiting.cancel()

    async def patch(self, **kwargs: Any) -> None:
        """notebook-http has no PATCH (or HEAD) cells: answer the 405 that ``prepare`` decided."""
        await self._handle_request()

    head = patch

    async def _handle_request(self) -> None:
        self.response_future = Future()  # awaited by the inherited get/post/put/delete
        self.response_future.set_result(None)  # this method itself runs the whole request
        if self.refusal is not None:
            return self.fail(self.refusal)
        self.request.body, self.received = bytes(self.received), bytearray()
        content_type = self.request.headers.get("Content-Type", "")
        try:  # form fields, which the non-streaming handler has tornado parse
            parse_body_arguments(content_type, self.request.body, self.request.body_arguments,
                                 self.request.files)
            request_body = body.decode(content_type, self.request.body,
                                       self.request.body_arguments)
        except HTTPInputError as err:
            return self.fail(ServiceError(400, f"the body is malformed: {err}"))
        except ServiceError as err:
            return self.fail(err)
        self.request.body = b""  # decoded: the raw bytes need not stay while the request waits
        await self._answer(request_body)

    async def _answer(self, request_body: Any) -> None:
        """Run the request on a kernel and answer what its cells printed."""
        error, response = None, None
        try:
            request = {
                "body": request_body,
                "args": parse_args(self.request.query_arguments),
                "path": self.path_kwargs,
                "headers": headers_to_dict(self.request.headers),
            }
            key = f"{self.request.method} {self.endpoint}"
            self.waiting = asyncio.ensure_future(self.kernel_pool.submit(key, json.dumps(request)))
            response = self._respond(await self.waiting)
        except asyncio.CancelledError:  # the client went away while waiting: nothing ran
            return None
        except Exception as err:  # every failure becomes a JSON error response
            error = to_http(err)
            if error.status == 500:  # the details go to the log, not to the client
                app_log.error("%s %s failed", self.request.method, self.request.path, exc_info=err)
        if error is not None:
            self.fail(error)
        else:
            if self.get_status() in NO_CONTENT:  # tornado refuses even an empty body there
                response = None
            with contextlib.suppress(StreamClosedError):  # the client left: nobody to tell
                await self.finish(response)

    def _respond(self, result: Result) -> bytes | str:
        """Set status and headers from the ``ResponseInfo`` cell's output; return the body."""
        self.kernel_id = result.kernel_id
        if result.error is not None:
            raise CellError(result.error)
        info = {}
        if result.info is not None:
            try:
                info = json.loads(result.info)
            except ValueError:  # the notebook's fault, not the client's: a 500, not a 400
                raise RuntimeError(f"ResponseInfo {self.request.method} {self.endpoint} "
                                   f"printed {result.info[:200]!r}") from None
        self.set_status(info.get("status", 200))
        self.set_header("Content-Type", "text/plain")
        for header, value in info.get("headers", {}).items():
            self.set_header(header, value)
        self.set_header(KERNEL_HEADER, self.kernel_id)
        if info.get(BODY_ENCODING) == "base64":
            return base64.b64decode(result.body)
        return result.body


class HealthHandler(EndpointHandler):
    """``GET /healthz`` and ``GET /readyz``, answered by the gateway process from what it knows,
    so they answer at once however busy the kernels are (an orchestrator that saw a health check
    hang behind two long trainings would restart a healthy service). No token: they say only
    whether the service is well and how many models and kernels it has. As an endpoint it
    refuses other methods and any body the same way.

    Liveness (``/healthz``): every kernel process of the pool is alive and a folder store is
    readable. Readiness (``/readyz``, "send me traffic"): that, the store is readable (a database
    store's server answers: an orchestrator that restarted every replica whenever the database
    blinked would turn its outage into theirs, so it counts for readiness only), the kernels are
    seeded (the pool has started) and a request sent now would not be refused for a full queue
    (``GRADBOOK_MAX_QUEUE``).
    Either answers 503 with what is wrong.
    """

    def initialize(self, store: Store, readiness: bool, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.store, self.readiness = store, readiness

    async def _answer(self, request_body: Any) -> None:
        pool: BatchingKernelPool = self.kernel_pool
        problems = []
        for kernel_id in list(pool.kernel_clients):
            if not await pool.is_running(kernel_id):
                problems.append(f"kernel {kernel_id} stopped; it is being replaced")
        # a database store asks its server: in a thread, so a slow answer holds no other request
        loop = asyncio.get_running_loop()
        checks_store = self.readiness or isinstance(self.store, ModelStore)
        if checks_store and not await loop.run_in_executor(None, self.store.readable):
            problems.append(f"the model store is not readable ({self.store.location})")
        if self.readiness and not pool.ready.is_set():
            problems.append("the kernels are starting")
        if self.readiness and pool.full():
            problems.append(f"every kernel is busy and {len(pool.queue)} requests wait, the "
                            "most allowed")
        if problems:
            return self.fail(ServiceError(503, "; ".join(problems)))
        self.set_header("Content-Type", "application/json")
        models = None  # a database store is not asked for liveness
        if checks_store:
            try:
                models = len(await loop.run_in_executor(None, self.store.names))
            except StoreError as err:  # the database went away since readable()
                return self.fail(to_http(err))
        self.finish(json.dumps({"status": "ok", "kernels": len(pool.kernel_clients),
                                "models": models}))


class CellError(Exception):
    """An endpoint or ``ResponseInfo`` cell raised; its traceback goes to the log."""

    def __init__(self, error: dict[str, str]) -> None:
        super().__init__(f"{error['ename']}: {error['evalue']}\n{error['traceback']}")


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


class UnknownPathHandler(ServiceHandler, NotFoundHandler):
    def initialize(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def prepare(self) -> None:
        path = self.request.path[:100]  # a client's path, quoted briefly
        self.fail(ServiceError(404, f"no endpoint {path}; see GET /openapi.json"))


class OpenAPIRedirectHandler(ServiceHandler, RequestHandler):
    """The stock Swagger path, which the gateway's log announces, leads to ``/openapi.json``."""

    sources = ("GET",)  # its methods, for the Allow header of a 405 (ServiceHandler.write_error)

    def initialize(self, url: str) -> None:
        self.url = url

    def get(self) -> None:
        self.redirect(self.url, permanent=True)


class GradbookPersonality(NotebookHTTPPersonality):
    """notebook-http whose endpoints use ``EndpointHandler`` on a ``BatchingKernelPool``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.kernel_language not in (None, "python"):
            language = self.kernel_language
            raise ValueError(f"the engine runs notebooks of Python kernels, not of {language}")
        settings = Settings(parent=self)
        self.kernel_pool = BatchingKernelPool(settings.max_queue, settings.max_batch,
                                              settings.request_timeout)
        self.metrics = Metrics(queue_depth=lambda: len(self.kernel_pool.queue))
        self.kernel_pool.on_batch = self.metrics.batch_size.observe
        self.kernel_pool.on_replace = self.metrics.kernels_replaced.inc

    async def init_configurables(self) -> None:
        self.parent.web_app.settings["log_function"] = log_request
        await super().init_configurables()

    def create_request_handlers(self) -> list[tuple[Any, ...]]:
        def route_of(path: str) -> str:
            return url_path_join("/", self.parent.base_url, path)

        seed = self.parent.kernel_manager.seed_source
        responses = self.api_parser.endpoint_responses(seed)
        annotated = {}  # the route of each endpoint → its path as the notebook writes it
        for path, sources in self.api_parser.endpoints(seed):
            annotated[route_of(parameterize_path(path))] = path
            for method, source in sources.items():
                info = responses.get(path, {}).get(method)
                self.kernel_pool.endpoints[f"{method} {path}"] = [source, info]
        settings = Settings(parent=self)
        health = {"sources": {"GET": ""}, "response_sources": {}, "kernel_pool": self.kernel_pool,
                  "kernel_name": self.parent.kernel_manager.seed_kernelspec,
                  "metrics": self.metrics, "max_body_bytes": 0, "public": True,
                  "store": open_store(settings.store)}
        handlers: list[tuple[Any, ...]] = [
            (route_of(METRICS_PATH), MetricsHandler, {"metrics": self.metrics}),
            (route_of(HEALTH_PATH), HealthHandler,
             {**health, "endpoint": HEALTH_PATH, "readiness": False}),
            (route_of(READY_PATH), HealthHandler,
             {**health, "endpoint": READY_PATH, "readiness": True})]
        for route in super().create_request_handlers():
            pattern, handler = route[0], route[1]
            if handler is NotebookAPIHandler:
                args = {**route[2], "endpoint": annotated[pattern], "metrics": self.metrics,
                        "max_body_bytes": settings.max_body_bytes,
                        "public": annotated[pattern] in PUBLIC_ENDPOINTS}
                handlers.append((pattern, EndpointHandler, args))
            elif handler is NotFoundHandler:
                handlers.append((pattern, UnknownPathHandler, {"metrics": self.metrics}))
            elif handler is SwaggerSpecHandler:
                handlers.append((pattern, OpenAPIRedirectHandler, {"url": route_of(OPENAPI_PATH)}))
            else:  # the notebook download or static files, if configured: no Server header
                quiet = type(handler.__name__, (ServiceHandler, handler), {})
                handlers.append((pattern, quiet, *route[2:]))
        return handlers


def log_request(handler: RequestHandler) -> None:
    """Log a request as jupyter_server does: successes at debug level (``GET /metrics`` counts
    them), client errors as warnings, server errors as errors. Tornado logs every request at
    info level, which under load cost the gateway a twentieth of its time."""
    status = handler.get_status()
    log = access_log.debug if status < 400 else access_log.warning if status < 500 \
        else access_log.error
    log("%d %s %.2fms", status, handler._request_summary(), 1000 * handler.request.request_time())


def create_personality(*, parent: Any, log: Any) -> GradbookPersonality:
    return GradbookPersonality(parent=parent, log=log)
