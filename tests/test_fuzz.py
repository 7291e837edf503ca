"""Schemathesis fuzzes a live service from the OpenAPI description it serves, with every check it
has; afterwards the service must still serve its default models.

Why: the other gateway tests send requests someone thought of, and hold each reply to the
description (``check_against_spec``). Here Schemathesis (v4, its ``run`` command) writes the
requests from the description itself: valid ones, which must be accepted, and invalid ones
(wrong types, missing fields, bad names, broken JSON, other methods, no token), which must be
refused with a documented 4xx. So the description is held to account in both directions: too
loose (it calls a request valid that the service refuses) and too tight or wrong (a reply it does
not describe).

How: a service of this module's own (a token, training capped by GRADBOOK_MAX_TRAIN_SECONDS so a
fuzzed training request takes at most about a second) gets ``schemathesis run --checks all``,
i.e. its default checks and the rest: not_a_server_error, status_code_conformance,
content_type_conformance, response_headers_conformance, response_schema_conformance,
negative_data_rejection, positive_data_acceptance, missing_required_header, unsupported_method,
allow_header_conformance, ignored_auth, and the stateful ones (use_after_free,
ensure_resource_availability); object_level_authorization is enabled too but finds nothing to
compare: it needs two identities, and the service has one token and no owner per model. All
phases run (coverage, fuzzing, stateful; the description has no examples), at most
``MAX_EXAMPLES`` cases per operation, derandomized (``generation.deterministic``: the same
requests every run) on one worker. ``continue-on-failure`` lists every failing case, not only an
operation's first. ``CONFIG`` says what is tuned and why, e.g. the path's model name is drawn
mostly from the models the store has, so the requests reach the models rather than 404.

The service must survive: its kernels are the ones it started with, GET /models lists xor and
digits and both predict. Deleting a model is an operation like any other and the stateful phase
follows ``DELETE`` links, so a default model it deleted is created again first (with the
architecture the service gives it), and that is reported, not a failure.

A failure names each operation and check with its first cases (request and reply), then gives
Schemathesis' own report, whose ``curl`` lines reproduce each case (the token is this module's).
Run it alone with ``.venv/bin/python -m pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Service, child_pids

pytestmark = pytest.mark.xdist_group("gateway")

TOKEN = "fuzz-token"
# Training is what takes time: a run estimated at over a second is refused (400) before it
# starts. The epoch limit is the xor model's own default, so the defaults still train as made.
SETTINGS = {"GRADBOOK_MAX_TRAIN_SECONDS": "1", "GRADBOOK_MAX_EPOCHS": "2000"}
MAX_EXAMPLES = 50  # per operation and phase; the whole run takes about 20-40 s on 2 cores
RUN_TIMEOUT = 300.0  # seconds for the whole Schemathesis run
# The default models as the service creates them (service/training.py DEFAULT_MODELS).
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "xor": {"name": "xor", "sizes": [3, 4, 1], "activation": "sigmoid", "loss": "half_sse"},
    "digits": {"name": "digits", "sizes": [64, 64, 10], "activation": "tanh",
               "loss": "cross_entropy", "bias": True},
}
# Model-dependent and cross-field limits that no JSON Schema can state: the width of X and Y
# (the model's sizes), a data set's width, the class labels a classifier has, the parameter cap
# of a new model (a product of its sizes), the training-time estimate, examples × widest layer.
# Requests to these operations that the description calls valid may still get 400 for them.
# Schemathesis 4 runs every check it has unless told otherwise. ``--checks all`` would say so
# too, but a check named on the command line outranks the config file's per-operation
# ``enabled = false`` (see CONFIG), so the test asserts instead that each of these ran.
CHECKS = {
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "positive_data_acceptance", "missing_required_header", "unsupported_method",
    "allow_header_conformance", "ignored_auth", "use_after_free", "ensure_resource_availability",
    "object_level_authorization",
}
MODEL_DEPENDENT = ["POST /models", "POST /models/{name}/predict",
                   "POST /models/{name}/gradients", "POST /models/{name}/train"]
CONFIG = f"""
headers = {{ Authorization = "token {TOKEN}" }}
workers = 1
request-timeout = 60
continue-on-failure = true
# A training request takes up to a second, and some data never passes a schema's filters.
suppress-health-check = ["too_slow", "filter_too_much"]

