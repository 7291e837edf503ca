"""Every status the OpenAPI description documents, produced by a real request; and the limits it
states, enforced.

``TABLE`` maps each documented status, as ``"METHOD /template status"`` (``"OTHER /template
status"`` for a method the path lacks, ``"UNKNOWN status"`` for a path that matches no template;
see ``conftest.documented_responses``), to a request that produces it. Each request's reply must
have that status, be documented where the key says, and pass ``check_against_spec`` with the
request (so a 2xx also proves the request valid). ``test_the_table_covers_every_documented_status``
compares the keys with the served description: a status added to the description without a
request that produces it fails. ``default`` (500, an unexpected fault) is not in the table: no
honest request produces one, which is why it is ``default`` rather than a listed 500.

Two services of this module's own answer: ``contract`` (a token, two kernels, no queue, small
body and epoch limits) nearly everything; ``tight`` (responses of at most 1 byte) the 400 of the
operations that read no input. ``tight`` is started by hand: ``Service`` checks the service's
``/diagnostics``, which it answers with 400.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    METHODS,
    ROOT,
    Reply,
    Service,
    check_against_spec,
    documented_responses,
    free_port,
    gateway_env,
    http_request,
)
from gradbook_service.app.jobs import JobStore
from openapi_spec_validator import validate

pytestmark = pytest.mark.xdist_group("gateway")

TOKEN = "c0ntract"
BODY_LIMIT, EPOCHS_LIMIT = 1000, 50  # the contract service's; the defaults are 4 MiB and 10000
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
XOR_X = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]
INFER = {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64",
                     "data": [0, 0, 1, 1, 1, 1]}]}  # an Open Inference Protocol request
JOB_BYTES_LIMIT = 200  # the contract service's most bytes of jobs' data; the default is 64 MiB
ELSEWHERE = {"Host": "elsewhere.example"}  # a host the service does not answer to


@dataclass(frozen=True)
class Case:
    """One request: ``body`` goes as JSON, ``raw`` as is (with ``content_type``); ``token``
    ``None`` sends the service's token, ``""`` none."""

    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    content_type: str | None = JSON
    token: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes | None:
        return json.dumps(self.body).encode() if self.body is not None else self.raw


def form(method: str, path: str) -> Case:
    return Case(method, path, raw=b"name=a&sizes=3", content_type=FORM)


# -- the table ---------------------------------------------------------------------------------
# Every operation of an endpoint cell: a path of it and a body it takes (for 401, 413 and 503,
# which the gateway answers before the body reaches a kernel).
OPERATIONS = {
    "GET /": ("/", None),
    "GET /docs": ("/docs", None),
    "GET /docs/swagger-ui.css": ("/docs/swagger-ui.css", None),
    "GET /docs/swagger-ui-bundle.js": ("/docs/swagger-ui-bundle.js", None),
    "GET /healthz": ("/healthz", None),
    "GET /readyz": ("/readyz", None),
    "GET /diagnostics": ("/diagnostics", None),
    "GET /openapi.json": ("/openapi.json", None),
    "GET /models": ("/models", None),
    "POST /models": ("/models", {"name": "c-other", "sizes": [3, 1]}),
    "GET /models/{name}": ("/models/xor", None),
    "PUT /models/{name}": ("/models/xor", {"lr": 1.5}),
    "DELETE /models/{name}": ("/models/c-none", None),
    "POST /models/{name}/predict": ("/models/xor/predict", {"x": [1, 0, 1]}),
    "POST /models/{name}/train": ("/models/xor/train", {"data": "xor", "epochs": 1}),
    "POST /models/{name}/reset": ("/models/xor/reset", {"seed": 1}),
    "POST /models/{name}/gradients": ("/models/xor/gradients", {"X": XOR_X, "Y": [[0]] * 4}),
    "GET /models/{name}/loss.png": ("/models/xor/loss.png", None),
    "GET /models/{name}/versions": ("/models/xor/versions", None),
    "POST /models/{name}/rollback": ("/models/xor/rollback", {"version": 1}),
    "GET /jobs": ("/jobs", None),
    "GET /jobs/{id}": ("/jobs/{done}", None),
    "POST /jobs/{id}/cancel": ("/jobs/{done}/cancel", None),
    "GET /v2/health/live": ("/v2/health/live", None),
    "GET /v2/health/ready": ("/v2/health/ready", None),
    "GET /v2": ("/v2", None),
    "GET /v2/models/{model}": ("/v2/models/xor", None),
    "GET /v2/models/{model}/ready": ("/v2/models/xor/ready", None),
    "GET /v2/models/{model}/config": ("/v2/models/xor/config", None),
    "GET /v2/models/{model}/versions/{version}/config": ("/v2/models/xor/versions/{xor}/config",
                                                         None),
    "POST /v2/models/{model}/infer": ("/v2/models/xor/infer", INFER),
    "GET /v2/models/{model}/versions/{version}": ("/v2/models/xor/versions/{xor}", None),
    "GET /v2/models/{model}/versions/{version}/ready": ("/v2/models/xor/versions/{xor}/ready",
                                                        None),
    "POST /v2/models/{model}/versions/{version}/infer": ("/v2/models/xor/versions/{xor}/infer",
                                                         INFER),
}
# A path's {done} stands for a job that has finished (succeeded on the contract service; made
# cancelled on the tight one): its id is known only once the service runs; {xor}, for the
# version of xor then.
JOB_IDS: dict[str, str] = {}
PUBLIC = {"GET /", "GET /healthz", "GET /readyz", "GET /docs", "GET /docs/swagger-ui.css",
          "GET /docs/swagger-ui-bundle.js", "GET /v2/health/live",
          "GET /v2/health/ready"}  # answered without the token
