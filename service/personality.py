"""Kernel gateway personality: notebook-http with what a product-facing service needs around it.

Stock notebook-http turns each ``# METHOD /path`` cell of the seed notebook into an endpoint run
on a pooled kernel. This personality keeps that contract (the same ``REQUEST``, the same
``ResponseInfo`` cells, so any notebook-http notebook of a Python kernel runs unchanged) and adds:

* the engine (``gradbook_service.engine``, ``gradbook_service.runner``): one kernel execution per
  request instead
  of two or three, and under load one execution for a whole batch of queued requests; body and
  response info come back as separate fields of one message that no cell output can forge;
* the gateway's token (``auth_token``, set from ``GRADBOOK_TOKEN``) guards every endpoint of the
  notebook and ``/metrics``; ``/healthz``, ``/readyz`` and the page at ``/`` (``page``, a file the
  gateway serves itself: nothing a client without the token sends reaches a kernel or the queue)
  need none. The token stays in the gateway: kernels never see the ``Authorization`` header;
* a request for a host the service does not know (``Host``) gets 403, and so does a request that
  changes state sent by a browser for a page of another site, unless it carries the token
  (``gradbook_service.origins``): web pages cannot use a service on loopback;
* memory is bounded by design (``gradbook_service.capacity``): connections, bytes of requests
  and answers
  held (503 past either), the size of a request's head;
* ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness) are answered by the gateway itself
  (``HealthHandler``), never queued behind kernels;
* a body over ``GRADBOOK_MAX_BODY_BYTES``, or any body sent to a GET or DELETE, gets 413 before
  it reaches a kernel, and is dropped as it arrives rather than held (``EndpointHandler``);
* the body is decoded and checked in the gateway (``gradbook_service.body``): malformed or
  deeply nested
  JSON never costs a kernel execution;
* requests wait for a free kernel in a bounded queue (503 past ``GRADBOOK_MAX_QUEUE``), and one
  whose client disconnects while it waits leaves the queue without running; a JSON body waits
  as its own text, not decoded (``gradbook_service.body.request_json``);
* every error is JSON ``{"error": {"status", "message"}}``; a failing cell gives a 500 whose
  details stay in the log; no response names the server software (no ``Server`` header);
* kernels talk to the gateway over Unix sockets in a folder private to the service's user, not
  over TCP, where any local user could read their answers (``BatchingKernelPool.kernel_channels``);
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
import hashlib
import hmac
import importlib
import json
import logging
import re
from typing import Any

from gradbook_service import apidocs, body, logs
from gradbook_service.capacity import ByteBudget, limit_server
from gradbook_service.engine import BatchingKernelPool, Result
from gradbook_service.errors import ServiceError, error_body, to_http
from gradbook_service.http import BODY_ENCODING, RETRY_AFTER
from gradbook_service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gradbook_service.metrics import Metrics
from gradbook_service.origins import HostPolicy, cross_site
from gradbook_service.settings import Settings
from jupyter_server.utils import url_path_join
from kernel_gateway.base.handlers import NotFoundHandler
from kernel_gateway.notebook_http import NotebookHTTPPersonality
from kernel_gateway.notebook_http.handlers import NotebookAPIHandler, parameterize_path
from kernel_gateway.notebook_http.request_utils import headers_to_dict, parse_args
from kernel_gateway.notebook_http.swagger.handlers import SwaggerSpecHandler
from tornado.concurrent import Future
from tornado.httputil import HTTPInputError, parse_body_arguments
from tornado.iostream import StreamClosedError
from tornado.log import app_log
from tornado.web import RequestHandler, stream_request_body
from traitlets import Unicode

from gradbook.store import ModelStore, Store, StoreError, open_store

PAGE_PATH = "/"  # the page the gateway serves itself (GradbookPersonality.page)
DOCS_PATH = "/docs"  # Swagger UI on the description (gradbook_service.apidocs)
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
OPENAPI_PATH = "/openapi.json"
METRICS_PATH = "/metrics"
BODILESS = ("GET", "HEAD", "DELETE")  # methods whose endpoints take no body: its limit is 0
NO_CONTENT = (204, 304)  # statuses whose responses carry no body
KERNEL_HEADER = "X-Gradbook-Kernel"
DISCARD_LIMIT_BYTES = 1 << 30  # a refused body up to this size is read and dropped, not cut off
UNMATCHED = "(no endpoint)"  # the metrics label of a path that matches no endpoint
TOKEN_SCHEMES = ("token", "bearer")  # Authorization: <scheme> <the token>
CHALLENGE = 'Bearer realm="gradbook"'  # the WWW-Authenticate of a 401
# The page's policy: its own inline script and style (by hash), requests to this service only,
# never inside another site's frame.
HTML = "text/html; charset=utf-8"
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
    endpoint = UNMATCHED  # the metrics label: the notebook's annotated path
    hosts = HostPolicy("127.0.0.1")

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> Any:
        if (refusal := self.host_refusal()) is not None:
            return self.fail(refusal)
        return super().prepare()  # type: ignore[misc]

    def host_refusal(self) -> ServiceError | None:
        """A 403 for a ``Host`` the service does not answer to (``gradbook_service.origins``)."""
        host = self.request.headers.get("Host")
        if self.hosts.allows(host):
            return None
        return ServiceError(403, f"this service does not answer to the host {(host or '')[:100]!r};"
                                 " add it to GRADBOOK_ALLOWED_HOSTS if it is yours")

    def on_finish(self) -> None:
        if self.metrics is not None:
            self.metrics.observe(self.request.method, self.endpoint, self.get_status(),
                                 self.request.request_time())

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
    it is written; a request that does not fit gets 503 (``gradbook_service.capacity``).
    """

    def initialize(self, endpoint: str, max_body_bytes: int, metrics: Metrics,
                   budget: ByteBudget, public: bool = False, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.endpoint, self.metrics = endpoint, metrics
        self.public = public  # answered without the token (health)
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.held = 0  # bytes this request counts in the budget
        self.received = bytearray()
        self.body_json, self.body_size = "", 0  # the body, decoded and checked, as JSON text
        self.refusal: ServiceError | None = None
        self.waiting: asyncio.Future[Result] | None = None  # queued, or running on a kernel

    def prepare(self) -> None:
        """Decide from the headers alone whether the request is refused."""
        self.refusal = self.host_refusal()
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
        self._release()

    def on_finish(self) -> None:
        super().on_finish()
        if self.waiting is None:  # refused, or answered by the gateway: nothing left to write
            self._release()

    async def patch(self, **kwargs: Any) -> None:
        """notebook-http has no PATCH (or HEAD) cells: answer the 405 that ``prepare`` decided."""
        await self._handle_request()

    head = patch

    async def _handle_request(self) -> None:
        self.response_future = Future()  # awaited by the inherited get/post/put/delete
        self.response_future.set_result(None)  # this method itself runs the whole request
        if self.refusal is not None:
            return self.fail(self.refusal)
        raw, self.received = bytes(self.received), bytearray()
        content_type = self.request.headers.get("Content-Type", "")
        try:  # form fields, which the non-streaming handler has tornado parse
            parse_body_arguments(content_type, raw, self.request.body_arguments,
                                 self.request.files)
            # kept on the handler, not in this frame, which lives as long as the request waits
            self.body_json = body.request_json(content_type, raw, self.request.body_arguments)
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
        if self.body_size and "Content-Length" not in headers:
            headers["Content-Length"] = str(self.body_size)
        args = json.dumps(parse_args(self.request.query_arguments))
        return (f'{{"body": {body_json}, "args": {args}, "path": {json.dumps(self.path_kwargs)}, '
                f'"headers": {json.dumps(headers)}}}')

    async def _answer(self) -> None:
        """Run the request on a kernel and answer what its cells printed."""
        error, response = None, None
        try:
            request = self._request_text()
            if not self._hold(len(request)):
                raise self.refusal  # type: ignore[misc]
            key = f"{self.request.method} {self.endpoint}"
            self.waiting = asyncio.ensure_future(self.kernel_pool.submit(key, request))
            del request  # the queue holds it, as long as it waits and runs
            response = self._respond(await self.waiting)
            self.budget.change(self.held, len(response))  # the answer, until it is written
            self.held = len(response)
        except asyncio.CancelledError:  # the client went away while waiting: nothing ran
            return None
        except Exception as err:  # every failure becomes a JSON error response
            error = to_http(err)
            if error.status == 500:  # the details go to the log, not to the client
                app_log.error("%s %s failed", self.request.method, self.request.path, exc_info=err)
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

    def _respond(self, result: Result) -> bytes | str:
        """Set status and headers from the ``ResponseInfo`` cell's output; return the body."""
        self.kernel_id = result.kernel_id
        self.batch_size = result.batch  # for the access log (log_request)
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

    async def _answer(self) -> None:
        pool: BatchingKernelPool = self.kernel_pool
        problems = []
        for kernel_id in list(pool.kernel_clients):
            if not await pool.is_running(kernel_id):
                problems.append(f"kernel {kernel_id} stopped; it is being replaced")
        # a database store asks its server: in a thread, so a slow answer holds no other request
        loop = asyncio.get_running_loop()
        checks_store = self.readiness or isinstance(self.store, ModelStore)
        if checks_store and not await loop.run_in_executor(None, self.store.readable):
            problems.append("the model store is not readable (the service log says more)")
            app_log.error("the model store %s is not readable", self.store.location)
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
        if (refusal := self.host_refusal()) is not None:
            return self.fail(refusal)
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

    page = Unicode(
        "", config=True,
        help="A function, 'module:name', that returns the HTML page the gateway serves itself at "
        "GET / (no kernel, no token); empty: none")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.kernel_language not in (None, "python"):
            language = self.kernel_language
            raise ValueError(f"the engine runs notebooks of Python kernels, not of {language}")
        settings = self.service_settings = Settings(parent=self)
        ServiceHandler.hosts = HostPolicy(settings.host, settings.allowed_hosts)
        self.budget = ByteBudget(settings.max_pending_bytes)
        self.kernel_pool = BatchingKernelPool(settings.max_queue, settings.max_batch,
                                              settings.request_timeout)
        self.kernel_pool.kernel_channels(self.parent.kernel_manager)
        self.metrics = Metrics(queue_depth=lambda: len(self.kernel_pool.queue),
                               pending_bytes=lambda: self.budget.used)
        self.kernel_pool.on_batch = self.metrics.batch_size.observe
        self.kernel_pool.on_replace = self.metrics.kernels_replaced.inc

    async def init_configurables(self) -> None:
        self.parent.web_app.settings["log_function"] = log_request
        settings = self.service_settings
        limit_server(self.parent.http_server, settings.max_connections, settings.body_timeout)
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
        settings = self.service_settings
        gateway = {"sources": {"GET": ""}, "response_sources": {},
                   "kernel_pool": self.kernel_pool,
                   "kernel_name": self.parent.kernel_manager.seed_kernelspec,
                   "metrics": self.metrics, "max_body_bytes": 0, "public": True,
                   "budget": self.budget}
        health = {**gateway, "store": open_store(settings.store)}
        handlers: list[tuple[Any, ...]] = [
            (route_of(METRICS_PATH), MetricsHandler, {"metrics": self.metrics}),
            (route_of(HEALTH_PATH), HealthHandler,
             {**health, "endpoint": HEALTH_PATH, "readiness": False}),
            (route_of(READY_PATH), HealthHandler,
             {**health, "endpoint": READY_PATH, "readiness": True})]
        if self.page:
            if route_of(PAGE_PATH) in annotated:
                raise ValueError(f"the notebook has an endpoint at {PAGE_PATH}, where the "
                                 f"gateway serves the page {self.page}: keep one of them")
            module, _, function = self.page.partition(":")
            page = Page(getattr(importlib.import_module(module), function)())
            handlers.append((route_of(PAGE_PATH), PageHandler,
                             {**gateway, "endpoint": PAGE_PATH, "page": page}))
        if route_of(DOCS_PATH) in annotated:
            raise ValueError(f"the notebook has an endpoint at {DOCS_PATH}, where the gateway "
                             "serves the description's page: keep one of them")
        handlers.append((route_of(DOCS_PATH), PageHandler,
                         {**gateway, "endpoint": DOCS_PATH, "page": Page(apidocs.page())}))
        for name, content_type in apidocs.ASSETS.items():
            path = f"{DOCS_PATH}/{name}"
            handlers.append((route_of(path), PageHandler, {
                **gateway, "endpoint": path,
                "page": Page(apidocs.asset(name), content_type)}))
        for route in super().create_request_handlers():
            pattern, handler = route[0], route[1]
            if handler is NotebookAPIHandler:
                args = {**route[2], "endpoint": annotated[pattern], "metrics": self.metrics,
                        "max_body_bytes": settings.max_body_bytes, "budget": self.budget}
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
    """The access line of a request (``gradbook_service.logs``): method, path (no query
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


def create_personality(*, parent: Any, log: Any) -> GradbookPersonality:
    return GradbookPersonality(parent=parent, log=log)
