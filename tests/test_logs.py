"""The service's log (``gradbook_service.gateway.logs``, ``GRADBOOK_LOG_FORMAT``): one format for
every
record, one access line per request with its kernel and batch, the readiness probes of a
starting service at info level, and one JSON object per line for a log pipeline.

Each test that needs a service starts its own (a real ``python -m gradbook_service.app.launch``),
makes its requests, stops it and reads its whole log.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Service, gateway_env

pytestmark = pytest.mark.xdist_group("stops")  # services of their own: beside the gateway tests

GRADBOOK = Path(sys.executable).with_name("gradbook")  # the console script of this install
TOKEN = "l0g-t0ken-never-logged"
PREDICT = "/models/xor/predict"
# [I 2026-12-07 13:06:25.482 gradbook.access] message
RECORD = re.compile(r"\[([DIWEC]) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ([\w.]+)\] (.*)")
ACCESS = re.compile(r"(\S+) (\S+) (\d{3}) (\d+\.\d\d)ms(?: kernel=(\S+) batch=(\d+))?")
LEVELS = {"D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "C": "CRITICAL"}


def requests(service: Service) -> dict[str, Any]:
    """The requests each test makes, their replies by name."""
    replies = {
        "models": service.get("/models"),
        "predict": service.post(PREDICT, {"X": [[0, 1, 1]]}),
        "unknown path": service.get("/nope"),  # answered by the gateway: no kernel
        "unknown model": service.get("/models/nope"),  # a kernel's 404
    }
    assert [reply.status for reply in replies.values()] == [200, 200, 404, 404]
    return replies


def served(service: Service, fault: bool = False) -> tuple[str, dict[str, Any]]:
    """Make ``requests`` of a started service (and, with ``fault``, one that a kernel fails
    with 500: a damaged model file), stop it: its whole log, and the replies."""
    try:
        replies = requests(service)
        if fault:
            (Path(service.store) / "damaged.npz").write_bytes(b"not a model")
            replies["fault"] = service.get("/models/damaged")
            assert replies["fault"].status == 500
    finally:
        service.stop()
    return service.log.read_text(), replies


@pytest.fixture(scope="module")
def text_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], dict]:
    """The records of a service's text log (each a dict: level, time, logger, message), and
    its replies."""
    log, replies = served(Service(tmp_path_factory.mktemp("text")))
    records = []
    for line in filter(None, log.splitlines()):
        match = RECORD.fullmatch(line)
        assert match, f"not a record of the log's one format: {line!r}\n{log[-3000:]}"
        level, time, logger, message = match.groups()
        records.append({"level": LEVELS[level], "time": time, "logger": logger,
                        "message": message, "line": line})
    return records, replies


@pytest.fixture(scope="module")
def json_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], dict, str]:
    """The records of a service's JSON log (with a token), its replies and its raw text."""
    service = Service(tmp_path_factory.mktemp("json"), token=TOKEN,
                      env={"GRADBOOK_LOG_FORMAT": "json"})
    log, replies = served(service, fault=True)
    records = []
    for line in filter(None, log.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"a line of the JSON log is not JSON: {line!r}")
        assert isinstance(record, dict), line
        records.append(record)
    return records, replies, log


def access_lines(records: list[dict[str, Any]], method: str, path: str) -> list[dict[str, Any]]:
    """The text log's access records of ``method path``, parsed."""
    found = []
    for record in records:
        if record["logger"] != "gradbook.access":
            continue
        match = ACCESS.fullmatch(record["message"])
        assert match, f"an access line not in its form: {record['line']!r}"
        m, p, status, ms, kernel, batch = match.groups()
        if (m, p) == (method, path):
            found.append({**record, "status": int(status), "ms": float(ms), "kernel": kernel,
                          "batch": None if batch is None else int(batch)})
    return found


