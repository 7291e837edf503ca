"""The OpenAPI description is valid and describes the notebook's annotated endpoints and the
gateway's own answers; and ``check_against_spec``, which holds every reply of the gateway tests
to it, fails where it should. None of these tests starts a service.

That the description matches the service's behaviour is tested in
``tests/test_service_contract.py``: every documented status produced by a real request, and the
limits it states enforced. Every reply of the gateway tests is checked against it, too.
"""

from __future__ import annotations

import copy
import json
import re
from email.message import Message
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import METHODS, Reply, check_against_spec
from gradbook_service.app.openapi import openapi_spec
from gradbook_service.app.settings import Settings
from jsonschema.exceptions import ValidationError
from kernel_gateway.notebook_http.cell.parser import APICellParser
from openapi_spec_validator import validate

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "api.ipynb"
SPEC = openapi_spec(Settings(token="t"))  # as a service with a token describes itself
JSON = "application/json"
REFUSED = (AssertionError, ValidationError)  # what check_against_spec raises when it fails


def notebook_operations() -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every ``# METHOD /path`` cell, found as the gateway finds them."""
    cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    parser = APICellParser(comment_prefix="#")
    responses = parser.endpoint_responses(cells)
    operations = set()
    for path, methods in parser.endpoints(cells):
        assert set(responses[path]) == set(methods), f"{path} lacks a ResponseInfo cell"
        operations |= {(method.lower(), re.sub(r":(\w+)", r"{\1}", path)) for method in methods}
    return operations


def test_the_spec_is_valid_openapi() -> None:
    validate(openapi_spec(Settings()))
    validate(SPEC)


def test_the_token_is_declared_exactly_when_the_service_asks_for_one() -> None:
    """Without a token nothing needs one: no security requirement, no 401 anywhere. With one,
    every operation but the public ones needs it, as a bearer token, and may get 401."""
    open_spec = json.dumps(openapi_spec(Settings()))
    assert '"401"' not in open_spec and "security" not in open_spec
    assert SPEC["security"] == [{"token": []}]
    assert SPEC["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    for path, item in SPEC["paths"].items():
        for method in set(item) & set(METHODS):
            public = item[method].get("security") == []
            assert public != ("401" in item[method]["responses"]), (method, path)


def test_the_spec_describes_exactly_the_notebook_endpoints_and_the_gateways_answers() -> None:
    paths = copy.deepcopy(SPEC["paths"])
    redirect = paths.pop("/_api/spec/swagger.json")  # the gateway's, not the notebook's
    metrics = paths.pop("/metrics")  # the gateway's too
    assert set(redirect) == set(metrics) == {"get", "x-other-methods"}
    for health in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):  # the gateway's
        assert set(paths.pop(health)) == {"get", "x-options", "x-other-methods"}
    for page in ("/", "/docs", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js"):
        item = paths.pop(page)  # the gateway's pages and files, endpoints to clients
        assert set(item) == {"get", "x-options", "x-other-methods"}, page
        assert "503" not in item["get"]["responses"] and item["get"]["security"] == []
    described = {(method, path) for path, item in paths.items() for method in item
                 if method in METHODS}
    assert described == notebook_operations()
    for path, item in paths.items():
        assert set(item["x-options"]["responses"]) == {"200", "403"}, path  # CORS preflight
        assert "405" in item["x-other-methods"], path
        for method in set(item) & set(METHODS):
            assert item[method]["responses"]["default"]["$ref"].endswith("/Fault")


# -- check_against_spec ------------------------------------------------------------------------
def reply(status: int, body: Any = None, content_type: str | None = JSON,
          **headers: str) -> Reply:
    """A reply as ``http_request`` returns it; ``headers`` spelt with ``_`` for ``-``."""
    message = Message()
    if content_type:
        message["Content-Type"] = content_type
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return Reply(status, message, b"" if body is None else json.dumps(body).encode())


def error(status: int, **headers: str) -> Reply:
    return reply(status, {"error": {"status": status, "message": "what went wrong"}}, **headers)


MODEL = {
    "name": "xor", "version": 2, "sizes": [3, 4, 1], "activation": "sigmoid",
    "loss": "half_sse", "bias": False, "classifier": False, "seed": 0,
    "hyperparameters": {"lr": 2.0, "epochs": 2000, "batch_size": None},
    "metrics": {}, "training": {"runs": 0, "epochs": 0, "curve_points": 0, "history": []},
    "created": "2024-05-01T12:00:00.123+00:00", "updated": "2024-05-02T08:30:00.000+00:00",
}
TRAINED = {"name": "xor", "version": 3, "history": [1.5, 0.5], "metrics": {}, "run": {}}
ETAG = {"ETag": '"5d41402abc4b2a76b9719d911017c592"'}


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01T12:00:00Z", "2024-05-01T25:00:00Z"])
def test_a_bad_date_time_fails_validation(bad: str) -> None:
    check_against_spec(SPEC, "GET", "/models/xor", reply(200, MODEL, **ETAG))  # the good one
    with pytest.raises(ValidationError, match="date-time"):
        check_against_spec(SPEC, "GET", "/models/xor", reply(200, {**MODEL, "created": bad},
                                                                 **ETAG))


@pytest.mark.parametrize(("method", "path", "status"), [
    ("PATCH", "/models/xor", 405),  # a method the path lacks: its x-other-methods
    ("PATCH", "/models/xor", 401),  # the token is checked first on a guarded path
    ("POST", "/healthz", 405),
    ("GET", "/nowhere", 404),  # a path that matches no template: x-unknown-paths
    ("TRACE", "/nowhere", 405),  # a method the service implements on no path
    ("GET", "/models?x=1", 500),  # 500 is the default response
    ("GET", "/models/xor", 500),  # and listed where a damaged file causes it
])
def test_a_documented_status_passes(method: str, path: str, status: int) -> None:
    known = path != "/nowhere"  # a 405 on a path of the description names its methods
    allow = {"Allow": "DELETE, GET, PUT"} if status == 405 and known else {}
    challenge = {"WWW_Authenticate": 'Bearer realm="gradbook"'} if status == 401 else {}
    check_against_spec(SPEC, method, path, error(status, **allow, **challenge))


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/models", 405),  # GET /models exists: its operation lists no 405
    ("GET", "/models", 404),
    ("GET", "/models", 418),  # default stands for 500 only
    ("POST", "/healthz", 401),  # /healthz needs no token
    ("GET", "/nowhere", 400),
    ("GET", "/openapi.jsonx", 200),  # the dot of a template is not a wildcard
])
def test_an_undocumented_status_fails(method: str, path: str, status: int) -> None:
    with pytest.raises(AssertionError, match="undocumented"):
        check_against_spec(SPEC, method, path, error(status))


