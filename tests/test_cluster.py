"""Several replicas over one PostgreSQL store, behind HAProxy (issue 13), against real processes.

One module-wide cluster (starting replicas costs seconds): a PostgreSQL server of our own
(``gradbook_service.app.postgres.PostgresServer``, fsync off), replica A with no training worker
(``GRADBOOK_TRAINING_WORKER=0``), replica B with one, both ``python -m
gradbook_service.app.launch`` as
``make serve`` starts it, and HAProxy in front of both as ``make cluster`` starts it
(``gradbook_service.app.cluster.Balancer``). The tests run in file order: the ones that break things
(the
database, then replica B) come last.

* a change answered by one replica is what the very next request to the other one sees;
* clients predicting on A, on B and through the balancer while the model trains on both never
  see its version go backwards;
* a job accepted by A (no worker) is run by B's worker and visible on both;
* with PostgreSQL killed, requests that need it get 503 JSON at once and ``/readyz`` is 503;
  started again, the replicas recover by themselves;
* with replica B killed, the balancer stops routing to it within about a second and each client
  sees at most one failed request; B's running job ends (failed, or taken over) after its lease.
"""

from __future__ import annotations

import http.client
import http.server
import itertools
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import (
    ROOT,
    Reply,
    Service,
    check_against_spec,
    free_port,
    free_run,
    gateway_env,
    http_request,
)
from gradbook_service.app.cluster import Balancer, ClusterError, find_haproxy
from gradbook_service.app.postgres import PostgresError, PostgresServer, find_binaries
from procs import alive, descendants, listening_pid, trainer_pids

pytestmark = pytest.mark.xdist_group("postgres")

LEASE = 2.0  # GRADBOOK_JOB_LEASE of the replicas, seconds
XOR_X = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]
LONG = {"data": "digits", "epochs": 5000, "batch_size": 32}  # several seconds in a worker
QUICK = 8.0  # seconds within which an answer counts as "at once" when the store is down
RECOVERY = 45.0  # seconds from the database's restart to /readyz 200 on both replicas


def _missing() -> str | None:
    try:
        find_haproxy()
        find_binaries()
    except (ClusterError, PostgresError) as err:
        return str(err)
    return None


if (why := _missing()) is not None:
    pytest.skip(f"{why} (tools/system-packages.sh installs it)", allow_module_level=True)


@dataclass
class Cluster:
    postgres: PostgresServer
    url: str
    a: Service  # no training worker
    b: Service  # a training worker
    balancer: Balancer
    spec: dict[str, Any]
    workdir: Path

    def via_balancer(self, method: str, path: str, body: Any = None, timeout: float = 30,
                     check: bool = True) -> Reply:
        """One request through HAProxy; checked against the service's OpenAPI description."""
        raw = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if raw else {}
        reply = http_request(self.balancer.port, method, path, raw, headers, timeout)
        if check:
            check_against_spec(self.spec, method, path, reply)
        return reply


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    # PostgreSQL runs as the `postgres` user when we are root, and pytest's folders are
    # root's alone (0700): its data folder lives in a folder of its own that others may pass
    pg_home = Path(tempfile.mkdtemp(prefix="gradbook-pg-"))
    pg_home.chmod(0o711)
    postgres = PostgresServer(pg_home / "data", free_port(), durable=False)
    started: list[Service] = []
    balancer: Balancer | None = None
    try:
        postgres.start()
        url = postgres.create_database("gradbook")
        # traced: each replica writes its spans to its log (tests/test_traces.py has the rest)
        settings = {"GRADBOOK_JOB_LEASE": str(LEASE), "OTEL_TRACES_EXPORTER": "console"}
        for name in ("a", "b"):
            (workdir / name).mkdir()
        a = Service(workdir / "a", store=url, env={**settings, "GRADBOOK_TRAINING_WORKER": "0"})
        started.append(a)
        b = Service(workdir / "b", store=url, env=settings)
        started.append(b)
        balancer = Balancer(free_port(), [("127.0.0.1", a.port), ("127.0.0.1", b.port)],
                            workdir / "haproxy")
        balancer.start()
        balancer.wait_for_states({"replica1": "UP", "replica2": "UP"}, timeout=10)
        assert a.spec is not None
        yield Cluster(postgres, url, a, b, balancer, a.spec, workdir)
    finally:
        if balancer is not None:
            balancer.stop()
        for service in started:
            if service.process.poll() is None:
                service.stop()
        postgres.stop()
        shutil.rmtree(pg_home, ignore_errors=True)


