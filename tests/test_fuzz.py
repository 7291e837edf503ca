"""Schemathesis fuzzes a live service from the OpenAPI description it serves, with every check it
has; afterwards the service must still serve its default models.

Why: the other gateway tests send requests someone thought of and hold each reply to the
description (``check_against_spec``). Here Schemathesis 4 writes the requests from the
description itself: valid ones, which must be accepted, and invalid ones (wrong types, missing
fields, bad names, broken JSON, other methods, no token), which must be refused with a
documented 4xx. The description is held to account both ways: too loose (it calls a request
valid that the service refuses) and wrong (a status, header, content type or body it does not
describe), and the service too (a 5xx, a 405 without ``Allow``, a deleted model still served).

How: a service of this module's own (the token ``TOKEN``; a training request estimated at over a
second is refused, so none takes long) gets ``schemathesis run`` as a subprocess, with every
check Schemathesis has (``CHECKS``: what ``--checks all`` selects, and the test fails if one did
not run). object_level_authorization runs but has nothing to compare: it needs two identities,
and the service has one token and no owner per model. All phases run (coverage, fuzzing,
stateful; the description has no examples), at most ``MAX_EXAMPLES`` cases per operation and
phase, derandomized (``generation.deterministic``: the same requests every run) on one worker,
and ``continue-on-failure`` reports every failing case, not only an operation's first.
``CONFIG`` says what else is tuned and why; chiefly, a schema-valid request may be refused only
where validity turns on the model or on several fields at once (``VALID_BUT_REFUSED``).

The service must survive: the kernels it started with still run, no training job the fuzzer
queued (run by the training worker) failed with a fault of the service (5xx), the store lists no
damaged model, and xor and digits are listed and predict. Deleting a model is an operation like
any other and the stateful phase follows links to ``DELETE``, so a default model it deleted is
created again first (with the architecture the service gives it); that is printed, not failed.

A failure lists each (operation, check, status) with its count and first distinct cases, request
and reply, then Schemathesis' own report, whose ``curl`` lines reproduce each case as printed.
Alone: ``.venv/bin/python -m pytest tests/test_fuzz.py`` (25-50 s, most of it fuzzing).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Service, kernel_pids
from gradbook_service.app import inputs
from gradbook_service.app.openapi import openapi_spec
from gradbook_service.app.settings import Settings
from openapi_schema_validator import OAS30Validator

pytestmark = pytest.mark.xdist_group("gateway")

TOKEN = "fuzz-token"
# Training is what takes time: a run estimated at over a second is refused (400) before it
# starts. The epoch limit is the xor model's own default, so the defaults still train as made.
SETTINGS = {"GRADBOOK_MAX_TRAIN_SECONDS": "1", "GRADBOOK_MAX_EPOCHS": "2000"}
MAX_EXAMPLES = 50  # per operation and phase: about 1700 requests, 15-30 s on 2 cores
RUN_TIMEOUT = 300.0  # seconds for the whole Schemathesis run
# The default models as the service creates them (service/app/training.py DEFAULT_MODELS).
DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "xor": {"name": "xor", "sizes": [3, 4, 1], "activation": "sigmoid", "loss": "half_sse"},
    "digits": {"name": "digits", "sizes": [64, 64, 10], "activation": "tanh",
               "loss": "cross_entropy", "bias": True},
}
# Schemathesis 4 runs all of its checks unless told otherwise. ``--checks all`` would say so,
# but a check named on the command line outranks a per-operation ``enabled = false`` of the
# config file (see CONFIG), so the test asserts instead that each of these judged a response.
CHECKS = {
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "negative_data_rejection",
    "positive_data_acceptance", "missing_required_header", "unsupported_method",
    "allow_header_conformance", "ignored_auth", "use_after_free", "ensure_resource_availability",
    "object_level_authorization",
}
# Answers that are right for a request the description calls valid, as they turn on what no JSON
# Schema can state: the model, or several fields at once. 400: the width of X and Y (the model's
# sizes), a data set's width, a classifier's labels, ragged rows, the parameter cap of a new model
# (a product of its sizes), the training-time estimate, examples × widest layer. 422: a training
# run that diverged (it depends on the data and the rate). An inference request: its input's
# width (the model's), its data's count (the product of its shape), its bytes (binary tensors).
# Every other field of these bodies is
# shared with PUT /models/{name} and reset, which positive_data_acceptance holds to its default.
VALID_BUT_REFUSED = {
    "POST /models": ["400"],
    "POST /models/{name}/predict": ["400"],
    "POST /models/{name}/gradients": ["400"],
    "POST /models/{name}/train": ["400", "422"],
    "POST /v2/models/{model}/infer": ["400"],
    "POST /v2/models/{model}/versions/{version}/infer": ["400"],
}
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # the check's default
REFUSALS = "".join(
    f"[[operations]]\ninclude-name = {json.dumps(name)}\n"
    f"checks.positive_data_acceptance.expected-statuses = {json.dumps(ACCEPTED + statuses)}\n"
    for name, statuses in VALID_BUT_REFUSED.items()
)
CONFIG = f"""
headers = {{ Authorization = "token {TOKEN}" }}
workers = 1
request-timeout = 60
continue-on-failure = true
# A training request takes up to a second, and some schemas are hard to satisfy by filtering.
suppress-health-check = ["too_slow", "filter_too_much"]