[output]
sanitization.enabled = false  # the token is this module's: the curl lines work as printed
truncation.enabled = false

[generation]
deterministic = true
max-examples = {MAX_EXAMPLES}

# The path's model name: mostly a model the store has (or one the fuzzer creates), else drawn
# from its schema.
[dictionaries.models]
values = ["xor", "digits", "fuzz-a", "fuzz-b"]
[dictionaries.disposable]
values = ["fuzz-a", "fuzz-b"]

[parameters]
"path.name" = {{ dictionary = "models", probability = 0.8 }}

# DELETE mostly the fuzzer's own models, so the defaults last into the later phases.
[[operations]]
include-name = "DELETE /models/{{name}}"
parameters = {{ "path.name" = {{ dictionary = "disposable", probability = 0.8 }} }}

[[operations]]
include-name = "POST /models"
parameters = {{ "body.name" = {{ dictionary = "disposable", probability = 0.5 }} }}

# 400 is a correct answer to a schema-valid request here: see MODEL_DEPENDENT in test_fuzz.py.
[[operations]]
include-name = {json.dumps(MODEL_DEPENDENT)}
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "400", "401", "403", "404",
                                                     "409", "429", "5xx"]

# A CORS preflight is answered by the gateway for a path, whether or not the model exists: a
# 200 to OPTIONS after DELETE is not the deleted model still being served.
[[operations]]
include-method = "OPTIONS"
checks.use_after_free.enabled = false
"""


@dataclass
class FuzzRun:
    service: Service
    returncode: int
    output: str  # Schemathesis' console report
    seconds: float
    report: dict[str, Any]  # its JSON report ({} if it wrote none)
    events: list[dict[str, Any]]  # its NDJSON event stream


@pytest.fixture(scope="module")
def fuzzed(start_service: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRun]:
    """A service of its own, fuzzed once by ``schemathesis run`` for the whole module."""
    service = start_service(token=TOKEN, **SETTINGS)
    workdir = tmp_path_factory.mktemp("fuzz")
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    reports = workdir / "reports"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"http://127.0.0.1:{service.port}/openapi.json",
        "--report", "json,ndjson", "--report-dir", str(reports),
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"schemathesis ran over {RUN_TIMEOUT:g} s:\n{_text(timeout.stdout)[-5000:]}")
    seconds = time.monotonic() - started
    report = next((json.loads(p.read_text()) for p in reports.glob("json-*.json")), {})
    events = [json.loads(line) for path in reports.glob("ndjson-*.ndjson")
              for line in path.read_text().splitlines() if line.strip()]
    print(f"schemathesis ran {seconds:.1f} s, exit code {done.returncode}")
    yield FuzzRun(service, done.returncode, done.stdout + done.stderr, seconds, report, events)


def test_schemathesis_finds_no_failure(fuzzed: FuzzRun) -> None:
    findings = failures(fuzzed.events)
    report = fuzzed.report
    missing = CHECKS - checks_run(fuzzed.events)
    assert not missing, f"these checks never ran: {sorted(missing)}\n{fuzzed.output[-5000:]}"
    assert report.get("complete", True), f"the run did not complete:\n{fuzzed.output[-5000:]}"
    assert not report.get("errors"), f"schemathesis met errors:\n{fuzzed.output[-10000:]}"
    assert fuzzed.returncode == 0 and not findings, (
        f"schemathesis (exit code {fuzzed.returncode}, {fuzzed.seconds:.0f} s) found "
        f"{len(findings)} kinds of failure (operation · check · status: cases):\n\n"
        + "\n".join(findings) + "\n\nSchemathesis' report:\n" + console_failures(fuzzed.output)
    )


def test_the_service_survives_fuzzing(fuzzed: FuzzRun) -> None:
    """Still up, the same kernels, and xor and digits listed and predicting."""
    service = fuzzed.service
    assert service.process.poll() is None, f"the service exited: {service.log.read_text()[-3000:]}"
    assert sorted(child_pids(service.process.pid)) == sorted(service.kernel_pids), (
        "a kernel was replaced during fuzzing (one died or was stopped); see " + str(service.log))
    assert service.get("/healthz").status == 200
    created = []
    for name, body in DEFAULT_MODELS.items():  # deleted by the fuzzer: an answer it may get
        if service.get(f"/models/{name}", check=False).status == 404:
            reply = service.post("/models", body)
            assert reply.status == 201, reply.body
            created.append(name)
    if created:
        print(f"fuzzing deleted {created}; created again")
    models = service.get("/models").json()["models"]
    unreadable = [model for model in models if "error" in model]
    assert not unreadable, f"the store holds damaged models after fuzzing: {unreadable}"
    assert set(DEFAULT_MODELS) <= {model["name"] for model in models}, models
    for name in DEFAULT_MODELS:
        model = service.get(f"/models/{name}").json()
        width, outputs = model["sizes"][0], model["sizes"][-1]
        reply = service.post(f"/models/{name}/predict", {"X": [[0.5] * width, [-1.0] * width]})
        assert reply.status == 200, reply.body
        answer = reply.json()
        assert [len(row) for row in answer["outputs"]] == [outputs, outputs], answer
        assert all(math.isfinite(v) for row in answer["outputs"] for v in row), answer
        if model["classifier"]:
            assert all(0 <= c < outputs for c in answer["classes"]), answer
            assert all(math.isclose(sum(row), 1, abs_tol=1e-6) for row in answer["outputs"])


# -- reading Schemathesis' reports --------------------------------------------------------------
def failures(events: list[dict[str, Any]], examples: int = 3) -> list[str]:
    """One entry per (operation, check, status) that failed, with its first ``examples`` cases
    whose replies differ: the request sent and the reply."""
    found: dict[tuple[str, str, int | None], list[str]] = {}
    counts: dict[tuple[str, str, int | None], int] = {}
    titles: dict[str, str] = {}
    for event in events:
        recorder = event.get("ScenarioFinished", {}).get("recorder") or {}
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check.get("status") == "success":
                    continue
                case = recorder["cases"][case_id]["value"]
                interaction = (recorder.get("interactions") or {}).get(case_id) or {}
                response = interaction.get("response") or {}
                key = (f"{case['method']} {case['path']}", check["name"],
                       response.get("status_code"))
                failure = (check.get("failure_info") or {}).get("failure") or {}
                titles[check["name"]] = failure.get("title", "")
                counts[key] = counts.get(key, 0) + 1
                example = (f"    {_request(interaction.get('request') or {})}\n"
                           f"      -> {response.get('status_code')} {_body(response, 'content')}")
                seen = found.setdefault(key, [])
                if len(seen) < examples and all(example.split("->")[1] not in e for e in seen):
                    seen.append(example)
    return [f"{operation} · {check} ({titles[check]}) · {status}: {counts[key]}\n"
            + "\n".join(found[key])
            for key in sorted(found, key=str) for operation, check, status in [key]]


def checks_run(events: list[dict[str, Any]]) -> set[str]:
    """The names of the checks that judged at least one response."""
    return {check["name"] for event in events
            for checks in ((event.get("ScenarioFinished", {}).get("recorder") or {})
                           .get("checks") or {}).values()
            for check in checks}


def console_failures(output: str, limit: int = 20000) -> str:
    """The FAILURES part of the console report onwards (it has the curl lines)."""
    start = output.find(" FAILURES ")
    text = output[output.rfind("\n", 0, start) + 1:] if start >= 0 else output
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more)"


def _request(request: dict[str, Any]) -> str:
    method, uri = request.get("method", "?"), request.get("uri", "?")
    path = uri.split("/", 3)[-1] if uri.startswith("http") else uri
    return f"{method} /{path} {_body(request, 'body')}".rstrip()


def _body(message: dict[str, Any], key: str, limit: int = 300) -> str:
    body = message.get(key)
    if isinstance(body, dict) and "$base64" in body:
        body = base64.b64decode(body["$base64"]).decode("utf-8", "replace")
    text = "" if body is None else str(body).strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _text(output: str | bytes | None) -> str:
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output or ""
