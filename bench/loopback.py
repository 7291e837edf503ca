"""One HTTP/1.1 exchange with a service on 127.0.0.1, for the benchmarks and the tests (whose
``conftest`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from email.message import Message
from typing import Any


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def kernel(self) -> str | None:
        """The kernel that answered (the service's ``X-Gradbook-Kernel`` header)."""
        return self.headers.get("X-Gradbook-Kernel")


def http_request(
    port: int, method: str, path: str, raw: bytes | None, headers: dict[str, str], timeout: float
) -> Reply:
    """One request on a new connection to 127.0.0.1:``port``, ``raw`` as the body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=raw, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()
