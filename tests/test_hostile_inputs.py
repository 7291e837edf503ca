"""The denial-of-service findings of the security probe, each replayed against the real service.

Where the hole was time, the bound is generous (refused in under 2 s): these guard against a
denial of service, not a speed target. Settings other than the defaults get a started service of
their own (``start_service``), shared by the tests that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Reply, Service, free_port, gateway_env

pytestmark = pytest.mark.xdist_group("gateway")

TOKEN = "t0ken"
PREDICT = "/models/xor/predict"
JSON_TYPE = {"Content-Type": "application/json"}
FOUR_MIB = b" " * (4 * 2**20)
# Two of these at once take 5-15 s each on 2 cores (measured; 300 epochs took 4.5 s).
SLOW_TRAIN = {"data": "digits", "epochs": 1000, "batch_size": 32}


def message(reply: Reply) -> str:
    return reply.json()["error"]["message"]


def timed(call: Callable[..., Reply], *args: Any, **kwargs: Any) -> tuple[Reply, float]:
    """``call(*args, **kwargs)`` and the seconds it took."""
    start = time.monotonic()
    reply = call(*args, **kwargs)
    return reply, time.monotonic() - start


def log_since(service: Service, mark: int) -> str:
    """What the service logged after byte ``mark`` of its log."""
    time.sleep(0.5)  # let the kernels' output reach the log
    return service.log.read_bytes()[mark:].decode(errors="replace")


@pytest.fixture
def own(service: Service) -> Iterator[Callable[..., str]]:
    """``own(name, sizes, **fields)`` creates ``hostile-<name>`` on the shared service; each is
    deleted after the test."""
    names: list[str] = []

    def create(name: str, sizes: list[int], **fields: Any) -> str:
        reply = service.post("/models", {"name": f"hostile-{name}", "sizes": sizes, **fields})
        assert reply.status == 201, reply.body
        names.append(f"hostile-{name}")
        return names[-1]

    yield create
    for name in names:
        service.delete(f"/models/{name}")


@pytest.fixture(scope="module")
def guarded(start_service: Callable[..., Service]) -> Service:
    """A token, and a short time to send a request."""
    return start_service(token=TOKEN, GRADBOOK_BODY_TIMEOUT="2")


@pytest.fixture(scope="module")
def small(start_service: Callable[..., Service]) -> Service:
    """Small caches, store and responses. Its /openapi.json is over the response limit, so its
    replies cannot be checked against the spec (``check=False``)."""
    return start_service(GRADBOOK_MODEL_CACHE="2", GRADBOOK_MAX_MODELS="4",
                         GRADBOOK_MAX_RESPONSE_BYTES="2000")


@pytest.fixture(scope="module")
def queued(start_service: Callable[..., Service]) -> Service:
    return start_service(GRADBOOK_MAX_QUEUE="1")


@contextlib.contextmanager
def both_kernels_training(service: Service, prefix: str) -> Iterator[list[threading.Thread]]:
    """Two threads each train a fresh digits model of their own for seconds, holding both
    kernels; the trainings must succeed."""
    names = [f"{prefix}-{i}" for i in (1, 2)]
    for name in names:
        created = {"name": name, "sizes": [64, 64, 10], "loss": "cross_entropy"}
        assert service.post("/models", created).status == 201
    statuses: list[int] = []
    trainers = [threading.Thread(target=lambda name=name: statuses.append(
        service.post(f"/models/{name}/train", SLOW_TRAIN, timeout=120).status)) for name in names]
    for trainer in trainers:
        trainer.start()
    time.sleep(0.5)  # both have a kernel
    try:
        yield trainers
    finally:
        for trainer in trainers:
            trainer.join(timeout=120)
        for name in names:
            service.delete(f"/models/{name}")
    assert statuses == [200, 200]


# -- 1. numeric strings ------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1" * 40_000 + "x", "1" * (3 * 2**20)], ids=["40k", "3MiB"])
def test_a_long_numeric_string_is_refused_before_parsing(service: Service, text: str) -> None:
    """Probe: a 40,000-digit string made the number regex backtrack for minutes."""
    reply, seconds = timed(service.post, PREDICT, {"x": [text, 0, 1]}, timeout=30)
    assert reply.status == 400 and "64 characters" in message(reply)
    assert seconds < 2


def test_long_numeric_strings_at_once_leave_the_service_responsive(service: Service) -> None:
    """Probe: two 3 MiB digit strings at once must not hold the kernels from /healthz."""
    results: list[tuple[Reply, float]] = []
    body = {"x": ["1" * (3 * 2**20), 0, 1]}
    senders = [threading.Thread(target=lambda: results.append(
        timed(service.post, PREDICT, body, timeout=30))) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=40)
    assert [(reply.status, seconds < 2) for reply, seconds in results] == [(400, True)] * 2
    health, seconds = timed(service.get, "/healthz", timeout=10)
    assert health.status == 200 and seconds < 2


# -- 2. training admission ---------------------------------------------------------------------
def test_a_run_of_many_tiny_steps_is_refused_up_front(service: Service, own) -> None:
    """Probe: batch_size 1 for 10,000 epochs on digits passed the work limit and ran for minutes."""
    name = own("steps", [64, 10], loss="cross_entropy")
    train = {"data": "digits", "epochs": 10_000, "batch_size": 1}
    reply, seconds = timed(service.post, f"/models/{name}/train", train, timeout=30)
    assert reply.status == 400 and "estimated" in message(reply)
    assert seconds < 2


def test_a_run_on_many_sent_rows_is_refused(service: Service, own) -> None:
    """Probe: 524,000 one-number rows (under the body limit) for 10,000 epochs were admitted."""
    name = own("rows", [1, 1])
    n = 524_000
    train = {"data": {"X": [[1]] * n, "Y": [[0]] * n}, "epochs": 10_000, "batch_size": 1}
    raw = json.dumps(train, separators=(",", ":")).encode()
    assert len(raw) < 4 * 2**20
    reply = service.post(f"/models/{name}/train", raw=raw, headers=JSON_TYPE, timeout=120)
    assert reply.status == 400 and "estimated" in message(reply)


def test_a_run_with_huge_steps_is_refused(service: Service, own) -> None:
    """Probe: a million-parameter step costs time however few rows are sent."""
    name = own("wide", [999, 1000])
    data = {"X": [[0] * 999] * 60, "Y": [[0] * 1000] * 60}
    reply = service.post(f"/models/{name}/train", {"data": data, "epochs": 10_000}, timeout=60)
    assert reply.status == 400 and "estimated" in message(reply)


def test_a_small_run_is_still_admitted(service: Service, own) -> None:
    """Training admission (probe fix) must still admit ordinary work."""
    name = own("small", [3, 4, 1])
    reply = service.post(f"/models/{name}/train", {"data": "xor", "epochs": 100})
    assert reply.status == 200 and len(reply.json()["history"]) == 100


# -- 3. bounded responses ----------------------------------------------------------------------
def test_a_classifier_no_longer_repeats_its_outputs(service: Service) -> None:
    """Probe: ``probabilities`` doubled every classifier response."""
    x = [0.0] * 64
    one = service.post("/models/digits/predict", {"x": x}).json()
    assert {"output", "class"} <= one.keys() and "probabilities" not in one
    batch = service.post("/models/digits/predict", {"X": [x, x]}).json()
    assert {"outputs", "classes"} <= batch.keys() and "probabilities" not in batch


def test_a_prediction_with_a_huge_response_is_refused(service: Service, own) -> None:
    """Probe: 10,000 rows of a 1000-class model made a response of hundreds of MB."""
    name = own("classes", [1, 1000], loss="cross_entropy")
    reply, seconds = timed(service.post, f"/models/{name}/predict", {"X": [[1]] * 10_000},
                           timeout=60)
    assert reply.status == 400 and "response" in message(reply)
    assert seconds < 5
    assert service.post(PREDICT, {"x": [1, 0, 1]}, timeout=10).status == 200


def test_the_response_limit_is_a_setting(small: Service) -> None:
    """Probe: response size was unbounded; GRADBOOK_MAX_RESPONSE_BYTES bounds predictions."""
    assert small.post(PREDICT, {"X": [[1, 0, 1]] * 4}, check=False).status == 200
    refused = small.post(PREDICT, {"X": [[1, 0, 1]] * 200}, check=False)
    assert refused.status == 400 and "response" in message(refused)


# -- 4. endpoints without a body, healthz, diagnostics, headers --------------------------------
@pytest.mark.parametrize(("method", "path"), [("GET", "/healthz"), ("GET", "/models"),
                                              ("DELETE", "/models/hostile-none")])
def test_a_body_where_none_is_taken_is_refused(service: Service, method: str, path: str) -> None:
    """Probe: GET and DELETE accepted 4 MiB bodies and passed them to a kernel."""
    reply, seconds = timed(service.request, method, path, raw=FOUR_MIB, headers=JSON_TYPE,
                           timeout=30)
    assert reply.status == 413 and "takes no" in message(reply) and "body" in message(reply)
    assert seconds < 2


def test_bodies_sent_to_healthz_do_not_delay_authenticated_requests(guarded: Service) -> None:
    """Probe: unauthenticated 4 MiB bodies to the public /healthz held the kernels."""

    def flood() -> None:
        with contextlib.suppress(OSError):
            guarded.request("GET", "/healthz", raw=FOUR_MIB, headers=JSON_TYPE, token="",
                            timeout=30, check=False)

    floods = [threading.Thread(target=flood) for _ in range(4)]
    for thread in floods:
        thread.start()
    time.sleep(0.1)
    reply, seconds = timed(guarded.post, PREDICT, {"x": [1, 0, 1]}, timeout=10)
    for thread in floods:
        thread.join(timeout=40)
    assert reply.status == 200 and seconds < 2


def test_healthz_names_no_path_and_no_process(service: Service) -> None:
    """Probe: the unauthenticated /healthz disclosed the store path and the kernel's PID."""
    reply = service.get("/healthz")
    health = reply.json()
    assert health.keys() == {"status", "kernels", "models", "notebooks"}
    assert health["status"] == "ok" and isinstance(health["models"], int)
    assert str(service.store).encode() not in reply.body
    assert "notebooks/" not in reply.body.decode()  # the notebook's name, not where it is
    for notebook in health.pop("notebooks").values():  # hashes, whose digits are no PIDs
        assert notebook.pop("version") and notebook.pop("reload") == {"result": "none"}
    numbers = {int(n) for n in re.findall(r"\d+", json.dumps(health))}
    assert not numbers & set(service.kernel_pids)


