"""A service with GRADBOOK_TOKEN set: the token, a restart, and a kernel that dies.

The tests run in order on one service of their own (started with a token), which they restart
and finally damage by killing a kernel.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import Service, alive, kernel_pids
from procs import descendants

pytestmark = pytest.mark.xdist_group("gateway")

TOKEN = "s3cret-token"
XOR_X = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]


@pytest.fixture(scope="module")
def secured(start_service):
    return start_service(token=TOKEN)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/models", None),
        ("GET", "/openapi.json", None),
        ("GET", "/models/xor", None),
        ("GET", "/models/xor/loss.png", None),
        ("POST", "/models", {"name": "intruder", "sizes": [3, 1]}),
        ("PUT", "/models/xor", {"lr": 100.0}),
        ("DELETE", "/models/xor", None),
        ("POST", "/models/xor/predict", {"x": [1, 0, 1]}),
        ("POST", "/models/xor/train", {"data": "xor"}),
        ("POST", "/models/xor/reset", {}),
        ("POST", "/models/xor/gradients", {"X": [[1, 0, 1]], "Y": [[1]]}),
    ],
)
def test_every_endpoint_but_healthz_needs_the_token(secured, method, path, body) -> None:
    for token in ("", "wrong", TOKEN + "x"):
        reply = secured.request(method, path, body, token=token)
        assert reply.status == 401, reply.body
        assert "Authorization: token" in reply.json()["error"]["message"]
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="gradbook"'


@pytest.mark.parametrize("scheme", ["token", "Token", "Bearer", "bearer"])
def test_the_token_is_taken_as_jupyter_takes_it(secured, scheme: str) -> None:
    """``token <value>`` and ``Bearer <value>``, the forms Jupyter Server accepts."""
    headers = {"Authorization": f"{scheme} {TOKEN}"}
    assert secured.request("GET", "/models", headers=headers, token="").status == 200
    wrong = {"Authorization": f"{scheme} {TOKEN}x"}
    assert secured.request("GET", "/models", headers=wrong, token="").status == 401
    other = {"Authorization": f"Basic {TOKEN}"}  # another scheme: not the token
    assert secured.request("GET", "/models", headers=other, token="").status == 401


def test_a_body_without_the_token_gets_401_once_it_is_read(secured) -> None:
    """The answer waits for the whole body (answering earlier would reset the connection under
    the client), and the missing token is what it names, even for a body over the limit."""
    for size in (2**20, 5 * 2**20):
        reply = secured.request("POST", "/models/xor/predict", raw=b" " * size, token="",
                                headers={"Content-Type": "application/json"})
        assert reply.status == 401, reply.body


def test_nothing_changes_without_the_token_and_everything_works_with_it(secured) -> None:
    changes = [("POST", "/models", {"name": "intruder", "sizes": [3, 1]}),
               ("PUT", "/models/xor", {"lr": 100.0}), ("DELETE", "/models/xor", None),
               ("POST", "/models/xor/train", {"data": "xor"}), ("POST", "/models/xor/reset", {})]
    for method, path, body in changes:
        assert secured.request(method, path, body, token="").status == 401
    assert secured.get("/healthz", token="").status == 200
    models = secured.get("/models").json()["models"]
    assert [(m["name"], m["version"]) for m in models] == [("digits", 1), ("xor", 1)]
    assert secured.get("/models/xor").json()["hyperparameters"]["lr"] == 2.0
    assert secured.post("/models/xor/predict", {"x": [1, 0, 1]}).status == 200
    for pid in secured.kernel_pids:  # notebook code never sees the token
        assert TOKEN.encode() not in Path(f"/proc/{pid}/environ").read_bytes()


def test_a_restart_keeps_every_model_and_version(secured) -> None:
    assert secured.post("/models", {"name": "kept", "sizes": [3, 5, 1], "bias": True}).status == 201
    assert secured.post("/models/kept/train", {"data": "xor", "epochs": 300}).status == 200
    assert secured.delete("/models/digits").status == 200
    before = {m["name"]: m for m in secured.get("/models").json()["models"]}
    outputs = secured.post("/models/kept/predict", {"X": XOR_X}).json()["outputs"]

    secured.restart()

    after = {m["name"]: m for m in secured.get("/models").json()["models"]}
    assert after == before and after["kept"]["version"] == 2  # and digits is not re-created
    assert secured.post("/models/kept/predict", {"X": XOR_X}).json()["outputs"] == outputs
    assert secured.post("/models/kept/reset", {}).json()["version"] == 3


def test_requests_sent_while_the_service_starts_get_whole_answers(secured) -> None:
    """Requests that reach the gateway before its kernels are ready wait for them, and then none
    loses its body (the first executions on a new kernel are the ones at risk; see
    ``gradbook_service.gateway.personality.SubscribedKernelPool``)."""
    names = {m["name"] for m in secured.get("/models").json()["models"]}
    replies: list = []

    def first_reply() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                replies.append(secured.request("GET", "/models", timeout=120, check=False))
                return
            except OSError:  # not listening yet
                time.sleep(0.01)

    clients = [threading.Thread(target=first_reply) for _ in range(6)]
    secured.restart(while_starting=lambda: [client.start() for client in clients])
    for client in clients:
        client.join(timeout=150)
    assert len(replies) == len(clients)
    for reply in replies:
        assert reply.status == 200, reply.body
        assert {m["name"] for m in reply.json()["models"]} == names


def wait_until_healthy(service: Service, seconds: float = 60) -> None:
    """Until /healthz answers 200; meanwhile only 503 (a kernel being replaced) is right."""
    deadline = time.monotonic() + seconds
    while (health := service.get("/healthz", token="", check=False)).status != 200:
        assert health.status == 503 and time.monotonic() < deadline, health.body
        time.sleep(0.2)


def test_a_kernel_that_dies_is_replaced_by_a_seeded_one(secured) -> None:
    before = secured.get("/models/xor").json()
    dead = secured.kernel_pids[0]
    os.kill(dead, signal.SIGKILL)
    while alive(dead):  # dead (a zombie until the gateway reaps it), not merely signalled
        time.sleep(0.01)
    replies = [secured.post("/models/xor/predict", {"x": [1, 0, 1]}, timeout=60) for _ in range(6)]
    # one of them may still find the dead kernel before its loop does: 503, "retry"; only one
    statuses = [reply.status for reply in replies]
    assert statuses.count(503) <= 1 and statuses.count(200) >= 5, statuses
    served = [reply for reply in replies if reply.status == 200]
    assert len({reply.json()["output"][0] for reply in served}) == 1
    # the other kernel served meanwhile; /healthz answers 503 until the replacement serves
    wait_until_healthy(secured)
    kernels = kernel_pids(secured.process.pid)
    assert dead not in kernels and len(kernels) == 2
    assert len({secured.get("/diagnostics").json()["kernel"]["pid"] for _ in range(4)}) == 2
    assert secured.get("/models/xor").json() == before


def test_a_request_whose_kernel_dies_gets_503_at_once_and_nothing_is_committed(secured) -> None:
    """A train runs (seconds) while every kernel is killed: it answers 503 within about a
    second instead of hanging, the model keeps its version, and later requests are served."""
    created = {"name": "slow", "sizes": [64, 64, 10], "activation": "tanh", "loss": "cross_entropy"}
    version = secured.post("/models", created).json()["version"]
    replies: list = []
    train = threading.Thread(target=lambda: replies.append(secured.post(
        "/models/slow/train", {"data": "digits", "epochs": 2000}, timeout=60)))
    train.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    for pid in kernel_pids(secured.process.pid):
        os.kill(pid, signal.SIGKILL)
    train.join(timeout=60)
    assert replies and replies[0].status == 503, replies and replies[0].body
    assert time.monotonic() - killed_at < 2  # the gateway checks its kernel every second
    assert "stopped while running" in replies[0].json()["error"]["message"]
    replies = [secured.post("/models/xor/predict", {"x": [1, 0, 1]}, timeout=60) for _ in range(4)]
    assert [reply.status for reply in replies] == [200] * 4
    wait_until_healthy(secured)  # both kernels replaced
    assert secured.get("/models/slow").json()["version"] == version


@pytest.mark.xdist_group("stops")  # services of their own: beside the gateway tests
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_stops_everything_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) and SIGTERM alike:
    no traceback, every kernel shut down and said so, the training worker gone, the gateway's
    folder of batches, results and kernel connection files removed, exit status 0."""
    service = Service(tmp_path)
    folders = list(Path("/dev/shm").glob(f"gradbook-results-{service.process.pid}-*"))
    processes = descendants(service.process.pid)
    assert len(folders) == 1 and len(processes) >= 3  # two kernels and the worker
    os.killpg(service.process.pid, sig)
    assert service.process.wait(timeout=60) == 0
    log = service.log.read_text()
    for trouble in ("Traceback", "KeyboardInterrupt", "Exception ignored"):
        assert trouble not in log, log[-3000:]
    assert log.count("Kernel shutdown:") == 2 and "gradbook service stopped" in log, log[-3000:]
    assert not folders[0].exists()
    deadline = time.monotonic() + 10
    while (living := [pid for pid in processes if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not living


@pytest.mark.xdist_group("stops")
def test_every_kernel_loads_the_data_sets_while_it_is_seeded(tmp_path: Path) -> None:
    """The digits data (scikit-learn's, seconds to load) is in each kernel before the service
    is ready, not loaded by the first request that names it: asked before any such request,
    each kernel already holds every named data set."""
    service = Service(tmp_path)
    try:
        seen: dict[int, list[str]] = {}
        for _ in range(50):  # until both kernels have answered
            kernel = service.get("/diagnostics").json()["kernel"]
            seen[kernel["pid"]] = kernel["data_sets"]
            if len(seen) == 2:
                break
        assert sorted(seen) == sorted(service.kernel_pids), seen
        assert all(names == ["digits", "xor"] for names in seen.values()), seen
    finally:
        service.stop()
