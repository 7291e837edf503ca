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

With the PostgreSQL store (``gradbook.pgstore``) the records are rows of its ``jobs`` table
instead (``PostgresJobStore``), shared by every replica: any replica's worker claims the oldest
queued job (``FOR UPDATE SKIP LOCKED``, so two workers never take the same one) and renews a
lease on it while it runs; a running job whose lease ran out lost its worker (its replica died)
and is ended by whichever worker notices first (``service.trainer.recover``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradbook.store import ModelStore, StoreError, timestamp

if TYPE_CHECKING:
    from gradbook.pgstore import PostgresStore

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_JOBS = 1000
JOB_ID = re.compile(r"[0-9a-f]{32}")

Job = dict[str, Any]


class JobNotFoundError(StoreError, LookupError):
    pass


def open_jobs(store: ModelStore | PostgresStore, lease: float = 10.0) -> Jobs:
    """The job records kept with ``store``; ``lease``: seconds a running job of the PostgreSQL
    store stays claimed without its worker renewing it."""
    if isinstance(store, ModelStore):
        return JobStore(store.root)
    return PostgresJobStore(store, lease)


class Jobs(ABC):
    """What both kinds of job records share: a job's life, written once."""

    shared = False  # whether other replicas' workers run these jobs too

    @abstractmethod
    def get(self, job_id: str) -> Job: ...

    @abstractmethod
    def all(self) -> list[Job]:
        """Every record, oldest first."""

    @abstractmethod
    def data(self, job_id: str) -> Any:
        """The training data the job was sent: a data set's name or ``{"X", "Y"}``."""

    @abstractmethod
    def create(self, model: str, hyperparameters: dict[str, Any], data: Any) -> Job:
        """A queued job training ``model`` on ``data`` with ``hyperparameters``."""

    @abstractmethod
    def change(self, job_id: str, update: Callable[[Job], None]) -> Job:
        """Apply ``update`` to the record, atomically; the changed record."""

    @abstractmethod
    def claim(self) -> Job | None:
        """The oldest queued job, now running; None if none waits."""

    def finish(self, job_id: str, state: str, **fields: Any) -> Job:
        """End a job; one that has ended already (recovered by another worker) stays as it
        ended: a finished record is final."""
        def end(job: Job) -> None:
            if job["state"] not in FINISHED:
                job.update(state=state, finished=timestamp(), **fields)

        return self.change(job_id, end)

    def end_stranded(self, job_id: str, update: Callable[[Job], None]) -> None:
        """Apply ``update`` to a stranded job's record (``change``, where only one worker runs
        jobs; the PostgreSQL records check again, under the row lock, that it is stranded)."""
        self.change(job_id, update)

    def cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (the worker stops
        it after the epoch it is in); a finished one is left as it is."""
        def ask(job: Job) -> None:
            if job["state"] == "queued":
                job.update(state="cancelled", finished=timestamp(), cancel_requested=True)
            elif job["state"] == "running":
                job["cancel_requested"] = True

        return self.change(job_id, ask)

    def renew(self, job_id: str) -> None:
        """Extend the lease of a running job (its worker is alive); folder records have none."""
        return

    def stranded(self) -> list[Job]:
        """Running jobs whose worker is gone: those whose lease ran out (none for folders, where
        the one worker recovers its own at start)."""
        return []

    @staticmethod
    def new_record(model: str, hyperparameters: dict[str, Any], data: Any) -> Job:
        # the time first: ids sort in the order the jobs were made, which is the order they run
        job_id = f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"
        return {
            "id": job_id, "model": model, "state": "queued",
            "data": data if isinstance(data, str) else "request",
            "hyperparameters": hyperparameters, "epoch": 0,
            "epochs": hyperparameters["epochs"], "losses": [], "version": None, "error": None,
            "cancel_requested": False, "created": timestamp(), "started": None, "finished": None,
        }


def check_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFoundError(f"no job {job_id[:40]!r}: a job id is 32 hexadecimal digits")
    return job_id


class JobStore(Jobs):
    """The job records of the model store at ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.folder = Path(root) / ".jobs"
        self.folder.mkdir(parents=True, exist_ok=True)

    # -- reading -----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        try:
            return json.loads(self._record(check_id(job_id)).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobNotFoundError(f"no job {job_id!r}") from None

    def all(self) -> list[Job]:
        jobs = []
        for path in self.folder.glob("*.json"):
            if JOB_ID.fullmatch(path.stem):
                try:
                    jobs.append(json.loads(path.read_text(encoding="utf-8")))
                except (FileNotFoundError, ValueError):  # pruned meanwhile
                    continue
        return sorted(jobs, key=lambda job: job["id"])

    def data(self, job_id: str) -> Any:
        return json.loads(self._data(job_id).read_text(encoding="utf-8"))

    # -- changing ----------------------------------------------------------------------------
    def create(self, model: str, hyperparameters: dict[str, Any], data: Any) -> Job:
        job = self.new_record(model, hyperparameters, data)
        with self._locked():
            _write(self._data(job["id"]), data)
            _write(self._record(job["id"]), job)
            self._prune()
        return job

    def change(self, job_id: str, update: Callable[[Job], None]) -> Job:
        with self._locked():
            job = self.get(job_id)
            update(job)
            _write(self._record(job_id), job)
        return job

    def claim(self) -> Job | None:
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


LAPSED = "state = 'running' AND lease_until < now()"  # a running job whose worker is gone


class PostgresJobStore(Jobs):
    """The job records of a PostgreSQL store: rows of its ``jobs`` table."""

    shared = True

    def __init__(self, store: PostgresStore, lease: float) -> None:
        self.store, self.lease = store, lease

    def get(self, job_id: str) -> Job:
        with self.store.connection() as conn:
            row = conn.execute("SELECT record FROM jobs WHERE id = %s",
                               (check_id(job_id),)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return json.loads(row[0])

    def all(self) -> list[Job]:
        with self.store.connection() as conn:
            rows = conn.execute("SELECT record FROM jobs ORDER BY id").fetchall()
        return [json.loads(record) for (record,) in rows]

    def data(self, job_id: str) -> Any:
        with self.store.connection() as conn:
            row = conn.execute("SELECT data FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return json.loads(row[0])

    def create(self, model: str, hyperparameters: dict[str, Any], data: Any) -> Job:
        job = self.new_record(model, hyperparameters, data)
        with self.store.connection() as conn, conn.transaction():
            conn.execute("INSERT INTO jobs (id, state, record, data) VALUES (%s, %s, %s, %s)",
                         (job["id"], job["state"], json.dumps(job), json.dumps(data)))
            conn.execute(  # the oldest finished records beyond the newest MAX_JOBS
                "DELETE FROM jobs WHERE state = ANY(%s) AND id < ALL("
                "SELECT id FROM jobs ORDER BY id DESC LIMIT %s)", (list(FINISHED), MAX_JOBS))
        return job

    def change(self, job_id: str, update: Callable[[Job], None]) -> Job:
        with self.store.connection() as conn, conn.transaction():
            row = conn.execute("SELECT record FROM jobs WHERE id = %s FOR UPDATE",
                               (check_id(job_id),)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job {job_id!r}")
            job = json.loads(row[0])
            update(job)
            conn.execute("UPDATE jobs SET state = %s, record = %s WHERE id = %s",
                         (job["state"], json.dumps(job), job_id))
        return job

    def claim(self) -> Job | None:
        """The oldest queued job no other worker is claiming, now running under a lease."""
        with self.store.connection() as conn, conn.transaction():
            row = conn.execute("SELECT record FROM jobs WHERE state = 'queued' ORDER BY id "
                               "LIMIT 1 FOR UPDATE SKIP LOCKED").fetchone()
            if row is None:
                return None
            job = json.loads(row[0])
            job.update(state="running", started=timestamp())
            conn.execute("UPDATE jobs SET state = 'running', record = %s, lease_until = "
                         "now() + make_interval(secs => %s) WHERE id = %s",
                         (json.dumps(job), self.lease, job["id"]))
        return job

    def renew(self, job_id: str) -> None:
        with self.store.connection() as conn:
            conn.execute("UPDATE jobs SET lease_until = now() + make_interval(secs => %s) "
                         "WHERE id = %s AND state = 'running'", (self.lease, job_id))

    def stranded(self) -> list[Job]:
        with self.store.connection() as conn:
            rows = conn.execute("SELECT record FROM jobs WHERE " + LAPSED).fetchall()
        return [json.loads(record) for (record,) in rows]

    def end_stranded(self, job_id: str, update: Callable[[Job], None]) -> None:
        # SKIP LOCKED: another worker recovering it, or its own worker writing, decides
        with self.store.connection() as conn, conn.transaction():
            row = conn.execute(f"SELECT record FROM jobs WHERE id = %s AND {LAPSED} "
                               "FOR UPDATE SKIP LOCKED", (job_id,)).fetchone()
            if row is None:  # renewed, or ended, meanwhile
                return
            job = json.loads(row[0])
            update(job)
            conn.execute("UPDATE jobs SET state = %s, record = %s WHERE id = %s",
                         (job["state"], json.dumps(job), job_id))


def _write(path: Path, value: Any) -> None:
    staging = path.with_name(f".{path.name}.staging")
    staging.write_text(json.dumps(value), encoding="utf-8")
    os.replace(staging, path)