def version(service: Service, name: str) -> int:
    reply = service.get(f"/models/{name}")
    assert reply.status == 200, reply.body
    return reply.json()["version"]


def predict(service: Service, name: str) -> dict[str, Any]:
    reply = service.post(f"/models/{name}/predict", {"X": XOR_X})
    assert reply.status == 200, reply.body
    return reply.json()


def wait_job(service: Service, job_id: str, states: tuple[str, ...],
             seconds: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job = service.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job not {states} after {seconds} s: {job}"
        time.sleep(0.05)


# -- a. read your writes across replicas --------------------------------------------------------
@pytest.mark.parametrize("direction", ["a-writes", "b-writes"])
def test_a_change_on_one_replica_is_what_the_next_request_to_the_other_sees(
    cluster: Cluster, direction: str
) -> None:
    writer, reader = (cluster.a, cluster.b) if direction == "a-writes" else (cluster.b, cluster.a)
    name = f"shared-{direction}"

    def both_agree(expected: int) -> None:
        """The reader's very next GET and predict show ``expected``, with the writer's
        outputs (the same weights, not merely the same number)."""
        details = reader.get(f"/models/{name}")
        assert details.status == 200, details.body
        assert details.json()["version"] == expected, details.json()
        theirs, ours = predict(reader, name), predict(writer, name)
        assert theirs["version"] == ours["version"] == expected
        assert theirs["outputs"] == ours["outputs"]

    created = writer.post("/models", {"name": name, "sizes": [3, 4, 1], "seed": 3})
    assert created.status == 201, created.body
    both_agree(created.json()["version"])

    trained = writer.post(f"/models/{name}/train", {"data": "xor", "epochs": 50})
    assert trained.status == 200, trained.body
    assert trained.json()["version"] > created.json()["version"]
    both_agree(trained.json()["version"])

    reset = writer.post(f"/models/{name}/reset", {"seed": 4})
    assert reset.status == 200, reset.body
    both_agree(reset.json()["version"])

    changed = writer.put(f"/models/{name}", {"lr": 2.5, "epochs": 30})
    assert changed.status == 200, changed.body
    both_agree(changed.json()["version"])
    assert reader.get(f"/models/{name}").json()["hyperparameters"]["lr"] == 2.5

    # a rollback is a change like the others: the reader's next request sees it
    at_trained = reader.post(f"/models/{name}/predict?version={trained.json()['version']}",
                             {"X": XOR_X})
    assert at_trained.status == 200, at_trained.body
    rolled = writer.post(f"/models/{name}/rollback", {"version": trained.json()["version"]})
    assert rolled.status == 200, rolled.body
    assert rolled.json()["version"] == changed.json()["version"] + 1
    both_agree(rolled.json()["version"])
    assert predict(reader, name)["outputs"] == at_trained.json()["outputs"]

    deleted = writer.delete(f"/models/{name}")
    assert deleted.status == 200, deleted.body
    assert reader.get(f"/models/{name}").status == 404
    assert reader.post(f"/models/{name}/predict", {"x": [1, 0, 1]}).status == 404
    assert name not in [m["name"] for m in reader.get("/models").json()["models"]]


def test_the_balancer_passes_the_callers_trace_on_to_a_replica(cluster: Cluster) -> None:
    trace_id, parent = "5" * 32, "6" * 16
    reply = http_request(cluster.balancer.port, "POST", "/models/xor/predict",
                         json.dumps({"x": [1, 0, 1]}).encode(),
                         {"Content-Type": "application/json",
                          "traceparent": f"00-{trace_id}-{parent}-01"}, 30)
    assert reply.status == 200
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for service in (cluster.a, cluster.b)
                 for line in service.log.read_text().splitlines() if line.startswith('{"name"')]
        served = [span for span in lines if span["context"]["trace_id"] == f"0x{trace_id}"
                  and span["kind"] == "SpanKind.SERVER"]
        if served or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [span["parent_id"] for span in served] == [f"0x{parent}"]
    assert served[0]["name"] == "POST /models/:name/predict"


