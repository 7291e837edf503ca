"""Training jobs: records in the model store's folder, so they outlive the request that made them
and the service itself.

A job is ``POST /models/:name/train`` with ``"wait": false``: the kernel checks the request,
writes a record here and answers 202; the training worker (``service.trainer``, a process of
its own) takes queued jobs one at a time, oldest first, reports each epoch's loss here as it
trains, and commits the model's next version when the run ends. Its life:

    queued ──> running ──> succeeded   (committed: ``version``)
      │           ├──────> failed      (``error``: what went wrong; nothing committed)
      │           └──────> cancelled   (``DELETE /jobs/:id``; nothing committed)
      └──> cancelled, or failed when the service stopped before it ran

Each record is ``.jobs/<id>.json`` (the training data it was sent, which can be large, apart in
``<id>.data.json``), replaced whole on every change, under one lock for all jobs (``flock``),
so a reader never sees half a record and the worker and the kernels never lose each other's
changes. The newest ``MAX_JOBS`` records are kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradbook.store import StoreError, timestamp

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_JOBS = 1000
JOB_ID = re.compile(r"[0-9a-f]{32}")

Job = dict[str, Any]


class JobNotFoundError(StoreError, LookupError):
    pass


class JobStore:
    """The job records of the model store at ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.folder = Path(root) / ".jobs"
        self.folder.mkdir(parents=True, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        if not JOB_ID.fullmatch(job_id):
            raise JobNotFoundError(f"no job {job_id[:40]!r}: a job id is 32 hexadecimal digits")
        try:
            return json.loads(self._record(job_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobNotFoundError(f"no job {job_id!r}") from None

    def all(self) -> list[Job]:
        """Every record, oldest first."""
        jobs = []
        for path in self.folder.glob("*.json"):
            if JOB_ID.fullmatch(path.stem):
                try:
                    jobs.append(json.loads(path.read_text(encoding="utf-8")))
                except (FileNotFoundError, ValueError):  # pruned meanwhile
                    continue
        return sorted(jobs, key=lambda job: job["id"])

    def data(self, job_id: str) -> Any:
        """The training data the job was sent: a data set's name or ``{"X", "Y"}``."""
        return json.loads(self._data(job_id).read_text(encoding="utf-8"))

    # -- changing ----------------------------------------------------------------------------
    def create(self, model: str, hyperparameters: dict[str, Any], data: Any) -> Job:
        """A queued job training ``model`` on ``data`` with ``hyperparameters``."""
        # the time first: ids sort in the order the jobs were made, which is the order they run
        job_id = f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"
        job: Job = {
            "id": job_id, "model": model, "state": "queued",
            "data": data if isinstance(data, str) else "request",
            "hyperparameters": hyperparameters, "epoch": 0,
            "epochs": hyperparameters["epochs"], "losses": [], "version": None, "error": None,
            "cancel_requested": False, "created": timestamp(), "started": None, "finished": None,
        }
        with self._locked():
            _write(self._data(job_id), data)
            _write(self._record(job_id), job)
            self._prune()
        return job

    def change(self, job_id: str, update: Callable[[Job], None]) -> Job:
        """Apply ``update`` to the record under the lock; the changed record."""
        with self._locked():
            job = self.get(job_id)
            update(job)
            _write(self._record(job_id), job)
        return job

    def finish(self, job_id: str, state: str, **fields: Any) -> Job:
        def end(job: Job) -> None:
            job.update(state=state, finished=timestamp(), **fields)

        return self.change(job_id, end)

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (the worker stops
        it after the epoch it is in); a finished one is left as it is."""
        def ask(job: Job) -> None:
            if job["state"] == "queued":
                job.update(state="cancelled", finished=timestamp(), cancel_requested=True)
            elif job["state"] == "running":
                job["cancel_requested"] = True

        return self.change(job_id, ask)

    def claim(self) -> Job | None:
        """The oldest queued job, now running; None if none waits."""
        with self._locked():
            queued = [job for job in self.all() if job["state"] == "queued"]
            if not queued:
                return None
            job = queued[0]
            job.update(state="running", started=timestamp())
            _write(self._record(job["id"]), job)
            return job


    # -- files -------------------------------------------------------------------------------
    def _record(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def _data(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.data.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _prune(self) -> None:
        """Drop the oldest finished records beyond ``MAX_JOBS`` (with the lock held)."""
        jobs = self.all()
        finished = [job for job in jobs if job["state"] in FINISHED]
        for job in finished[: max(len(jobs) - MAX_JOBS, 0)]:
            self._record(job["id"]).unlink(missing_ok=True)
            self._data(job["id"]).unlink(missing_ok=True)


def _write(path: Path, value: Any) -> None:
    staging = path.with_name(f".{path.name}.staging")
    staging.write_text(json.dumps(value), encoding="utf-8")
    os.replace(staging, path)