# -- text ------------------------------------------------------------------------------------
def test_every_line_is_a_record_in_one_format(text_log) -> None:
    """One timestamp format for all: no bare prints, no tornado or traitlets formats; the
    launcher's own lines are records too."""
    records, _ = text_log
    times = [datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S.%f") for record in records]
    assert times == sorted(times)  # one clock, in order
    loggers = {record["logger"] for record in records}
    assert {"gradbook", "gradbook.access", "KernelGatewayApp"} <= loggers, loggers
    messages = [record["message"] for record in records]
    assert sum(m.startswith("gradbook service listening on http://") for m in messages) == 1
    assert sum(m.startswith("first start: training xor, digits") for m in messages) == 1
    assert messages[-1] == "gradbook service stopped"
    assert sum(m.startswith("Kernel shutdown:") for m in messages) == 2


def test_no_record_is_written_twice(text_log) -> None:
    records, _ = text_log
    lines = [record["line"] for record in records]
    twice = {line for line in lines if lines.count(line) > 1}
    assert not twice, twice


def test_every_request_has_one_access_line(text_log) -> None:
    records, replies = text_log
    expected = {  # method, path: status, level, served by a kernel
        ("GET", "/models"): (200, "INFO", replies["models"]),
        ("POST", PREDICT): (200, "INFO", replies["predict"]),
        ("GET", "/nope"): (404, "WARNING", None),
        ("GET", "/models/nope"): (404, "WARNING", replies["unknown model"]),
    }
    for (method, path), (status, level, kernel_reply) in expected.items():
        lines = access_lines(records, method, path)
        assert len(lines) == 1, (method, path, lines)
        line = lines[0]
        assert (line["status"], line["level"]) == (status, level), line
        assert 0 < line["ms"] < 120_000, line
        if kernel_reply is None:
            assert line["kernel"] is None and line["batch"] is None, line
        else:
            assert line["kernel"] == kernel_reply.headers["X-Gradbook-Kernel"], line
            assert line["batch"] == 1, line  # a lone request: a batch of one
    # the requests the test client made to start (probes, diagnostics, the description)
    assert len(access_lines(records, "GET", "/openapi.json")) == 1
    assert access_lines(records, "GET", "/readyz")[-1]["status"] == 200


def test_readiness_probes_of_a_starting_service_are_info(text_log) -> None:
    """/readyz answers 503 while the kernels start: that is no error, and not a warning."""
    records, _ = text_log
    starting = [line for line in access_lines(records, "GET", "/readyz") if line["status"] == 503]
    assert starting, "no 503 from /readyz while the service started"
    assert {line["level"] for line in starting} == {"INFO"}
    assert not [record for record in records if record["level"] in ("ERROR", "CRITICAL")
                and "stopping" not in record["message"]]


# -- json ------------------------------------------------------------------------------------
def test_every_line_of_the_json_log_is_a_record(json_log) -> None:
    records, _, _ = json_log
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert list(record)[:4] == ["time", "level", "logger", "message"], record
        when = datetime.fromisoformat(record["time"])  # ISO 8601, with its zone
        assert when.utcoffset() is not None, record
        assert record["level"] in LEVELS.values(), record
        assert isinstance(record["logger"], str) and isinstance(record["message"], str)
    messages = [record["message"] for record in records]
    assert sum(m.startswith("gradbook service listening on") for m in messages) == 1
    assert messages[-1] == "gradbook service stopped"
    lines = [json.dumps(record) for record in records]
    assert len(set(lines)) == len(lines), "a record written twice"
    errors = [record for record in records if record["level"] in ("ERROR", "CRITICAL")
              and "stopping" not in record["message"]]  # a worker that died would be one
    # but the kernel's fault, its traceback inside the record, and its access line
    assert len(errors) == 2, errors
    fault, access = sorted(errors, key=lambda record: record["logger"] == "gradbook.access")
    assert fault["logger"] == "gradbook.kernel" and "get_model failed" in fault["message"]
    assert "Traceback" in fault["exc_info"] and "damaged" in fault["exc_info"]
    assert (access["logger"], access["path"], access["status"]) == (
        "gradbook.access", "/models/damaged", 500)


def test_json_access_records_have_their_fields(json_log) -> None:
    records, replies, _ = json_log
    access = [record for record in records if record["logger"] == "gradbook.access"]
    for record in access:
        assert {"method", "path", "status", "ms", "kernel", "batch"} <= set(record), record
        assert isinstance(record["status"], int) and isinstance(record["ms"], float)
        assert record["message"].startswith(
            f"{record['method']} {record['path']} {record['status']} ")
    by_request = {}
    for record in access:
        by_request.setdefault((record["method"], record["path"]), []).append(record)
    predict = by_request[("POST", PREDICT)]
    assert len(predict) == 1 and predict[0]["status"] == 200 and predict[0]["level"] == "INFO"
    assert predict[0]["kernel"] == replies["predict"].headers["X-Gradbook-Kernel"]
    assert predict[0]["batch"] == 1
    assert [(r["status"], r["level"]) for r in by_request[("GET", "/models")]] == [(200, "INFO")]
    (unknown,) = by_request[("GET", "/nope")]
    assert (unknown["status"], unknown["level"], unknown["kernel"], unknown["batch"]) == \
        (404, "WARNING", None, None)
    probes = by_request[("GET", "/readyz")]
    assert {r["level"] for r in probes if r["status"] == 503} <= {"INFO"}


def test_the_token_and_bodies_stay_out_of_the_log(json_log) -> None:
    """Every request carried the token in its Authorization header; none is logged, nor the
    bodies."""
    _, _, log = json_log
    assert TOKEN not in log and "Authorization" not in log
    assert '"X"' not in log and "[[0, 1, 1]]" not in log


# -- the setting -----------------------------------------------------------------------------
@pytest.mark.parametrize(("arguments", "env", "named"), [
    (["serve", "--log-format", "xml"], {}, "--log-format must be text or json; got 'xml'"),
    (["serve"], {"GRADBOOK_LOG_FORMAT": "xml"},
     "GRADBOOK_LOG_FORMAT must be text or json; got 'xml'"),
], ids=["flag", "variable"])
def test_a_bad_log_format_is_one_line_and_exit_status_2(arguments: list[str], env: dict[str, str],
                                                        named: str, tmp_path: Path) -> None:
    shown = subprocess.run([str(GRADBOOK), *arguments], env={**gateway_env(ROOT), **env},
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 2, shown
    assert named in shown.stderr and len(shown.stderr.strip().splitlines()) == 1, shown.stderr
    assert not list(tmp_path.iterdir())  # nothing was started or written


# -- the set-up itself, as the training worker uses it ---------------------------------------
CONFIGURED = textwrap.dedent("""
    import logging, sys, warnings
    own = logging.getLogger("library")  # a library's logger with a handler of its own
    own.addHandler(logging.StreamHandler(sys.stderr))
    from gradbook_service.gateway import logs
    from tornado.log import app_log
    logs.configure(sys.argv[1])
    own.info("from a library")
    app_log.warning("from tornado")
    warnings.warn("a warning", UserWarning, stacklevel=1)
    try:
        1 / 0
    except ZeroDivisionError:
        logging.getLogger("gradbook.trainer").exception("a failure")
    logging.getLogger("gradbook").debug("not shown")
""")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_writes_each_record_once_in_the_format(log_format: str) -> None:
    """Records of a logger that had a handler of its own, tornado's, Python's warnings and an
    exception's traceback: each written once, in the format, on standard error."""
    done = subprocess.run([sys.executable, "-c", CONFIGURED, log_format], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert [(r["level"], r["logger"]) for r in records] == [
            ("INFO", "library"), ("WARNING", "tornado.application"),
            ("WARNING", "py.warnings"), ("ERROR", "gradbook.trainer")]
        assert records[-1]["message"] == "a failure"
        assert "ZeroDivisionError" in records[-1]["exc_info"]
    else:
        records = [RECORD.fullmatch(line) for line in lines if line.startswith("[")]
        assert [(m.group(1), m.group(3)) for m in records] == [
            ("I", "library"), ("W", "tornado.application"), ("W", "py.warnings"),
            ("E", "gradbook.trainer")]
        assert lines[-1] == "ZeroDivisionError: division by zero"  # the traceback follows
        assert "from a library" in lines[0] and lines.count(lines[0]) == 1