[output]
sanitization.enabled = false  # the token is this module's: the curl lines work as printed
truncation.enabled = false

[generation]
deterministic = true
max-examples = {MAX_EXAMPLES}

# The path's model name: mostly a model the store has (or one the fuzzer creates, fuzz-*) so
# that requests reach a model rather than 404, else drawn from the name's schema.
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

# Refusals of schema-valid requests that are right: see VALID_BUT_REFUSED in test_fuzz.py.
{REFUSALS}
"""


@dataclass
class FuzzRun:
    service: Service
    kernels: list[int]  # its kernels' pids before fuzzing
    returncode: int
    output: str  # Schemathesis' console report
    seconds: float
    report: dict[str, Any]  # its JSON report ({} if it wrote none)
    events: list[dict[str, Any]]  # its NDJSON event stream: every case, reply and check


@pytest.fixture(scope="module")
def fuzzed(start_service: Any, tmp_path_factory: pytest.TempPathFactory) -> FuzzRun:
    """A service of its own, fuzzed once by ``schemathesis run`` for the whole module."""
    service = start_service(token=TOKEN, **SETTINGS)
    started_kernels = sorted(service.kernel_pids)  # its kernels, not the training worker
    workdir = tmp_path_factory.mktemp("fuzz")
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    reports = workdir / "reports"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"http://127.0.0.1:{service.port}/openapi.json",
        "--report", "json,ndjson", "--report-dir", str(reports),
    ]
    # No SCHEMATHESIS_* settings (hooks, say) from the caller: the run is the same everywhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    env["PYTHONIOENCODING"] = "utf-8"  # it prints fuzzed text, whatever the locale
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, check=False,
                              encoding="utf-8", errors="replace", timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode("utf-8", "replace") if expired.stdout else ""
        pytest.fail(f"schemathesis ran over {RUN_TIMEOUT:g} s:\n{output[-5000:]}")
    seconds = time.monotonic() - started
    report = next((json.loads(p.read_text()) for p in reports.glob("json-*.json")), {})
    events = [json.loads(line) for path in reports.glob("ndjson-*.ndjson")
              for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(f"schemathesis ran {seconds:.1f} s, exit code {done.returncode}")
    return FuzzRun(service, started_kernels, done.returncode, done.stdout + done.stderr, seconds,
                   report, events)


def test_schemathesis_finds_no_failure(fuzzed: FuzzRun) -> None:
    assert fuzzed.report.get("complete"), f"the run did not complete:\n{fuzzed.output[-5000:]}"
    assert not fuzzed.report.get("errors"), f"schemathesis met errors:\n{fuzzed.output[-10000:]}"
    missing = CHECKS - checks_run(fuzzed.events)
    assert not missing, f"these checks never ran: {sorted(missing)}\n{fuzzed.output[-5000:]}"
    found = failures(fuzzed.events)
    assert fuzzed.returncode == 0 and not found, (
        f"schemathesis (exit code {fuzzed.returncode}, {fuzzed.seconds:.0f} s) found {len(found)} "
        "kinds of failure (operation · check (title) · status: cases):\n\n" + "\n".join(found)
        + "\n\nSchemathesis' report:\n" + console_failures(fuzzed.output)
    )


def test_the_service_survives_fuzzing(fuzzed: FuzzRun) -> None:
    """Still up with the same kernels, no job failed with a 5xx, no damaged model, xor and digits
    listed and predicting."""
    service = fuzzed.service
    assert service.process.poll() is None, f"the service exited: {service.log.read_text()[-3000:]}"
    assert fuzzed.kernels, f"no kernel among the service's processes; see {service.log}"
    assert sorted(kernel_pids(service.process.pid)) == fuzzed.kernels, (
        f"a kernel was replaced during fuzzing (it died or was stopped); see {service.log}")
    assert service.get("/healthz").status == 200
    created = []
    for name, body in DEFAULT_MODELS.items():  # deleted by the fuzzer: an answer it may get
        if service.get(f"/models/{name}", check=False).status == 404:
            reply = service.post("/models", body)
            assert reply.status == 201, reply.body
            created.append(name)
    if created:
        print(f"fuzzing deleted {created}; created again")
    jobs = service.get("/jobs").json()["jobs"]  # the fuzzer's, run by the training worker
    faults = [job for job in jobs if (job["error"] or {}).get("status", 0) >= 500]
    assert not faults, f"training jobs failed with a fault of the service: {faults}"
    models = service.get("/models").json()["models"]
    damaged = [model for model in models if "error" in model]
    assert not damaged, f"the store holds damaged models after fuzzing: {damaged}"
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


# -- numbers sent as strings ---------------------------------------------------------------------
# The fuzzer draws a few strings from each pattern and a few that miss it. These patterns claim
# to say exactly which strings the service reads as an in-range number, so they are held to the
# service's reader (service.inputs) on every short string of the characters that matter, and on
# spellings around each bound. One gap is known and described: the service reads an lr spelt
# with an exponent by the number it spells, which no pattern can bound; the pattern takes only a
# numeral in range with an exponent from -99 to 0, and leaves out the rest ("0.5e1", "5000e-3").
SPELT_WITH = "0159+-.e \x85\ufeff"  # digits, signs, point, exponent, blanks; U+FEFF is none
FRACTIONS = ["", ".", ".0", ".5", "." + "0" * 61 + "1",
             ".00000000000005684341886080801486968994140625",  # 1000 + this rounds to 1000
             ".00000000000005684341886080801486968994140626"]  # and this up, beyond 1000
EXPONENTS = ["", "e0", "E+00", "e-1", "e-099", "e-100", "e1"]
AROUND = ["", "+", "-", "00", "+0", " \t", "\u3000", "\x1c", "\ufeff"]


def spellings(*bounds: int) -> set[str]:
    short = {"".join(chars) for n in range(5) for chars in itertools.product(SPELT_WITH, repeat=n)}
    near = {f"{around}{number}{fraction}{exponent}{around[::-1] if around.isspace() else ''}"
            for bound in bounds for number in (bound - 1, bound, bound + 1)
            for fraction in FRACTIONS for exponent in EXPONENTS for around in AROUND}
    return short | near


@pytest.mark.parametrize(("body", "field", "read"), [
    ("CreateModel", "sizes", lambda text: inputs.count("sizes", text)),
    ("UpdateModel", "epochs", lambda text: inputs.count("epochs", text, Settings().max_epochs)),
    ("UpdateModel", "batch_size", lambda text: inputs.count("batch_size", text)),
    ("CreateModel", "seed", lambda text: inputs.seed("seed", text)),
    ("UpdateModel", "lr", lambda text: inputs.rate("lr", text)),
])
def test_numbers_sent_as_strings_are_described_exactly(body: str, field: str, read: Any) -> None:
    settings = Settings()
    schema = openapi_spec(settings)["components"]["schemas"][body]["properties"][field]
    valid = OAS30Validator(schema.get("items", schema)).is_valid  # sizes: a list of them

    def accepted(text: str) -> bool:
        try:
            read(text)
        except ValueError:
            return False
        return True

    texts = spellings(0, 1, int(inputs.MAX_RATE), settings.max_epochs, inputs.MAX_SEED)
    wrong = {text: accepted(text) for text in texts if valid(text) != accepted(text)}
    exponents = {text for text, read_by_service in wrong.items()
                 if field == "lr" and read_by_service and "e" in text.lower()}
    assert set(wrong) == exponents, sorted(
        f"{text!r}: {'read' if wrong[text] else 'refused'} by the service, but described "
        f"{'not ' if wrong[text] else ''}so" for text in set(wrong) - exponents)[:20]


# -- reading Schemathesis' reports --------------------------------------------------------------
def recorders(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each finished scenario recorded: its cases, their interactions and checks."""
    finished = (event.get("ScenarioFinished") or {} for event in events)
    return [scenario["recorder"] for scenario in finished if scenario.get("recorder")]