def test_diagnostics_need_the_token(guarded: Service) -> None:
    """Probe: what /healthz disclosed moved to /diagnostics, which must be guarded."""
    assert guarded.get("/diagnostics", token="").status == 401
    diagnostics = guarded.get("/diagnostics").json()
    assert diagnostics["kernel"]["pid"] in guarded.kernel_pids
    assert isinstance(diagnostics["kernel"]["cached_models"], int)
    assert isinstance(diagnostics["kernel"]["cache_size"], int)
    assert diagnostics["store"] == {"path": str(guarded.store), "models": 2}
    assert isinstance(diagnostics["limits"], dict)


def test_no_response_names_the_server_software(service: Service) -> None:
    """Probe: every response carried ``Server: TornadoServer/<version>``."""
    replies = [service.get("/healthz"), service.get("/hostile-nowhere"),
               service.post(PREDICT, {"x": [1]}), service.post(PREDICT, {"x": [1, 0, 1]})]
    assert [reply.status for reply in replies] == [200, 404, 400, 200]
    assert [reply.headers.get("Server") for reply in replies] == [None] * 4


# -- 5. no 500s from client input --------------------------------------------------------------
@pytest.mark.parametrize("depth", [966, 967, 970, 978, 979, 100_000])
def test_deeply_nested_json_is_refused_by_the_gateway(service: Service, depth: int) -> None:
    """Probe: JSON nested about 970 deep reached Python's recursion limit: 500s."""
    mark = service.log.stat().st_size
    nested = b"[" * depth + b"]" * depth
    for raw in (nested, b'{"x": ' + nested + b"}"):
        reply = service.post(PREDICT, raw=raw, headers=JSON_TYPE)
        assert reply.status == 400 and "nest" in message(reply)
    assert "Traceback" not in log_since(service, mark)