HEALTH = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")  # the gateway's
PAGES = ("/", "/docs", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js")  # no kernel's
PATHS = {  # every path the service answers: a path of it, and a method it lacks
    "/": ("/", "POST"),
    "/docs": ("/docs", "PUT"),
    "/docs/swagger-ui.css": ("/docs/swagger-ui.css", "POST"),
    "/docs/swagger-ui-bundle.js": ("/docs/swagger-ui-bundle.js", "DELETE"),
    "/healthz": ("/healthz", "HEAD"),
    "/readyz": ("/readyz", "POST"),
    "/diagnostics": ("/diagnostics", "POST"),
    "/openapi.json": ("/openapi.json", "DELETE"),
    "/models": ("/models", "DELETE"),
    "/models/{name}": ("/models/xor", "PATCH"),
    "/models/{name}/predict": ("/models/xor/predict", "GET"),
    "/models/{name}/train": ("/models/xor/train", "PUT"),
    "/models/{name}/reset": ("/models/xor/reset", "DELETE"),
    "/models/{name}/gradients": ("/models/xor/gradients", "GET"),
    "/models/{name}/loss.png": ("/models/xor/loss.png", "POST"),
    "/models/{name}/versions": ("/models/xor/versions", "POST"),
    "/models/{name}/rollback": ("/models/xor/rollback", "GET"),
    "/jobs": ("/jobs", "POST"),
    "/jobs/{id}": ("/jobs/{done}", "DELETE"),
    "/jobs/{id}/cancel": ("/jobs/{done}/cancel", "GET"),
    "/_api/spec/swagger.json": ("/_api/spec/swagger.json", "POST"),
    "/metrics": ("/metrics", "POST"),
    "/v2/health/live": ("/v2/health/live", "POST"),
    "/v2/health/ready": ("/v2/health/ready", "DELETE"),
    "/v2": ("/v2", "POST"),
    "/v2/models/{model}": ("/v2/models/xor", "DELETE"),
    "/v2/models/{model}/ready": ("/v2/models/xor/ready", "PUT"),
    "/v2/models/{model}/config": ("/v2/models/xor/config", "POST"),
    "/v2/models/{model}/versions/{version}/config": ("/v2/models/xor/versions/{xor}/config",
                                                     "DELETE"),
    "/v2/models/{model}/infer": ("/v2/models/xor/infer", "GET"),
    "/v2/models/{model}/versions/{version}": ("/v2/models/xor/versions/{xor}", "POST"),
    "/v2/models/{model}/versions/{version}/ready": ("/v2/models/xor/versions/{xor}/ready",
                                                    "POST"),
    "/v2/models/{model}/versions/{version}/infer": ("/v2/models/xor/versions/{xor}/infer",
                                                    "GET"),
}
GATEWAY_PATHS = ("/_api/spec/swagger.json", "/metrics")  # answered by the gateway, no kernel
ENDPOINT_PATHS = [template for template in PATHS if template not in GATEWAY_PATHS]


def too_large(method: str, path: str) -> Case:
    """A body over the limit: any body for GET and DELETE, ``BODY_LIMIT + 1`` bytes else."""
    size = 2 if method in ("GET", "DELETE") else BODY_LIMIT + 1
    return Case(method, path, raw=b"{" + b" " * (size - 2) + b"}")


def each_operation(make: Callable[[str, str, Any], Case], status: int,
                   skip: set[str] = frozenset()) -> dict[str, Case]:
    cases = {}
    for key, (path, body) in OPERATIONS.items():
        if key not in skip:
            cases[f"{key} {status}"] = make(key.split()[0], path, body)
    return cases


# Answered on the contract service as it is, in this order (later requests use c-model).
PLAIN: dict[str, Case] = {
    "GET / 200": Case("GET", "/", token=""),
    "GET /docs 200": Case("GET", "/docs", token=""),
    "GET /docs/swagger-ui.css 200": Case("GET", "/docs/swagger-ui.css", token=""),
    "GET /docs/swagger-ui-bundle.js 200": Case("GET", "/docs/swagger-ui-bundle.js", token=""),
    "GET /healthz 200": Case("GET", "/healthz", token=""),
    "GET /readyz 200": Case("GET", "/readyz", token=""),
    "GET /diagnostics 200": Case("GET", "/diagnostics"),
    "GET /openapi.json 200": Case("GET", "/openapi.json"),
    "GET /models 200": Case("GET", "/models"),
    "POST /models 201": Case("POST", "/models", {"name": "c-model", "sizes": [3, 4, 1]}),
    "POST /models 400": Case("POST", "/models", {"name": "c-model2", "sizes": [3]}),
    "POST /models 409": Case("POST", "/models", {"name": "xor", "sizes": [3, 1]}),
    "POST /models 415": form("POST", "/models"),
    "GET /models/{name} 200": Case("GET", "/models/c-model"),
    "GET /models/{name} 400": Case("GET", "/models/no.such"),
    "GET /models/{name} 404": Case("GET", "/models/c-none"),
    "PUT /models/{name} 200": Case("PUT", "/models/c-model", {"lr": "2.5"}),
    "PUT /models/{name} 400": Case("PUT", "/models/c-model", {}),
    "PUT /models/{name} 404": Case("PUT", "/models/c-none", {"lr": 1}),
    "PUT /models/{name} 415": form("PUT", "/models/c-model"),
    "POST /models/{name}/predict 200": Case("POST", "/models/xor/predict", {"X": XOR_X}),
    "POST /models/{name}/predict 400": Case("POST", "/models/xor/predict", {"x": [1, 0]}),
    "POST /models/{name}/predict 404": Case("POST", "/models/c-none/predict", {"x": [1]}),
    "POST /models/{name}/predict 415": form("POST", "/models/xor/predict"),
    "POST /models/{name}/train 200": Case("POST", "/models/c-model/train",
                                          {"data": "xor", "epochs": 3}),
    "POST /models/{name}/train 202": Case("POST", "/models/c-model/train",
                                          {"data": "xor", "epochs": 3, "wait": False}),
    "POST /models/{name}/train 429": Case("POST", "/models/c-model/train", {
        "data": {"X": XOR_X * 4, "Y": [[0]] * 16}, "epochs": 1, "wait": False}),
    "POST /models/{name}/train 400": Case("POST", "/models/c-model/train", {"data": "mnist"}),
    "POST /models/{name}/train 404": Case("POST", "/models/c-none/train", {"data": "xor"}),
    "POST /models/{name}/train 415": form("POST", "/models/c-model/train"),
    "POST /models/{name}/reset 200": Case("POST", "/models/c-model/reset", {"seed": 3}),
    "POST /models/{name}/reset 400": Case("POST", "/models/c-model/reset", {"seed": "x"}),
    "POST /models/{name}/reset 404": Case("POST", "/models/c-none/reset", {}),
    "POST /models/{name}/reset 415": form("POST", "/models/c-model/reset"),
    "POST /models/{name}/gradients 200": Case("POST", "/models/xor/gradients",
                                              {"X": XOR_X, "Y": [[0], [1], [1], [0]]}),
    "POST /models/{name}/gradients 400": Case("POST", "/models/xor/gradients", {"X": XOR_X}),
    "POST /models/{name}/gradients 404": Case("POST", "/models/c-none/gradients",
                                              {"X": XOR_X, "Y": [[0]] * 4}),
    "POST /models/{name}/gradients 415": form("POST", "/models/xor/gradients"),
    "GET /models/{name}/loss.png 200": Case("GET", "/models/c-model/loss.png"),
    "GET /models/{name}/loss.png 400": Case("GET", "/models/no.such/loss.png"),
    "GET /models/{name}/loss.png 404": Case("GET", "/models/c-none/loss.png"),
    "GET /jobs 200": Case("GET", "/jobs"),
    "GET /jobs/{id} 200": Case("GET", "/jobs/{done}"),
    "GET /jobs/{id} 404": Case("GET", "/jobs/" + "0" * 32),
    "POST /jobs/{id}/cancel 404": Case("POST", "/jobs/" + "0" * 32 + "/cancel"),
    "POST /jobs/{id}/cancel 409": Case("POST", "/jobs/{done}/cancel"),  # it succeeded
    "GET /models/{name}/versions 200": Case("GET", "/models/c-model/versions"),
    "GET /models/{name}/versions 400": Case("GET", "/models/no.such/versions"),
    "GET /models/{name}/versions 404": Case("GET", "/models/c-none/versions"),
    "POST /models/{name}/rollback 400": Case("POST", "/models/c-model/rollback", {"version": 0}),
    "POST /models/{name}/rollback 404": Case("POST", "/models/c-model/rollback",
                                             {"version": 10**18}),  # not kept
    "POST /models/{name}/rollback 415": form("POST", "/models/c-model/rollback"),
    "DELETE /models/{name} 200": Case("DELETE", "/models/c-model"),
    "DELETE /models/{name} 400": Case("DELETE", "/models/no.such"),
    "DELETE /models/{name} 404": Case("DELETE", "/models/c-model"),  # deleted just before
    "GET /v2/health/live 200": Case("GET", "/v2/health/live", token=""),
    "GET /v2/health/ready 200": Case("GET", "/v2/health/ready", token=""),
    "GET /v2 200": Case("GET", "/v2"),
    "GET /v2/models/{model} 200": Case("GET", "/v2/models/xor"),
    "GET /v2/models/{model} 400": Case("GET", "/v2/models/no.such"),
    "GET /v2/models/{model} 404": Case("GET", "/v2/models/c-none"),
    "GET /v2/models/{model}/ready 200": Case("GET", "/v2/models/xor/ready"),
    "GET /v2/models/{model}/ready 400": Case("GET", "/v2/models/no.such/ready"),
    "GET /v2/models/{model}/ready 404": Case("GET", "/v2/models/c-none/ready"),
    "GET /v2/models/{model}/config 200": Case("GET", "/v2/models/xor/config"),
    "GET /v2/models/{model}/config 400": Case("GET", "/v2/models/no.such/config"),
    "GET /v2/models/{model}/config 404": Case("GET", "/v2/models/c-none/config"),
    "GET /v2/models/{model}/versions/{version}/config 200": Case(
        "GET", "/v2/models/xor/versions/{xor}/config"),
    "GET /v2/models/{model}/versions/{version}/config 400": Case(
        "GET", "/v2/models/no.such/versions/1/config"),
    "GET /v2/models/{model}/versions/{version}/config 404": Case(
        "GET", "/v2/models/xor/versions/0/config"),
    "POST /v2/models/{model}/infer 200": Case("POST", "/v2/models/xor/infer", INFER),
    "POST /v2/models/{model}/infer 400": Case("POST", "/v2/models/xor/infer", {"inputs": []}),
    "POST /v2/models/{model}/infer 404": Case("POST", "/v2/models/c-none/infer", INFER),
    "POST /v2/models/{model}/infer 415": form("POST", "/v2/models/xor/infer"),
    "GET /v2/models/{model}/versions/{version} 200": Case("GET", "/v2/models/xor/versions/{xor}"),
    "GET /v2/models/{model}/versions/{version} 400": Case("GET", "/v2/models/no.such/versions/1"),
    "GET /v2/models/{model}/versions/{version} 404": Case("GET", "/v2/models/xor/versions/0"),
    "GET /v2/models/{model}/versions/{version}/ready 200": Case(
        "GET", "/v2/models/xor/versions/{xor}/ready"),
    "GET /v2/models/{model}/versions/{version}/ready 400": Case(
        "GET", "/v2/models/no.such/versions/1/ready"),
    "GET /v2/models/{model}/versions/{version}/ready 404": Case(
        "GET", "/v2/models/xor/versions/0/ready"),
    "POST /v2/models/{model}/versions/{version}/infer 200": Case(
        "POST", "/v2/models/xor/versions/{xor}/infer", INFER),
    "POST /v2/models/{model}/versions/{version}/infer 400": Case(
        "POST", "/v2/models/xor/versions/{xor}/infer", {"inputs": [{"name": "input"}]}),
    "POST /v2/models/{model}/versions/{version}/infer 404": Case(
        "POST", "/v2/models/xor/versions/0/infer", INFER),
    "POST /v2/models/{model}/versions/{version}/infer 415": form(
        "POST", "/v2/models/xor/versions/{xor}/infer"),
    **each_operation(lambda method, path, body: Case(method, path, body, token=""), 401,
                     skip=PUBLIC),
    **each_operation(lambda method, path, body: too_large(method, path), 413),
    **each_operation(lambda method, path, body: Case(method, path, body, headers=ELSEWHERE),
                     403),
    **{f"OPTIONS {template} 403": Case("OPTIONS", PATHS[template][0], token="",
                                       headers=ELSEWHERE) for template in ENDPOINT_PATHS},
    **{f"OTHER {template} 403": Case(method, path, headers=ELSEWHERE)
       for template, (path, method) in PATHS.items()},
    "GET /_api/spec/swagger.json 403": Case("GET", "/_api/spec/swagger.json", headers=ELSEWHERE),
    "GET /metrics 403": Case("GET", "/metrics", headers=ELSEWHERE),
    "UNKNOWN 403": Case("GET", "/nowhere", headers=ELSEWHERE),
    **{f"{key} 304": Case("GET", path, headers={"If-None-Match": "*"})
       for key, (path, _) in OPERATIONS.items() if key.startswith("GET ")},
    **{f"OPTIONS {template} 200": Case("OPTIONS", PATHS[template][0], token="")
       for template in ENDPOINT_PATHS},
    **{f"OTHER {template} 405": Case(method, path) for template, (path, method) in PATHS.items()},
    **{f"OTHER {template} 401": Case(method, path, token="")
       for template, (path, method) in PATHS.items()
       if template not in (*PAGES, *HEALTH, *GATEWAY_PATHS)},
    "GET /_api/spec/swagger.json 301": Case("GET", "/_api/spec/swagger.json", token=""),
    "GET /metrics 200": Case("GET", "/metrics"),
    "GET /metrics 401": Case("GET", "/metrics", token=""),
    "UNKNOWN 404": Case("GET", "/models/xor/nowhere"),
    "UNKNOWN 405": Case("TRACE", "/nowhere"),
    # last: a new version of xor (its {xor} version stays kept, so the paths above still serve)
    "POST /models/{name}/rollback 200": Case("POST", "/models/xor/rollback", {"version": 1}),
}
# A damaged model file (c-damaged) and a damaged record of a deleted model (c-reborn).
DAMAGED = {
    "POST /models 500": Case("POST", "/models", {"name": "c-reborn", "sizes": [3, 1]}),
    "GET /models/{name} 500": Case("GET", "/models/c-damaged"),
    "PUT /models/{name} 500": Case("PUT", "/models/c-damaged", {"lr": 1}),
    "POST /models/{name}/predict 500": Case("POST", "/models/c-damaged/predict", {"x": [1]}),
    "POST /models/{name}/train 500": Case("POST", "/models/c-damaged/train", {"data": "xor"}),
    "POST /models/{name}/reset 500": Case("POST", "/models/c-damaged/reset"),
    "POST /models/{name}/gradients 500": Case("POST", "/models/c-damaged/gradients",
                                              {"X": [[1]], "Y": [[1]]}),
    "GET /models/{name}/loss.png 500": Case("GET", "/models/c-damaged/loss.png"),
    "GET /models/{name}/versions 500": Case("GET", "/models/c-damaged/versions"),
    "POST /models/{name}/rollback 500": Case("POST", "/models/c-damaged/rollback",
                                             {"version": 1}),
    "GET /v2/models/{model} 500": Case("GET", "/v2/models/c-damaged"),
    "GET /v2/models/{model}/ready 500": Case("GET", "/v2/models/c-damaged/ready"),
    "GET /v2/models/{model}/config 500": Case("GET", "/v2/models/c-damaged/config"),
    "GET /v2/models/{model}/versions/{version}/config 500": Case(
        "GET", "/v2/models/c-damaged/versions/1/config"),
    "POST /v2/models/{model}/infer 500": Case("POST", "/v2/models/c-damaged/infer", INFER),
    "GET /v2/models/{model}/versions/{version} 500": Case("GET",
                                                         "/v2/models/c-damaged/versions/1"),
    "GET /v2/models/{model}/versions/{version}/ready 500": Case(
        "GET", "/v2/models/c-damaged/versions/1/ready"),
    "POST /v2/models/{model}/versions/{version}/infer 500": Case(
        "POST", "/v2/models/c-damaged/versions/1/infer", INFER),
}
# Sent while the test holds the lock of model c-held: each holds a kernel for the store's lock
# timeout (2 s), then gets 409. Two at a time, as the contract service has two kernels.
HELD = [
    {"PUT /models/{name} 409": Case("PUT", "/models/c-held", {"epochs": 2}),
     "POST /models/{name}/train 409": Case("POST", "/models/c-held/train", {"data": "xor"})},
    {"POST /models/{name}/reset 409": Case("POST", "/models/c-held/reset", {}),
     "DELETE /models/{name} 409": Case("DELETE", "/models/c-held")},
    # to c-held's own version, which the test learns when it creates the model
    {"POST /models/{name}/rollback 409": Case("POST", "/models/c-held/rollback", {"version": 1})},
]
# Sent while both kernels wait for that lock: no kernel is free and no request may wait (and
# so the service is not ready); liveness does not depend on busy kernels.
BUSY = each_operation(Case, 503, skip={"GET /healthz", "GET /v2/health/live",
                                        *(f"GET {page}" for page in PAGES)})
# On the tight service: every response over the 1-byte limit (health is no kernel's response).
TIGHT = {**{f"{key} 400": Case("GET", path) for key, (path, body) in OPERATIONS.items()
            if key.startswith("GET ") and "{name}" not in key and key not in PUBLIC
            and not key.startswith("GET /v2")},  # the protocol's answers are not bounded so
         "POST /jobs/{id}/cancel 400": Case("POST", "/jobs/{done}/cancel")}  # it was cancelled
# Sent while the store's folder is moved away.
NO_STORE = {"GET /healthz 503": Case("GET", "/healthz", token=""),
            "GET /v2/health/live 503": Case("GET", "/v2/health/live", token="")}
# To c-relu, a relu classifier: inputs this large make its loss infinite.
DIVERGING = {"POST /models/{name}/train 422": Case(
    "POST", "/models/c-relu/train",
    {"data": {"X": [[1e300, 1e300, -1e300], [1, 2, 3]], "Y": [1, 0]}, "epochs": 2, "lr": 1000})}
# While the test holds c-jobs's lock: the first job runs (waiting for the lock), the second waits.
CANCELLING = {"POST /jobs/{id}/cancel 202": Case("POST", "/jobs/{running}/cancel"),
              "POST /jobs/{id}/cancel 200": Case("POST", "/jobs/{queued}/cancel")}
# On the slow service (a deadline of 1 s): a run of many seconds.
SLOW = {"POST /models/{name}/train 504": Case(
    "POST", "/models/digits/train", {"data": "digits", "epochs": 2000, "batch_size": 8})}

GROUPS = [PLAIN, DAMAGED, *HELD, BUSY, TIGHT, NO_STORE, DIVERGING, CANCELLING, SLOW]
TABLE = {key: case for group in GROUPS for key, case in group.items()}


def documented_statuses(spec: dict[str, Any]) -> set[str]:
    """Every status ``spec`` documents, as the table's keys name them (``default`` aside)."""
    keys = {f"UNKNOWN {status}" for status in spec["x-unknown-paths"]}
    for template, item in spec["paths"].items():
        keys |= {f"OTHER {template} {status}" for status in item.get("x-other-methods", {})}
        keys |= {f"OPTIONS {template} {status}"
                 for status in item.get("x-options", {}).get("responses", {})}
        for method in METHODS:
            statuses = item.get(method, {}).get("responses", {})
            keys |= {f"{method.upper()} {template} {s}" for s in statuses if s != "default"}
    return keys


# -- running a case ----------------------------------------------------------------------------
def send(port: int, token: str, case: Case) -> Reply:
    raw = case.encoded()
    headers = dict(case.headers)
    if raw is not None and case.content_type:
        headers["Content-Type"] = case.content_type
    token = token if case.token is None else case.token
    if token:
        headers["Authorization"] = f"token {token}"
    return http_request(port, case.method, case.path, raw, headers, timeout=30)


def verdict(spec: dict[str, Any], key: str, case: Case, reply: Reply) -> str | None:
    """Why ``reply`` to ``case`` does not produce ``key`` as documented, or None."""
    where = documented_responses(spec, case.method, case.path)[0]
    if f"{where} {reply.status}" != key:
        return f"{key}: {case.method} {case.path} got {reply.status} {reply.body[:150]!r}"
    try:
        check_against_spec(spec, case.method, case.path, reply,
                           request=(case.encoded(), case.content_type))
    except Exception as err:  # a failed assert, or a jsonschema ValidationError
        return f"{key}: {type(err).__name__}: {str(err)[:300]}"
    return None


def produce(service: Service, cases: dict[str, Case],
            ids: Mapping[str, str] = JOB_IDS) -> list[str | None]:
    """Send ``cases`` one after the other, a job's id for each {…} in their paths; the
    failures."""
    failures = []
    for key, case in cases.items():
        case = replace(case, path=case.path.format_map(ids))
        failures.append(verdict(service.spec, key, case, send(service.port, TOKEN, case)))
    return failures


def passes(failures: list[str | None]) -> None:
    failed = [failure for failure in failures if failure]
    assert not failed, f"{len(failed)} failed:\n" + "\n".join(failed)


@contextlib.contextmanager
def lock_held(store: Path, name: str) -> Iterator[None]:
    """Hold model ``name``'s writer lock as a request changing it would (``gradbook.store``)."""
    with open(store / ".locks" / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -- services ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def contract(start_service: Callable[..., Service]) -> Service:
    service = start_service(token=TOKEN, GRADBOOK_MAX_QUEUE="0",
                            GRADBOOK_MAX_BODY_BYTES=str(BODY_LIMIT),
                            GRADBOOK_MAX_EPOCHS=str(EPOCHS_LIMIT),
                            GRADBOOK_MAX_JOB_BYTES=str(JOB_BYTES_LIMIT))
    JOB_IDS["done"] = finished_job(service)
    JOB_IDS["xor"] = str(service.get("/models/xor").json()["version"])
    return service


def finished_job(service: Service) -> str:
    """The id of a job that ran on ``service`` and succeeded."""
    job = service.post("/models/xor/train", {"data": "xor", "epochs": 2, "wait": False}).json()
    deadline = time.monotonic() + 60
    while service.get(f"/jobs/{job['id']}").json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the job did not succeed"
        time.sleep(0.05)
    return job["id"]


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)  # the launcher's own group: it and its kernels
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def launch_tight(workdir: Path) -> tuple[subprocess.Popen, int] | None:
    """Start a service (one kernel, the store in ``workdir``) whose responses may have 1 byte;
    it and its port once it answers, or None if it stopped first."""
    port = free_port()
    env = gateway_env(workdir)
    env.update(GRADBOOK_HOST="127.0.0.1", GRADBOOK_PORT=str(port), GRADBOOK_KERNELS="1",
               GRADBOOK_STORE=str(workdir / "store"), GRADBOOK_MAX_RESPONSE_BYTES="1")
    with open(workdir / "service.log", "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "gradbook_service.app.launch"], cwd=ROOT,
                                   env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if http_request(port, "GET", "/readyz", None, {}, timeout=30).status == 200:
                return process, port
            time.sleep(0.2)
        except (OSError, http.client.HTTPException):  # not up, or another program on the port
            time.sleep(0.2)
    if process.poll() is None:
        stop(process)
    return None


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """The port of a service whose responses may have 1 byte (an empty store: there already,
    so no default models are trained), and the id of the one job in its store, cancelled."""
    workdir = tmp_path_factory.mktemp("tight")
    (workdir / "store").mkdir()
    jobs = JobStore(workdir / "store")
    created = jobs.create("xor", {"lr": 1, "epochs": 1, "batch_size": None}, "xor")
    cancelled = jobs.cancel(created["id"])
    for _ in range(3):  # another process may take the free port first
        if (started := launch_tight(workdir)) is not None:
            break
    else:
        pytest.fail(f"the service did not start:\n{(workdir / 'service.log').read_text()[-3000:]}")
    process, port = started
    try:
        yield port, cancelled["id"]
    finally:
        stop(process)


# -- tests -------------------------------------------------------------------------------------
def test_the_table_covers_every_documented_status(contract: Service) -> None:
    assert sum(len(group) for group in GROUPS) == len(TABLE), "a status is in two groups"
    documented = documented_statuses(contract.spec)
    assert not documented - set(TABLE), "documented, but no request produces them"
    assert not set(TABLE) - documented, "produced by the table, but not documented"


def test_every_plain_status(contract: Service) -> None:
    """200 to 415, 401 without the token, 413 for a body over the limit, 304, OPTIONS, the
    redirect, a method a path lacks and a path that matches no template."""
    passes(produce(contract, PLAIN))


def test_a_damaged_store_gives_500_without_details(contract: Service) -> None:
    (contract.store / "c-damaged.npz").write_bytes(b"garbage")
    record = contract.store / ".deleted-version"  # what new models' versions start above
    kept = record.read_bytes() if record.exists() else None
    record.write_text("garbage")
    try:
        passes(produce(contract, DAMAGED))
        listed = contract.get("/models").json()["models"]  # the others are still listed
        assert {"xor", "digits"} <= {model["name"] for model in listed}
        assert next(m for m in listed if m["name"] == "c-damaged")["error"].startswith("model")
    finally:
        if kept is None:
            record.unlink()
        else:
            record.write_bytes(kept)
        deleted = contract.delete("/models/c-damaged")  # a damaged model can be deleted
    assert deleted.json()["version"] == 0


def test_an_unreadable_store_fails_liveness(contract: Service) -> None:
    moved = contract.store.with_name("store-moved")
    contract.store.rename(moved)
    try:
        failures = produce(contract, NO_STORE)
    finally:
        moved.rename(contract.store)
    passes(failures)


def test_a_diverging_run_is_422_and_saves_nothing(contract: Service) -> None:
    created = contract.post("/models", {"name": "c-relu", "sizes": [3, 4, 2],
                                        "activation": "relu", "loss": "cross_entropy"})
    assert created.status == 201
    try:
        passes(produce(contract, DIVERGING))
        assert contract.get("/models/c-relu").json()["version"] == created.json()["version"]
    finally:
        contract.delete("/models/c-relu")


def test_a_run_past_the_deadline_is_504(start_service: Callable[..., Service],
                                        contract: Service) -> None:
    slow = start_service(token=TOKEN, GRADBOOK_REQUEST_TIMEOUT="1")
    passes([verdict(contract.spec, key, case, send(slow.port, TOKEN, case))
            for key, case in SLOW.items()])


def hold(service: Service, key: str, case: Case, replies: dict[str, Reply]) -> None:
    replies[key] = send(service.port, TOKEN, case)


def test_busy_kernels_give_503_and_a_model_being_changed_409(contract: Service) -> None:
    """The HELD requests wait for a lock the test holds, one on each kernel; meanwhile every
    operation gets 503 at once (``GRADBOOK_MAX_QUEUE=0``: no request may wait)."""
    created = contract.post("/models", {"name": "c-held", "sizes": [3, 1]})
    assert created.status == 201
    rollback = "POST /models/{name}/rollback 409"
    HELD[2][rollback] = replace(HELD[2][rollback], body={"version": created.json()["version"]})
    failures: list[str | None] = []
    for round_, group in enumerate(HELD):
        replies: dict[str, Reply] = {}
        holders = [threading.Thread(target=hold, args=(contract, key, case, replies))
                   for key, case in group.items()]
        with lock_held(contract.store, "c-held"):
            for holder in holders:
                holder.start()
            if round_ == 0:
                time.sleep(0.8)  # both are waiting for the lock, 1.2 s before they give up
                failures += produce(contract, BUSY)
            for holder in holders:
                holder.join(timeout=30)
        failures += [verdict(contract.spec, key, case, replies[key]) if key in replies
                     else f"{key}: no reply" for key, case in group.items()]
    assert contract.delete("/models/c-held").status == 200
    passes(failures)


def test_a_response_over_the_limit_is_a_400(tight: tuple[int, str], contract: Service) -> None:
    """Even /openapi.json answers 400 when its response would be over
    GRADBOOK_MAX_RESPONSE_BYTES."""
    port, job = tight
    failures = []
    for key, case in TIGHT.items():
        case = replace(case, path=case.path.format(done=job))
        failures.append(verdict(contract.spec, key, case, send(port, "", case)))
    passes(failures)


def test_cancelling_a_running_job_is_202_and_a_queued_one_200(contract: Service) -> None:
    """While the test holds c-jobs's lock, the worker's job on it runs without progressing
    (it waits for the lock) and a second job waits behind it."""
    created = contract.post("/models", {"name": "c-jobs", "sizes": [3, 1]})
    assert created.status == 201
    try:
        with lock_held(contract.store, "c-jobs"):
            running, queued = (contract.post("/models/c-jobs/train", {
                "data": "xor", "epochs": 2, "wait": False}).json()["id"] for _ in range(2))
            deadline = time.monotonic() + 30
            while contract.get(f"/jobs/{running}").json()["state"] != "running":
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.05)
            passes(produce(contract, CANCELLING, {"running": running, "queued": queued}))
        deadline = time.monotonic() + 30
        while contract.get(f"/jobs/{running}").json()["state"] != "cancelled":
            assert time.monotonic() < deadline, "the running job was never cancelled"
            time.sleep(0.05)
        # nothing committed
        assert contract.get("/models/c-jobs").json()["version"] == created.json()["version"]
    finally:
        contract.delete("/models/c-jobs")


ACCEPTED = [  # requests the service accepts that the schemas' numbers-as-strings forms must allow
    Case("POST", "/models", {"name": "c-strings", "sizes": ["3", " 4 ", "+1"], "seed": "-0",
                             "lr": "2.5e0", "epochs": "20", "batch_size": None, "bias": True,
                             "activation": "tanh"}),
    Case("PUT", "/models/c-strings", {"batch_size": "2", "lr": 1000, "epochs": EPOCHS_LIMIT}),
    Case("POST", "/models/c-strings/train",
         {"data": {"X": [["0", 0, "1e0"], [1, 1, 1]], "Y": [["0"], [1.0]]}, "lr": ".5",
          "epochs": "2", "batch_size": None}),
    Case("POST", "/models/c-strings/reset", raw=b"null"),
    Case("POST", "/models/c-strings/reset", raw=b""),
    Case("POST", "/models/c-strings/reset", {"seed": "18446744073709551615"}),
    Case("POST", "/models/c-strings/predict", {"x": ["1", " 0.0 ", "-.5E-1"]}),
    Case("POST", "/models/c-strings/predict", raw=b'{"X": [[1, 0, 1]]}',
         content_type="application/json; charset=utf-8"),
    Case("POST", "/models", {"name": "c-labels", "sizes": [3, 2], "loss": "cross_entropy"}),
    Case("POST", "/models/c-labels/train",
         {"data": {"X": XOR_X, "Y": [0, "1", " +1", "-0"]}, "epochs": 2}),
    Case("POST", "/models/c-labels/gradients", {"X": XOR_X, "Y": ["0", 1, 1, 0]}),
    Case("POST", "/models/c-labels/gradients", {"X": XOR_X, "Y": [[1, 0], ["0", "1"]] * 2}),
    Case("DELETE", "/models/c-labels"),
    Case("DELETE", "/models/c-strings"),
]


def test_requests_the_service_accepts_are_valid_requests(contract: Service) -> None:
    """Each is answered with 2xx, so ``check_against_spec`` also validates the request."""
    failures = []
    for case in ACCEPTED:
        reply = send(contract.port, TOKEN, case)
        where = documented_responses(contract.spec, case.method, case.path)[0]
        if not 200 <= reply.status < 300:
            failures.append(f"{where}: {reply.status} {reply.body[:200]!r}")
        failures.append(verdict(contract.spec, f"{where} {reply.status}", case, reply))
    passes(failures)


@pytest.mark.parametrize(("which", "body_bytes", "epochs"),
                         [("service", 4 * 2**20, 10_000), ("contract", BODY_LIMIT, EPOCHS_LIMIT)])
def test_the_served_spec_states_the_limits_the_service_enforces(
    request: pytest.FixtureRequest, which: str, body_bytes: int, epochs: int
) -> None:
    """The description validates and states the limits the service was started with, in
    words, in info.x-limits and in the schemas; /diagnostics reports the same; and the service
    enforces each at its boundary: a body of exactly that many bytes, a run of exactly that many
    epochs, JSON nested exactly that deep get past the limit, one more does not."""
    service: Service = request.getfixturevalue(which)
    spec = service.get("/openapi.json").json()
    validate(spec)
    limits = spec["info"]["x-limits"]
    assert (limits["max_body_bytes"], limits["max_epochs"]) == (body_bytes, epochs)
    words = spec["info"]["description"]
    assert f"at most {body_bytes} bytes, nested at most {limits['max_json_depth']} levels" in words
    seconds = limits["max_train_seconds"]
    assert f"at most {epochs} epochs and an estimated {seconds:g} seconds" in words
    assert f"a response has at most {limits['max_response_bytes']} bytes" in words
    schemas = spec["components"]["schemas"]
    for name in ("CreateModel", "UpdateModel", "Train"):
        assert schemas[name]["properties"]["epochs"]["oneOf"][0]["maximum"] == epochs
    in_force = service.get("/diagnostics").json()["limits"]
    assert {key: in_force[key] for key in in_force if key in limits} == {
        key: limits[key] for key in in_force if key in limits}
    assert len(set(in_force) & set(limits)) == 7

    def message(reply: Reply) -> str:
        return reply.json()["error"]["message"] if reply.status >= 400 else ""

    body = json.dumps({"x": [1, 0, 1]}).encode()
    padded = body[:-1] + b" " * (body_bytes - len(body)) + b"}"
    json_type = {"Content-Type": JSON}
    assert service.post("/models/xor/predict", raw=padded, headers=json_type).status == 200
    over = service.post("/models/xor/predict", raw=padded + b" ", headers=json_type)
    assert over.status == 413 and f"the limit is {body_bytes}" in message(over)

    name = "contract-limits"
    assert service.post("/models", {"name": name, "sizes": [3, 1]}).status == 201
    try:
        run = service.post(f"/models/{name}/train", {"data": "xor", "epochs": epochs})
        assert run.status == 200 and len(run.json()["history"]) == epochs
        refused = service.post(f"/models/{name}/train", {"data": "xor", "epochs": epochs + 1})
        assert refused.status == 400 and f"at most {epochs}" in message(refused)
    finally:
        assert service.delete(f"/models/{name}").status == 200

    depth = limits["max_json_depth"]
    for levels, refused in ((depth, False), (depth + 1, True)):  # the object is one level
        nested = b'{"x": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
        reply = service.post("/models/xor/predict", raw=nested, headers=json_type)
        assert reply.status == 400
        assert (f"more than {depth} levels" in message(reply)) is refused, message(reply)
