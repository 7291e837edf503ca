"""The service's one error type and the one place that turns any exception into an HTTP error.

Both sides of the service use ``to_http``: the kernels (for errors raised by endpoint code) and
the gateway personality (for errors it detects before a kernel runs: token, body size, dead
kernel). Every error reaches the client as ``{"error": {"status": …, "message": "…"}}``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from gradbook_service.jobs import JobEndedError, JobNotFoundError, JobQueueFullError
from gradbook_service.training import DivergedError

from gradbook.store import (
    ModelBusyError,
    ModelExistsError,
    ModelNotFoundError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
)

MAX_MESSAGE_CHARS = 500  # messages quote client input briefly (``brief``); this is the backstop


class ServiceError(Exception):
    """An error for the client: an HTTP ``status`` and a ``message`` saying what to fix."""

    def __init__(self, status: int, message: str | None = None) -> None:
        self.status = status
        message = message or HTTPStatus(status).phrase
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        self.message = message
        super().__init__(self.message)


def to_http(err: BaseException) -> ServiceError:
    """Map an exception to the HTTP error the client sees.

    Client mistakes (``ValueError`` from ``gradbook.validation`` and the endpoint checks, unknown
    or busy models, a full store) keep their message. A full store is 409, not 507: the client
    can resolve it (delete a model), and a 5xx would tell clients and proxies to retry a request
    that cannot succeed. Anything else is a fault of the service: 500 with a
    generic message, so no internals (or tracebacks) leak into responses.
    """
    if isinstance(err, ServiceError):
        return err
    if isinstance(err, (ModelNotFoundError, JobNotFoundError)):
        return ServiceError(404, str(err))
    if isinstance(err, (ModelExistsError, ModelBusyError, StoreFullError, JobEndedError)):
        return ServiceError(409, str(err))
    if isinstance(err, JobQueueFullError):  # the client may retry once jobs have run
        return ServiceError(429, str(err))
    if isinstance(err, DivergedError):  # the request was well-formed; its numbers blew up
        return ServiceError(422, str(err))
    if isinstance(err, MemoryError):
        return ServiceError(413, "the request needs more memory than the service has; send less")
    if isinstance(err, StoreUnavailableError):  # the database is down: retrying may succeed
        return ServiceError(503, str(err))
    if isinstance(err, StoreError):
        return ServiceError(500, str(err))
    if isinstance(err, ValueError):
        return ServiceError(400, str(err))
    return ServiceError(500, "internal error; the service log has the details")


def error_body(err: ServiceError) -> dict[str, Any]:
    return {"error": {"status": err.status, "message": err.message}}
