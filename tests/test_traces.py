"""Traces with OpenTelemetry against a real gateway, its spans written by the SDK's console
exporter (``OTEL_TRACES_EXPORTER=console``) to the log, one JSON object a line: a server span
per request continuing the caller's ``traceparent``, the time queued, the kernel execution with
its batch size, the cell's own run; the ``traceparent`` in ``REQUEST``; and nothing added when
tracing is off."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
from conftest import (
    Reply,
    Service,
    await_queue,
    gateway_env,
    http_request,
    running_gateway,
    write_notebook,
)

pytestmark = pytest.mark.xdist_group("notebooks")

GRADBOOK = Path(sys.executable).parent / "gradbook"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
CELLS = ["import json, pathlib, time",
         "# GET /parent\ntime.sleep(0.2)\nheaders = json.loads(REQUEST)['headers']\n"
         "print(next((v for k, v in headers.items() if k.lower() == 'traceparent'), 'none'))",
         "# GET /fails\nraise ValueError('no')",
         "# GET /hold\nwhile not pathlib.Path('release').exists():\n    time.sleep(0.01)"]


@contextmanager
def gateway(folder: Path, traced: bool) -> Iterator[tuple[int, Path]]:
    write_notebook(folder / "traced.ipynb", CELLS)
    env = {k: v for k, v in gateway_env(folder).items() if not k.startswith("OTEL_")}
    if traced:
        env.update(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="traced-test")
    command = [str(GRADBOOK), "serve", "traced.ipynb", "--kernels", "1"]
    with running_gateway(command, folder, env) as (port, _, log):
        yield port, log


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    with gateway(tmp_path_factory.mktemp("traced"), traced=True) as running:
        yield running


def spans(log: Path, trace_id: str | None = None) -> list[dict]:
    """The spans in the log (of one trace), waiting a moment for those still being written."""
    found: list[dict] = []
    for _ in range(50):
        found = [json.loads(line) for line in log.read_text().splitlines()
                 if line.startswith('{"name"')]
        found = [span for span in found
                 if trace_id is None or span["context"]["trace_id"] == f"0x{trace_id}"]
        if any(span["kind"] == "SpanKind.SERVER" for span in found):
            break
        time.sleep(0.1)
    return found


def seconds(span: dict, key: str) -> float:
    return datetime.fromisoformat(span[key].replace("Z", "+00:00")).timestamp()


def by_name(found: list[dict]) -> dict[str, dict]:
    return {span["name"]: span for span in found}


def get(port: int, path: str, headers: dict[str, str] | None = None) -> Reply:
    return http_request(port, "GET", path, None, headers or {}, 60)


def test_a_request_continues_the_callers_trace_with_its_queue_batch_and_cell(
        traced: tuple[int, Path]) -> None:
    port, log = traced
    reply = get(port, "/parent", {"traceparent": TRACEPARENT})
    assert reply.status == 200
    named = by_name(spans(log, CALLER_TRACE))
    server = named["GET /parent"]
    assert server["parent_id"] == f"0x{CALLER_SPAN}"
    assert server["attributes"]["http.response.status_code"] == 200
    assert server["resource"]["attributes"]["service.name"] == "traced-test"
    server_id = server["context"]["span_id"]
    assert named["queued"]["parent_id"] == named["kernel execution"]["parent_id"] == server_id
    execution = named["kernel execution"]
    assert execution["attributes"]["gradbook.batch_size"] == 1
    assert named["cell"]["parent_id"] == execution["context"]["span_id"]
    cell_seconds = seconds(named["cell"], "end_time") - seconds(named["cell"], "start_time")
    assert cell_seconds >= 0.2  # the cell sleeps that long
    assert seconds(execution, "end_time") - seconds(execution, "start_time") >= cell_seconds
    # the cell saw the request span as its parent, in the caller's trace
    assert reply.body.decode().strip() == f"00-{CALLER_TRACE}-{server_id[2:]}-01"


def test_a_request_without_a_traceparent_starts_a_trace_the_cell_sees(
        traced: tuple[int, Path]) -> None:
    port, log = traced
    before = len(spans(log))
    traceparent = get(port, "/parent").body.decode().strip()
    _, trace_id, span_id, _ = traceparent.split("-")
    assert trace_id != CALLER_TRACE
    server = by_name(spans(log, trace_id))["GET /parent"]
    assert server["parent_id"] is None and server["context"]["span_id"] == f"0x{span_id}"
    assert len(spans(log)) > before


def test_a_failed_request_is_an_error_span_with_its_error_id(traced: tuple[int, Path]) -> None:
    port, log = traced
    reply = get(port, "/fails", {"traceparent": f"00-{'1' * 32}-{CALLER_SPAN}-01"})
    assert reply.status == 500
    server = by_name(spans(log, "1" * 32))["GET /fails"]
    assert server["status"]["status_code"] == "ERROR"
    assert server["attributes"]["gradbook.error_id"] == reply.json()["error"]["id"]


def test_requests_batched_together_record_the_batch_size(traced: tuple[int, Path]) -> None:
    port, log = traced
    folder = log.parent
    (folder / "release").unlink(missing_ok=True)
    held = threading.Thread(target=get, args=(port, "/hold"))
    held.start()
    time.sleep(0.5)
    traces = [f"{n:032x}" for n in range(0xA1, 0xA4)]
    waiting = [threading.Thread(target=get, args=(port, "/parent",
                                                  {"traceparent": f"00-{t}-{CALLER_SPAN}-01"}))
               for t in traces]
    for thread in waiting:
        thread.start()
    await_queue(port, "traced", 3)
    (folder / "release").write_text("")
    for thread in [held, *waiting]:
        thread.join(60)
    for trace_id in traces:
        execution = by_name(spans(log, trace_id))["kernel execution"]
        assert execution["attributes"]["gradbook.batch_size"] == 3


def test_with_tracing_off_a_request_is_passed_on_as_it_came(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    with gateway(tmp_path_factory.mktemp("untraced"), traced=False) as (port, log):
        assert get(port, "/parent").body == b"none\n"
        assert get(port, "/parent", {"traceparent": TRACEPARENT}).body.decode().strip() == (
            TRACEPARENT)
    assert not [line for line in log.read_text().splitlines() if line.startswith('{"name"')]


def test_a_store_commit_and_a_training_job_continue_the_requests_trace(
        start_service: Callable[..., Service]) -> None:
    """gradbook's API, traced: the kernel's store commit is a child of the request's span, and
    a job queued by a request runs in the training worker as a span of the same trace, its
    commit within it."""
    service = start_service(OTEL_TRACES_EXPORTER="console")
    trace_id = "7" * 32
    headers = {"traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"}
    created = service.post("/models", {"name": "traced", "sizes": [3, 2, 1]}, headers=headers)
    assert created.status == 201
    named = by_name(spans(service.log, trace_id))
    server, commit = named["POST /models"], named["store commit"]
    assert commit["parent_id"] == server["context"]["span_id"]
    assert commit["attributes"] == {"gradbook.model": "traced", "gradbook.change": "created"}

    job_trace = "8" * 32
    job = service.post("/models/traced/train", {"data": "xor", "epochs": 5, "wait": False},
                       headers={"traceparent": f"00-{job_trace}-{CALLER_SPAN}-01"})
    assert job.status == 202 and "traceparent" not in job.json()  # kept for the worker only
    deadline = time.monotonic() + 60
    while service.get(f"/jobs/{job.json()['id']}").json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the job did not succeed"
        time.sleep(0.05)
    for _ in range(50):
        named = by_name(spans(service.log, job_trace))
        if "training job" in named and len(named) >= 3:
            break
        time.sleep(0.1)
    requested = named["POST /models/:name/train"]
    training = named["training job"]
    assert training["parent_id"] == requested["context"]["span_id"]
    assert training["attributes"]["gradbook.job"] == job.json()["id"]
    commits = [span for span in spans(service.log, job_trace) if span["name"] == "store commit"]
    assert [span["parent_id"] for span in commits] == [training["context"]["span_id"]]
    assert commits[0]["attributes"]["gradbook.change"] == f"trained by job {job.json()['id']}"