# -- b. versions never go backwards -------------------------------------------------------------
def test_clients_never_see_a_version_go_backwards_while_the_model_trains(
    cluster: Cluster,
) -> None:
    name = "busy"
    assert cluster.a.post("/models", {"name": name, "sizes": [3, 4, 1]}).status == 201
    trainings = 8
    done = threading.Event()
    seen: dict[int, list[int]] = {i: [] for i in range(4)}
    failures: list[str] = []

    def client(i: int) -> None:
        targets = ["a", "b", "balancer"]
        n = i
        while not done.is_set() or len(seen[i]) < 3:
            target = targets[n % 3]
            n += 1
            if target == "balancer":
                reply = cluster.via_balancer("POST", f"/models/{name}/predict", {"X": XOR_X})
            else:
                service = cluster.a if target == "a" else cluster.b
                reply = service.post(f"/models/{name}/predict", {"X": XOR_X})
            if reply.status != 200:
                failures.append(f"client {i} via {target}: {reply.status} {reply.body[:200]!r}")
                return
            seen[i].append(reply.json()["version"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    committed = []
    try:
        for k in range(trainings):
            service = cluster.a if k % 2 == 0 else cluster.b
            reply = service.post(f"/models/{name}/train", {"data": "xor", "epochs": 20})
            assert reply.status == 200, reply.body
            committed.append(reply.json()["version"])
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not failures, failures
    assert committed == sorted(committed) and len(set(committed)) == trainings
    for i, versions in seen.items():
        backwards = [(x, y) for x, y in itertools.pairwise(versions) if y < x]
        assert not backwards, f"client {i} saw versions go back: {backwards} in {versions}"
    assert max(max(v) for v in seen.values()) <= committed[-1]
    assert predict(cluster.a, name)["version"] == predict(cluster.b, name)["version"] == \
        committed[-1]


# -- c. a job accepted by one replica runs on another's worker ----------------------------------
def test_a_job_accepted_by_a_replica_without_a_worker_is_run_by_another(cluster: Cluster) -> None:
    assert trainer_pids(cluster.a.process.pid) == [], "replica A must run no training worker"
    assert trainer_pids(cluster.b.process.pid), "replica B must run a training worker"
    before = version(cluster.a, "xor")
    reply = cluster.a.post("/models/xor/train", {"data": "xor", "epochs": 200, "wait": False})
    assert reply.status == 202, reply.body
    job_id = reply.json()["id"]
    deadline = time.monotonic() + 60
    job: dict[str, Any] = {}
    for k in range(10**6):  # asked of A and of B in turn
        service = cluster.a if k % 2 == 0 else cluster.b
        job = service.get(f"/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, f"job stuck: {job}"
        time.sleep(0.05)
    assert job["state"] == "succeeded", job
    assert job["version"] > before
    assert cluster.a.get(f"/jobs/{job_id}").json() == cluster.b.get(f"/jobs/{job_id}").json()
    assert version(cluster.a, "xor") == version(cluster.b, "xor") == job["version"]
    assert predict(cluster.a, "xor")["version"] == predict(cluster.b, "xor")["version"] == \
        job["version"]


# -- e. the database goes away and comes back ---------------------------------------------------
def timed(call: Any) -> tuple[Reply, float]:
    start = time.monotonic()
    reply = call()
    return reply, time.monotonic() - start


def assert_unavailable(reply: Reply, seconds: float, what: str) -> None:
    assert seconds < QUICK, f"{what} took {seconds:.1f} s with the database down"
    assert reply.status == 503, f"{what}: {reply.status} {reply.body[:300]!r}"
    error = json.loads(reply.body)["error"]
    assert error["status"] == 503 and error["message"], error


def test_without_the_database_requests_fail_fast_and_the_replicas_recover_by_themselves(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    last = version(a, "xor")
    cluster.postgres.kill()
    try:
        needs_store = [("GET", "/models/xor", None), ("POST", "/models/xor/train",
                       {"data": "xor", "epochs": 5}), ("POST", "/models",
                       {"name": "nodb", "sizes": [3, 1]})]
        for service, requests in ((a, needs_store), (b, needs_store[:1])):
            for method, path, body in requests:
                reply, took = timed(lambda s=service, m=method, p=path, d=body: s.request(
                    m, p, d, timeout=30))
                assert_unavailable(reply, took, f"{method} {path}")
            # a prediction may come from a kernel's cache; either way, no hang
            reply, took = timed(lambda s=service: s.post(
                "/models/xor/predict", {"x": [1, 0, 1]}, timeout=30))
            assert took < QUICK and reply.status in (200, 503), (reply.status, reply.body)
            deadline = time.monotonic() + QUICK
            while (ready := service.get("/readyz", timeout=10)).status != 503:
                assert time.monotonic() < deadline, f"/readyz still {ready.status}"
                time.sleep(0.1)
            assert ready.json()["error"]["status"] == 503
            assert service.get("/healthz", timeout=10).status == 200  # liveness: kernels
        # the balancer has no ready replica left: its own 503, as JSON
        cluster.balancer.wait_for_states({"replica1": "DOWN", "replica2": "DOWN"}, timeout=10)
        reply = cluster.via_balancer("GET", "/models/xor", check=False)
        assert reply.status == 503 and reply.headers["Content-Type"] == "application/json"
        assert json.loads(reply.body)["error"]["status"] == 503
        assert reply.headers["Retry-After"] == "1"
    finally:
        cluster.postgres.start()
    back = time.monotonic()

    for service in (a, b):
        while (ready := service.get("/readyz", timeout=10)).status != 200:
            assert time.monotonic() - back < RECOVERY, f"not ready again: {ready.body[:300]!r}"
            time.sleep(0.2)
    print(f"/readyz 200 on both replicas {time.monotonic() - back:.1f} s after PostgreSQL "
          "started again")
    # ready again: then the requests that need the store work again too, on every kernel
    for service in (a, b):
        for _ in range(2 * 2):  # two kernels each, and a kernel may answer twice in a row
            reply = service.post("/models/xor/predict", {"X": XOR_X})
            assert reply.status == 200, f"/readyz is 200, but predict: {reply.body[:300]!r}"
            assert reply.json()["version"] == last
    trained = b.post("/models/xor/train", {"data": "xor", "epochs": 5})
    assert trained.status == 200, trained.body
    assert trained.json()["version"] == last + 1
    assert predict(a, "xor")["version"] == last + 1
    assert "nodb" not in [m["name"] for m in a.get("/models").json()["models"]]
    cluster.balancer.wait_for_states({"replica1": "UP", "replica2": "UP"}, timeout=10)
    assert cluster.via_balancer("POST", "/models/xor/predict", {"x": [1, 0, 1]}).status == 200


# -- d. a replica dies ---------------------------------------------------------------------------
def test_a_killed_replica_costs_each_client_at_most_one_request_and_its_job_ends(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    a, b, balancer = cluster.a, cluster.b, cluster.balancer
    reply = a.post("/models", {"name": "long", "sizes": [64, 32, 10], "loss": "cross_entropy"})
    assert reply.status == 201, reply.body
    job = a.post("/models/long/train", {**LONG, "wait": False})
    assert job.status == 202, job.body
    job_id = job.json()["id"]
    wait_job(a, job_id, ("running",), seconds=30)  # on B's worker: A has none

    stop = threading.Event()
    killed_at: list[float] = []
    results: dict[int, list[tuple[float, int]]] = {i: [] for i in range(3)}

    def client(i: int) -> None:
        while not stop.is_set():
            if i == 2:
                reply = cluster.via_balancer("GET", "/models/xor", check=False)
            else:
                reply = cluster.via_balancer("POST", "/models/xor/predict", {"x": [1, 0, 1]},
                                             check=False)
            if reply.status != 200:  # a failure must still be the service's JSON
                assert json.loads(reply.body)["error"]["status"] == reply.status
            results[i].append((time.monotonic(), reply.status))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        below = descendants(b.process.pid)  # kernels live in sessions of their own
        os.killpg(b.process.pid, signal.SIGKILL)
        for pid in below:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        balancer.wait_for_states({"replica1": "UP", "replica2": "DOWN"}, timeout=5)
        down_after = time.monotonic() - killed_at[0]
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    b.process.wait(timeout=10)
    assert down_after < 3.0, f"the balancer took {down_after:.1f} s to stop routing to B"
    for i, replies in results.items():
        failed = [status for _, status in replies if status != 200]
        assert len(failed) <= 1, f"client {i} saw {failed} among {len(replies)} replies"
        assert replies and replies[-1][1] == 200
        assert sum(1 for at, _ in replies if at > killed_at[0]) > 0

    # B's worker was running the job: after its lease it is failed, or another worker takes
    # it over. A has no worker: start one that may take it.
    c = Service(tmp_path_factory.mktemp("replica-c"), store=cluster.url,
                env={"GRADBOOK_JOB_LEASE": str(LEASE)})
    try:
        ended = wait_job(a, job_id, ("failed", "succeeded", "cancelled"), seconds=LEASE + 60)
        assert ended["state"] in ("failed", "succeeded"), ended
        if ended["state"] == "failed":
            assert ended["error"], ended
            assert ended["version"] is None
        assert c.get(f"/jobs/{job_id}").json()["state"] == ended["state"]
    finally:
        c.stop()


# -- the balancer's retry policy, against stand-in replicas --------------------------------------
class _Dying(http.server.BaseHTTPRequestHandler):
    """A replica that answers /readyz and /ok, and dies (closes the connection without an
    answer) on anything else, after reading the request. It records what reached it."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/readyz":
            self.seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path in ("/readyz", "/ok"):
            body = b'{"status": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()


def test_the_balancer_retries_only_what_changes_nothing(tmp_path: Path) -> None:
    servers = [socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Dying) for _ in range(2)]
    for stand_in in servers:
        stand_in.daemon_threads = True
        threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    balancer = Balancer(free_port(), [s.server_address for s in servers], tmp_path)
    try:
        balancer.start()
        balancer.wait_for_states({"replica1": "UP", "replica2": "UP"}, timeout=10)

        def send(method: str, path: str) -> tuple[Reply, list[Any]]:
            _Dying.seen.clear()
            raw = b'{"data": "xor"}' if method in ("POST", "PUT") else None
            reply = http_request(balancer.port, method, path, raw,
                                 {"Authorization": "token secret"}, 10)
            return reply, list(_Dying.seen)

        reply, seen = send("GET", "/ok")
        assert reply.status == 200 and seen == [("GET", "/ok", "token secret")]
        for method, path in (("POST", "/models/m/train"), ("POST", "/models"),
                             ("PUT", "/models/m"), ("DELETE", "/models/m"),
                             ("POST", "/models/m/reset")):
            reply, seen = send(method, path)
            assert len(seen) == 1, f"{method} {path} was sent {len(seen)} times"
            assert reply.status == 502 and reply.headers["Content-Type"] == "application/json"
            error = json.loads(reply.body)["error"]
            assert error["status"] == 502 and isinstance(error["message"], str), error
        for method, path in (("GET", "/models/m"), ("POST", "/models/m/predict"),
                             ("POST", "/models/m/gradients")):
            reply, seen = send(method, path)
            assert len(seen) == 4, f"{method} {path} was tried {len(seen)} times, not 1 + 3"
            assert {s[0] for s in seen} == {method}
            assert reply.status == 502
    finally:
        balancer.stop()
        for stand_in in servers:
            stand_in.shutdown()
            stand_in.server_close()



# -- make cluster itself -------------------------------------------------------------------------
def test_make_cluster_serves_restarts_a_dead_replica_and_stops_on_ctrl_c(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``gradbook cluster``, as ``make cluster`` runs it: PostgreSQL of its own, two
    replicas, HAProxy in front; a replica killed is started again and served through; Ctrl-C
    stops everything it started."""
    state = Path(tempfile.mkdtemp(prefix="gradbook-cluster-"))
    state.chmod(0o711)  # PostgreSQL runs as `postgres` when we are root
    port = free_run(3)
    workdir = tmp_path_factory.mktemp("make-cluster")
    env = {**gateway_env(workdir), "GRADBOOK_PORT": str(port), "GRADBOOK_KERNELS": "1",
           "GRADBOOK_PG_PORT": str(free_port()), "GRADBOOK_CLUSTER_DIR": str(state)}
    log = workdir / "cluster.log"
    with open(log, "wb") as out:
        cluster = subprocess.Popen([str(Path(sys.executable).with_name("gradbook")), "cluster"],
                                   cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    started: set[int] = set()
    try:
        wait_until_listening(cluster, log)
        started = set(descendants(cluster.pid))
        body = json.dumps({"x": [1, 0, 1]}).encode()
        headers = {"Content-Type": "application/json"}
        replies = [http_request(port, "POST", "/models/xor/predict", body, headers, 30)
                   for _ in range(4)]
        assert [reply.status for reply in replies] == [200] * 4, replies[0].body
        diagnostics = http_request(port + 1, "GET", "/diagnostics", None, {}, 30).json()
        assert diagnostics["store"]["path"].startswith("postgresql://")

        os.kill(listening_pid(port + 2), signal.SIGKILL)  # replica 2's gateway
        deadline = time.monotonic() + 120
        while b"replica 2 (port" not in log.read_bytes() or \
                http_status(port + 2, "/readyz") != 200:
            assert time.monotonic() < deadline, log.read_text()
            assert http_request(port, "POST", "/models/xor/predict", body, headers,
                                30).status == 200  # served through replica 1 meanwhile
            time.sleep(0.2)
        assert http_request(port + 2, "POST", "/models/xor/predict", body, headers,
                            30).status == 200
        started |= set(descendants(cluster.pid))
    finally:
        os.kill(cluster.pid, signal.SIGINT)
        try:
            status = cluster.wait(timeout=120)
        finally:
            if cluster.poll() is None:
                os.killpg(cluster.pid, signal.SIGKILL)
            shutil.rmtree(state, ignore_errors=True)
    assert status == 0, log.read_text()[-3000:]
    stopped_cleanly(log, started)


def wait_until_listening(cluster: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Until the cluster says its balancer listens (it first starts PostgreSQL and replicas)."""
    deadline = time.monotonic() + timeout
    while b"gradbook cluster listening" not in log.read_bytes():
        assert cluster.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def stopped_cleanly(log: Path, started: set[int]) -> None:
    """Every process the cluster started is gone, with its gateways' folders, and no traceback
    was printed on the way."""
    deadline = time.monotonic() + 10
    while (left := [pid for pid in started if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes outlived the cluster: {left}"
    text = log.read_text()
    for trouble in ("Traceback", "KeyboardInterrupt", "Exception ignored"):
        assert trouble not in text, text[-3000:]
    assert "stopping the cluster" in text
    leftovers = [path for pid in started
                 for path in Path("/dev/shm").glob(f"gradbook-results-{pid}-*")]
    assert not leftovers, leftovers


def test_sigterm_stops_a_cluster_as_ctrl_c_does(tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGTERM (a service manager's stop), to the cluster alone: everything it started stops,
    exit status 0, no traceback."""
    state = Path(tempfile.mkdtemp(prefix="gradbook-cluster-"))
    state.chmod(0o711)
    port = free_run(2)
    workdir = tmp_path_factory.mktemp("sigterm-cluster")
    env = {**gateway_env(workdir), "GRADBOOK_PORT": str(port), "GRADBOOK_KERNELS": "1",
           "GRADBOOK_CLUSTER_DIR": str(state)}
    log = workdir / "cluster.log"
    with open(log, "wb") as out:
        cluster = subprocess.Popen(
            [str(Path(sys.executable).with_name("gradbook")), "cluster", "--replicas", "1",
             "--pg-port", str(free_port())], env=env, cwd=workdir, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_listening(cluster, log)
        started = set(descendants(cluster.pid))
        assert http_status(port, "/readyz") == 200
        cluster.send_signal(signal.SIGTERM)
        assert cluster.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if cluster.poll() is None:
            os.killpg(cluster.pid, signal.SIGKILL)
        shutil.rmtree(state, ignore_errors=True)
    stopped_cleanly(log, started)


def http_status(port: int, path: str) -> int | None:
    try:
        return http_request(port, "GET", path, None, {}, 5).status
    except (OSError, http.client.HTTPException):  # not up, or another program on the port
        return None
