"""``python -m gradbook_service.app.trainer``: the training worker,
 which runs the service's training jobs.

Jobs (``gradbook_service.app.jobs``) run here rather than in the pool's kernels, so a long run never
takes a kernel from the requests: predictions keep their speed while models train. The launcher
starts one worker beside the gateway, with numpy's BLAS held to one thread so that a run takes one
core at most (see ``gradbook_service.app.launch._as_worker`` for why not a lower priority too); it
restarts the worker if it stops, and stops it with the service. A worker whose parent is gone stops
too.

Jobs run one at a time, oldest first. Each epoch's loss is written to the job's record at most
every ``PROGRESS_SECONDS`` (and at the end); a cancellation is noticed within
``CANCEL_CHECK_SECONDS`` of the epoch it arrives in, and the run then stops without committing.
A job has a deadline, ``GRADBOOK_MAX_JOB_SECONDS`` from its start: the estimate that admitted it
holds for a quiet machine, and a busy one can take several times as long, so a run still
training then is stopped after its epoch, commits nothing and fails with 504.
A run commits through ``ModelAPI.run_training``, the code that synchronous training runs: one
implementation, the same limits and the same version rules.

What goes wrong here is logged in the service's format (``GRADBOOK_LOG_FORMAT``,
``gradbook_service.gateway.logs``) on the standard error the worker shares with the launcher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gradbook_service.app.api import ModelAPI, training_data
from gradbook_service.app.errors import to_http
from gradbook_service.app.jobs import TRACE, Job, Jobs
from gradbook_service.app.settings import Settings
from gradbook_service.gateway import logs, tracing

from gradbook.network import MLP
from gradbook.store import Store, StoreError, StoreUnavailableError, open_store, timestamp

POLL_SECONDS = 0.2  # between looks for a queued job when there is none
PROGRESS_SECONDS = 0.25  # between writes of a running job's losses
CANCEL_CHECK_SECONDS = 0.1  # between reads of a running job's record for a cancellation
LOCK_WAIT_SECONDS = 300.0  # a job waits this long for another change of its model to finish

log = logging.getLogger("gradbook.trainer")


class JobCancelledError(Exception):
    """Raised from the epoch callback when the job was cancelled: nothing is committed."""


class JobTimedOutError(Exception):
    """Raised from the epoch callback when the job ran past its deadline: nothing is
    committed."""


class JobLostError(Exception):
    """Raised from the epoch callback when the job was ended by someone else (its lease
    lapsed, and another worker ended it): nothing is committed, and its record stays."""


class Progress:
    """The epoch callback of one job: records the losses, and stops the run if cancelled."""

    def __init__(self, jobs: Jobs, job: Job, seconds: float) -> None:
        self.jobs, self.job_id, self.epochs = jobs, job["id"], job["epochs"]
        self.losses: list[float] = []
        self.written = self.checked = time.monotonic()
        self.seconds, self.deadline = seconds, self.written + seconds
        self.parent = os.getppid()

    def __call__(self, epoch: int, loss: float, net: MLP) -> None:
        self.losses.append(float(loss))
        if os.getppid() != self.parent:  # the service is gone: commit nothing it cannot report
            sys.exit(1)
        now = time.monotonic()
        if now > self.deadline:
            raise JobTimedOutError
        # and always after the last epoch: a cancellation that came before the commit stops it
        if now - self.checked >= CANCEL_CHECK_SECONDS or epoch + 1 == self.epochs:
            self.checked = now
            record = self.jobs.get(self.job_id)
            if record["state"] != "running":
                raise JobLostError
            if record["cancel_requested"]:
                raise JobCancelledError
        if now - self.written >= PROGRESS_SECONDS:
            with contextlib.suppress(StoreUnavailableError):  # records busy, or the database
                self.write()  # away: the next write, or the last, catches up

    def write(self) -> None:
        self.written = time.monotonic()
        losses = [loss if loss == loss and abs(loss) != float("inf") else None
                  for loss in self.losses]  # JSON has no NaN or infinity

        def record(job: Job) -> None:
            if job["state"] == "running":  # a finished record is final
                job.update(epoch=len(losses), losses=losses)

        self.jobs.change(self.job_id, record)


@contextmanager
def leased(jobs: Jobs, job: Job, every: float) -> Iterator[None]:
    """Renew the lease on ``job`` every ``every`` seconds while the block runs (from a thread:
    one epoch may take longer than the lease)."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(every):
            try:
                jobs.renew(job["id"])
            except StoreError:  # the database is away; the next renewal may reach it
                continue

    thread = threading.Thread(target=renew, daemon=True, name="gradbook-job-lease")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run(api: ModelAPI, jobs: Jobs, job: Job) -> None:
    """Run ``job`` (claimed: running) to its end, and record how it ended."""
    progress = Progress(jobs, job, api.settings.max_job_seconds)
    with leased(jobs, job, api.settings.job_lease / 3):
        _run(api, jobs, job, progress)


