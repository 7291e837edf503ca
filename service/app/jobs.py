"""Training jobs: records in the model store's folder, so they outlive the request that made them
and the service itself.

A job is ``POST /models/:name/train`` with ``"wait": false``: the kernel checks the request,
writes a record here and answers 202; the training worker
(``gradbook_service.app.trainer``, a process of
its own) takes queued jobs one at a time, oldest first, reports each epoch's loss here as it
trains, and commits the model's next version when the run ends. Its life:

    queued ──> running ──> succeeded   (committed: ``version``)
      │           ├──────> failed      (``error``: what went wrong; nothing committed)
      │           └──────> cancelled   (``POST /jobs/:id/cancel``; nothing committed)
      └──> cancelled, or failed when the service stopped before it ran

Each record is ``.jobs/<id>.json`` (the training data it was sent, which can be large, apart in
``<id>.data.json`` until the job ends), replaced whole on every change, under one lock for all
jobs (``flock``, waited for ``lock_timeout`` seconds at most, then 503), so a reader never sees
half a record and the worker and the kernels never lose each other's changes. The jobs not
finished are indexed in ``.jobs/queue.json`` with the bytes of their data, so that creating a
job and claiming one read that small file, never every record: their cost does not grow with
the number of records kept. The newest ``MAX_JOBS`` records are kept (``prune``, which the
worker calls).

**Bounded.** At most ``max_queued`` jobs wait, and the training data of the jobs not finished
takes at most ``max_bytes``: past either a new job is refused with 429 (``JobQueueFullError``)
and ``Retry-After``, before anything is written.

With the PostgreSQL store (``gradbook.pgstore``) the records are rows of its ``jobs`` table
instead (``PostgresJobStore``), shared by every replica: any replica's worker claims the oldest
queued job (``FOR UPDATE SKIP LOCKED``, so two workers never take the same one) and renews a
lease on it while it runs; a running job whose lease ran out lost its worker (its replica died)
and is ended by whichever worker notices first (``gradbook_service.app.trainer.recover``).
"""

from __future__ import annotations

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

from gradbook.store import (
    ModelStore,
    StoreError,
    StoreUnavailableError,
    flocked,
    private_folder,
    timestamp,
)

if TYPE_CHECKING:
    from gradbook.pgstore import PostgresStore

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_JOBS = 1000
TRACE = "traceparent"  # a job's record: the trace of the request that made it
JOB_ID = re.compile(r"[0-9a-f]{32}")
QUEUE_RETRY_SECONDS = 5  # Retry-After of a 429: about what a small job takes to run
MAX_QUEUED = 100  # the defaults of GRADBOOK_MAX_QUEUED_JOBS, GRADBOOK_MAX_JOB_BYTES
MAX_BYTES = 64 * 2**20

Job = dict[str, Any]


class JobNotFoundError(StoreError, LookupError):
    pass


class JobEndedError(StoreError):
    """A job that has ended (succeeded, failed or cancelled) cannot be cancelled."""


class JobQueueFullError(StoreError):
    """Too many jobs wait, or their data would take too much room: 429, retry later."""


class JobsBusyError(StoreUnavailableError):
    """The job records stayed locked for longer than the lock timeout: 503, retry."""


def open_jobs(store: ModelStore | PostgresStore, lease: float = 10.0,
              max_queued: int = MAX_QUEUED, max_bytes: int = MAX_BYTES) -> Jobs:
    """The job records kept with ``store``; ``lease``: seconds a running job of the PostgreSQL
    store stays claimed without its worker renewing it; ``max_queued`` jobs may wait, with
    ``max_bytes`` of training data among the jobs not finished."""
    if isinstance(store, ModelStore):
        return JobStore(store.root, store.lock_timeout, max_queued, max_bytes)
    return PostgresJobStore(store, lease, max_queued, max_bytes)


