"""The OpenAPI 3.1 description of notebooks that do not describe themselves (``GET
/openapi.json``): what the gateway knows of them, from their annotations alone.

Each ``# METHOD /path`` cell is an operation at the notebook's prefix plus its path, with a
``string`` path parameter for each ``:name``; its summary is the first line of the Markdown cell
just above it, and its success's media types those that cell's ``Answers:`` line states (any
type, unstated). Beyond that, what a cell answers is up to the cell (any status its
``ResponseInfo`` sets), so the description promises only what the gateway itself answers: the
statuses of its checks and failures, each with the JSON error body, and the header naming the
notebook's version. A notebook that serves its own ``/openapi.json`` (gradbook's API does) is not
described here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gradbook_service.gateway.notebooks import Notebook

PARAMETER = re.compile(r":(\w+)")
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["status", "message"],
    "properties": {"status": {"type": "integer"}, "message": {"type": "string"},
                   "id": {"type": "string", "description": "A 500's id, which the log line "
                          "holding the traceback names"},
                   "exception": {"type": "object", "description": "With GRADBOOK_DEBUG on, a "
                                 "500's exception: name, message, the cell's traceback"},
                   "available": {"type": "array", "items": {"type": "string"},
                                 "description": "A 406's types: those the cell can answer"}}}}}
VERSION_HEADER = {"X-Gradbook-Notebook-Version": {
    "description": "The version (a hash of its code cells) of the notebook that answered",
    "schema": {"type": "string"}}}
BODIES = ("POST", "PUT")  # notebook-http methods that take a body


def describe(notebooks: Sequence[Notebook], *, token: bool, max_body_bytes: int,
             request_timeout: float) -> dict[str, Any]:
    """The description of ``notebooks`` as they are served now."""
    paths: dict[str, Any] = {}
    for notebook in notebooks:
        for route in notebook.routes:
            template = PARAMETER.sub(r"{\1}", notebook.prefix + route.path)
            parameters = [{"name": name, "in": "path", "required": True,
                           "schema": {"type": "string"}}
                          for name in PARAMETER.findall(route.path)]
            item = paths.setdefault(template, {})
            for method, endpoint in route.methods.items():
                operation: dict[str, Any] = {
                    "summary": endpoint.summary or f"{method} {route.path}",
                    "operationId": f"{notebook.name}.{method} {route.path}",
                    "tags": [notebook.name],
                    "responses": _responses(method, token, max_body_bytes, request_timeout,
                                            endpoint.answers)}
                if parameters:
                    operation["parameters"] = parameters
                if method in BODIES:
                    operation["requestBody"] = {"required": False, "content": {
                        "application/json": {"schema": {}},
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                        "text/plain": {"schema": {"type": "string"}}}}
                item[method.lower()] = operation
    names = [notebook.name for notebook in notebooks]
    description: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": names[0] if len(names) == 1 else "Notebooks: " + ", ".join(names),
                 "version": " ".join(f"{notebook.name}@{notebook.version}"
                                     for notebook in notebooks) or "none",
                 "description": "Endpoints of notebooks served by gradbook's gateway; each "
                                "answers what its cell prints, with the status and headers its "
                                "ResponseInfo cell sets (200 and text/plain without one)."},
        "tags": [{"name": name, "description": f"the endpoints of {name}.ipynb"}
                 for name in names],
        "paths": paths}
    if token:
        description["components"] = {"securitySchemes": {"token": {
            "type": "http", "scheme": "bearer",
            "description": "The service's token, as 'Authorization: Bearer <token>' (or "
                           "'token <token>')"}}}
        description["security"] = [{"token": []}]
    return description


def _responses(method: str, token: bool, max_body_bytes: int, request_timeout: float,
               answers: tuple[str, ...]) -> dict[str, Any]:
    def error(text: str) -> dict[str, Any]:
        return {"description": text, "headers": VERSION_HEADER,
                "content": {"application/json": {"schema": ERROR}}}

    body_limit = (f"the body has more than {max_body_bytes} bytes" if method in BODIES
                  else f"{method} takes no body")
    responses: dict[str, Any] = {
        "200": {"description": "What the endpoint cell prints (text/plain unless its "
                               "ResponseInfo cell sets a Content-Type); if it prints nothing, "
                               "what it displays, in the type Accept asks for; with 'Accept: "
                               "text/event-stream', each line it prints as an event",
                "headers": VERSION_HEADER,
                "content": {media: {"schema": _schema(media)} for media in answers or ("*/*",)}},
        "403": error("The request's Host is not the service's, or a web page of another site "
                     "sent it without the token"),
        "406": error("The cell displayed no type the request's Accept allows; 'available' "
                     "lists those it did"),
        "413": error(body_limit),
        "500": error("The endpoint's cell raised (the service log has the traceback)"),
        "503": error("Every kernel is busy and the queue is full, or the kernel stopped; retry "
                     "(Retry-After)"),
        "504": error(f"The cell ran longer than {request_timeout:g} s and was interrupted"),
        "default": {"description": "Any other status the notebook's ResponseInfo cell sets",
                    "headers": VERSION_HEADER, "content": {"*/*": {"schema": {}}}}}
    if method in BODIES:
        responses["400"] = error("The body is malformed for its Content-Type")
    if token:
        responses["401"] = error("The service's token is missing or wrong")
    return dict(sorted(responses.items()))


def _schema(media: str) -> dict[str, Any]:
    """The schema of a body of type ``media``: JSON any value, text a string, else bytes."""
    if media == "application/json" or media.endswith("+json"):
        return {}
    if media.startswith("text/") or media.endswith("+xml"):
        return {"type": "string"}
    return {"type": "string", "contentMediaType": media}