def test_huge_integers_are_a_400(service: Service, own) -> None:
    """Probe: huge integers must be a 400, never a 500 or Python's int-digits advice."""
    name = own("ints", [3, 1])
    mark = service.log.stat().st_size
    for lr in (2**64, 10**400):
        assert service.put(f"/models/{name}", {"lr": lr}).status == 400
        assert service.post(f"/models/{name}/train", {"data": "xor", "lr": lr}).status == 400
    digits = b"1" * 5000
    for method, path, raw in [("PUT", f"/models/{name}", b'{"lr": ' + digits + b"}"),
                              ("POST", PREDICT, b'{"x": [' + digits + b", 0, 1]}")]:
        reply = service.request(method, path, raw=raw, headers=JSON_TYPE)
        assert reply.status == 400 and "set_int_max_str_digits" not in message(reply)
    assert "Traceback" not in log_since(service, mark)


# -- 6. abandoned and queued requests ----------------------------------------------------------
def test_an_abandoned_request_is_dropped_not_run(queued: Service) -> None:
    """Probe: a request abandoned by its client still ran later (StreamClosedError)."""
    mark = queued.log.stat().st_size
    with both_kernels_training(queued, "abandon") as trainers:
        with pytest.raises(TimeoutError):
            queued.post("/models", {"name": "ghost-1", "sizes": [3, 1]}, timeout=1)
        assert all(trainer.is_alive() for trainer in trainers), "the trainings ended too soon"
    time.sleep(1)
    assert queued.get("/models/ghost-1").status == 404
    log = log_since(queued, mark)
    assert "StreamClosedError" not in log and "Traceback" not in log