def test_a_405_or_404_needs_its_documentation() -> None:
    spec = copy.deepcopy(SPEC)
    del spec["paths"]["/models/{name}"]["x-other-methods"]["405"]
    with pytest.raises(AssertionError, match="undocumented"):
        check_against_spec(spec, "PATCH", "/models/xor", error(405))
    check_against_spec(spec, "PATCH", "/models/xor/train", error(405, Allow="POST"))  # still there
    del spec["x-unknown-paths"]["404"]
    with pytest.raises(AssertionError, match="undocumented"):
        check_against_spec(spec, "GET", "/nowhere", error(404))


@pytest.mark.parametrize(("method", "path", "answer"), [
    ("GET", "/models", error(503)),  # without Retry-After
    ("GET", "/models", error(503, Retry_After="soon")),  # an integer, the spec says
    ("GET", "/models", reply(200, {"models": []})),  # a GET's 200 carries an ETag
    ("GET", "/models", reply(304, {"models": []}, **ETAG)),  # a 304 has no body
    ("GET", "/models", reply(401, {"error": {"status": 403, "message": "m"}})),
    ("GET", "/models", reply(401, None, "text/html")),
    ("PATCH", "/models/xor", error(405)),  # without Allow
    ("POST", "/models", reply(201, {**MODEL, "version": "2"})),
    ("OPTIONS", "/models", reply(200, {"allowed": True})),  # the preflight has no body
    ("GET", "/_api/spec/swagger.json", reply(301, None, Location="/elsewhere")),
])
def test_an_answer_unlike_its_documentation_fails(method: str, path: str, answer: Reply) -> None:
    with pytest.raises(REFUSED):
        check_against_spec(SPEC, method, path, answer)


def test_headers_and_empty_bodies_as_documented_pass() -> None:
    check_against_spec(SPEC, "GET", "/models", error(503, Retry_After="1"))
    check_against_spec(SPEC, "GET", "/models", reply(200, {"models": []}, **ETAG))
    check_against_spec(SPEC, "GET", "/models", reply(304, None, None, **ETAG))
    check_against_spec(SPEC, "HEAD", "/models", reply(405, None, Allow="GET, POST"))  # no body
    check_against_spec(SPEC, "OPTIONS", "/models", reply(200, None, "text/html"))
    check_against_spec(SPEC, "GET", "/_api/spec/swagger.json",
                       reply(301, None, Location="/openapi.json"))


TRAIN = ("POST", "/models/xor/train")


@pytest.mark.parametrize(("sent", "content_type"), [
    ({"data": "xor", "epochs": 0}, JSON),  # epochs from 1
    ({"data": "xor", "epochs": 10_001}, JSON),  # to max_epochs
    ({"data": "xor", "epochs": "3.5"}, JSON),  # a string spelling a whole number
    ({"data": "xor", "speed": 1}, JSON),  # no other fields
    ({"epochs": 5}, JSON),  # data is required
    ({"data": "xor"}, "application/x-www-form-urlencoded"),
    (b'{"data": "xor"', JSON),  # not JSON
    (None, JSON),  # the body is required
])
def test_a_request_the_spec_calls_invalid_must_not_succeed(sent: Any, content_type: str) -> None:
    raw = sent if isinstance(sent, bytes) or sent is None else json.dumps(sent).encode()
    check_against_spec(SPEC, *TRAIN, error(400), request=(raw, content_type))  # refused: fine
    with pytest.raises(REFUSED):
        check_against_spec(SPEC, *TRAIN, reply(200, TRAINED), request=(raw, content_type))


def test_a_valid_request_may_succeed_and_a_body_needs_an_operation_that_takes_one() -> None:
    sent = json.dumps({"data": {"X": [["1", 0, " 1e0 "]], "Y": [["0.5"]]}, "epochs": "3",
                       "batch_size": None, "lr": ".5"}).encode()
    check_against_spec(SPEC, *TRAIN, reply(200, TRAINED), request=(sent, "application/json; "
                                                                    "charset=utf-8"))
    check_against_spec(SPEC, "POST", "/models/xor/reset", reply(200, MODEL), request=(None, None))
    with pytest.raises(AssertionError, match="takes none"):
        check_against_spec(SPEC, "GET", "/models", reply(200, {"models": []}, **ETAG),
                           request=(b"{}", JSON))
