"""The second security probe, replayed: another local user, a web page in the user's browser, a
client without the token, each doing what the probe did.

Where the finding is about other users, the attacker really is another user: the tests run as
root (as CI does) and drop to ``nobody`` with ``setpriv``, running the system's ``python3`` or
``psql``, with nothing of ours but what the service itself leaves reachable. Services are started
in a folder every user may enter (mode 0755), so that only the modes the service gives its own
files stand between ``nobody`` and them. Without root or ``setpriv`` those tests are skipped,
saying why.

Findings, most severe first: 1. the cluster's PostgreSQL trusted every local user; 2. kernels'
answers could be read off their TCP channels; 3. the store was world-readable and its locks
world-lockable (and a jobs lock wait had no end); 4. queued requests held unbounded memory;
5. clients without the token could fill the kernels' queue; 6. training jobs queued without
limit; 7. a web page could change models; 8. tiny requests bought huge answers; 9. lesser ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Reply, Service, free_port, http_request
from gradbook_service.app.jobs import JOB_ID, JobStore
from gradbook_service.app.settings import RESPONSE_FLOOR_BYTES
from gradbook_service.gateway.capacity import MAX_HEADER_BYTES

pytestmark = pytest.mark.xdist_group("gateway")  # the services' tests; the others say their own
ON_THEIR_OWN = pytest.mark.xdist_group("postgres")  # no gateway: beside the gateway tests

TOKEN = "neighbour-t0ken"
PYTHON = "/usr/bin/python3"  # the system's: nobody cannot run ours, in a folder of root's
PROBES = Path(__file__).parent / "probes"
PREDICT = "/models/xor/predict"
JSON_TYPE = {"Content-Type": "application/json"}
MiB = 2**20


# -- another user ----------------------------------------------------------------------------------
def _why_not_nobody() -> str | None:
    if os.geteuid() != 0:
        return "these tests act as another user (nobody): they need root, as CI has"
    if shutil.which("setpriv") is None:
        return "these tests act as another user with setpriv (util-linux), which is missing"
    if not os.access(PYTHON, os.X_OK):
        return f"these tests run {PYTHON} as nobody, and it is missing"
    return None


as_another_user = pytest.mark.skipif(_why_not_nobody() is not None,
                                     reason=_why_not_nobody() or "")


def as_nobody(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``command`` run as the user nobody, with a clean environment, from ``/``."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--reset-env",
         *command], capture_output=True, text=True, timeout=timeout, cwd="/", check=False)


def nobody_python(code: str, *args: str, timeout: float = 60) -> Any:
    """What ``code`` printed as JSON, run by the system's python3 as nobody."""
    done = as_nobody(PYTHON, "-c", code, *args, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# Tries each action on each path as nobody; prints {path: "ok" or the error's name}.
TRY_FILES = """
import fcntl, json, os, sys
outcome = {}
for action, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        if action == "list":
            os.listdir(path)
        elif action == "read":
            open(path, "rb").read(1)
        elif action == "lock":
            with open(path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        outcome[action + " " + path] = "ok"
    except OSError as err:
        outcome[action + " " + path] = type(err).__name__
print(json.dumps(outcome))
"""


@pytest.fixture(scope="module")
def open_folder() -> Iterator[Path]:
    """A folder any user may enter and list: what keeps another user out of a service's files
    started in it is the service's own doing."""
    folder = Path(tempfile.mkdtemp(prefix="gradbook-neighbours-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start(open_folder: Path, name: str, token: str | None = None, **settings: str) -> Service:
    workdir = open_folder / name
    workdir.mkdir(mode=0o755)
    workdir.chmod(0o755)
    return Service(workdir, token=token, env=settings)


@pytest.fixture(scope="module")
def neighbour(open_folder: Path) -> Iterator[Service]:
    """A service with a token and a training worker whose jobs may run 2 s."""
    service = start(open_folder, "neighbour", TOKEN, GRADBOOK_MAX_JOB_SECONDS="2")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def capped(open_folder: Path) -> Iterator[Service]:
    """No token, one kernel, no training worker (jobs stay queued), and small bounds."""
    service = start(open_folder, "capped", GRADBOOK_KERNELS="1", GRADBOOK_TRAINING_WORKER="0",
                    GRADBOOK_MAX_QUEUED_JOBS="3", GRADBOOK_MAX_JOB_BYTES="200000",
                    GRADBOOK_MAX_PENDING_BYTES=str(32 * MiB), GRADBOOK_MAX_CONNECTIONS="64")
    yield service
    service.stop()


def message(reply: Reply) -> str:
    return reply.json()["error"]["message"]


def exchange_folder(service: Service) -> Path:
    """The gateway's private folder of kernel files (``gradbook_service.gateway.engine``)."""
    [folder] = Path("/dev/shm").glob(f"gradbook-results-{service.process.pid}-*") or \
        Path(tempfile.gettempdir()).glob(f"gradbook-results-{service.process.pid}-*")
    return folder


# -- 1. the cluster's PostgreSQL -------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres() -> Iterator[Any]:
    from gradbook_service.app.postgres import PostgresError, PostgresServer, find_binaries

    try:
        find_binaries()
    except PostgresError as err:
        pytest.skip(f"{err} (tools/system-packages.sh installs it)")
    home = Path(tempfile.mkdtemp(prefix="gradbook-pg-"))
    home.chmod(0o711)  # as root, the server's OS user (postgres) must pass through it
    server = PostgresServer(home / "data", free_port(), durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def psql_as_nobody(server: Any, host: str, role: str, database: str) -> subprocess.CompletedProcess:
    return as_nobody(str(server.bin / "psql"), "-w", "-X", "-h", host, "-p", str(server.port),
                     "-U", role, "-d", database, "-c", "SELECT current_user")


@ON_THEIR_OWN
@as_another_user
def test_no_local_user_can_connect_to_the_clusters_database(postgres: Any) -> None:
    """Probe: ``trust`` on 127.0.0.1 made nobody the superuser (``usesuper = t``), able to null
    every model and run ``COPY … TO PROGRAM``. Now every role needs its password, which only
    the user running the cluster can read; the Unix socket's folder is closed too."""
    postgres.create_database("neighbours")
    for role in ("postgres", "gradbook"):
        for host in ("127.0.0.1", str(postgres.datadir)):
            done = psql_as_nobody(postgres, host, role, "neighbours")
            assert done.returncode != 0, f"nobody connected as {role} via {host}: {done.stdout}"
            assert re.search(r"password|Permission denied", done.stderr), done.stderr
    mode = postgres.passfile.stat()
    assert mode.st_uid == os.geteuid() and mode.st_mode & 0o777 == 0o600
    assert nobody_python(TRY_FILES, "read", str(postgres.passfile)) == {
        f"read {postgres.passfile}": "PermissionError"}


@ON_THEIR_OWN
def test_the_service_role_owns_its_database_and_nothing_more(postgres: Any) -> None:
    """The service connects as a role that is no superuser, creates no roles or databases, runs
    no programs, reaches no other database, and owns only its own databases."""
    import psycopg

    url = postgres.create_database("owned")
    assert "gradbook@" in url and "passfile=" in url and "password" not in url
    with psycopg.connect(url, autocommit=True) as db:
        flags = db.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication "
                           "FROM pg_roles WHERE rolname = current_user").fetchone()
        assert flags == (False, False, False, False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            db.execute("COPY (SELECT 1) TO PROGRAM 'id'")
        owned = {name for (name,) in db.execute(
            "SELECT datname FROM pg_database WHERE datdba = "
            "(SELECT oid FROM pg_roles WHERE rolname = current_user)").fetchall()}
        assert "owned" in owned and not owned & {"postgres", "template0", "template1"}
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(postgres.url("postgres", "gradbook")).close()


@ON_THEIR_OWN
@as_another_user
def test_a_cluster_made_with_trust_gets_passwords_at_its_next_start() -> None:
    """A data folder made before passwords (``trust``, no password file) is given passwords the
    first time it starts, and keeps its data."""
    import psycopg
    from gradbook_service.app.postgres import PostgresError, PostgresServer, find_binaries

    try:
        find_binaries()
    except PostgresError as err:
        pytest.skip(str(err))
    home = Path(tempfile.mkdtemp(prefix="gradbook-pg-"))
    home.chmod(0o711)
    server = PostgresServer(home / "data", free_port(), durable=False)
    try:
        with server:
            url = server.create_database("old")
            with psycopg.connect(url, autocommit=True) as db:
                db.execute("CREATE TABLE kept (x int)")
        # as service/app/postgres.py wrote it before: trust, and no password file
        (server.datadir / "pg_hba.conf").write_text(
            "local all all trust\nhost  all all 127.0.0.1/32 trust\n")
        server.passfile.unlink()
        with server:
            done = psql_as_nobody(server, "127.0.0.1", "postgres", "old")
            assert done.returncode != 0 and "password" in done.stderr, done.stdout
            with psycopg.connect(server.create_database("old"), autocommit=True) as db:
                assert db.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


# -- 2. the kernels' channels ----------------------------------------------------------------------
def listening_sockets(pid: int) -> tuple[list[int], list[str]]:
    """The TCP ports and the Unix socket paths process ``pid`` listens on (``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes and int(fields[3], 16) & 0x10000:
            paths.append(fields[7])  # __SO_ACCEPTCON: listening
    return ports, paths


@as_another_user
def test_no_local_user_can_read_a_kernels_answers(neighbour: Service) -> None:
    """Probe: kernels published every answer on IOPub over TCP on 127.0.0.1, and a subscriber
    needs no key: nobody read predict, /diagnostics and /models answers. Now the kernels listen
    on no TCP port, and their Unix sockets are in a folder only the service's user may enter."""
    targets = []
    for pid in neighbour.kernel_pids:
        ports, paths = listening_sockets(pid)
        assert ports == [], f"kernel {pid} listens on TCP ports {ports}"
        assert paths, f"kernel {pid} listens on nothing at all"
        targets += [f"tcp:127.0.0.1:{port}" for port in ports] + [f"unix:{p}" for p in paths]
    marker = f"secret-{uuid.uuid4().hex[:12]}"
    listener = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--reset-env",
         PYTHON, "-c", (PROBES / "zmtp_subscriber.py").read_text(), marker, "6", *targets],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    time.sleep(1.5)  # connected and subscribed, where it can
    for _ in range(10):  # an answer that names the marker, from either kernel
        assert neighbour.get(f"/models/{marker}").status == 404
        time.sleep(0.2)
    out, _ = listener.communicate(timeout=30)
    heard = json.loads(out)
    assert not any(result["heard"] for result in heard.values()), heard
    assert not any(result["connected"] for result in heard.values()), heard
    assert all("PermissionError" in result["error"] for result in heard.values()), heard


# -- 3. the service's files ------------------------------------------------------------------------
def every_path(folder: Path) -> list[Path]:
    return [folder, *folder.rglob("*")]


@as_another_user
def test_the_services_files_are_its_users_alone(neighbour: Service) -> None:
    """Probe: store files were 0644 (weights and jobs' training data readable by every local
    user) and nobody could hold the lock files. Now every file and folder the service makes is
    its user's alone, and nobody can list, read or lock any of them."""
    job = neighbour.post("/models/xor/train", {"data": {"X": [[0, 0, 1]], "Y": [[0]]},
                                               "epochs": 10, "wait": False})
    assert job.status == 202
    folders = [neighbour.store, exchange_folder(neighbour)]
    for path in (p for folder in folders for p in every_path(folder)):
        st = path.lstat()
        assert st.st_uid == os.geteuid(), path
        assert st.st_mode & 0o077 == 0 or path.is_symlink(), f"{path} is {oct(st.st_mode)}"
    store, exchange = neighbour.store, exchange_folder(neighbour)
    attempts = ["list", str(store), "read", str(store / "xor.npz"),
                "lock", str(store / ".locks" / "xor.lock"), "list", str(store / ".jobs"),
                "read", str(store / ".jobs" / f"{job.json()['id']}.json"),
                "lock", str(store / ".jobs" / ".lock"), "list", str(exchange)]
    attempts += [arg for kernel in exchange.glob("kernel-*.json") for arg in ("read", str(kernel))]
    outcome = nobody_python(TRY_FILES, *attempts)
    assert outcome and set(outcome.values()) == {"PermissionError"}, outcome


def test_a_held_jobs_lock_is_answered_not_waited_on(neighbour: Service) -> None:
    """Probe: holding ``.jobs/.lock`` hung a job's creation for as long as it was held. Now a
    wait on any lock ends: the jobs' records answer 503 with Retry-After after the lock
    timeout, a model's lock 409, as before."""
    for lock, method, path, body, status in [
            (".jobs/.lock", "POST", "/models/xor/train",
             {"data": "xor", "epochs": 5, "wait": False}, 503),
            (".locks/xor.lock", "PUT", "/models/xor", {"epochs": 7}, 409)]:
        with open(neighbour.store / lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            started = time.monotonic()
            reply = neighbour.request(method, path, body, timeout=30)
            seconds = time.monotonic() - started
        assert reply.status == status, reply.body
        assert seconds < 2 + 3  # GRADBOOK_LOCK_TIMEOUT, and a margin
        if status == 503:
            assert reply.headers["Retry-After"] and "lock" in message(reply)


# -- 4. memory -------------------------------------------------------------------------------------
def rss(pid: int) -> int:
    """The resident memory of ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def worst_case(pending: int, connections: int, max_body: int) -> int:
    """The bound docs/security.md states on what the gateway holds above its idle size: the
    pending bytes (a request as text beside its body for a moment: twice), a request head and a read
    buffer per connection, and one body being decoded (about ten times its size)."""
    return 2 * pending + connections * (MAX_HEADER_BYTES + 64 * 1024) + 12 * max_body


@contextlib.contextmanager
def kernel_busy(service: Service, epochs: int = 800) -> Iterator[list[float]]:
    """The only kernel of ``service`` trains synchronously while the block runs; the list it
    yields gets the moment the training's answer arrived."""
    name = f"busy-{uuid.uuid4().hex[:6]}"
    assert service.post("/models", {"name": name, "sizes": [64, 64, 10],
                                    "loss": "cross_entropy"}).status == 201
    answered: list[float] = []
    body = {"data": "digits", "epochs": epochs, "batch_size": 32}

    def train() -> None:
        service.post(f"/models/{name}/train", body, timeout=120, check=False)
        answered.append(time.monotonic())

    trainer = threading.Thread(target=train)
    trainer.start()
    time.sleep(0.5)
    try:
        yield answered
    finally:
        trainer.join(timeout=120)
        service.delete(f"/models/{name}")


def big_predict() -> bytes:
    """A predict body of almost 4 MiB (the default body limit)."""
    row = "[0.123456789, 0.987654321, 1.0]"
    rows = (4 * MiB - 100) // (len(row) + 2)
    return ('{"X": [' + ", ".join([row] * rows) + "]}").encode()


def test_queued_requests_hold_a_bounded_memory(capped: Service) -> None:
    """Probe: each queued 4 MB predict added about 38 MiB to the gateway (30: +1151 MiB). Now a
    request waits as its text, counted against GRADBOOK_MAX_PENDING_BYTES (32 MiB here): those
    that fit wait and are answered, the rest get 503 with Retry-After at once."""
    body = big_predict()
    before = rss(capped.process.pid)
    replies: list[tuple[Reply, float]] = []
    peak = [before]

    def send() -> None:
        sent = time.monotonic()
        reply = capped.request("POST", PREDICT, raw=body, headers=JSON_TYPE, timeout=120,
                               check=False)
        replies.append((reply, time.monotonic() - sent))

    with kernel_busy(capped):
        senders = [threading.Thread(target=send) for _ in range(12)]
        for sender in senders:
            sender.start()
            time.sleep(0.05)
        for _ in range(20):
            peak.append(rss(capped.process.pid))
            time.sleep(0.1)
        for sender in senders:
            sender.join(timeout=120)
    statuses = sorted(reply.status for reply, _ in replies)
    refused = [(reply, waited) for reply, waited in replies if reply.status == 503]
    assert 200 in statuses and refused, statuses
    assert set(statuses) == {200, 503}, statuses
    queued = max(waited for reply, waited in replies if reply.status == 200)
    for reply, waited in refused:  # at once: not after waiting for the kernel, as the queued did
        assert reply.headers["Retry-After"] and "GRADBOOK_MAX_PENDING_BYTES" in message(reply)
        assert waited < queued
    grown = max(peak) - before  # the probe's 38 MiB each: 456 MiB
    assert grown < worst_case(32 * MiB, 20, 4 * MiB), f"the gateway grew by {grown / MiB:.0f} MiB"


def test_stalled_uploads_count_against_the_bound(capped: Service) -> None:
    """Probe: 60 uploads stalled part-way held 233 MiB for 30 s, counted by nothing. Now a
    declared body is counted before it is read: with the bound taken by stalled uploads, a
    request gets 503 at once; once they go, the service answers again."""
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {4 * MiB}\r\n\r\n").encode()
    before = rss(capped.process.pid)
    stalled = []
    try:
        for _ in range(12):  # 48 MiB declared, against 32
            client = socket.create_connection(("127.0.0.1", capped.port), timeout=5)
            client.sendall(head + b" " * MiB)
            stalled.append(client)
        time.sleep(0.5)
        grown = rss(capped.process.pid) - before
        reply = capped.post(PREDICT, {"x": [1, 0, 1]}, timeout=10)
        assert reply.status == 503 and "GRADBOOK_MAX_PENDING_BYTES" in message(reply)
        assert grown < worst_case(32 * MiB, 20, 4 * MiB), f"grew by {grown / MiB:.0f} MiB"
    finally:
        for client in stalled:
            client.close()
    deadline = time.monotonic() + 10
    while (reply := capped.post(PREDICT, {"x": [1, 0, 1]})).status != 200:
        assert time.monotonic() < deadline, reply.body
        time.sleep(0.2)


def test_connections_past_the_cap_get_503(capped: Service) -> None:
    """Probe: there was no cap on connections. Past GRADBOOK_MAX_CONNECTIONS (64 here) a new
    connection is answered 503 with Retry-After and closed; once some close, it is served."""
    idle = [socket.create_connection(("127.0.0.1", capped.port), timeout=5) for _ in range(64)]
    try:
        time.sleep(0.5)  # all accepted
        reply = capped.get("/healthz", timeout=10, check=False)
        assert reply.status == 503 and reply.headers["Retry-After"] == "1"
        assert "GRADBOOK_MAX_CONNECTIONS" in message(reply)
    finally:
        for client in idle:
            client.close()
    deadline = time.monotonic() + 10
    while (reply := capped.get("/healthz", check=False)).status != 200:
        assert time.monotonic() < deadline, reply.body
        time.sleep(0.2)


# -- 5. clients without the token ------------------------------------------------------------------
def metric(service: Service, name: str) -> float:
    text = service.get("/metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def test_every_notebook_endpoint_needs_the_token(neighbour: Service) -> None:
    """Probe: ``GET /`` was a notebook endpoint without the token. Now every endpoint a kernel
    answers needs it; the page, /healthz and /readyz are answered by the gateway alone."""
    spec = neighbour.spec
    assert spec is not None
    for template, item in spec["paths"].items():
        path = template.replace("{name}", "xor").replace("{id}", "0" * 32)
        for method in ("get", "post", "put", "delete"):
            if method not in item:
                continue
            public = item[method].get("security") == []
            reply = neighbour.request(method.upper(), path, token="", check=False)
            assert (reply.status == 401) != public, f"{method.upper()} {path}: {reply.status}"
    executions = metric(neighbour, "gradbook_batch_size_count")
    for _ in range(20):
        assert neighbour.get("/", token="").status == 200
    assert metric(neighbour, "gradbook_batch_size_count") == executions  # no kernel ran


def test_a_flood_without_the_token_leaves_the_service_ready(neighbour: Service) -> None:
    """Probe: ``wrk -c1100`` on ``/`` without the token made /readyz 503 ("1000 requests
    wait") and an authorized predict take 8.9 s. Now the page is the gateway's: the queue stays
    empty, /readyz 200, and a predict is answered at once."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("the flood needs wrk (Debian's package wrk; tools/system-packages.sh)")
    flood = subprocess.Popen([wrk, "-t2", "-c1100", "-d6s", f"http://127.0.0.1:{neighbour.port}/"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        ready = neighbour.get("/readyz", timeout=10)
        started = time.monotonic()
        predict = neighbour.post(PREDICT, {"x": [1, 0, 1]}, timeout=30)
        seconds = time.monotonic() - started
        depth = metric(neighbour, "gradbook_queue_depth")
    finally:
        out, _ = flood.communicate(timeout=60)
    assert "Requests/sec" in out, out
    assert ready.status == 200 and predict.status == 200 and depth == 0
    assert seconds < 5, f"a predict took {seconds:.1f} s under the flood"  # the probe: 8.9 s


# -- 6. training jobs ------------------------------------------------------------------------------
def test_jobs_are_bounded_in_number_and_bytes(capped: Service) -> None:
    """Probe: 1018 queued 4000-epoch jobs were accepted, and 20 jobs with 4 MB bodies put 106 MB
    in .jobs/. Now past GRADBOOK_MAX_QUEUED_JOBS (3 here) or GRADBOOK_MAX_JOB_BYTES (200000) a
    job gets 429 with Retry-After; a cancelled job makes room, and its data goes."""
    small = {"data": "xor", "epochs": 10, "wait": False}
    ids = []
    for _ in range(3):
        reply = capped.post("/models/xor/train", small)
        assert reply.status == 202, reply.body
        ids.append(reply.json()["id"])
    refused = capped.post("/models/xor/train", small)
    assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "GRADBOOK_MAX_QUEUED_JOBS" in message(refused)
    for job_id in ids:
        assert capped.post(f"/jobs/{job_id}/cancel").status == 200
    rows = [[0.5, 0.25, 1.0]] * 5000  # about 90 kB of data each
    first = capped.post("/models/xor/train", {"data": {"X": rows, "Y": [[1.0]] * 5000},
                                              "epochs": 1, "wait": False})
    assert first.status == 202, first.body
    data_file = capped.store / ".jobs" / f"{first.json()['id']}.data.json"
    assert data_file.exists()
    second = capped.post("/models/xor/train", {"data": {"X": rows * 2, "Y": [[1.0]] * 10000},
                                               "epochs": 1, "wait": False})
    assert second.status == 429 and "GRADBOOK_MAX_JOB_BYTES" in message(second)
    assert capped.post(f"/jobs/{first.json()['id']}/cancel").status == 200
    assert not data_file.exists()  # a finished job keeps no data


def test_a_job_is_checked_like_a_synchronous_run_before_its_202(capped: Service) -> None:
    """Probe: a job whose Y had the wrong width was accepted (202) and failed later."""
    data = {"X": [[0, 0, 1], [1, 1, 1]], "Y": [[0, 1], [1, 0]]}
    for wait in (True, False):
        reply = capped.post("/models/xor/train", {"data": data, "wait": wait})
        assert reply.status == 400 and "Y must have shape (n, 1)" in message(reply)


@ON_THEIR_OWN
def test_creating_a_job_reads_no_other_record(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Probe: a create re-read every record under the lock (12-24 ms on a fresh store, 110-150 ms
    at 1020 records). Now creating and claiming read the small index, whatever the records."""
    jobs = JobStore(tmp_path)
    for _ in range(1000):
        job = jobs.create("m", {"lr": 1.0, "epochs": 1, "batch_size": None}, "xor")
        jobs.finish(job["id"], "succeeded", version=1)
    reads: list[Path] = []
    original = Path.read_text

    def counted(self: Path, *args: Any, **kwargs: Any) -> str:
        reads.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    created = jobs.create("m", {"lr": 1.0, "epochs": 1, "batch_size": None}, "xor")
    assert len(reads) <= 2, reads
    reads.clear()
    assert jobs.claim()["id"] == created["id"]
    assert len(reads) <= 2, reads
    monkeypatch.undo()
    jobs.prune()
    records = [path for path in tmp_path.glob(".jobs/*.json") if JOB_ID.fullmatch(path.stem)]
    assert len(records) == 1000  # the newest kept


def test_a_job_past_its_deadline_stops_and_commits_nothing(neighbour: Service) -> None:
    """Probe: the training-time estimate was 3.1x short under load, and a job had no deadline,
    so a "60 s" job ran for minutes. Now GRADBOOK_MAX_JOB_SECONDS (2 here) stops it: failed,
    504, nothing committed."""
    before = neighbour.get("/models/digits").json()["version"]
    job = neighbour.post("/models/digits/train", {"data": "digits", "epochs": 3000,
                                                  "batch_size": 32, "wait": False})
    assert job.status == 202, job.body
    deadline = time.monotonic() + 60
    while (record := neighbour.get(f"/jobs/{job.json()['id']}").json())["state"] in (
            "queued", "running"):
        assert time.monotonic() < deadline, record
        time.sleep(0.25)
    assert record["state"] == "failed" and record["error"]["status"] == 504, record
    assert "GRADBOOK_MAX_JOB_SECONDS" in record["error"]["message"]
    assert 0 < record["epoch"] < 3000
    assert neighbour.get("/models/digits").json()["version"] == before


# -- 7. web pages ----------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://127.0.0.1:9"}, {"Origin": "null"}],
    ids=["cross-site", "same-site", "other-origin", "null-origin"])
def test_a_web_page_cannot_change_a_model(capped: Service, headers: dict[str, str]) -> None:
    """Probe: with no token set, a page of another origin reset xor with a ``no-cors`` fetch.
    Now a browser's request that changes state for another site or origin is 403."""
    before = capped.get("/models/xor").json()["version"]
    for method, path in [("POST", "/models/xor/reset"), ("PUT", "/models/xor"),
                         ("DELETE", "/models/xor"), ("POST", "/models")]:
        reply = capped.request(method, path, headers=headers)
        assert reply.status == 403 and "another site" in message(reply), reply.body
    assert capped.get("/models/xor").json()["version"] == before
    own = capped.post("/models/xor/predict", {"x": [1, 0, 1]},
                      headers={"Sec-Fetch-Site": "same-origin",
                               "Origin": f"http://127.0.0.1:{capped.port}"})
    assert own.status == 200


def test_an_empty_form_is_not_json(capped: Service) -> None:
    """Probe: an empty body was accepted whatever its Content-Type: an empty form is what a
    page's form sends."""
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        reply = capped.post("/models/xor/reset", raw=b"", headers={"Content-Type": content_type})
        assert reply.status == 415, reply.body


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8888", "10.0.0.1"])
def test_a_host_the_service_does_not_know_gets_403(capped: Service, host: str) -> None:
    """Probe: any Host was answered (``Host: attacker.example`` → 200), the door to DNS
    rebinding. Now a service on loopback answers the loopback names only (and its settings')."""
    for path in ("/", "/healthz", "/models", "/metrics", "/nowhere"):
        reply = capped.get(path, headers={"Host": host}, check=False)
        assert reply.status == 403 and "GRADBOOK_ALLOWED_HOSTS" in message(reply), path
    for known in ("localhost", f"localhost:{capped.port}", f"127.0.0.1:{capped.port}", "[::1]"):
        assert capped.get("/healthz", headers={"Host": known}).status == 200, known


def test_the_page_can_be_framed_by_no_site(capped: Service) -> None:
    """Probe: the playground had no Content-Security-Policy and no X-Frame-Options."""
    reply = capped.get("/", token="")
    policy = reply.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "'unsafe-inline'" not in policy and reply.headers["X-Frame-Options"] == "DENY"


ATTACK_PAGE = """<!doctype html><title>waiting</title><script>
Promise.allSettled([
  fetch('http://127.0.0.1:{port}/models/xor/reset', {{method: 'POST', mode: 'no-cors'}}),
  fetch('http://127.0.0.1:{port}/models', {{method: 'POST', mode: 'no-cors',
        headers: {{'Content-Type': 'text/plain'}}, body: '{{"name": "pwned", "sizes": [3, 1]}}'}}),
]).then(() => {{ document.title = 'sent'; }});
</script>"""


def test_a_page_of_another_origin_in_chromium_changes_nothing(capped: Service) -> None:
    """The probe's attack in Chromium itself: a page served from another port of 127.0.0.1
    POSTs to the service in ``no-cors`` mode. Nothing changes."""
    chromium, driver_path = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.exists() and driver_path.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (tools/system-packages.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.support.ui import WebDriverWait

    page = ATTACK_PAGE.format(port=capped.port).encode()

    class Attacker(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(str(driver_path)))
    before = capped.get("/models/xor").json()["version"]
    try:
        driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
        WebDriverWait(driver, 20).until(lambda d: d.title == "sent")
        # and the service's own page, under its policy: it loads, lists models, breaks no rule
        driver.get(f"http://127.0.0.1:{capped.port}/")
        WebDriverWait(driver, 20).until(lambda d: "digits" in d.find_element(
            "css selector", '[data-testid="model-list"]').text)
        violations = [entry for entry in driver.get_log("browser")
                      if "Content Security Policy" in entry["message"]]
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
    assert capped.get("/models/xor").json()["version"] == before
    assert capped.get("/models/pwned").status == 404
    assert not violations, violations


# -- 8. answers out of proportion ------------------------------------------------------------------
def test_a_small_request_cannot_buy_a_huge_answer(capped: Service) -> None:
    """Probe: a 21-byte gradients request on a [1, 775, 775, 1] model returned 13.6 MB after a
    second of kernel time, and a 2.6 KB predict on [1, 1000] 13.1 MB. Now an answer may be at
    most GRADBOOK_MAX_RESPONSE_RATIO (64) times its request, or 1 MiB: refused before the work,
    saying how big it would be."""
    created = []
    try:
        for name, sizes in (("amp-deep", [1, 775, 775, 1]), ("amp-wide", [1, 1000])):
            assert capped.post("/models", {"name": name, "sizes": sizes}).status == 201
            created.append(name)
        started = time.monotonic()
        reply = capped.post("/models/amp-deep/gradients", {"X": [[1]], "Y": [[0]]})
        assert reply.status == 400 and time.monotonic() - started < 2
        estimated = int(re.search(r"about (\d+) bytes", message(reply)).group(1))
        assert estimated > RESPONSE_FLOOR_BYTES and "GRADBOOK_MAX_RESPONSE_RATIO" in message(reply)
        wide = capped.post("/models/amp-wide/predict", {"X": [[1]] * 500})
        assert wide.status == 400 and "about" in message(wide)
        assert capped.post("/models/amp-wide/predict", {"X": [[1]] * 20}).status == 200
    finally:
        for name in created:
            capped.delete(f"/models/{name}")
    assert capped.post("/models/digits/gradients", {"X": [[0] * 64], "Y": [3]}).status == 200


# -- 9. the lesser ones ----------------------------------------------------------------------------
def test_the_token_stays_in_the_gateway(neighbour: Service) -> None:
    """Probe: the Authorization header was copied into REQUEST and into the exchange file on
    /dev/shm, where it stayed. Now kernels never see it."""
    for _ in range(5):
        assert neighbour.post(PREDICT, {"x": [1, 0, 1]}).status == 200
    for path in exchange_folder(neighbour).iterdir():
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@ON_THEIR_OWN
def test_a_cell_never_sees_the_token(tmp_path: Path) -> None:
    """What a notebook cell gets in REQUEST: the client's headers, but not the gateway's token."""
    from test_personality import serve_notebook  # a notebook that shows what a cell gets

    cells = ["import json", '# GET /headers\nprint(json.dumps(json.loads(REQUEST)["headers"]))']
    auth = {"Authorization": f"token {TOKEN}"}
    with serve_notebook(tmp_path, cells, f"--KernelGatewayApp.auth_token={TOKEN}",
                        probe="/headers", headers=auth) as port:
        seen = http_request(port, "GET", "/headers", None, {**auth, "X-Other": "1"}, 30).json()
    assert "X-Other" in seen and "Authorization" not in seen


def test_unauthenticated_answers_name_no_path(capped: Service) -> None:
    """Probe: /healthz and /readyz named the store's path when it was unreadable."""
    moved = capped.store.with_name("store-moved")
    capped.store.rename(moved)
    try:
        for path in ("/healthz", "/readyz"):
            reply = capped.get(path)
            assert reply.status == 503 and "not readable" in message(reply)
            assert str(capped.store) not in message(reply) and "store-moved" not in message(reply)
    finally:
        moved.rename(capped.store)


def test_deleted_models_leave_nothing_behind(capped: Service) -> None:
    """Probe: 100 create/delete cycles left 102 lock files and 98 records of deleted models."""
    def listing() -> set[str]:
        return {str(p.relative_to(capped.store)) for p in capped.store.rglob("*")
                if ".jobs" not in p.parts}

    before = listing()
    versions = []
    for i in range(100):
        created = capped.post("/models", {"name": f"cycle-{i}", "sizes": [3, 1]})
        assert created.status == 201
        versions.append(created.json()["version"])
        assert capped.delete(f"/models/cycle-{i}").status == 200
    assert listing() - before <= {".deleted-version"}
    assert versions == sorted(versions) and len(set(versions)) == 100  # never back, nor again
    again = capped.post("/models", {"name": "cycle-0", "sizes": [3, 1]}).json()["version"]
    assert again > versions[0]
    capped.delete("/models/cycle-0")
