"""Kernel gateway personality: notebook-http with what a product-facing service needs around it.

Stock notebook-http turns each ``# METHOD /path`` cell of the seed notebook into an endpoint run
on a pooled kernel. This personality keeps that contract (the same ``REQUEST``, the same
``ResponseInfo`` cells, so any notebook-http notebook runs unchanged) and adds:

* the gateway's token (``auth_token``, set from ``GRADBOOK_TOKEN``) guards every endpoint except
  ``/healthz``;
* a body over ``GRADBOOK_MAX_BODY_BYTES``, or any body sent to a GET or DELETE, gets 413 before
  it reaches a kernel, and is dropped as it arrives rather than held (``EndpointHandler``);
* the body is decoded and checked in the gateway (``service.body``): malformed or deeply nested
  JSON never costs a kernel execution;
* requests wait for a free kernel in a bounded queue (503 past ``GRADBOOK_MAX_QUEUE``), and one
  whose client disconnects while it waits leaves the queue without running;
* every error is JSON ``{"error": {"status", "message"}}``; a failing cell gives a 500 whose
  details stay in the log; no response names the server software (no ``Server`` header);
* a kernel that stops is replaced by a newly seeded one when it is next lent; a request whose
  kernel stops under it gets 503 instead of hanging forever, and ``/healthz`` answers 503 while
  any kernel of the pool is stopped;
* no kernel is lent out before its output reaches the gateway (``SubscribedKernelPool``), so the
  first requests after a start do not lose their bodies;
* a ``ResponseInfo`` may add ``"body_encoding": "base64"``: the body is decoded to bytes here
  (cell output is text, so binary bodies such as PNGs travel base64-encoded);
* every response names the kernel that served it in ``X-Gradbook-Kernel``;
* the stock Swagger handler, which lists every operation as "200 Success", is replaced by a
  redirect to the notebook's own accurate ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
from collections import deque
from functools import partial
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.utils import url_path_join
from kernel_gateway.base.handlers import NotFoundHandler
from kernel_gateway.notebook_http import NotebookHTTPPersonality
from kernel_gateway.notebook_http.handlers import NotebookAPIHandler
from kernel_gateway.notebook_http.request_utils import (
    format_request,
    headers_to_dict,
    parse_args,
)
from kernel_gateway.notebook_http.swagger.handlers import SwaggerSpecHandler
from kernel_gateway.services.kernels.pool import ManagedKernelPool
from tornado.concurrent import Future
from tornado.httputil import HTTPInputError, parse_body_arguments
from tornado.iostream import StreamClosedError
from tornado.log import app_log
from tornado.web import RequestHandler, stream_request_body

from service import body
from service.errors import ServiceError, error_body, to_http
from service.http import BODY_ENCODING
from service.settings import Settings

HEALTH_PATH = "/healthz"
OPENAPI_PATH = "/openapi.json"
BODILESS = ("GET", "HEAD", "DELETE")  # methods whose endpoints take no body: its limit is 0
NO_CONTENT = (204, 304)  # statuses whose responses carry no body
KERNEL_HEADER = "X-Gradbook-Kernel"
KERNEL_CHECK_SECONDS = 1.0  # how often a long cell execution checks that its kernel still runs
DISCARD_LIMIT_BYTES = 1 << 30  # a refused body up to this size is read and dropped, not cut off
SUBSCRIBE_PROBE_SECONDS = 0.2  # how long to wait for a probe's status before sending another
SUBSCRIBE_TIMEOUT_SECONDS = 60.0  # then lend the kernel anyway: a dead one answers 503


class SubscribedKernelPool(ManagedKernelPool):
    """``ManagedKernelPool`` that lends a kernel only once its IOPub messages reach the gateway.

    The stock pool subscribes to each kernel's IOPub channel and lends the kernel at once. ZeroMQ
    drops what a publisher sends before a new subscription has reached it (the "slow joiner"), so
    a request queued during start-up could run before that: its printed body lost, it answers
    200 with an empty body (or hangs, if the idle status is lost too). Here each kernel is sent
    ``kernel_info`` requests until the status messages of one arrive on IOPub; from then on the
    subscription delivers everything.

    It also keeps its own queue of waiting requests instead of the stock semaphore: the queue
    is bounded (``max_queue``: 503 past it), and a waiter that is cancelled (its client went
    away) leaves it without taking a kernel.
    """

    def __init__(self, max_queue: int) -> None:
        super().__init__()
        self.subscribed = asyncio.Event()
        self.max_queue = max_queue
        self.waiters: deque[asyncio.Future[str]] = deque()

    async def initialize(self, prespawn_count: int, kernel_manager: Any, **kwargs: Any) -> None:
        await super().initialize(prespawn_count, kernel_manager, **kwargs)
        await asyncio.gather(*(self._await_subscription(kid) for kid in self.kernel_clients))
        self.subscribed.set()

    async def acquire(self) -> tuple[Any, str]:
        """A free kernel's client and id, waiting in line for one if need be."""
        await self.subscribed.wait()
        if self.kernel_pool and not self.waiters:
            kernel_id = self.kernel_pool.pop(0)
            return self.kernel_clients[kernel_id], kernel_id
        if len(self.waiters) >= self.max_queue:
            raise ServiceError(503, f"all kernels are busy and {self.max_queue} requests wait; "
                               "retry later")
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            kernel_id = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a kernel as it was cancelled
                self.release(waiter.result())
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            raise
        return self.kernel_clients[kernel_id], kernel_id

    def release(self, kernel_id: str) -> None:
        """Hand ``kernel_id`` to the first request still waiting, or back to the pool."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(kernel_id)
                return
        self.kernel_pool.append(kernel_id)

    async def is_running(self, kernel_id: str) -> bool:
        return await ensure_async(self.kernel_manager.get_kernel(kernel_id).is_alive())

    async def replace(self, kernel_id: str) -> tuple[Any, str]:
        """Swap the lent kernel ``kernel_id``, which stopped, for a new kernel seeded like the
        others, lent in its place: its client and id.

        Kernels are never restarted in place (see ``service.launch``): a restarted kernel would
        come back without the notebook's seed cells. The old kernel is let go only once the new
        one serves, so a failed start leaves the pool as it was, to try again at the next lend.
        """
        # start_seeded_kernel, as the pool's start uses, does not return the new kernel's id
        new_id = await self.kernel_manager.start_kernel(
            kernel_name=self.kernel_manager.seed_kernelspec
        )
        self.kernel_clients[new_id] = self.kernel_manager.get_kernel(new_id).client()
        self.kernel_manager.connect_iopub(new_id).on_recv(self.create_on_reply(new_id))
        await self._await_subscription(new_id)
        self.kernel_clients.pop(kernel_id).stop_channels()
        self.on_recv_funcs.pop(kernel_id, None)
        await self.kernel_manager.shutdown_kernel(kernel_id, now=True)
        app_log.warning("kernel %s had stopped; kernel %s replaces it", kernel_id, new_id)
        return self.kernel_clients[new_id], new_id

    async def _await_subscription(self, kernel_id: str) -> None:
        heard = asyncio.Event()
        probes: set[str] = set()

        def on_message(msg: dict[str, Any]) -> None:
            if msg["parent_header"].get("msg_id") in probes:
                heard.set()

        self.on_recv(kernel_id, on_message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_TIMEOUT_SECONDS
        while not heard.is_set() and loop.time() < deadline:
            probes.add(self.kernel_clients[kernel_id].kernel_info())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.wait(), SUBSCRIBE_PROBE_SECONDS)
        if not heard.is_set():
            app_log.error("no IOPub message from kernel %s; lending it anyway", kernel_id)


class ServiceHandler:
    """What every handler of the service shares: JSON errors ``{"error": {"status",
    "message"}}`` (with ``Retry-After`` on a 503), and no ``Server`` header naming the software
    and its version to whoever asks."""

    kernel_id: str | None = None

    def set_default_headers(self) -> None:
        self.clear_header("Server")

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

    def initialize(self, health: bool, max_body_bytes: int, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.health = health  # the health endpoint: no token, and it checks every kernel
        self.max_body_bytes = max_body_bytes
        self.received = bytearray()
        self.refusal: ServiceError | None = None
        self.waiting: asyncio.Future[tuple[Any, str]] | None = None  # for a free kernel

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
        token = self.settings.get("kg_auth_token")
        if token and not self.health:
            sent = self.request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"token {token}".encode()):
                message = "send the service's token as 'Authorization: token <value>'"
                return ServiceError(401, message)
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
        try:
            self.waiting = asyncio.ensure_future(self.kernel_pool.acquire())
            kernel_client, self.kernel_id = await self.waiting
        except asyncio.CancelledError:  # the client went away while waiting: nothing ran
            return None
        except ServiceError as err:  # the queue is full
            return self.fail(err)
        error, response = None, None
        try:
            if not await self.kernel_pool.is_running(self.kernel_id):
                kernel_client, self.kernel_id = await self._replace_kernel()
            response = await self._run_cells(kernel_client, request_body)
        except Exception as err:  # every failure becomes a JSON error response
            error = to_http(err)
            if error.status == 500:  # the details go to the log, not to the client
                app_log.error("%s %s failed", self.request.method, self.request.path, exc_info=err)
        finally:
            self.kernel_pool.release(self.kernel_id)
        if error is not None:
            self.fail(error)
        else:
            if self.get_status() in NO_CONTENT:  # tornado refuses even an empty body there
                response = None
            with contextlib.suppress(StreamClosedError):  # the client left: nobody to tell
                await self.finish(response)

    async def _run_cells(self, kernel_client: Any, request_body: Any) -> bytes | str:
        """Assign ``REQUEST``, run the endpoint cell and its ``ResponseInfo`` cell; set status and
        headers from the latter and return the body."""
        if self.health:
            await self._check_pool()
        method = self.request.method
        request = {
            "body": request_body,
            "args": parse_args(self.request.query_arguments),
            "path": self.path_kwargs,
            "headers": headers_to_dict(self.request.headers),
        }
        # The REQUEST assignment and the cell run as one execution (stock notebook-http uses
        # two): the cell sees the same REQUEST, one kernel round trip sooner.
        assignment = format_request(json.dumps(request), self.kernel_language)
        body = await self._run_code(kernel_client, f"{assignment}\n{self.sources[method]}")
        info = {}
        if method in self.response_sources:
            printed = await self._run_code(kernel_client, self.response_sources[method])
            try:
                info = json.loads(printed)
            except ValueError:  # the notebook's fault, not the client's: a 500, not a 400
                raise RuntimeError(f"ResponseInfo {method} printed {printed[:200]!r}") from None
        self.set_status(info.get("status", 200))
        self.set_header("Content-Type", "text/plain")
        for header, value in info.get("headers", {}).items():
            self.set_header(header, value)
        self.set_header(KERNEL_HEADER, self.kernel_id)
        return base64.b64decode(body) if info.get(BODY_ENCODING) == "base64" else body

    def execute_code(self, kernel_client: Any, kernel_id: str, source_code: str) -> Future:
        """As the stock handler, but outside IPython's history: every request's ``REQUEST``
        (up to the body limit) would otherwise stay in the kernel's ``In`` and history database
        for good, growing the kernel until it dies."""
        future: Future = Future()
        accumulator: dict[str, Any] = {"stream": [], "error": None, "result": None}
        parent = kernel_client.execute(source_code, store_history=False)
        self.kernel_pool.on_recv(kernel_id, partial(self.on_recv, accumulator, future, parent))
        return future

    async def _run_code(self, kernel_client: Any, code: str) -> str:
        """Run ``code`` on the acquired kernel; 503 if the kernel stops running meanwhile (the
        stock handler would wait forever for a dead kernel to report back)."""
        future = self.execute_code(kernel_client, self.kernel_id, code)
        while not future.done():
            await asyncio.wait([future], timeout=KERNEL_CHECK_SECONDS)
            if not future.done() and not await self.kernel_pool.is_running(self.kernel_id):
                raise ServiceError(503, "the kernel stopped while running the request; retry")
        return future.result()

    async def _replace_kernel(self) -> tuple[Any, str]:
        try:
            return await self.kernel_pool.replace(self.kernel_id)
        except Exception as err:
            app_log.error("kernel %s could not be replaced", self.kernel_id, exc_info=err)
            raise ServiceError(503, "a kernel stopped and could not be replaced; retry") from None

    async def _check_pool(self) -> None:
        """503 unless every kernel of the pool runs. A stopped kernel is replaced when it is next
        lent, to the health endpoint or any other."""
        for kernel_id in list(self.kernel_pool.kernel_clients):
            if not await self.kernel_pool.is_running(kernel_id):
                message = f"kernel {kernel_id} stopped; it is replaced when next lent to a request"
                raise ServiceError(503, message)


class UnknownPathHandler(ServiceHandler, NotFoundHandler):
    def prepare(self) -> None:
        path = self.request.path[:100]  # a client's path, quoted briefly
        self.fail(ServiceError(404, f"no endpoint {path}; see GET /openapi.json"))


class OpenAPIRedirectHandler(ServiceHandler, RequestHandler):
    """The stock Swagger path, which the gateway's log announces, leads to ``/openapi.json``."""

    def initialize(self, url: str) -> None:
        self.url = url

    def get(self) -> None:
        self.redirect(self.url, permanent=True)


