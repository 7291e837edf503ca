"""The soak and fault test, shortened: ``bench/soak.py`` (``make soak`` runs the full one, 32
clients for 60 s) with 12 clients for 20 s, a kernel SIGKILLed at 10 s, and the whole service
SIGKILLed mid-train at 12 s and restarted on the same port and store. (The kernel is killed
first: a restart under the load of the rest of the suite may take 10 s, and a kill planned
after it would find the run over.)

The checks are the soak's own, imported from ``bench/soak.py`` rather than repeated: the test
fails if any fails (an answer that is not JSON or has an unexpected status, a hang past the
deadline, a connection error outside the crash, a version that went backwards or a gap that no
unanswered change explains, a model that does not load, a job left unfinished, a stale lock, a
killed kernel not replaced, a process that outlived the crash, kernel memory past its bound).
So that they cannot pass by checking nothing, the other tests here feed the checks outcomes
that are wrong in one way each and expect each to be caught; they start no service.
"""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any, cast

import pytest
import soak  # from bench/, which conftest puts on sys.path

SHORT = soak.Config(clients=12, seconds=20, kill_every=10)


@pytest.mark.xdist_group("gateway")  # CPU of its own, not shared with another gateway test
def test_a_short_soak_loses_nothing(tmp_path: Path) -> None:
    report = soak.run_soak(SHORT, tmp_path)
    print(report.text())
    assert not report.failures, report.text()
    figures = report.figures
    assert figures["successes"] > 100 and figures["kernels_killed"] == 1, report.text()


# -- the checks catch what they should ---------------------------------------------------------
def outcome(op: str, start: float, end: float, status: int | None = 200,
            version: int | None = None, model: str | None = "m", error: str | None = None,
            ) -> soak.Outcome:
    return soak.Outcome(0, op, "POST", f"/models/{model}", model, start, end, status, error,
                        version)


def a_run() -> soak.Run:
    """A run with no service: the checks read only what it recorded."""
    run = soak.Run(SHORT, cast(Any, None))
    run.crash.began, run.crash.killed, run.crash.ready = 10.0, 10.1, 13.0
    return run


def reply(status: int, body: bytes, **headers: str) -> soak.Reply:
    message = http.client.HTTPMessage()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    return soak.Reply(status, message, body)


def test_a_version_that_goes_backwards_is_caught() -> None:
    report = soak.Report(SHORT)
    soak.check_order([outcome("reset", 0, 1, version=3), outcome("predict", 2, 3, version=3),
                      outcome("train", 4, 5, version=4)], report)
    assert report.failures == []
    for late in (outcome("predict", 2, 3, version=2), outcome("put", 2, 3, version=3)):
        report = soak.Report(SHORT)
        soak.check_order([outcome("reset", 0, 1, version=3), late], report)
        assert len(report.failures) == 1 and "went backwards" in report.failures[0]
    report = soak.Report(SHORT)  # a read after a delete: gone, or a newer model
    soak.check_order([outcome("delete", 0, 1, version=3), outcome("get", 2, 3, version=3)],
                     report)
    assert len(report.failures) == 1
    report = soak.Report(SHORT)  # requests that overlap may be answered in either order
    soak.check_order([outcome("reset", 0, 2, version=3), outcome("predict", 1, 3, version=2)],
                     report)
    assert report.failures == []


def test_wrong_answers_are_caught() -> None:
    good = b'{"error": {"status": 503, "message": "the kernel stopped; retry"}}'
    assert soak.check_answer("predict", "m", None, reply(503, good, Retry_After="1"))[0] is None
    for op, wrong in [
        ("predict", reply(503, good)),  # no Retry-After
        ("predict", reply(404, good)),  # the error says another status
        ("predict", reply(200, b"<html>")),
        ("predict", reply(500, b'{"error": {"status": 500, "message": "internal error"}}')),
        ("predict", reply(200, b'{"name": "m", "version": 2, "output": [NaN]}')),
        ("predict", reply(200, b'{"name": "other", "version": 2, "output": [0.5]}')),
        ("job-get", reply(404, b'{"error": {"status": 404, "message": "no job"}}')),
        ("train", reply(200, b'{"name": "m", "version": 2, "history": [0.3]}')),
    ]:
        problem, _ = soak.check_answer(op, "m", {"epochs": 2}, wrong)
        assert problem is not None, (op, wrong)


def test_connection_errors_are_excused_only_during_the_crash() -> None:
    run, report = a_run(), soak.Report(SHORT)
    run.outcomes = [
        outcome("predict", 9.9, 10.05, None, error="cut: ConnectionResetError"),  # in flight
        outcome("predict", 11.0, 11.0, None, error="refused"),  # down
        outcome("predict", 5.0, 5.1, None, error="cut: RemoteDisconnected"),
        outcome("predict", 14.0, 14.0, None, error="refused"),  # after the restart
        outcome("predict", 10.5, 10.6, None, error="cut: ConnectionResetError"),  # after the kill
        outcome("predict", 9.0, 29.0, None, error="timeout: no answer within 20 s"),
    ]
    answered, excused = soak.classify(run, report)
    assert answered == [] and excused == {"cut by the crash": 1, "refused while down": 1}
    assert len(report.failures) == 4


def test_duplicate_and_unexplained_versions_are_caught() -> None:
    run, report = a_run(), soak.Report(SHORT)
    answered = [outcome("create", 0, 1, 201, version=1), outcome("train", 2, 3, version=2),
                outcome("put", 2, 3, version=2)]
    soak.check_versions(run, answered, {"m": 3}, [], report)
    assert any("2 changes answered version 2" in f for f in report.failures)
    assert any("versions [3] of 1..3" in f for f in report.failures)
    report = soak.Report(SHORT)  # a job's commit, and a change the crash cut, explain the rest
    run.outcomes = [outcome("reset", 9.9, 10.05, None, error="cut: ConnectionResetError")]
    jobs = [{"id": "j", "model": "m", "state": "succeeded", "version": 3}]
    soak.check_versions(run, answered[:2], {"m": 4}, jobs, report)
    assert report.failures == []