def _run(api: ModelAPI, jobs: Jobs, job: Job, progress: Progress) -> None:
    attributes = {"gradbook.job": job["id"], "gradbook.model": job["model"]}
    with tracing.span("training job", attributes, job.get(TRACE)):
        _train(api, jobs, job, progress)


def _train(api: ModelAPI, jobs: Jobs, job: Job, progress: Progress) -> None:
    try:
        net = api.store.get(job["model"])
        data = training_data(jobs.data(job["id"]), net)
        net, _ = api.run_training(job["model"], data, job["hyperparameters"], progress,
                                  job_id=job["id"])
    except JobLostError:
        return
    except JobCancelledError:
        record_end(jobs, progress, job["id"], "cancelled")
    except JobTimedOutError:
        record_end(jobs, progress, job["id"], "failed", error={
            "status": 504, "message": f"the job ran longer than {progress.seconds:g} s "
            "(GRADBOOK_MAX_JOB_SECONDS) and was stopped; nothing was saved. Train fewer "
            "epochs or examples at a time"})
    except Exception as err:  # every failure ends the job, with what the client would be told
        error = to_http(err)
        if error.status >= 500:
            log.exception("training job %s failed", job["id"])
        record_end(jobs, progress, job["id"], "failed",
            error={"status": error.status, "message": error.message})
    else:
        record_end(jobs, progress, job["id"], "succeeded", version=net.metadata["version"])


def record_end(jobs: Jobs, progress: Progress, job_id: str, state: str, **fields: Any) -> None:
    """Record the job's last losses and how it ended; if the store is away, the job stays
    running until recovery (the next start, or the lapse of its lease) ends it."""
    try:
        progress.write()
        jobs.finish(job_id, state, **fields)
    except StoreError:
        log.exception("training job %s ended %s, and its record could not say so", job_id,
                      state)


def recover(store: Store, jobs: Jobs, stranded: list[Job], why: str) -> int:
    """End the ``stranded`` jobs (a stop left them queued or running): ``succeeded`` if their
    model holds the run they committed (its summary names the job: the stop came between the
    commit and the record), else ``failed`` because of ``why``; how many there were."""
    for job in stranded:
        version = committed_version(store, job)

        def end(record: Job, job: Job = job, version: int | None = version) -> None:
            if record["state"] != job["state"]:  # another worker ended it meanwhile
                return
            if version is not None:
                record.update(state="succeeded", finished=timestamp(), version=version)
            else:
                message = why.format(state=job["state"])
                record.update(state="failed", finished=timestamp(),
                              error={"status": 503, "message": message})

        jobs.end_stranded(job["id"], end)
    return len(stranded)


def committed_version(store: Store, job: Job) -> int | None:
    try:
        _, metadata = store.header(job["model"])
    except StoreError:  # deleted, or damaged: no proof of a commit
        return None
    return next((run.get("version") for run in metadata["runs"] if run.get("job") == job["id"]),
                None)


STRANDED = "the training worker stopped while the job was {state}; nothing was saved"
LAPSED = ("the training worker that ran the job stopped renewing its claim (its replica "
          "stopped?); nothing was saved")


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_format)
    lock_wait = min(LOCK_WAIT_SECONDS, settings.max_job_seconds)
    store = open_store(settings.store, lock_wait, settings.model_cache, settings.keep_versions)
    api = ModelAPI(store, settings)
    jobs = api.jobs
    if not jobs.shared:
        # Only this worker runs jobs: one still "running" was cut short when the last one stopped.
        recover(store, jobs, [job for job in jobs.all() if job["state"] == "running"], STRANDED)
        jobs.rebuild_index()
    parent = os.getppid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Ctrl-C at the service's terminal reaches this process too; the launcher stops it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.getppid() == parent:  # the launcher is gone: so is the service
        try:
            # shared records: any worker ends the jobs of a replica that died (lease ran out)
            recover(store, jobs, jobs.stranded(), LAPSED)
            job: Any = jobs.claim()
            if job is not None:
                run(api, jobs, job)
                jobs.prune()
        except StoreError:  # the database is away: look again later
            log.exception("the training jobs' records could not be read; trying again")
            job = None
        if job is None:
            time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    main()
