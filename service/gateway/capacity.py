"""What the gateway process may hold at once, bounded by design rather than by hope.

Memory in the gateway grows with three things a client controls, and each has a bound:

* **connections** (``GRADBOOK_MAX_CONNECTIONS``): past it, a new connection is answered 503 at
  once and closed (``limit_server``), before a byte of its request is read; each connection
  holds at most ``MAX_HEADER_BYTES`` of request head (and ``OTHER_BODY_BYTES`` of a body sent
  where none is read), and is closed when its client takes more than ``GRADBOOK_BODY_TIMEOUT``
  to send a request or idles as long between requests;
* **bytes of requests and answers** (``GRADBOOK_MAX_PENDING_BYTES``, ``ByteBudget``): a body
  is counted from its declared length before it is read (as it arrives when it is sent in
  chunks), then the request as it waits for and runs on a kernel, then the answer until it has
  been written to the client. A request that would take the total past the limit is refused
  with 503 and ``Retry-After``, so stalled uploads, a full queue of large requests and answers
  that slow clients do not read all count against one limit;
* **requests waiting for a kernel** (``GRADBOOK_MAX_QUEUE``, in
``gradbook_service.gateway.engine``).
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, StreamClosedError

MAX_HEADER_BYTES = 16 * 2**10  # a request's line and headers (tornado allows 64 KiB)
# A body sent to a handler that reads none, tornado buffers whole before the handler sees it
# (100 MB by default). The endpoints stream theirs and set their own limit per request.
OTHER_BODY_BYTES = 64 * 2**10
REFUSAL_LINGER_SECONDS = 1.0  # a refused connection is closed this long after its 503


class ByteBudget:
    """Bytes held for requests and answers, against ``limit`` (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes if they fit under the limit; whether they did."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def change(self, old: int, new: int) -> None:
        """What one request holds went from ``old`` to ``new`` bytes: counted whether it fits
        or not (it is in memory already, a request decoded or an answer come back)."""
        self.used += new - old

    def full_message(self) -> str:
        return (f"the service holds {self.used} bytes of requests and answers, near its limit "
                f"of {self.limit} (GRADBOOK_MAX_PENDING_BYTES); retry later")


def limit_server(server: HTTPServer, max_connections: int, seconds: float) -> None:
    """Bound what each connection of ``server`` may hold and how long it may take, and how many
    there may be: past ``max_connections`` a new one gets 503 at once and is closed."""
    params = server.conn_params  # what every new connection is made with
    params.header_timeout = params.body_timeout = seconds  # tornado waits an hour by default
    params.max_header_size = MAX_HEADER_BYTES
    params.max_body_size = OTHER_BODY_BYTES
    accept = server.handle_stream

    def handle_stream(stream: IOStream, address: Any) -> None:
        if len(server._connections) >= max_connections:  # type: ignore[attr-defined]
            _refuse(stream, max_connections)
        else:
            accept(stream, address)

    server.handle_stream = handle_stream  # type: ignore[method-assign]


def _refuse(stream: IOStream, max_connections: int) -> None:
    """Answer 503 on a connection over the limit without reading its request, then close it
    (a moment later: closed at once with the request unread, the client could see a reset
    instead of the answer)."""
    body = json.dumps({"error": {"status": 503, "message": (
        f"the service has {max_connections} connections open, its most "
        "(GRADBOOK_MAX_CONNECTIONS); retry later")}}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n")
    def written(future: Any) -> None:
        if future.exception() is None:  # else the client left already
            with contextlib.suppress(OSError):
                stream.socket.shutdown(socket.SHUT_WR)
        IOLoop.current().call_later(REFUSAL_LINGER_SECONDS, stream.close)

    try:
        stream.write(head.encode() + body).add_done_callback(written)
    except StreamClosedError:
        pass
