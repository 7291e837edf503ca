"""How gradbook's API turns its exceptions into HTTP errors, in the kernels (errors raised by
endpoint code) and in the training worker; the rest as the gateway does
(``gradbook_service.gateway.errors``)."""

from __future__ import annotations

from gradbook_service.app.jobs import JobEndedError, JobNotFoundError, JobQueueFullError
from gradbook_service.app.training import DivergedError
from gradbook_service.gateway.errors import ServiceError
from gradbook_service.gateway.errors import to_http as gateway_error

from gradbook.store import (
    ModelBusyError,
    ModelExistsError,
    ModelNotFoundError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    VersionNotKeptError,
)


def to_http(err: BaseException) -> ServiceError:
    """Map an exception to the HTTP error the client sees.

    Client mistakes (``ValueError`` from ``gradbook.validation`` and the endpoint checks, unknown
    or busy models, a full store) keep their message. A full store is 409, not 507: the client
    can resolve it (delete a model), and a 5xx would tell clients and proxies to retry a request
    that cannot succeed. Anything else is a fault of the service: 500 with a
    generic message, so no internals (or tracebacks) leak into responses.
    """
    if isinstance(err, (ModelNotFoundError, JobNotFoundError, VersionNotKeptError)):
        return ServiceError(404, str(err))
    if isinstance(err, (ModelExistsError, ModelBusyError, StoreFullError, JobEndedError)):
        return ServiceError(409, str(err))
    if isinstance(err, JobQueueFullError):  # the client may retry once jobs have run
        return ServiceError(429, str(err))
    if isinstance(err, DivergedError):  # the request was well-formed; its numbers blew up
        return ServiceError(422, str(err))
    if isinstance(err, StoreUnavailableError):  # the database is down: retrying may succeed
        return ServiceError(503, str(err))
    if isinstance(err, StoreError):
        return ServiceError(500, str(err))
    if isinstance(err, ValueError):
        return ServiceError(400, str(err))
    return gateway_error(err)
