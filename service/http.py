"""What an endpoint cell wraps around its endpoint function: the request in, the response out.

The kernel gateway assigns each request to ``REQUEST`` as a JSON string
``{"body", "args", "path", "headers"}``; an endpoint cell runs ``serve(endpoint, REQUEST)`` and
prints ``response.body``; its ``ResponseInfo`` cell prints ``response.info`` (status and headers).
"""

from __future__ import annotations

import base64
import json
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from service.errors import ServiceError, error_body, to_http

JSON = "application/json"
BODY_ENCODING = "body_encoding"  # ResponseInfo key the personality reads (see personality.py)


@dataclass(frozen=True)
class Request:
    """A request as the gateway passes it; ``json()`` decodes the body for endpoints taking one."""

    body: Any = None
    path: Mapping[str, str] = field(default_factory=dict)
    args: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON, ``None`` when empty.

        The gateway hands the body over undecoded when the JSON is malformed or when the
        Content-Type has parameters (``application/json; charset=utf-8``), so a string is decoded
        here. Form encodings (curl's default) are refused with 415 rather than misread.
        """
        content_type = next((v for k, v in self.headers.items() if k.lower() == "content-type"), "")
        media_type = str(content_type).split(";")[0].strip().lower()
        if self.body in ("", None):
            return None
        if media_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise ServiceError(
                415, f"send the body as JSON with 'Content-Type: {JSON}', not {media_type}"
            )
        if not isinstance(self.body, str):
            return self.body
        try:
            return json.loads(self.body)
        except json.JSONDecodeError as err:
            raise ServiceError(400, f"the request body is not valid JSON: {err}") from None
        except RecursionError:
            raise ServiceError(400, "the request body nests JSON too deeply") from None


@dataclass(frozen=True)
class Response:
    """A status, a text ``body`` and headers; binary bodies travel base64-encoded."""

    status: int
    body: str
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": JSON})
    base64: bool = False

    @property
    def info(self) -> str:
        """The JSON a ``ResponseInfo`` cell prints."""
        info: dict[str, Any] = {"status": self.status, "headers": dict(self.headers)}
        if self.base64:
            info[BODY_ENCODING] = "base64"
        return json.dumps(info)


def json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        status, json.dumps(payload, allow_nan=False), {"Content-Type": JSON, **(headers or {})}
    )


def binary_response(
    data: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> Response:
    encoded = base64.b64encode(data).decode("ascii")
    return Response(200, encoded, {"Content-Type": content_type, **(headers or {})}, base64=True)


def parse_request(REQUEST: str | Mapping[str, Any]) -> Request:
    """The gateway's ``REQUEST`` (a JSON string, or a dict in hand-written samples) parsed."""
    request = json.loads(REQUEST) if isinstance(REQUEST, str) else REQUEST
    return Request(
        request.get("body"),
        request.get("path") or {},
        request.get("args") or {},
        request.get("headers") or {},
    )


def forget_printed_output(shell: Any) -> None:
    """Keep ``shell`` (IPython) from holding on to what cells print.

    IPython 9 copies all printed output into ``history_manager.outputs`` under the execution
    count, which does not advance for the gateway's executions, so a serving kernel would keep
    every response it ever printed and grow until it dies. Clearing after each run keeps it flat.
    """
    shell.events.register("post_execute", shell.history_manager.outputs.clear)


def serve(endpoint: Callable[[Request], Response], REQUEST: str | Mapping[str, Any]) -> Response:
    """Run ``endpoint`` on ``REQUEST``; errors become JSON error responses, never tracebacks."""
    try:
        return endpoint(parse_request(REQUEST))
    except Exception as err:
        error = to_http(err)
        if error.status >= 500:  # the service's fault: keep the details in the service log
            traceback.print_exc(file=sys.__stderr__)
        return json_response(error_body(error), error.status)