class Jobs(ABC):
    """What both kinds of job records share: a job's life, written once."""

    shared = False  # whether other replicas' workers run these jobs too
    max_queued, max_bytes = MAX_QUEUED, MAX_BYTES

    def check_room(self, queued: int, data_bytes: int, new_bytes: int) -> None:
        """Refuse one more job when ``queued`` wait already, or when its ``new_bytes`` of data
        would take the data of the jobs not finished past ``max_bytes``."""
        if queued >= self.max_queued:
            raise JobQueueFullError(f"{queued} training jobs wait already, the most allowed "
                                    "(GRADBOOK_MAX_QUEUED_JOBS); retry once some have run")
        if data_bytes + new_bytes > self.max_bytes:
            raise JobQueueFullError(
                f"the job's data ({new_bytes} bytes) and that of the jobs not finished "
                f"({data_bytes} bytes) would exceed {self.max_bytes} bytes "
                "(GRADBOOK_MAX_JOB_BYTES); retry once some have run, or send less data")

    @abstractmethod
    def prune(self) -> None:
        """Drop the oldest finished records beyond the newest ``MAX_JOBS``."""

    def rebuild_index(self) -> None:
        """Make what indexes the jobs not finished again from the records (folder records, at
        start); the database's index needs no help."""
        return

    @abstractmethod
    def get(self, job_id: str) -> Job: ...

    @abstractmethod
    def all(self) -> list[Job]:
        """Every record, oldest first."""

    @abstractmethod
    def data(self, job_id: str) -> Any:
        """The training data the job was sent: a data set's name or ``{"X", "Y"}``."""

    @abstractmethod
    def create(self, model: str, hyperparameters: dict[str, Any], data: Any,
               traceparent: str | None = None) -> Job:
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
        it after the epoch it is in); one that has ended is left as it is (``JobEndedError``)."""
        def ask(job: Job) -> None:
            if job["state"] in FINISHED:
                raise JobEndedError(f"job {job['id']} has {job['state']} already; nothing to "
                                    "cancel")
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
    def new_record(model: str, hyperparameters: dict[str, Any], data: Any,
                   traceparent: str | None = None) -> Job:
        # the time first: ids sort in the order the jobs were made, which is the order they run
        job_id = f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"
        traced = {TRACE: traceparent} if traceparent else {}  # the request that made it
        return {**traced,
            "id": job_id, "model": model, "state": "queued",
            "data": data if isinstance(data, str) else "request",
            "hyperparameters": hyperparameters, "epoch": 0,
            "epochs": hyperparameters["epochs"], "losses": [], "version": None, "error": None,
            "cancel_requested": False, "created": timestamp(), "started": None, "finished": None,
        }


def public(job: Job) -> Job:
    """A job as clients see it: without the trace it continues (``TRACE``)."""
    return {key: value for key, value in job.items() if key != TRACE}


def check_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFoundError(f"no job {job_id[:40]!r}: a job id is 32 hexadecimal digits")
    return job_id


class JobStore(Jobs):
    """The job records of the model store at ``root``."""

    def __init__(self, root: str | os.PathLike[str], lock_timeout: float = 2.0,
                 max_queued: int = MAX_QUEUED, max_bytes: int = MAX_BYTES) -> None:
        self.folder = private_folder(Path(root) / ".jobs")
        self.lock_timeout = lock_timeout
        self.max_queued, self.max_bytes = max_queued, max_bytes

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
    def create(self, model: str, hyperparameters: dict[str, Any], data: Any,
               traceparent: str | None = None) -> Job:
        job = self.new_record(model, hyperparameters, data, traceparent)
        text = json.dumps(data)
        with self._locked():
            index = self._index()
            size = len(text.encode())
            self.check_room(len(index["queued"]), _data_bytes(index), size)
            _write_text(self._data(job["id"]), text)
            _write(self._record(job["id"]), job)
            index["queued"][job["id"]] = size
            self._write_index(index)
        return job

    def change(self, job_id: str, update: Callable[[Job], None]) -> Job:
        with self._locked():
            job = self.get(job_id)
            before = job["state"]
            update(job)
            _write(self._record(job_id), job)
            if job["state"] != before:
                self._moved(job_id, before, job["state"])
        return job

    def claim(self) -> Job | None:
        with self._locked():
            index = self._index()
            if not index["queued"]:
                return None
            job_id = min(index["queued"])
            job = self.get(job_id)
            job.update(state="running", started=timestamp())
            _write(self._record(job_id), job)
            index["running"][job_id] = index["queued"].pop(job_id)
            self._write_index(index)
            return job

    def rebuild_index(self) -> None:
        """Make the index again from the records (at start: a crash between writing a record
        and the index would leave them apart)."""
        with self._locked():
            index: dict[str, dict[str, int]] = {"queued": {}, "running": {}}
            for job in self.all():
                if job["state"] in index:
                    size = self._data(job["id"]).stat().st_size \
                        if self._data(job["id"]).exists() else 0
                    index[job["state"]][job["id"]] = size
            self._write_index(index)

    def prune(self) -> None:
        """Drop the oldest records beyond ``MAX_JOBS`` among the finished ones: the names alone
        say which (ids sort by age), no record is read."""
        with self._locked():
            index = self._index()
            unfinished = {*index["queued"], *index["running"]}
            ids = sorted(path.stem for path in self.folder.glob("*.json")
                         if JOB_ID.fullmatch(path.stem))
            finished = [job_id for job_id in ids if job_id not in unfinished]
            for job_id in finished[: max(len(ids) - MAX_JOBS, 0)]:
                self._record(job_id).unlink(missing_ok=True)
                self._data(job_id).unlink(missing_ok=True)

    # -- files -------------------------------------------------------------------------------
    def _record(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.json"

    def _data(self, job_id: str) -> Path:
        return self.folder / f"{job_id}.data.json"

    def _index(self) -> dict[str, dict[str, int]]:
        """The jobs not finished, ``{"queued": {id: data bytes}, "running": {…}}``."""
        try:
            index = json.loads((self.folder / "queue.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"queued": {}, "running": {}}
        except ValueError:
            raise StoreError("the index of training jobs is damaged; restarting the service "
                             "makes it again") from None
        return index

    def _write_index(self, index: dict[str, dict[str, int]]) -> None:
        _write(self.folder / "queue.json", index)

    def _moved(self, job_id: str, before: str, after: str) -> None:
        """Keep the index up to date with a job that went from ``before`` to ``after``; a
        finished job's data is no longer needed, and goes."""
        index = self._index()
        size = index.get(before, {}).pop(job_id, 0)
        if after in index:
            index[after][job_id] = size
        self._write_index(index)
        if after in FINISHED:
            self._data(job_id).unlink(missing_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        def busy() -> JobsBusyError:
            return JobsBusyError("the training jobs' records are locked by another process "
                                 "for longer than the lock timeout; retry later")

        with flocked(self.folder / ".lock", self.lock_timeout, busy):
            yield


LAPSED = "state = 'running' AND lease_until < now()"  # a running job whose worker is gone
CREATE_JOB_LOCK = 0x6A6F6273  # advisory lock key ("jobs") held while a job is counted and made


class PostgresJobStore(Jobs):
    """The job records of a PostgreSQL store: rows of its ``jobs`` table."""

    shared = True

    def __init__(self, store: PostgresStore, lease: float, max_queued: int = MAX_QUEUED,
                 max_bytes: int = MAX_BYTES) -> None:
        self.store, self.lease = store, lease
        self.max_queued, self.max_bytes = max_queued, max_bytes

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

    def create(self, model: str, hyperparameters: dict[str, Any], data: Any,
               traceparent: str | None = None) -> Job:
        job = self.new_record(model, hyperparameters, data, traceparent)
        text = json.dumps(data)
        with self.store.connection() as conn, conn.transaction():
            # one creator at a time counts: the bounds hold across replicas; the count reads
            # the partial index of the jobs not finished, not every record
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_JOB_LOCK,))
            queued, data_bytes = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'queued'), coalesce(sum(octet_length("
                "data)), 0) FROM jobs WHERE state IN ('queued', 'running')").fetchone()
            self.check_room(queued, data_bytes, len(text.encode()))
            conn.execute("INSERT INTO jobs (id, state, record, data) VALUES (%s, %s, %s, %s)",
                         (job["id"], job["state"], json.dumps(job), text))
        return job

    def prune(self) -> None:
        with self.store.connection() as conn:
            conn.execute(  # the oldest finished records beyond the newest MAX_JOBS
                "DELETE FROM jobs WHERE state = ANY(%s) AND id < ALL("
                "SELECT id FROM jobs ORDER BY id DESC LIMIT %s)", (list(FINISHED), MAX_JOBS))

    def change(self, job_id: str, update: Callable[[Job], None]) -> Job:
        with self.store.connection() as conn, conn.transaction():
            row = conn.execute("SELECT record FROM jobs WHERE id = %s FOR UPDATE",
                               (check_id(job_id),)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job {job_id!r}")
            job = json.loads(row[0])
            update(job)
            self._write(conn, job)
        return job

    @staticmethod
    def _write(conn: Any, job: Job) -> None:
        """Write ``job``'s record; a finished job's data is no longer needed, and goes."""
        conn.execute("UPDATE jobs SET state = %s, record = %s, data = CASE WHEN %s THEN 'null' "
                     "ELSE data END WHERE id = %s",
                     (job["state"], json.dumps(job), job["state"] in FINISHED, job["id"]))

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
            self._write(conn, job)


def _data_bytes(index: dict[str, dict[str, int]]) -> int:
    return sum(index["queued"].values()) + sum(index["running"].values())


def _write(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value))


def _write_text(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.staging")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