class GradbookPersonality(NotebookHTTPPersonality):
    """notebook-http whose endpoints use ``EndpointHandler`` on a ``SubscribedKernelPool``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kernel_pool = SubscribedKernelPool(Settings(parent=self).max_queue)

    def create_request_handlers(self) -> list[tuple[Any, ...]]:
        health = url_path_join("/", self.parent.base_url, HEALTH_PATH)
        openapi = url_path_join("/", self.parent.base_url, OPENAPI_PATH)
        max_body_bytes = Settings(parent=self).max_body_bytes
        handlers = []
        for route in super().create_request_handlers():
            pattern, handler = route[0], route[1]
            if handler is NotebookAPIHandler:
                args = {**route[2], "health": pattern == health, "max_body_bytes": max_body_bytes}
                handlers.append((pattern, EndpointHandler, args))
            elif handler is NotFoundHandler:
                handlers.append((pattern, UnknownPathHandler))
            elif handler is SwaggerSpecHandler:
                handlers.append((pattern, OpenAPIRedirectHandler, {"url": openapi}))
            else:  # the notebook download or static files, if configured: no Server header
                quiet = type(handler.__name__, (ServiceHandler, handler), {})
                handlers.append((pattern, quiet, *route[2:]))
        return handlers


def create_personality(*, parent: Any, log: Any) -> GradbookPersonality:
    return GradbookPersonality(parent=parent, log=log)
