"""Claims the documentation makes about the service that no other test checked, each against
the real service.

The destructive ones (a stopped kernel, a missing store) and the non-default settings share one
service of their own, ``configured``; its kernels write IPython's history into a folder of the
test's, so that the history can be read.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Service, kernel_pids
from gradbook_service.app import training
from test_service_contract import lock_held

pytestmark = pytest.mark.xdist_group("gateway")

JSON = {"Content-Type": "application/json"}
PREDICT = "/models/xor/predict"
MARKER = "m4rker-of-this-request"
XOR = (np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]), np.array([0, 1, 1, 0]))


@pytest.fixture(scope="module")
def ipython_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ipython")


@pytest.fixture(scope="module")
def configured(start_service, ipython_dir: Path) -> Service:
    """Three kernels, a 2000-byte body limit, at most 5 epochs, 4 s of waiting for a lock."""
    return start_service(GRADBOOK_KERNELS="3", GRADBOOK_MAX_BODY_BYTES="2000",
                         GRADBOOK_MAX_EPOCHS="5", GRADBOOK_LOCK_TIMEOUT="4",
                         IPYTHONDIR=str(ipython_dir))


def vm_peak(pid: int) -> int:
    """The largest resident memory process ``pid`` has had, in bytes (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


# -- limits of one request ---------------------------------------------------------------------
def test_a_network_has_at_most_16_layers(service: Service) -> None:
    sizes = [2] * 17
    reply = service.post("/models", {"name": "deep", "sizes": sizes})
    assert reply.status == 400 and "at most 16 layers" in reply.json()["error"]["message"]
    assert service.post("/models", {"name": "deep", "sizes": sizes[:16]}).status == 201
    assert service.delete("/models/deep").status == 200


def test_a_run_that_diverges_raises_so_nothing_is_committed() -> None:
    """The safety net under ``POST /train`` (whose lr is capped at 1000, where these saturating
    networks stay finite): a run whose loss or weights stop being finite raises ``ValueError``
    (a 400), and ``ModelStore.update`` then commits nothing."""
    net = training.new_model([3, 4, 2], "relu", "cross_entropy", True, 0, {})
    with pytest.raises(ValueError, match="training diverged"):
        training.train(net, training.TrainingData(*XOR, *XOR, "xor", "training"), 5, 1e300, None)


def test_empty_labels_are_refused(service: Service) -> None:
    reply = service.post("/models/digits/train", {"data": {"X": [[0] * 64], "Y": []}})
    assert reply.status == 400
    assert "labels must have shape (n,); got shape (0,)" in reply.json()["error"]["message"]


def test_a_multipart_body_is_415(service: Service) -> None:
    boundary = "b0undary"
    raw = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n[1, 0, 1]\r\n"
           f"--{boundary}--\r\n").encode()
    reply = service.post(PREDICT, raw=raw,
                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert reply.status == 415 and "multipart/form-data" in reply.json()["error"]["message"]


def test_a_body_declared_over_1_gib_gets_413_at_once(service: Service) -> None:
    """No byte of the body is sent: the answer comes from the headers alone."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as client:
        start = time.monotonic()
        client.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Content-Type: application/json\r\n"
                       f"Content-Length: {2**30 + 1}\r\n\r\n".encode())
        head = client.recv(4096)
    assert head.startswith(b"HTTP/1.1 413") and time.monotonic() - start < 2


def test_a_refused_body_is_dropped_as_it_arrives(service: Service) -> None:
    """300 MB over the limit (sent without ``Expect``, so it is read) must not reach the
    gateway's memory: its peak grows by far less than the body."""
    size = 300 * 2**20
    before = vm_peak(service.process.pid)
    with socket.create_connection(("127.0.0.1", service.port), timeout=60) as client:
        client.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Content-Type: application/json\r\n"
                       f"Content-Length: {size}\r\n\r\n".encode())
        chunk = b" " * 2**20
        for _ in range(size // len(chunk)):
            client.sendall(chunk)
        head = client.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")
    assert vm_peak(service.process.pid) - before < 50 * 2**20


# -- non-default settings are applied ----------------------------------------------------------
def test_the_body_limit_is_a_setting(configured: Service) -> None:
    fits = b'{"x": [1, 0, 1]' + b" " * (2000 - 16) + b"}"
    assert len(fits) == 2000
    assert configured.post(PREDICT, raw=fits, headers=JSON).status == 200
    reply = configured.post(PREDICT, raw=fits + b" ", headers=JSON)
    assert reply.status == 413 and "the limit is 2000" in reply.json()["error"]["message"]


def test_the_epoch_limit_is_a_setting(configured: Service) -> None:
    assert configured.post("/models/xor/train", {"data": "xor", "epochs": 5}).status == 200
    reply = configured.post("/models/xor/train", {"data": "xor", "epochs": 6})
    assert reply.status == 400 and "at most 5" in reply.json()["error"]["message"]


def test_the_pool_size_is_a_setting(configured: Service) -> None:
    """Three kernel processes, and three trainings at once are served by three kernels."""
    assert len(configured.kernel_pids) == 3
    names = [f"pool-{i}" for i in range(3)]
    for name in names:
        created = {"name": name, "sizes": [64, 16, 10], "loss": "cross_entropy"}
        assert configured.post("/models", created).status == 201
    barrier = threading.Barrier(3)
    kernels: list[str | None] = []

    def train(name: str) -> None:
        barrier.wait()
        reply = configured.post(f"/models/{name}/train",  # about half a second each
                                {"data": "digits", "epochs": 5, "batch_size": 1})
        kernels.append(reply.kernel if reply.status == 200 else reply.body.decode())

    threads = [threading.Thread(target=train, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(set(kernels)) == 3, kernels
    for name in names:
        assert configured.delete(f"/models/{name}").status == 200


def test_kernels_keep_no_request_history(configured: Service, ipython_dir: Path) -> None:
    """IPython's history database of the serving kernels never receives a request."""
    for _ in range(3):
        assert configured.post(PREDICT, {"x": [1, 0, 1], MARKER: 1}).status == 400
    time.sleep(2)  # IPython writes its history from a thread, soon after each input
    databases = list(ipython_dir.rglob("history.sqlite"))
    assert databases, "the kernels wrote no history database at all: is IPYTHONDIR used?"
    for database in databases:
        with sqlite3.connect(database) as connection:
            sources = [row[0] for row in connection.execute("SELECT source_raw FROM history")]
        assert sources and not [source for source in sources if MARKER in source]


# -- health: every kernel, the store -----------------------------------------------------------
def test_a_change_waits_for_a_busy_model_as_long_as_the_setting_says(configured: Service) -> None:
    """The model's lock is held for 2.5 s: with GRADBOOK_LOCK_TIMEOUT=4 a PUT sent meanwhile
    waits and succeeds (the default, 2 s, would have given 409)."""
    limits = configured.get("/diagnostics").json()["limits"]
    assert (limits["lock_timeout"], limits["request_timeout"]) == (4, 60)
    before = configured.get("/models/xor").json()["version"]
    replies: list = []
    with lock_held(configured.store, "xor"):
        put = threading.Thread(target=lambda: replies.append(
            configured.put("/models/xor", {"lr": 1.25})))
        put.start()
        time.sleep(2.5)
        assert not replies, replies[0].body
    put.join(timeout=30)
    assert replies[0].status == 200 and replies[0].json()["version"] == before + 1


def test_healthz_is_503_while_the_store_is_missing(configured: Service) -> None:
    moved = configured.store.with_name("store-moved")
    configured.store.rename(moved)
    try:
        reply = configured.get("/healthz")
        assert reply.status == 503 and "not readable" in reply.json()["error"]["message"]
    finally:
        moved.rename(configured.store)
    assert configured.get("/healthz").status == 200


def test_healthz_is_503_while_a_kernel_is_stopped(configured: Service) -> None:
    """Kill one of the three kernels and ask at once, again and again: until its replacement
    (which starts a new kernel: a second or more) /healthz says that a kernel stopped; then it
    is 200 again."""
    dead = kernel_pids(configured.process.pid)[0]
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (reply := configured.get("/healthz")).status == 200:  # until the kill has taken
        assert time.monotonic() < deadline, "/healthz never saw the stopped kernel"
    assert reply.status == 503 and "stopped" in reply.json()["error"]["message"], reply.body
    while configured.get("/healthz").status != 200:
        assert time.monotonic() < deadline, "the stopped kernel was never replaced"
        time.sleep(0.1)
    assert dead not in kernel_pids(configured.process.pid)


def test_a_405_names_the_allowed_methods(service: Service) -> None:
    reply = service.request("PATCH", "/models/xor", {"lr": 1})
    assert reply.status == 405 and reply.headers["Allow"] == "DELETE, GET, PUT"
