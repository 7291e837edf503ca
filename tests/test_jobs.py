"""Training jobs (``"wait": false``), and health that never waits for a kernel.

A job is answered 202 at once, trains in the training worker (a process beside the kernels),
shows its progress while it runs, commits one new version when it succeeds and nothing when it
fails or is cancelled, and keeps its record across a restart, where a job cut short shows
``failed`` with why. Against one service of this module's own (2 kernels, a token).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Reply, Service
from gradbook_service.app.api import ModelAPI
from gradbook_service.app.jobs import JobStore
from gradbook_service.app.settings import Settings
from gradbook_service.app.trainer import recover
from gradbook_service.app.training import named_data, new_model
from procs import trainer_pids

from gradbook.store import ModelStore

pytestmark = pytest.mark.xdist_group("gateway")

TOKEN = "jobs-token"
LONG = {"data": "digits", "epochs": 5000, "batch_size": 32}  # several seconds in the worker
FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def service(start_service: Callable[..., Service]) -> Service:
    return start_service(token=TOKEN)


def submit(service: Service, name: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = service.post(f"/models/{name}/train", {**body, "wait": False})
    assert reply.status == 202, reply.body
    job = reply.json()
    assert reply.headers["Location"] == f"/jobs/{job['id']}"
    assert job["state"] == "queued" and job["model"] == name
    return job


def wait_for(service: Service, job_id: str, done: Callable[[dict[str, Any]], bool],
             seconds: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job = service.get(f"/jobs/{job_id}").json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job stuck: {job}"
        time.sleep(0.05)


def finished(job: dict[str, Any]) -> bool:
    return job["state"] in FINISHED


def version(service: Service, name: str) -> int:
    return service.get(f"/models/{name}").json()["version"]


def cancel_everything(service: Service) -> None:
    for job in service.get("/jobs").json()["jobs"]:
        if job["state"] in ("queued", "running"):
            service.post(f"/jobs/{job['id']}/cancel")
            wait_for(service, job["id"], finished)


def test_a_job_is_accepted_at_once_and_commits_one_version(service: Service) -> None:
    before = version(service, "xor")
    job = submit(service, "xor", {"data": "xor", "epochs": 300, "lr": 1.5})
    assert job["epochs"] == 300 and job["version"] is None and job["losses"] == []
    assert job["hyperparameters"] == {"lr": 1.5, "epochs": 300, "batch_size": None}
    done = wait_for(service, job["id"], finished)
    assert done["state"] == "succeeded", done
    assert done["version"] == before + 1 == version(service, "xor")
    assert done["epoch"] == 300 and len(done["losses"]) == 300
    assert done["losses"][-1] < done["losses"][0]
    assert done["error"] is None and done["started"] <= done["finished"]
    run = service.get("/models/xor").json()["training"]["history"][-1]
    assert (run["epochs"], run["lr"], run["loss_end"]) == (300, 1.5, done["losses"][-1])
    listed = {j["id"]: j for j in service.get("/jobs").json()["jobs"]}
    assert listed[job["id"]]["state"] == "succeeded" and "losses" not in listed[job["id"]]
    assert listed[job["id"]]["loss"] == done["losses"][-1]


def test_a_running_job_shows_its_progress_and_cancelling_commits_nothing(
    service: Service,
) -> None:
    before = version(service, "digits")
    job = submit(service, "digits", LONG)
    running = wait_for(service, job["id"], lambda j: j["state"] != "queued" and j["epoch"] > 0)
    assert running["state"] == "running" and 0 < running["epoch"] < LONG["epochs"]
    assert len(running["losses"]) == running["epoch"]
    # predictions and reads are served meanwhile
    assert service.post("/models/digits/predict", {"x": [0] * 64}).status == 200
    assert service.get("/jobs/" + job["id"]).json()["state"] == "running"
    cancelled = service.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status == 202 and cancelled.json()["cancel_requested"] is True
    done = wait_for(service, job["id"], finished)
    assert done["state"] == "cancelled" and done["version"] is None, done
    assert version(service, "digits") == before
    again = service.post(f"/jobs/{job['id']}/cancel")  # it has ended: nothing to cancel
    assert again.status == 409 and "cancelled already" in again.json()["error"]["message"]
    assert service.delete(f"/jobs/{job['id']}").status == 405  # cancelling is not deleting


def test_a_queued_job_is_cancelled_at_once(service: Service) -> None:
    first = submit(service, "digits", LONG)
    second = submit(service, "xor", {"data": "xor", "epochs": 10})
    wait_for(service, first["id"], lambda j: j["state"] == "running")
    reply = service.post(f"/jobs/{second['id']}/cancel")
    assert reply.status == 200 and reply.json()["state"] == "cancelled"
    service.post(f"/jobs/{first['id']}/cancel")
    assert wait_for(service, first["id"], finished)["state"] == "cancelled"
    assert service.get(f"/jobs/{second['id']}").json()["epoch"] == 0  # it never ran


def test_a_job_whose_loss_diverges_fails_with_422_and_commits_nothing(service: Service) -> None:
    assert service.post("/models", {"name": "j-relu", "sizes": [3, 4, 2], "activation": "relu",
                                    "loss": "cross_entropy"}).status == 201
    huge = {"X": [[1e300, 1e300, -1e300], [1, 2, 3]], "Y": [1, 0]}
    done = wait_for(service, submit(service, "j-relu", {"data": huge, "lr": 1000})["id"],
                    finished)
    assert done["state"] == "failed" and done["error"]["status"] == 422, done
    assert "NaN or infinite" in done["error"]["message"]
    assert None in done["losses"]  # a loss that was not finite, as JSON can hold it
    assert version(service, "j-relu") == 1
    synchronous = service.post("/models/j-relu/train", {"data": huge, "lr": 1000})
    assert synchronous.status == 422 and version(service, "j-relu") == 1
    assert service.delete("/models/j-relu").status == 200


def test_a_job_is_checked_before_it_is_queued(service: Service) -> None:
    for body, status in [({"data": "mnist"}, 400), ({"data": "xor", "wait": "no"}, 400),
                         ({"data": "xor", "epochs": 0}, 400)]:
        reply = service.post("/models/xor/train", {**body, "wait": body.get("wait", False)})
        assert reply.status == status, (body, reply.body)
    assert service.post("/models/nothing/train", {"data": "xor", "wait": False}).status == 404


def test_unknown_and_finished_jobs(service: Service) -> None:
    assert service.get("/jobs/" + "0" * 32).status == 404
    assert service.get("/jobs/not-a-job").status == 404
    assert service.post("/jobs/" + "f" * 32 + "/cancel").status == 404
    done = wait_for(service, submit(service, "xor", {"data": "xor", "epochs": 5})["id"],
                    finished)
    reply = service.post(f"/jobs/{done['id']}/cancel")
    assert reply.status == 409 and "succeeded" in reply.json()["error"]["message"]
    assert service.get("/jobs", token="").status == 401
    assert service.get(f"/jobs/{done['id']}", token="").status == 401


def test_health_answers_while_every_kernel_trains(service: Service) -> None:
    """Two synchronous runs hold both kernels; liveness and readiness answer meanwhile, with
    the runs still going (health is the gateway's, not a kernel's)."""
    assert service.post("/models", {"name": "j-other", "sizes": [64, 10],
                                    "loss": "cross_entropy"}).status == 201
    replies: list[Reply] = []
    runs = [threading.Thread(target=lambda name=name, epochs=epochs: replies.append(service.post(
        f"/models/{name}/train", {"data": "digits", "epochs": epochs, "batch_size": 8},
        timeout=120))) for name, epochs in [("digits", 600), ("j-other", 1000)]]
    try:
        for run in runs:
            run.start()
        time.sleep(1.0)
        health, ready = service.get("/healthz", token=""), service.get("/readyz", token="")
        assert not replies, "the runs ended before health was asked: make them longer"
        assert health.status == 200 and health.json()["kernels"] == 2
        assert ready.status == 200  # the queue has room
    finally:
        for run in runs:
            run.join(timeout=120)
        service.delete("/models/j-other")
    assert sorted(reply.status for reply in replies) == [200, 200]


def test_a_worker_that_dies_is_replaced_and_its_job_shows_failed(service: Service) -> None:
    before = version(service, "digits")
    job = submit(service, "digits", LONG)
    wait_for(service, job["id"], lambda j: j["state"] == "running")
    [worker] = trainer_pids(service.process.pid)
    os.kill(worker, signal.SIGKILL)
    done = wait_for(service, job["id"], finished)
    assert done["state"] == "failed" and "worker stopped" in done["error"]["message"], done
    assert version(service, "digits") == before
    later = wait_for(service, submit(service, "xor", {"data": "xor", "epochs": 5})["id"],
                     finished)
    assert later["state"] == "succeeded"  # the new worker runs jobs
    assert trainer_pids(service.process.pid) != [worker]


def test_recovery_tells_a_committed_job_from_one_cut_short(tmp_path: Path) -> None:
    """``gradbook_service.app.trainer.recover`` on two jobs left running: the one whose run the
    model holds succeeded with that version, the other failed."""
    store, jobs = ModelStore(tmp_path), JobStore(tmp_path)
    net = new_model([3, 1], "sigmoid", "half_sse", False, 0, {})
    store.create("m", net)
    hyperparameters = {"lr": 1.0, "epochs": 2, "batch_size": None}
    done, cut = (jobs.create("m", hyperparameters, "xor") for _ in range(2))
    assert [jobs.claim()["id"] for _ in range(2)] == [done["id"], cut["id"]]  # both running
    api = ModelAPI(store, Settings())
    api.run_training("m", named_data("xor"), hyperparameters, job_id=done["id"])
    running = [job for job in jobs.all() if job["state"] == "running"]
    assert recover(store, jobs, running, "stopped while {state}") == 2
    assert (jobs.get(done["id"])["state"], jobs.get(done["id"])["version"]) == ("succeeded", 2)
    assert jobs.get(cut["id"])["state"] == "failed"
    assert jobs.get(cut["id"])["error"] == {"status": 503, "message": "stopped while running"}


def test_a_job_whose_worker_dies_just_after_the_commit_shows_succeeded(service: Service) -> None:
    """The worker is killed as soon as the model's file changes: between the commit and the
    record, if the kill is quick enough, else after both. Either way the job ends succeeded with
    the version it committed (the model's run summary names the job)."""
    model = service.store / "digits.npz"
    before, committed = version(service, "digits"), model.stat().st_mtime_ns
    job = submit(service, "digits", {"data": "digits", "epochs": 300, "batch_size": 32})
    deadline = time.monotonic() + 60
    while model.stat().st_mtime_ns == committed:
        assert time.monotonic() < deadline, "the job never committed"
    for worker in trainer_pids(service.process.pid):
        os.kill(worker, signal.SIGKILL)
    done = wait_for(service, job["id"], finished)
    assert (done["state"], done["version"]) == ("succeeded", before + 1), done
    run = service.get("/models/digits").json()["training"]["history"][-1]
    assert (run["job"], run["version"]) == (job["id"], before + 1)


def test_job_records_survive_a_restart_and_a_cut_short_job_shows_failed(
    service: Service,
) -> None:
    cancel_everything(service)
    kept = wait_for(service, submit(service, "xor", {"data": "xor", "epochs": 5})["id"],
                    finished)
    before = version(service, "digits")
    cut = submit(service, "digits", LONG)
    wait_for(service, cut["id"], lambda j: j["state"] == "running" and j["epoch"] > 0)
    waiting = submit(service, "xor", {"data": "xor", "epochs": 5})
    service.restart()
    assert service.get(f"/jobs/{kept['id']}").json() == kept
    for job_id, state in [(cut["id"], "running"), (waiting["id"], "queued")]:
        job = service.get(f"/jobs/{job_id}").json()
        assert job["state"] == "failed", job
        assert job["error"] == {"status": 503, "message": f"the service stopped while the job "
                                                          f"was {state}; nothing was saved"}
    assert version(service, "digits") == before