def test_a_full_queue_answers_503_with_retry_after(queued: Service) -> None:
    """Probe: requests waiting for a kernel queued without bound (bodies on GET among them)."""
    waiting: list[Reply] = []
    with both_kernels_training(queued, "queue"):
        waiter = threading.Thread(target=lambda: waiting.append(queued.get("/models", timeout=120)))
        waiter.start()
        time.sleep(0.5)
        refused, seconds = timed(queued.get, "/models", timeout=10)
        assert waiter.is_alive(), "the waiting request was served too soon"
        assert refused.status == 503 and refused.headers.get("Retry-After") and seconds < 2
        bodied, seconds = timed(queued.request, "GET", "/healthz", raw=FOUR_MIB,
                                headers=JSON_TYPE, timeout=30)
        assert bodied.status == 413 and seconds < 2  # refused without a kernel or a queue slot
        waiter.join(timeout=120)
    assert [reply.status for reply in waiting] == [200]


# -- 7. error messages quote little of the input -----------------------------------------------
LONG = "a" * 10_000


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("GET", f"/models/{LONG}", None), ("POST", "/models", {"name": LONG, "sizes": [3, 1]}),
     ("POST", PREDICT, {"x": [1, 0, 1], LONG: 1})],
    ids=["path", "name", "field"],
)
def test_error_messages_quote_input_briefly(service: Service, method: str, path: str,
                                            body: Any) -> None:
    """Probe: error messages echoed 10,000-character inputs whole."""
    reply = service.request(method, path, body)
    assert reply.status in (400, 404) and len(message(reply)) < 400


# -- 8. tidy parsing ---------------------------------------------------------------------------
BODY = b'{"x": [1, 0, 1]}'


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [(json.dumps(json.dumps({"x": [1, 0, 1]})).encode(), "application/json", 400),
     (BODY, "application/json; charset=latin-1", 415),
     (BODY, "application/json; charset=utf-8", 200),
     (BODY, None, 415),
     (BODY, "text/plain", 415),
     (BODY + b"\xff", "application/json", 400)],
    ids=["json-in-a-string", "latin-1", "utf-8", "no-type", "text", "invalid-utf-8"],
)
def test_only_utf8_json_objects_are_read(service: Service, raw: bytes, content_type: str | None,
                                         status: int) -> None:
    """Probe: JSON in a JSON string was decoded twice; types, charsets, bad UTF-8 guessed at."""
    headers = {"Content-Type": content_type} if content_type else {}
    reply = service.post(PREDICT, raw=raw, headers=headers)
    assert reply.status == status, reply.body
    if raw.startswith(b'"'):
        assert "JSON object" in message(reply)