def checks_run(events: list[dict[str, Any]]) -> set[str]:
    """The names of the checks that judged at least one response."""
    return {check["name"] for recorder in recorders(events)
            for checks in (recorder.get("checks") or {}).values() for check in checks}


def failures(events: list[dict[str, Any]], examples: int = 3) -> list[str]:
    """One entry per (operation, check, status) that failed: its count, the check's title and
    the first ``examples`` cases with different replies, each the request sent and the reply."""
    counts: dict[tuple[str, str, str], int] = {}
    cases: dict[tuple[str, str, str], dict[str, str]] = {}  # reply -> request
    for recorder in recorders(events):
        for case_id, checks in (recorder.get("checks") or {}).items():
            case = recorder["cases"][case_id]["value"]
            interaction = (recorder.get("interactions") or {}).get(case_id) or {}
            response = interaction.get("response") or {}
            for check in checks:
                if check.get("status") == "success":
                    continue
                title = ((check.get("failure_info") or {}).get("failure") or {}).get("title")
                key = (f"{case['method']} {case['path']}", f"{check['name']} ({title})",
                       str(response.get("status_code", "no reply")))
                counts[key] = counts.get(key, 0) + 1
                reply = f"{response.get('status_code')} {_body(response, 'content')}"
                seen = cases.setdefault(key, {})
                if len(seen) < examples:
                    seen.setdefault(reply, _request(interaction.get("request") or {}))
    return [
        f"{operation} · {check} · {status}: {counts[operation, check, status]}\n" + "\n".join(
            f"    {request}\n      -> {reply}"
            for reply, request in cases[operation, check, status].items())
        for operation, check, status in sorted(counts)
    ]


def console_failures(output: str, limit: int = 20000) -> str:
    """The console report from its FAILURES part on (it has the curl lines)."""
    start = output.find(" FAILURES ")
    text = output[output.rfind("\n", 0, start) + 1:] if start >= 0 else output
    return text if len(text) <= limit else f"{text[:limit]}\n… ({len(text) - limit} more)"


def _request(request: dict[str, Any]) -> str:
    """``METHOD /path?query body``, as sent."""
    uri = request.get("uri", "")
    path = "/" + uri.split("/", 3)[3] if uri.count("/") >= 3 else uri
    return f"{request.get('method', '?')} {path} {_body(request, 'body')}".rstrip()


def _body(message: dict[str, Any], key: str, limit: int = 300) -> str:
    body = message.get(key)
    if isinstance(body, dict) and "$base64" in body:
        body = base64.b64decode(body["$base64"]).decode("utf-8", "replace")
    text = "" if body is None else str(body).strip()
    return text if len(text) <= limit else text[:limit] + "…"
