"""Deadlines: a request whose cell runs longer than ``GRADBOOK_REQUEST_TIMEOUT`` gets 504, its
kernel is interrupted and keeps its state, and the requests queued behind it are served; a kernel
that ignores the interrupt is replaced. Synchronous training is bounded the same way and commits
nothing when stopped.

A plain notebook (knowing nothing of gradbook) on a pool of one kernel, with a deadline of
``DEADLINE`` seconds, shows the engine's behaviour; the gradbook service shows training's.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import Reply, Service, http_request
from test_personality import serve_notebook

pytestmark = pytest.mark.xdist_group("gateway")

DEADLINE = 1.5  # seconds
GRACE = 5.0  # service.engine.INTERRUPT_GRACE_SECONDS

CELLS = [
    "import json\nimport os\nimport time\nstate = {'value': 'seeded'}",
    "# GET /value\nprint(state['value'])",
    "# POST /value\nstate['value'] = json.loads(REQUEST)['body']['value']\nprint('set')",
    "# GET /pid\nprint(os.getpid())",
    "# POST /nap\ntime.sleep(json.loads(REQUEST)['body']['seconds'])\nprint('rested')",
    # Runs until interrupted; what it changes before, it changes for good (as any cell would).
    "# POST /spin\nwhile True:\n    time.sleep(0.01)",
    # Catches the interrupt and goes on: only replacing the kernel stops it.
    "# POST /stubborn\nwhile True:\n    try:\n        time.sleep(0.01)\n"
    "    except KeyboardInterrupt:\n        pass",
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("deadlines")
    env = {"GRADBOOK_REQUEST_TIMEOUT": str(DEADLINE)}
    with serve_notebook(folder, CELLS, probe="/pid", env=env) as port:
        yield port


def call(port: int, method: str, path: str, body: object = None) -> Reply:
    raw = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if raw is not None else {}
    return http_request(port, method, path, raw, headers, 60)


def timed(send: Callable[[], Reply]) -> tuple[Reply, float]:
    began = time.monotonic()
    reply = send()
    return reply, time.monotonic() - began


def in_background(send: Callable[[], Reply]) -> tuple[threading.Thread, list[Reply]]:
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(send()))
    thread.start()
    return thread, replies


def assert_timed_out(reply: Reply, seconds: float) -> None:
    assert reply.status == 504, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    error = json.loads(reply.body)["error"]
    assert error["status"] == 504 and "GRADBOOK_REQUEST_TIMEOUT" in error["message"]
    assert DEADLINE <= seconds < DEADLINE + 2, f"answered after {seconds:.2f} s"


def set_then_time_out(port: int, value: str, path: str) -> bytes:
    """Set the kernel's value, then run ``path`` past the deadline (a 504); the pid of the
    kernel before."""
    pid = call(port, "GET", "/pid").body
    assert call(port, "POST", "/value", {"value": value}).status == 200
    assert_timed_out(*timed(lambda: call(port, "POST", path, {})))
    return pid


@pytest.mark.timeout(120)
def test_a_request_past_its_deadline_gets_504_and_the_kernel_keeps_its_state(gateway: int) -> None:
    pid = set_then_time_out(gateway, "kept", "/spin")
    # the same kernel serves the next request, with what it held before
    after, seconds = timed(lambda: call(gateway, "GET", "/value"))
    assert (after.status, after.body, seconds < 1) == (200, b"kept\n", True)
    assert call(gateway, "GET", "/pid").body == pid


@pytest.mark.timeout(120)
def test_requests_batched_behind_a_timed_out_one_are_served(gateway: int) -> None:
    """While the kernel naps, a spin and three reads queue and then run as one batch: the spin
    gets 504 and the reads, which the interrupt kept from running, run afterwards."""
    assert call(gateway, "POST", "/value", {"value": "after"}).status == 200
    nap, _ = in_background(lambda: call(gateway, "POST", "/nap", {"seconds": 0.6}))
    time.sleep(0.2)
    spin, spun = in_background(lambda: timed(lambda: call(gateway, "POST", "/spin", {})))
    time.sleep(0.05)
    readers = [in_background(lambda: call(gateway, "GET", "/value")) for _ in range(3)]
    for thread in [nap, spin, *(reader for reader, _ in readers)]:
        thread.join(timeout=60)
    assert_timed_out(*spun[0])
    assert [(r[0].status, r[0].body) for _, r in readers] == [(200, b"after\n")] * 3


@pytest.mark.timeout(120)
def test_a_kernel_that_ignores_the_interrupt_is_replaced(gateway: int) -> None:
    pid = set_then_time_out(gateway, "lost with the kernel", "/stubborn")
    # queued behind the stubborn cell: served by the replacement, seeded afresh
    after, seconds = timed(lambda: call(gateway, "GET", "/value"))
    assert (after.status, after.body) == (200, b"seeded\n"), after.body
    assert seconds < GRACE + 30
    assert call(gateway, "GET", "/pid").body != pid


@pytest.mark.timeout(180)
def test_synchronous_training_past_the_deadline_commits_nothing(
    start_service: Callable[..., Service],
) -> None:
    service = start_service(GRADBOOK_REQUEST_TIMEOUT="1")
    before = service.get("/models/digits").json()
    reply, seconds = timed(lambda: service.post(  # a run of many seconds, stopped after one
        "/models/digits/train", {"data": "digits", "epochs": 2000, "batch_size": 8}))
    assert reply.status == 504 and "GRADBOOK_REQUEST_TIMEOUT" in reply.json()["error"]["message"]
    assert 1 <= seconds < 3, seconds
    assert service.get("/models/digits").json() == before  # nothing committed
    # the model's lock was let go, and the kernel serves
    one_example = {"X": [[0] * 64], "Y": [0]}  # trains in a moment, even on a busy machine
    short = service.post("/models/digits/train", {"data": one_example, "epochs": 1})
    assert short.status == 200 and short.json()["version"] == before["version"] + 1
    x = [0.0] * 64
    assert service.post("/models/digits/predict", {"x": x}).status == 200