def test_a_trickled_body_is_cut_off(guarded: Service) -> None:
    """Probe: a client sending one byte a second held its connection open for as long."""
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: token {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=1) as client:
        client.sendall(head)
        start = time.monotonic()
        while time.monotonic() - start < 10:
            try:
                client.sendall(b" ")
                if client.recv(4096) == b"":  # waits up to a second: one byte a second
                    break
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                break
        seconds = time.monotonic() - start
    assert 1 < seconds < 6  # closed for the timeout, not at once for another reason


# -- 9. bounded caches and model count ---------------------------------------------------------
def test_the_store_holds_at_most_max_models(small: Service) -> None:
    """Probe: models could be created without end."""
    created: list[str] = []

    def create(name: str) -> Reply:
        reply = small.post("/models", {"name": name, "sizes": [3, 1]}, check=False)
        created.extend([name] if reply.status == 201 else [])
        return reply

    try:
        assert [create("cap-1").status, create("cap-2").status] == [201, 201]
        refused = create("cap-3")
        assert refused.status == 409 and "at most 4" in message(refused)
        assert small.delete("/models/cap-1", check=False).status == 200
        created.remove("cap-1")
        assert create("cap-3").status == 201
    finally:
        for name in created:
            small.delete(f"/models/{name}", check=False)


def test_each_kernel_keeps_at_most_model_cache_models(small: Service) -> None:
    """Probe: every kernel kept every model it had ever served."""
    examples = {"xor": [1, 0, 1], "digits": [0] * 64, "cache-1": [1, 0, 1], "cache-2": [1, 0, 1]}
    for name in ("cache-1", "cache-2"):
        assert small.post("/models", {"name": name, "sizes": [3, 1]}, check=False).status == 201
    try:
        for _ in range(3):
            for name, x in examples.items():
                reply = small.post(f"/models/{name}/predict", {"x": x}, check=False)
                assert reply.status == 200, reply.body
        for _ in range(6):
            kernel = small.get("/diagnostics", check=False).json()["kernel"]
            assert kernel["cached_models"] <= 2 and kernel["cache_size"] == 2
    finally:
        for name in ("cache-1", "cache-2"):
            small.delete(f"/models/{name}", check=False)


# -- 10. safe defaults of the launcher ---------------------------------------------------------
def launch(workdir: Path, watch: int | None = None, **settings: str) -> tuple[int, str, bool]:
    """Run ``python -m gradbook_service.app.launch`` with ``settings`` until it exits (at most 30
    s):
    its exit
    code, its output, and whether 127.0.0.1:``watch`` accepted a connection meanwhile."""
    env = gateway_env(workdir)
    env.update(GRADBOOK_STORE=str(workdir / "store"), **settings)
    output = workdir / "launch.log"
    listened = False
    with open(output, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gradbook_service.app.launch"], cwd=ROOT,
                                   env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            if watch is not None:
                with socket.socket() as probe:
                    listened = listened or probe.connect_ex(("127.0.0.1", watch)) == 0
            time.sleep(0.05)
        code = process.poll()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own group: the launcher and its kernels
        process.wait(timeout=10)
    assert code is not None, "the launcher still ran after 30 s"
    return code, output.read_text(), listened


def test_the_launcher_refuses_an_open_address_without_a_token(tmp_path: Path) -> None:
    """Probe: GRADBOOK_HOST=0.0.0.0 without a token served every model to the network."""
    port = free_port()
    code, output, listened = launch(tmp_path, port, GRADBOOK_HOST="0.0.0.0",
                                    GRADBOOK_PORT=str(port))
    assert code != 0 and not listened, output
    assert "GRADBOOK_TOKEN" in output and "GRADBOOK_ALLOW_OPEN" in output


def test_the_launcher_stops_on_a_busy_port(tmp_path: Path) -> None:
    """Probe: a busy port must stop the launcher plainly, never move it to another port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, output, _ = launch(tmp_path, GRADBOOK_PORT=str(busy.getsockname()[1]))
    assert code != 0 and "already in use" in output, output
    assert "trying another port" not in output
