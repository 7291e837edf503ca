"""Schemathesis as a new user runs it: ``schemathesis run http://…/openapi.json`` with its
default options (no configuration file) against a service started as ``make serve`` starts it:
without a token, and with one (then the one option is the header that carries it).

The description must match that service: without a token it declares no security requirement
and no 401; with one, the bearer token and the 401 of every guarded operation (Schemathesis'
ignored_auth check sends requests without it, and with a wrong one). Every other status,
header and body as the service answers them. The only failures allowed are schema-valid
requests refused for a reason no JSON Schema can state (``VALID_BUT_REFUSED`` of ``test_fuzz``:
an ``X`` as wide as the model, the parameter cap of a new model's sizes…), and only with the
statuses listed there. ``test_fuzz`` runs the
thorough, configured run against a service with a token.

Marked ``long`` (a minute or two each): ``make test-long`` runs it, ``make test`` does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Service
from test_fuzz import RUN_TIMEOUT, VALID_BUT_REFUSED, checks_run, console_failures, failures

pytestmark = pytest.mark.long

POSITIVE = "positive_data_acceptance"


def allowed(failure: str) -> bool:
    """Whether a failure entry of ``failures()`` is a refusal no JSON Schema can state."""
    operation, check, status = failure.split("\n")[0].rsplit(":", 1)[0].split(" · ")
    return check.startswith(POSITIVE) and status in VALID_BUT_REFUSED.get(operation, [])


@pytest.mark.parametrize("token", ["", "f-token"], ids=["no token", "token"])
def test_schemathesis_with_its_defaults_finds_only_what_no_schema_can_state(
        tmp_path: Path, token: str) -> None:
    service = Service(tmp_path, token=token or None)
    header = ["--header", f"Authorization: Bearer {token}"] if token else []
    try:
        spec = service.spec or {}
        assert ("security" in spec) == ("securitySchemes" in spec["components"]) == bool(token)
        reports = tmp_path / "reports"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
        env["PYTHONIOENCODING"] = "utf-8"
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run",
             f"http://127.0.0.1:{service.port}/openapi.json", *header,
             "--report", "json,ndjson", "--report-dir", str(reports)],  # what it writes, only
            cwd=tmp_path, env=env, capture_output=True, encoding="utf-8", errors="replace",
            timeout=RUN_TIMEOUT, check=False)
        assert service.process.poll() is None, service.log.read_text()[-3000:]
    finally:
        service.stop()
    output = done.stdout + done.stderr
    report = next((json.loads(p.read_text()) for p in reports.glob("json-*.json")), {})
    events = [json.loads(line) for path in reports.glob("ndjson-*.ndjson")
              for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert report.get("complete"), f"the run did not complete:\n{output[-5000:]}"
    assert not report.get("errors"), f"schemathesis met errors:\n{output[-10000:]}"
    assert {"not_a_server_error", "response_schema_conformance", "status_code_conformance",
            POSITIVE, "negative_data_rejection", *(["ignored_auth"] if token else [])} \
        <= checks_run(events)
    found = [failure for failure in failures(events) if not allowed(failure)]
    assert not found, ("schemathesis with its defaults found (operation · check (title) · "
                       "status: cases):\n\n" + "\n".join(found) + "\n\nIts report:\n"
                       + console_failures(output))
