"""The service's one error type, and how the gateway turns any exception into an HTTP error.

Every error reaches the client as ``{"error": {"status": …, "message": "…"}}``. The gateway
raises ``ServiceError`` for what it detects itself (token, body size, a full queue, a dead
kernel); gradbook's API maps its own exceptions in ``gradbook_service.app.errors``.
"""

from __future__ import annotations

import secrets
from http import HTTPStatus
from typing import Any

RETRY_AFTER = {503: 1}  # seconds a client should wait before retrying, by status
MAX_MESSAGE_CHARS = 500  # messages quote client input briefly (``brief``); this is the backstop


class ServiceError(Exception):
    """An error for the client: an HTTP ``status`` and a ``message`` saying what to fix, and
    any ``details`` for its error object (the types a 406 could have had, a 500's id)."""

    def __init__(self, status: int, message: str | None = None, **details: Any) -> None:
        self.status = status
        self.details = details
        message = message or HTTPStatus(status).phrase
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        self.message = message
        super().__init__(self.message)


def to_http(err: BaseException) -> ServiceError:
    """The HTTP error for ``err``: a ``ServiceError`` as it is, a ``MemoryError`` 413, anything
    else a fault of the service: 500 with a generic message, so that no internals (or
    tracebacks) leak into responses."""
    if isinstance(err, ServiceError):
        return err
    if isinstance(err, MemoryError):
        return ServiceError(413, "the request needs more memory than the service has; send less")
    return ServiceError(500, "internal error; the service log has the details")


def error_body(err: ServiceError) -> dict[str, Any]:
    return {"error": {"status": err.status, "message": err.message, **err.details}}


def new_error_id() -> str:
    """A short id for one failure, given in its 500 answer and in the log line with its
    traceback, so that a caller's report leads to the traceback."""
    return secrets.token_hex(4)
