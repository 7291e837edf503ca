"""Soak and fault test: many clients change and use models while kernels and the whole service
are killed under them; afterwards, nothing may be lost, damaged, stuck or out of order.

One gradbook service (``gradbook serve``, as ``make serve`` runs it, on a free loopback
port over a fresh store, no token) is loaded by ``--clients`` threads for ``--seconds``, each
sending one request after another over ``http.client`` (a new connection each): predictions,
reads of a model, creates, synchronous trains, training jobs (submitted, polled, cancelled),
PUTs, resets and deletes, over a small pool of model names so that they meet. Meanwhile a chaos
thread SIGKILLs one kernel every ``--kill-every`` seconds (the youngest, so the other lives as
long as the service does, which the memory check needs), and once, at ``--crash-at`` (default:
midway between two kernel kills near the middle), 1.5 s into a long synchronous train on a
kernel and with a long job submitted 3 s before (running, or queued behind the clients' jobs),
SIGKILLs the launcher's process group (the launcher and the training worker; the kernels, in
sessions of their own, must notice their parent is gone and exit by themselves), then starts
the service again on the same port and store.

**What a client may see.** Every answer must be JSON with a status expected for its operation
(2xx; 404 for a model deleted meanwhile; 409 for a busy model or a taken name; 503, with
``Retry-After``, when a kernel stopped under the request or the queue is full; 504 past the
deadline), errors as ``{"error": {"status": <the HTTP status>, "message": …}}``, and
successes with the fields of their operation. The deadline is ``GRADBOOK_REQUEST_TIMEOUT``
(``--deadline``, 10 s here instead of 60 s so that a hang shows sooner): a request still
unanswered ``--margin`` (10) seconds past it has hung, which is a failure (the margin covers
waiting in the queue, e.g. behind a kernel's replacement, under 2 s, or a model's lock, 2 s).
So is any connection error, except during the SIGKILL, where exactly two are acceptable and
counted apart:

* *cut by the crash*: the connection was reset or closed without an answer, for a request
  that was in flight while the service was being killed (sent before the launcher was reaped,
  and not answered before the kill began): the process that held the connection died;
* *refused while down*: the connection was refused between the kill and the restarted
  service's first ``/readyz`` 200 (nothing listens on the port for part of that window). The
  client waits 0.1 s and goes on.

A refused, reset or closed connection at any other time, or a timeout at any time, fails.

**Versions.** Every change of a model (PUT, train, reset, a job) commits its version plus one,
and a create starts above the highest version any deleted model had, so versions go on after a
delete and re-create: no version is ever reused and a client never sees one go backwards.
Checked, over every answered request of every client (per-client monotonicity is the special
case of one client's consecutive requests):

* a change's answer carries a version above that of every change and delete answered before the
  change was sent, and a read's (predict, GET, the version a delete reports) one at least as
  high as every change answered before it was sent, and above every delete answered before it;
* no two changes of a model (jobs included) answered the same version;
* contiguity: each model's versions I+1…F (I its version before the clients start, 0 for the
  pool's names; F its final version, or for a deleted model the last version answered for it),
  but for those an answered create skipped (from the version before it up to the create's),
  were each committed by exactly one change, so the versions answered by changes
  and by succeeded jobs are distinct and within I+1…F, and the versions no answer reported are
  at most the changes of that model whose outcome is unknown: cut by the crash, hung, or
  answered 504 or 503 "while running" (a stop can land just after the commit, which is why those
  messages say to check the version). A job that failed committed nothing (a job cut short whose
  commit is in the model shows ``succeeded``), so a gap only failed jobs could explain fails.

**After the run** (the clients stopped, every job finished, the service healthy): every model
file in the store loads with ``gradbook.store.ModelStore.get`` in a fresh process (no partial
commit) and has the version the service reports; no job is left ``queued`` or ``running``, a
job that failed did so for a deleted model (404) or because the service or its worker stopped
(503), and the long job the crash cut short shows ``failed``; no stale lock: a PUT (after a
create, for a deleted model) of every model answers 200 within ``LOCK_CHECK_SECONDS`` (a lock
left held would make it wait ``GRADBOOK_LOCK_TIMEOUT``, 2 s, and answer 409), and a new job on
one of them succeeds; every killed kernel was replaced (``gradbook_kernels_replaced_total`` of
both lives of the service); no process of the killed service outlived it by more than
``ORPHAN_SECONDS`` (one could hold a lock, or commit after the restart); and the kernels'
memory stayed bounded: no kernel's resident memory, sampled every half second, rose more than
``--memory-allowance`` (24 MiB) above the largest warmed-up kernel's at the start. The bound: a
kernel keeps nothing of the requests it served (docs/engine.md), only its model cache, at most
``GRADBOOK_MODEL_CACHE`` (16) models; a model here is tiny, but its metadata holds up to 10 000
loss-curve points and 100 run summaries, about 0.4 MB once loaded and 3 MB while loading, so
the cache legitimately adds up to about 10 MiB (measured: +8 to +10 MiB in a 60-second run);
the 14 MiB left over would be passed by a leak of 3 kB per request within the ~5000 requests
the longest-lived kernel serves.

It prints the figures (requests, statuses, connection errors during the crash, kernels killed
and replaced, restart downtime, latency, versions, jobs, the store, locks, memory, and whether
the killed service left its batch folder on /dev/shm, which is reported, not checked, and then
removed) and every failed check, and exits 1 if any check failed. Time is asserted only as the
bounds above (no hang past the deadline, locks free within a second). ``tests/test_soak.py``
runs a shorter soak through ``run_soak``.

    .venv/bin/python bench/soak.py [--clients 32] [--seconds 60] [--kill-every 10]
        [--crash-at SECONDS] [--deadline 10] [--margin 10] [--models 8] [--kernels 2]
        [--seed 0] [--memory-allowance 24] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from loopback import Reply, http_request
from procs import alive, child_pids, cmdline, kernel_pids, started

ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 120.0  # for the service to answer /readyz 200
HEALTHY_SECONDS = 60.0  # for a kernel being replaced to be back before the next kill
ORPHAN_SECONDS = 5.0  # a killed launcher's kernels poll their parent every second
SETTLE_SECONDS = 180.0  # for the jobs left queued when the load stops to finish
LOCK_CHECK_SECONDS = 1.0  # a change of an idle model answers within this (lock wait: 2 s)
REFUSED_PAUSE = 0.1  # a client's wait after a refused connection
SAMPLE_SECONDS = 0.5  # between readings of the kernels' memory
CRASH_TRAIN_HEAD_START = 1.5  # the long synchronous train runs this long before the SIGKILL
CRASH_JOB_LEAD = 3.0  # the crash's job is submitted this long before the crash
MIB = 2**20

# A model of the pool: three inputs, like xor's data. The crash's models are larger, so that
# their training (10000 epochs of 4 steps) runs for seconds: about 6 s for the synchronous one
# on an idle 2-core machine, 20 s for the job (which the crash must find unfinished).
POOL_SIZES = ([3, 2, 1], [3, 4, 1], [3, 8, 1])
CRASH_SYNC, CRASH_JOB = "crash-sync", "crash-job"
CRASH_SIZES = {CRASH_SYNC: [3, 256, 256, 1], CRASH_JOB: [3, 512, 512, 1]}
CRASH_TRAIN = {"data": "xor", "epochs": 10000, "batch_size": 1, "lr": 0.05}

# operation → (weight, the statuses it may answer)
OPERATIONS: dict[str, tuple[int, frozenset[int]]] = {
    "predict": (40, frozenset({200, 404, 503, 504})),
    "get": (8, frozenset({200, 404, 503, 504})),
    "create": (6, frozenset({201, 409, 503, 504})),
    "train": (10, frozenset({200, 404, 409, 503, 504})),
    "job": (5, frozenset({202, 404, 503, 504})),
    "job-get": (5, frozenset({200, 503, 504})),
    "job-cancel": (2, frozenset({200, 202, 409, 503, 504})),
    "put": (8, frozenset({200, 404, 409, 503, 504})),
    "reset": (8, frozenset({200, 404, 409, 503, 504})),
    "delete": (3, frozenset({200, 404, 409, 503, 504})),
}
CHANGES = ("create", "train", "put", "reset")  # answered 2xx: a new version was committed
JOB_ID = re.compile(r"[0-9a-f]{32}")
FINISHED = ("succeeded", "failed", "cancelled")
STATES = ("queued", "running", *FINISHED)
PRINTED_FAILURES = 40  # the first ones; the count says how many more


@dataclass(frozen=True)
class Config:
    """One soak run. ``crash_at`` None: midway between two kernel kills near the middle."""

    clients: int = 32
    seconds: float = 60.0
    kill_every: float = 10.0
    crash_at: float | None = None
    deadline: float = 10.0  # GRADBOOK_REQUEST_TIMEOUT
    margin: float = 10.0  # a request unanswered past deadline + margin has hung
    models: int = 8  # names in the pool the clients share
    kernels: int = 2
    seed: int = 0
    memory_allowance_mib: float = 24.0

    @property
    def crash_time(self) -> float:
        if self.crash_at is not None:
            return self.crash_at
        kills = max(math.floor(self.seconds / 2 / self.kill_every), 0)
        return min(kills * self.kill_every + self.kill_every / 2, self.seconds * 0.6)

    @property
    def client_timeout(self) -> float:
        return self.deadline + self.margin


# -- the service -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def exchange_folder(kernels: list[int]) -> Path | None:
    """The folder where the gateway passes batches to ``kernels`` and they journal results
    (``gradbook_service.gateway.engine``: ``gradbook-results-*`` on /dev/shm, files named by kernel
    id),
    found by
    the kernel ids in their command lines; None if none is found."""
    ids = [match.group(1).decode() for pid in kernels
           if (match := re.search(rb"kernel-([0-9a-f-]+)\.json", cmdline(pid)))]
    for root in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        for folder in root.glob("gradbook-results-*"):
            if any((folder / f"{kernel}{suffix}").exists()
                   for kernel in ids for suffix in (".jsonl", ".batch.json")):
                return folder
    return None


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file())


def rss(pid: int) -> int | None:
    """Resident memory of ``pid`` in bytes, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def http_call(port: int, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Reply:
    """One request on a new connection to 127.0.0.1:``port``; ``body`` is sent as JSON."""
    raw = None if body is None else json.dumps(body).encode()
    headers = {} if raw is None else {"Content-Type": "application/json"}
    return http_request(port, method, path, raw, headers, timeout)


class Service:
    """The service under test: ``gradbook serve`` in a session of its own (so that
    its process group is the launcher and the training worker), on ``port`` over ``store``."""

    def __init__(self, workdir: Path, config: Config) -> None:
        self.workdir = workdir
        self.store = workdir / "store"
        self.store.mkdir(parents=True)  # an existing store: no default models to train first
        self.config = config
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.lives = 0  # how many times it was started

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def first_start(self) -> None:
        """Start it on a free port (another process may take a free port before the launcher
        does: then another, three times at most)."""
        for attempt in range(3):
            try:
                self.start()
                return
            except RuntimeError:
                if attempt == 2 or "already in use" not in self.log.read_text(errors="replace"):
                    raise
                self.port = free_port()

    def start(self) -> float:
        """Start it on ``port`` and wait for ``/readyz`` 200; the seconds that took."""
        began = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADBOOK_", "KG_"))}
        env.update(PYTHONUNBUFFERED="1", JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
                   GRADBOOK_HOST="127.0.0.1", GRADBOOK_PORT=str(self.port),
                   GRADBOOK_STORE=str(self.store), GRADBOOK_KERNELS=str(self.config.kernels),
                   GRADBOOK_REQUEST_TIMEOUT=str(self.config.deadline))
        self.lives += 1
        self.log = self.workdir / f"service-{self.lives}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gradbook_service.app.launch"], cwd=ROOT, env=env,
                stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = began + START_SECONDS
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                if http_call(self.port, "GET", "/readyz", timeout=5).status == 200:
                    return time.monotonic() - began
            except OSError:
                pass
            time.sleep(0.05)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"the service did not start on port {self.port}; its log ends:\n{tail}")

    def kernels(self) -> list[int]:
        return kernel_pids(self.pid)

    def stop(self) -> None:
        """SIGTERM to the process group (the gateway stops its kernels), SIGKILL after 30 s;
        then SIGKILL whatever of it is left."""
        if self.process is None or self.process.returncode is not None:
            return
        below = child_pids(self.pid)
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            self.process.wait()
        deadline = time.monotonic() + 10
        while any(map(alive, below)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in filter(alive, below):
            os.kill(pid, signal.SIGKILL)

    def crash(self) -> tuple[float, float, list[int]]:
        """SIGKILL the launcher's process group and reap the launcher: (when the kill began, when
        it was done, the launcher's children before it)."""
        assert self.process is not None
        below = child_pids(self.pid)
        began = time.monotonic()
        os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()
        return began, time.monotonic(), below


# -- what the clients do and see ---------------------------------------------------------------
@dataclass
class Outcome:
    """One request as a client saw it."""

    client: int
    op: str
    method: str
    path: str
    model: str | None
    start: float  # time.monotonic() before connecting
    end: float  # after the answer was read, or the connection failed
    status: int | None = None  # None: no answer
    error: str | None = None  # why there is no answer: "refused", "cut: …", "timeout: …"
    version: int | None = None  # of a 2xx answer about a model
    job: str | None = None  # the id of a job it submitted
    problem: str | None = None  # what is wrong with the answer itself
    message: str | None = None  # of an error answer

    def describe(self) -> str:
        what = f"{self.status}" if self.status is not None else self.error
        return (f"client {self.client} {self.method} {self.path} ({self.op}) at "
                f"{self.start:.3f}-{self.end:.3f}: {what}")


@dataclass
class Crash:
    """The one SIGKILL of the whole service."""

    began: float = math.inf
    killed: float = math.inf  # the launcher reaped
    ready: float = math.inf  # the restarted service's first /readyz 200
    restart_seconds: float = math.nan  # from its start to /readyz 200
    orphans: list[str] = field(default_factory=list)
    replaced_before: float = 0.0  # gradbook_kernels_replaced_total of the first life
    job: dict[str, Any] | None = None  # the long job, as last seen before the kill
    exchange: Path | None = None  # the killed service's batch exchange folder
    exchange_left: int | None = None  # its bytes if it was still there after the restart
    train: Outcome | None = None  # the long synchronous train


@dataclass
class Run:
    """Everything one soak run recorded, shared by its threads."""

    config: Config
    service: Service
    began: float = 0.0
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: list[Outcome] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # ids of the jobs submitted
    kills: list[tuple[float, int]] = field(default_factory=list)  # (when, kernel pid)
    crash: Crash = field(default_factory=Crash)
    chaos_problems: list[str] = field(default_factory=list)
    baseline_rss: int = 0  # the largest kernel after warm-up
    peak_rss: dict[int, int] = field(default_factory=dict)  # kernel pid → largest reading
    gateway_rss: list[int] = field(default_factory=list)
    warmup: int = 0  # requests before the clients started
    lock_check_seconds: float = 0.0  # the slowest change of a model after the run
    settle_seconds: float = math.nan  # for the jobs left queued to finish after the run
    initial: dict[str, int] = field(default_factory=dict)  # versions before the clients start

    def record(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    @property
    def names(self) -> list[str]:
        return [f"soak-{i}" for i in range(self.config.models)]


def request(run: Run, client: int, op: str, method: str, path: str, body: Any = None,
            model: str | None = None) -> Outcome:
    """Send one request and record what came back (checked by ``check_answer``)."""
    outcome = Outcome(client, op, method, path, model, time.monotonic(), 0.0)
    try:
        reply = http_call(run.service.port, method, path, body, run.config.client_timeout)
    except ConnectionRefusedError:
        outcome.error = "refused"
    except TimeoutError as err:
        outcome.error = f"timeout: no answer within {run.config.client_timeout:g} s ({err})"
    except (OSError, http.client.HTTPException) as err:  # reset, closed, a broken answer
        outcome.error = f"cut: {type(err).__name__}: {err}"
    else:
        outcome.status = reply.status
        try:
            outcome.problem, answer = check_answer(op, model, body, reply)
        except Exception as err:  # an answer of an unexpected shape
            outcome.problem, answer = f"{type(err).__name__} checking {reply.body[:300]!r}", None
        if answer is not None and reply.status >= 400:
            error = answer.get("error")
            outcome.message = str(error.get("message") if isinstance(error, dict) else error)[:200]
        if answer is not None and 200 <= reply.status < 300 and model is not None:
            version = answer.get("version")
            outcome.version = version if isinstance(version, int) else None
        if op == "job" and reply.status == 202 and answer is not None:
            outcome.job = str(answer.get("id"))
            with run.lock:
                run.jobs.append(outcome.job)
    outcome.end = time.monotonic()
    run.record(outcome)
    return outcome


def check_answer(op: str, model: str | None, sent: Any,
                 reply: Reply) -> tuple[str | None, dict[str, Any] | None]:
    """What is wrong with ``reply`` to ``op`` (None if nothing), and its JSON object."""
    try:
        answer = reply.json()
    except ValueError:
        return f"not JSON: {reply.body[:200]!r}", None
    if not isinstance(answer, dict):
        return f"not a JSON object: {reply.body[:200]!r}", None
    if reply.status not in OPERATIONS[op][1]:
        return f"unexpected status {reply.status}: {reply.body[:300]!r}", answer
    if reply.status >= 400:
        error = answer.get("error")
        if (set(answer) != {"error"} or not isinstance(error, dict)
                or error.get("status") != reply.status
                or not isinstance(error.get("message"), str)):
            return f"malformed error: {reply.body[:300]!r}", answer
        if reply.status == 503 and reply.headers.get("Retry-After") is None:
            return "a 503 without Retry-After", answer
        return None, answer
    if model is not None and op != "job" and (answer.get("name") != model
                                              or not isinstance(answer.get("version"), int)):
        return f"no name {model!r} and integer version: {reply.body[:300]!r}", answer
    if op == "predict":
        output = answer.get("output")
        if not (isinstance(output, list) and len(output) == 1
                and isinstance(output[0], float) and math.isfinite(output[0])):
            return f"predict output {output!r}", answer
    elif op == "train" and len(answer.get("history", [])) != sent["epochs"]:
        return f"{len(answer.get('history', []))} losses for {sent['epochs']} epochs", answer
    elif op == "job" and not (JOB_ID.fullmatch(str(answer.get("id")))
                              and answer.get("state") == "queued" and answer.get("model") == model):
        return f"not a queued job: {reply.body[:300]!r}", answer
    elif op in ("job-get", "job-cancel") and answer.get("state") not in STATES:
        return f"a job in no known state: {reply.body[:300]!r}", answer
    elif op == "delete" and answer.get("deleted") is not True:
        return f"delete answered {reply.body[:300]!r}", answer
    return None, answer


def client(run: Run, index: int) -> None:
    """One client: requests one after another until the run stops (an exception of its own is
    recorded as a problem)."""
    try:
        send_requests(run, index)
    except Exception as err:
        run.chaos_problems.append(f"client {index} stopped: {type(err).__name__}: {err}")


def send_requests(run: Run, index: int) -> None:
    rng = random.Random(run.config.seed * 1000 + index)
    ops = list(OPERATIONS)
    weights = [OPERATIONS[op][0] for op in ops]
    own_jobs: list[str] = []
    while not run.stopping.is_set():
        op = rng.choices(ops, weights)[0]
        name = rng.choice(run.names)
        if op in ("job-get", "job-cancel") and not own_jobs:
            op = "predict"
        if op == "predict":
            body: Any = {"x": [rng.choice((0, 1)), rng.choice((0, 1)), 1]}
            outcome = request(run, index, op, "POST", f"/models/{name}/predict", body, name)
        elif op == "get":
            outcome = request(run, index, op, "GET", f"/models/{name}", model=name)
        elif op == "create":
            body = {"name": name, "sizes": rng.choice(POOL_SIZES), "seed": rng.randrange(100)}
            outcome = request(run, index, op, "POST", "/models", body, name)
        elif op == "train":
            body = {"data": "xor", "epochs": rng.randrange(20, 300), "lr": 0.5}
            outcome = request(run, index, op, "POST", f"/models/{name}/train", body, name)
        elif op == "job":
            body = {"data": "xor", "epochs": rng.randrange(50, 500), "wait": False}
            outcome = request(run, index, op, "POST", f"/models/{name}/train", body, name)
            if outcome.job is not None:
                own_jobs.append(outcome.job)
        elif op == "job-get":
            outcome = request(run, index, op, "GET", f"/jobs/{rng.choice(own_jobs)}")
        elif op == "job-cancel":
            outcome = request(run, index, op, "POST", f"/jobs/{rng.choice(own_jobs)}/cancel")
        elif op == "put":
            body = {"lr": rng.choice((0.1, 0.5, 1.0)), "epochs": rng.randrange(10, 200)}
            outcome = request(run, index, op, "PUT", f"/models/{name}", body, name)
        elif op == "reset":
            body = rng.choice(({}, {"seed": rng.randrange(100)}))
            outcome = request(run, index, op, "POST", f"/models/{name}/reset", body, name)
        else:
            outcome = request(run, index, op, "DELETE", f"/models/{name}", model=name)
        if outcome.error == "refused":
            time.sleep(REFUSED_PAUSE)


# -- chaos ---------------------------------------------------------------------------------------
def wait_healthy(port: int, seconds: float = HEALTHY_SECONDS) -> bool:
    """Until ``/healthz`` answers 200 (every kernel alive); False if it did not in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if http_call(port, "GET", "/healthz", timeout=5).status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def kernels_replaced(port: int) -> float:
    """``gradbook_kernels_replaced_total`` from ``GET /metrics``."""
    text = http_call(port, "GET", "/metrics", timeout=30).body.decode()
    match = re.search(r"^gradbook_kernels_replaced_total(?:{.*})? (\S+)$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("GET /metrics has no gradbook_kernels_replaced_total")
    return float(match.group(1))


def count_replaced(port: int, expected: int, seconds: float = HEALTHY_SECONDS) -> float:
    """``kernels_replaced``, once it reaches ``expected`` or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (replaced := kernels_replaced(port)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return replaced


def sleep_until(run: Run, moment: float) -> bool:
    """Sleep until ``run.began + moment``; False if the run stopped first."""
    return not run.stopping.wait(max(run.began + moment - time.monotonic(), 0))


def chaos(run: Run) -> None:
    """Kill a kernel every ``kill_every`` seconds and crash the service once (its job submitted
    ``CRASH_JOB_LEAD`` seconds before); an exception is recorded as a problem, and the clients
    go on."""
    config = run.config
    events = [(moment, "kill") for moment in kill_times(config)]
    events += [(max(config.crash_time - CRASH_JOB_LEAD, 0), "job"), (config.crash_time, "crash")]
    try:
        for moment, event in sorted(events):
            if not sleep_until(run, moment):
                return
            if event == "kill":
                kill_kernel(run)
            elif event == "job":
                submit_crash_job(run)
            else:
                crash(run)
    except Exception as err:  # the checks report it
        run.chaos_problems.append(f"chaos: {type(err).__name__}: {err}")


def kill_times(config: Config) -> list[float]:
    """When a kernel is killed, in seconds into the run."""
    return [k * config.kill_every for k in range(1, math.ceil(config.seconds / config.kill_every))
            if k * config.kill_every < config.seconds]


def kill_kernel(run: Run) -> None:
    """SIGKILL the youngest kernel, once every kernel is alive."""
    if not wait_healthy(run.service.port):
        run.chaos_problems.append("a kernel kill found the service unhealthy for "
                                  f"{HEALTHY_SECONDS:g} s")
        return
    kernels = run.service.kernels()
    if not kernels:
        run.chaos_problems.append("no kernel to kill")
        return
    youngest = max(kernels, key=started)
    os.kill(youngest, signal.SIGKILL)
    run.kills.append((time.monotonic(), youngest))


def submit_crash_job(run: Run) -> None:
    """A long job for the crash to cut short (it runs, or waits behind the clients' jobs)."""
    reply = http_call(run.service.port, "POST", f"/models/{CRASH_JOB}/train",
                      {**CRASH_TRAIN, "wait": False}, timeout=run.config.client_timeout)
    if reply.status != 202:
        raise RuntimeError(f"the crash's job was refused: {reply.status} {reply.body[:300]!r}")
    run.crash.job = reply.json()
    with run.lock:
        run.jobs.append(run.crash.job["id"])


def crash(run: Run) -> None:
    """While a long synchronous train runs on a kernel (and the long job runs or waits),
    SIGKILL the launcher's process group; check that its kernels exit by themselves; start the
    service again on the same port and store."""
    service, record = run.service, run.crash
    if not wait_healthy(service.port):
        run.chaos_problems.append("the crash found the service unhealthy")
    # /healthz is 200 once a new kernel serves; the counter follows when the dead one is shut
    # down: the kernels killed so far, counted before this life ends
    record.replaced_before = count_replaced(service.port, len(run.kills))

    def train() -> None:
        record.train = request(run, -1, "train", "POST", f"/models/{CRASH_SYNC}/train",
                               CRASH_TRAIN, CRASH_SYNC)

    trainer = threading.Thread(target=train, name="crash-train")
    trainer.start()
    time.sleep(CRASH_TRAIN_HEAD_START)
    if record.job is not None:
        record.job = http_call(service.port, "GET", f"/jobs/{record.job['id']}").json()
    record.exchange = exchange_folder(service.kernels())
    record.began, record.killed, below = service.crash()
    deadline = record.killed + ORPHAN_SECONDS
    while (left := [pid for pid in below if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:  # they could hold a model's lock, or commit after the restart
        command = cmdline(pid).replace(b"\0", b" ").decode(errors="replace")
        record.orphans.append(f"{pid} ({command[:80]})")
        os.kill(pid, signal.SIGKILL)
    record.restart_seconds = service.start()
    record.ready = time.monotonic()
    if record.exchange is not None and record.exchange.exists():
        record.exchange_left = folder_bytes(record.exchange)
        shutil.rmtree(record.exchange, ignore_errors=True)  # ours: no run leaves it on the tmpfs
    trainer.join()


def sample_memory(run: Run) -> None:
    """Every ``SAMPLE_SECONDS``: the resident memory of each kernel and of the gateway."""
    while not run.stopping.wait(SAMPLE_SECONDS):
        take_sample(run)


def take_sample(run: Run) -> None:
    try:
        kernels = run.service.kernels()
    except OSError:  # between lives
        return
    for pid in kernels:
        if (size := rss(pid)) is not None:
            run.peak_rss[pid] = max(run.peak_rss.get(pid, 0), size)
    if (gateway := rss(run.service.pid)) is not None:
        run.gateway_rss.append(gateway)


def warm_up(run: Run) -> None:
    """Create the crash's models and use every endpoint on every kernel, so that the memory
    baseline is that of a kernel that has served each kind of request."""
    port = run.service.port
    for name in (CRASH_SYNC, CRASH_JOB):
        reply = http_call(port, "POST", "/models", {"name": name, "sizes": CRASH_SIZES[name]})
        if reply.status != 201:
            raise RuntimeError(f"creating {name}: {reply.status} {reply.body[:300]!r}")
        run.initial[name] = reply.json()["version"]

    errors: list[str] = []

    def use(index: int) -> None:
        name = f"warm-{index}"
        steps: list[tuple[str, str, Any]] = [
            ("POST", "/models", {"name": name, "sizes": [3, 4, 1]}),
            *[("POST", f"/models/{name}/predict", {"x": [1, 0, 1]})] * 10,
            ("GET", f"/models/{name}", None),
            ("POST", f"/models/{name}/train", {"data": "xor", "epochs": 100}),
            ("PUT", f"/models/{name}", {"lr": 0.5}),
            ("POST", f"/models/{name}/reset", {}),
            ("POST", f"/models/{CRASH_SYNC}/predict", {"x": [1, 0, 1]}),
            ("DELETE", f"/models/{name}", None),
        ]
        for method, path, body in steps:
            try:
                reply = http_call(port, method, path, body, timeout=run.config.client_timeout)
            except OSError as err:
                errors.append(f"warm-up {method} {path}: {err}")
                return
            if reply.status >= 400:
                errors.append(f"warm-up {method} {path}: {reply.status} {reply.body[:300]!r}")
                return
            run.warmup += 1

    for _ in range(2):  # side by side, so that every kernel serves some
        workers = [threading.Thread(target=use, args=(i,)) for i in range(run.config.kernels)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    run.baseline_rss = max(filter(None, map(rss, run.service.kernels())), default=0)


# -- after the run -------------------------------------------------------------------------------
@dataclass
class Report:
    """The figures of a run and what failed."""

    config: Config
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)  # the main ones, for a test

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def text(self) -> str:
        shown = self.failures[:PRINTED_FAILURES]
        more = len(self.failures) - len(shown)
        verdict = (["all checks passed"] if not self.failures else
                   [f"{len(self.failures)} check(s) FAILED:", *(f"  - {f}" for f in shown),
                    *([f"  … and {more} more"] if more else [])])
        return "\n".join([*self.lines, "", *verdict])


def classify(run: Run, report: Report) -> tuple[list[Outcome], Counter[str]]:
    """Sort the outcomes into answered, acceptable connection errors (see the module
    docstring) and failures; the answered ones and the counts of the acceptable errors."""
    crash, answered, excused = run.crash, [], Counter[str]()
    for outcome in run.outcomes:
        if outcome.status is not None:
            answered.append(outcome)
            if outcome.problem is not None:
                report.fail(f"{outcome.describe()}: {outcome.problem}")
                report.figures["wrong_answers"] = report.figures.get("wrong_answers", 0) + 1
        elif outcome.error == "refused" and crash.began <= outcome.start <= crash.ready:
            excused["refused while down"] += 1
        elif (outcome.error or "").startswith("cut:") and outcome.start <= crash.killed \
                and outcome.end >= crash.began:
            excused["cut by the crash"] += 1
        else:
            report.fail(outcome.describe())
            report.figures["failed_requests"] = report.figures.get("failed_requests", 0) + 1
    return answered, excused


def unknown(outcome: Outcome) -> bool:
    """Whether ``outcome`` is a request whose effect is unknown: no answer (not refused), or a
    504 or a 503 "while running", which may come just after the commit."""
    if outcome.status is None:
        return outcome.error != "refused"
    return outcome.status == 504 or (outcome.status == 503
                                     and "while running" in (outcome.message or ""))


def check_order(answered: list[Outcome], report: Report) -> None:
    """No answer carries a version below what a change or delete answered before it was sent
    allows (see the module docstring)."""
    by_model: dict[str, list[Outcome]] = {}
    for outcome in answered:
        if outcome.model is not None and outcome.version is not None and outcome.op != "job":
            by_model.setdefault(outcome.model, []).append(outcome)
    for model, outcomes in by_model.items():
        events = sorted((o for o in outcomes if o.op in (*CHANGES, "delete")),
                        key=lambda o: o.end)
        ends = [event.end for event in events]
        # the least version allowed after each prefix of the events, and the event that set it:
        # for a read or a delete, and for a change
        floors: dict[bool, list[tuple[int, Outcome | None]]] = {False: [], True: []}
        least: dict[bool, tuple[int, Outcome | None]] = {False: (0, None), True: (0, None)}
        for event in events:
            assert event.version is not None
            for change in (False, True):
                floor = event.version + (1 if change or event.op == "delete" else 0)
                if floor > least[change][0]:
                    least[change] = (floor, event)
                floors[change].append(least[change])
        for outcome in outcomes:
            assert outcome.version is not None
            before = bisect.bisect_left(ends, outcome.start)  # events answered before it
            if before == 0:
                continue
            floor, cause = floors[outcome.op in CHANGES][before - 1]
            if outcome.version < floor:
                assert cause is not None
                report.fail(f"{model}: version went backwards: {outcome.describe()} answered "
                            f"version {outcome.version} after {cause.describe()} answered "
                            f"version {cause.version}")


def final_versions(run: Run, report: Report) -> dict[str, int | None]:
    """Each model's last version: its current one, or None for a deleted model (a create now
    starts above every deleted model's version: it does not tell this one's). Also checks that a
    change of every model answers within ``LOCK_CHECK_SECONDS``: no lock was left held."""
    port, finals, slowest = run.service.port, {}, 0.0
    for name in [*run.names, CRASH_SYNC, CRASH_JOB]:
        reply = http_call(port, "GET", f"/models/{name}")
        if reply.status == 404:
            began = time.monotonic()
            created = http_call(port, "POST", "/models", {"name": name, "sizes": [3, 4, 1]})
            slowest = max(slowest, time.monotonic() - began)
            if created.status != 201:
                report.fail(f"after the run, creating {name} answered {created.status}: "
                            f"{created.body[:300]!r}")
                continue
            finals[name] = None
        elif reply.status == 200:
            finals[name] = reply.json()["version"]
        else:
            report.fail(f"after the run, GET /models/{name} answered {reply.status}")
            continue
        began = time.monotonic()
        put = http_call(port, "PUT", f"/models/{name}", {"lr": 0.25})
        seconds = time.monotonic() - began
        slowest = max(slowest, seconds)
        if put.status != 200 or seconds > LOCK_CHECK_SECONDS:
            report.fail(f"after the run, PUT /models/{name} answered {put.status} in "
                        f"{seconds:.2f} s (a stale lock?): {put.body[:300]!r}")
    run.lock_check_seconds = slowest
    return finals


def check_versions(run: Run, answered: list[Outcome], finals: dict[str, int | None],
                   jobs: list[dict[str, Any]], report: Report) -> str:
    """Distinct, contiguous versions per model (see the module docstring); a summary."""
    committed: dict[str, list[tuple[int, str]]] = {}
    changes: dict[str, list[Outcome]] = {}  # answered with a version, in version order
    creates: dict[str, list[int]] = {}
    last: Counter[str] = Counter()  # the highest version answered for each model
    for outcome in answered:
        if outcome.version is not None and outcome.model:
            last[outcome.model] = max(last[outcome.model], outcome.version)
        if outcome.op in CHANGES and outcome.version is not None and outcome.model:
            committed.setdefault(outcome.model, []).append((outcome.version, outcome.describe()))
            changes.setdefault(outcome.model, []).append(outcome)
            if outcome.op == "create":
                creates.setdefault(outcome.model, []).append(outcome.version)
    for job in jobs:
        if job.get("state") == "succeeded":
            committed.setdefault(job["model"], []).append((job["version"], f"job {job['id']}"))
    uncertain = Counter(o.model for o in run.outcomes if unknown(o)
                        and (o.op in CHANGES or o.op == "job"))
    # a create whose outcome is unknown may have skipped versions too (it starts above every
    # deleted model's): it explains a whole run of consecutive missing versions
    uncertain_creates = Counter(o.model for o in run.outcomes if unknown(o) and o.op == "create")
    gaps = 0
    for name, known in finals.items():
        first = run.initial.get(name, 0) + 1  # the first version committed during the run
        versions = committed.get(name, [])
        seen = Counter(version for version, _ in versions)
        final = known if known is not None else max(last[name], first - 1)
        skipped: set[int] = set()  # below each create, down to the version before it
        for created in creates.get(name, []):
            below = max((v for v in seen if v < created), default=first - 1)
            skipped.update(range(below + 1, created))
        for version, count in seen.items():
            if count > 1:
                who = "; ".join(w for v, w in versions if v == version)
                report.fail(f"{name}: {count} changes answered version {version}: {who}")
        outside = sorted(v for v in seen if not first <= v <= final)
        if outside:
            report.fail(f"{name}: changes answered versions {outside}, outside {first}..{final}")
        missing = sorted(set(range(first, final + 1)) - set(seen) - skipped)
        gaps += len(missing)
        if unexplained(missing, uncertain_creates[name], uncertain[name]):
            suspects = [suspect for version in missing for suspect in committed_by(
                run, sorted(changes.get(name, []), key=lambda o: o.version or 0), version)]
            failed_jobs = [job["id"] for job in jobs if job["model"] == name
                           and job["state"] == "failed"]
            report.fail(
                f"{name}: versions {missing} of {first}..{final} were committed by no answered "
                f"change, and only {uncertain[name]} change(s) of it had an unknown outcome. "
                "Answered 503 or 504 while they could have been committed: "
                f"{'; '.join(suspects[:4]) or 'none'}; and {len(failed_jobs)} job(s) of it "
                "failed")
    total = sum(len(v) for v in committed.values())
    during = total + gaps
    return (f"{during} committed during the run over {len(finals)} models, {total} of them "
            f"answered, {gaps} by changes whose answers the crash cut")


def unexplained(missing: list[int], creates: int, changes: int) -> bool:
    """Whether changes of unknown outcome cannot account for the ``missing`` versions: each of
    the ``creates`` among the ``changes`` for a run of consecutive versions (the ones it skipped
    and its own), each other change for one version."""
    runs: list[int] = []
    for i, version in enumerate(missing):
        if i and version == missing[i - 1] + 1:
            runs[-1] += 1
        else:
            runs.append(1)
    runs.sort(reverse=True)
    covered = runs[:creates]
    return sum(runs) - sum(covered) > changes - len(covered)


def committed_by(run: Run, changes: list[Outcome], version: int) -> list[str]:
    """The changes of a model answered 503 or 504 that were in flight while its ``version``
    could have been committed: after the request answering the version before it was sent,
    before the one answering the version after it was answered (``changes``: the answered
    changes of the model in version order)."""
    model = changes[0].model if changes else None
    below = [o for o in changes if (o.version or 0) < version]
    above = [o for o in changes if (o.version or 0) > version]
    since = below[-1].start if below else -math.inf
    until = above[0].end if above else math.inf
    return [f"{o.describe()} ({o.message})" for o in run.outcomes
            if o.model == model and o.op in CHANGES and o.status in (503, 504)
            and o.start <= until and o.end >= since]


def settle_jobs(run: Run, report: Report) -> list[dict[str, Any]]:
    """Wait until no job is queued or running; every job's record."""
    began = time.monotonic()
    deadline = began + SETTLE_SECONDS
    while True:
        jobs = http_call(run.service.port, "GET", "/jobs").json()["jobs"]
        waiting = [job for job in jobs if job["state"] not in FINISHED]
        if not waiting:
            run.settle_seconds = time.monotonic() - began
            return jobs
        if time.monotonic() > deadline:
            report.fail(f"{len(waiting)} job(s) still queued or running {SETTLE_SECONDS:g} s "
                        f"after the load stopped: {[j['id'] for j in waiting][:5]}")
            return jobs
        time.sleep(0.2)


def check_jobs(run: Run, jobs: list[dict[str, Any]], report: Report) -> str:
    states = Counter(job["state"] for job in jobs)
    listed = {job["id"] for job in jobs}
    lost = [job_id for job_id in run.jobs if job_id not in listed]
    if lost:
        report.fail(f"{len(lost)} job(s) answered 202 are not listed: {lost[:5]}")
    stopped = 0
    for job in jobs:
        error = job.get("error") or {}
        if job["state"] == "failed":
            message = str(error.get("message", ""))
            if error.get("status") == 503 and "stopped while the job was" in message:
                stopped += 1
            elif error.get("status") != 404:
                report.fail(f"job {job['id']} failed with {error}")
        if job["state"] == "succeeded" and not isinstance(job.get("version"), int):
            report.fail(f"job {job['id']} succeeded without a version: {job}")
    crash_job = run.crash.job
    if crash_job is not None:
        after = next((job for job in jobs if job["id"] == crash_job["id"]), None)
        if after is None or after["state"] != "failed" or (after.get("error") or {}).get(
                "status") != 503:
            report.fail(f"the job the crash cut short ({crash_job['state']} at the kill) shows "
                        f"{after and {k: after.get(k) for k in ('state', 'error')}}, not failed")
    # a new job after the run: the restarted worker runs jobs, and no job lock is stuck
    reply = http_call(run.service.port, "POST", f"/models/{run.names[0]}/train",
                      {"data": "xor", "epochs": 20, "wait": False})
    if reply.status != 202:
        report.fail(f"after the run, a job was refused: {reply.status} {reply.body[:300]!r}")
    else:
        job_id, deadline = reply.json()["id"], time.monotonic() + 60
        while (job := http_call(run.service.port, "GET", f"/jobs/{job_id}").json())[
                "state"] not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.1)
        if job["state"] != "succeeded":
            report.fail(f"after the run, a short job ended {job['state']}: {job.get('error')}")
    waits = [(datetime.fromisoformat(job["started"]) - datetime.fromisoformat(job["created"]))
             .total_seconds() for job in jobs if job.get("started")]
    return (f"{len(jobs)}: " + ", ".join(f"{states[s]} {s}" for s in FINISHED if states[s])
            + f"; {stopped} failed because the service stopped; the crash's job was "
            f"{crash_job['state'] if crash_job else 'not submitted'} at the kill; queued "
            f"{statistics.median(waits or [math.nan]):.1f} s (median) to "
            f"{max(waits, default=math.nan):.1f} s before running; all finished "
            f"{run.settle_seconds:.1f} s after the load stopped")


# Run by a Python process of its own, with no cache, as a restarted service would load them (and
# so that no gradbook function runs in the soak's process: `make mutation` would otherwise pick
# tests/test_soak.py as a test of every mutant of gradbook/store.py).
LOAD_MODELS = """
import json, sys
from gradbook.store import ModelStore
store, loaded = ModelStore(sys.argv[1]), {}
for name in store.names():
    try:
        loaded[name] = store.get(name).metadata["version"]
    except Exception as err:
        loaded[name] = f"{type(err).__name__}: {err}"
print(json.dumps(loaded))
"""


def check_store(run: Run, report: Report) -> str:
    """Every model file loads with ``gradbook.store.ModelStore(path).get(name)`` and has the
    version the service reports."""
    loader = subprocess.run([sys.executable, "-c", LOAD_MODELS, str(run.service.store)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    if loader.returncode != 0:
        report.fail(f"loading the store failed: {loader.stderr[-1000:]}")
        return "could not be loaded"
    loaded: dict[str, int | str] = json.loads(loader.stdout)
    for name, version in loaded.items():
        if isinstance(version, str):
            report.fail(f"model {name} does not load from the store: {version}")
            continue
        reply = http_call(run.service.port, "GET", f"/models/{name}")
        if reply.status != 200 or reply.json().get("version") != version:
            report.fail(f"model {name}: the store has version {version}, GET answers "
                        f"{reply.status} {reply.body[:200]!r}")
    listed = http_call(run.service.port, "GET", "/models").json()["models"]
    for model in listed:
        if "error" in model:
            report.fail(f"GET /models lists {model}")
    staging = sorted(p.name for p in run.service.store.glob(".*.staging"))
    return (f"{sum(not isinstance(v, str) for v in loaded.values())} of {len(loaded)} models "
            f"load; leftover staging files: {staging or 'none'}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def summarize(run: Run) -> Report:
    """Check everything after the run (the service still up) and write the figures."""
    config, crash, report = run.config, run.crash, Report(run.config)
    report.failures += run.chaos_problems
    answered, excused = classify(run, report)
    check_order(answered, report)
    if not wait_healthy(run.service.port):
        report.fail("the service was not healthy after the run")
    jobs = settle_jobs(run, report)
    store_line = check_store(run, report)
    finals = final_versions(run, report)
    versions_line = check_versions(run, answered, finals, jobs, report)
    jobs_line = check_jobs(run, jobs, report)
    for orphan in crash.orphans:
        report.fail(f"process {orphan} of the killed service was still alive "
                    f"{ORPHAN_SECONDS:g} s after the SIGKILL")
    replaced = crash.replaced_before + count_replaced(
        run.service.port, len(run.kills) - round(crash.replaced_before))
    if len(run.kills) != len(kill_times(config)):
        report.fail(f"{len(run.kills)} kernel(s) killed of the {len(kill_times(config))} planned "
                    f"(the run ended first? the restart took {crash.restart_seconds:.1f} s)")
    if replaced != len(run.kills):
        report.fail(f"{len(run.kills)} kernels killed, {replaced:g} replaced")
    take_sample(run)
    peak = max(run.peak_rss.values(), default=0)
    bound = run.baseline_rss + config.memory_allowance_mib * MIB
    if peak > bound:
        worst = max(run.peak_rss, key=run.peak_rss.__getitem__)
        report.fail(f"kernel {worst} reached {peak / MIB:.1f} MiB, over the bound "
                    f"{bound / MIB:.1f} MiB")
    if crash.train is None:
        report.fail("the crash did not happen")

    latencies = [o.end - o.start for o in answered]
    statuses = Counter(o.status for o in answered)
    ops = Counter(o.op for o in answered)
    worst_op = max(answered, key=lambda o: o.end - o.start, default=None)
    report.figures.update(
        requests=len(answered), successes=sum(1 for o in answered if (o.status or 0) < 300),
        kernels_killed=len(run.kills), kernels_replaced=replaced,
        cut=excused["cut by the crash"], refused=excused["refused while down"],
        downtime=crash.ready - crash.began, worst_latency=max(latencies, default=math.nan),
        peak_rss_growth=peak - run.baseline_rss)
    lines = report.lines
    lines += [
        f"soak: {config.clients} clients for {config.seconds:g} s, {config.kernels} kernels, "
        f"one kernel SIGKILLed every {config.kill_every:g} s, the service SIGKILLed at "
        f"{config.crash_time:g} s and restarted; deadline {config.deadline:g} s "
        f"(GRADBOOK_REQUEST_TIMEOUT), a hang = no answer in {config.client_timeout:g} s",
        f"requests answered      {len(answered)} ({len(answered) / config.seconds:.0f}/s; "
        f"plus {run.warmup} in the warm-up)",
        "  by status             " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())),
        "  by operation          " + ", ".join(f"{op} {ops[op]}" for op in OPERATIONS),
        "  by op and status      " + "; ".join(
            f"{op} " + " ".join(f"{s}:{n}" for s, n in sorted(Counter(
                o.status for o in answered if o.op == op).items())) for op in OPERATIONS),
        f"wrong answers          {report.figures.get('wrong_answers', 0):g} (not JSON, an "
        "unexpected status, a malformed error or result)",
        f"cut by the crash       {excused['cut by the crash']} (in flight at the SIGKILL)",
        f"refused while down     {excused['refused while down']} (connection attempts between "
        "the SIGKILL and /readyz 200)",
        f"failed requests        {report.figures.get('failed_requests', 0):g} (hung, or a "
        "connection error outside the crash)",
        f"kernels killed         {len(run.kills)} one at a time, plus {config.kernels} with "
        "the service",
        f"kernels replaced       {replaced:g} (gradbook_kernels_replaced_total, both lives)",
        f"restart downtime       {crash.ready - crash.began:.2f} s from the SIGKILL to "
        f"/readyz 200 (the new launcher's start: {crash.restart_seconds:.2f} s)",
        f"latency                p50 {1000 * statistics.median(latencies or [math.nan]):.1f} ms, "
        f"p99 {1000 * percentile(latencies, 0.99):.0f} ms, worst "
        f"{1000 * max(latencies, default=math.nan):.0f} ms"
        + (f" ({worst_op.op} {worst_op.path} -> {worst_op.status})" if worst_op else ""),
        "  p99 / worst by op     " + "; ".join(
            f"{op} {1000 * percentile(lat, 0.99):.0f}/{1000 * max(lat):.0f} ms"
            for op in OPERATIONS if (lat := [o.end - o.start for o in answered if o.op == op])),
        f"versions               {versions_line}",
        f"jobs                   {jobs_line}",
        f"store                  {store_line}",
        f"locks                  every model changed after the run within "
        f"{run.lock_check_seconds * 1000:.0f} ms",
        f"kernel memory          warmed-up {run.baseline_rss / MIB:.1f} MiB, peak "
        f"{peak / MIB:.1f} MiB ({(peak - run.baseline_rss) / MIB:+.1f}) over "
        f"{len(run.peak_rss)} kernels (bound {bound / MIB:.1f} MiB)",
        f"gateway memory         {(run.gateway_rss or [0])[0] / MIB:.1f} MiB at the start, "
        f"{(run.gateway_rss or [0])[-1] / MIB:.1f} MiB at the end",
        "tmpfs after SIGKILL    " + (
            "the killed service's batch folder not found" if crash.exchange is None
            else f"{crash.exchange} removed" if crash.exchange_left is None
            else f"{crash.exchange} left behind ({crash.exchange_left / 1024:.0f} kB of "
            "batches and journals; reported, not checked; the soak removes it)"),
    ]
    return report


# -- a whole run -----------------------------------------------------------------------------------
def run_soak(config: Config, workdir: Path) -> Report:
    """Start a service in ``workdir``, soak it as ``config`` says, check it; the report."""
    service = Service(workdir, config)
    service.first_start()
    try:
        run = Run(config, service)
        warm_up(run)
        take_sample(run)
        run.began = time.monotonic()
        workers = [threading.Thread(target=client, args=(run, i), name=f"client-{i}")
                   for i in range(config.clients)]
        helpers = [threading.Thread(target=chaos, args=(run,), name="chaos"),
                   threading.Thread(target=sample_memory, args=(run,), name="memory")]
        for thread in [*workers, *helpers]:
            thread.start()
        try:
            run.stopping.wait(config.seconds)
        finally:
            run.stopping.set()
            for thread in [*workers, *helpers]:
                thread.join()
        try:
            report = summarize(run)
        except Exception as err:  # the service is gone, say: that is the finding
            report = Report(config, failures=[*run.chaos_problems, "the checks after the run "
                                              f"stopped: {type(err).__name__}: {err}"])
        exchange = exchange_folder(service.kernels())
        service.stop()
        if exchange is not None:  # a SIGTERM lets the gateway remove it
            left = "left behind" if exchange.exists() else "removed"
            report.lines.append(f"tmpfs after SIGTERM    {exchange} {left}")
        return report
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Config()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--kill-every", type=float, default=defaults.kill_every)
    parser.add_argument("--crash-at", type=float, default=None,
                        help="seconds into the run (default: between two kernel kills midway)")
    parser.add_argument("--deadline", type=float, default=defaults.deadline,
                        help="GRADBOOK_REQUEST_TIMEOUT of the service")
    parser.add_argument("--margin", type=float, default=defaults.margin,
                        help="a request unanswered this long past the deadline has hung")
    parser.add_argument("--models", type=int, default=defaults.models)
    parser.add_argument("--kernels", type=int, default=defaults.kernels)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--memory-allowance", type=float, default=defaults.memory_allowance_mib,
                        help="MiB a kernel may grow past the warmed-up kernels")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the store and the service logs here (default: a temporary "
                             "folder, removed)")
    args = parser.parse_args()
    config = Config(args.clients, args.seconds, args.kill_every, args.crash_at, args.deadline,
                    args.margin, args.models, args.kernels, args.seed, args.memory_allowance)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run_soak(config, Path(tempfile.mkdtemp(prefix="soak-", dir=args.workdir)))
    else:
        with tempfile.TemporaryDirectory(prefix="gradbook-soak-") as tmp:
            report = run_soak(config, Path(tmp))
    print(report.text())
    if report.failures and args.workdir is None:
        print("(run again with --workdir DIR to keep the store and the service logs)")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
