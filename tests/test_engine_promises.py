"""The engine's promises, each held by a test that fails when it is broken: the module docstrings
of ``service/gateway/engine.py`` and ``service/gateway/runner.py``, their functions' docstrings,
and "The
engine" in docs/engine.md, read line by line. Each test names the promise it holds; the issue's
two (the batch cap, and FIFO order, also after a deadline's interrupt) come first.

The notebook (``CELLS``) records what the kernel runs: ``POST /record`` appends the request's id
and the number of the kernel execution it runs in to the list ``ran`` (``GET /ran`` answers it
and empties it). Executions are counted exactly, by an IPython ``pre_execute`` hook, as
tests/test_personality.py does; since the engine runs one batch per execution, requests that
share an execution number ran in one batch, and their order in ``ran`` is the order they ran in.
No test asserts a duration; two of the deadline's tests leave margins of a second or more (a
request of 0.63 × the deadline, one that outlasts it by 2 s).

Requests are made to queue by holding a kernel (``POST /hold`` waits for a file the test
creates), then sent on connections of their own, each once the gateway's own metrics show that
it has the one before (``queue_them``): they queue in the order sent, on however slow a machine.

Three gateways (the personality on this plain notebook, as tests/test_batching.py starts them):
``gateway``, one kernel, ``GRADBOOK_MAX_BATCH=4`` and ``GRADBOOK_MAX_QUEUE=10``; ``deadline``, one
kernel, the same cap and ``GRADBOOK_REQUEST_TIMEOUT`` of ``DEADLINE`` seconds; ``pair``, two
kernels. None is shared with another module: the group ``engine`` runs beside ``gateway``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Reply, http_request
from procs import alive
from test_batching import Metrics, Sent, delta, error_of, metrics, post
from test_personality import serve_notebook

pytestmark = pytest.mark.xdist_group("engine")

MAX_BATCH = 4  # GRADBOOK_MAX_BATCH of the gateways: a power of two, a bucket of the histogram
MAX_QUEUE = 10  # GRADBOOK_MAX_QUEUE of ``gateway``
DEADLINE = 3.0  # GRADBOOK_REQUEST_TIMEOUT of ``deadline``, seconds
WAIT = 60.0  # seconds a test waits at most for something that should come at once

CELLS = [
    "import json\nimport os\nimport pathlib\nimport signal\nimport time\n"
    "ran = []  # [request id, kernel execution] of each request recorded, in the order run\n"
    "executions = [0]\n"
    "armed = [False]\n"
    "def queue_depth(port):  # the gateway's gradbook_queue_depth\n"
    "    import http.client, re\n"
    '    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)\n'
    '    connection.request("GET", "/metrics")\n'
    "    text = connection.getresponse().read().decode()\n"
    "    connection.close()\n"
    '    return float(re.search(r"^gradbook_queue_depth(?:{.*})? (\\S+)$", text, re.M).group(1))\n'
    "def _before_execution():\n"
    "    executions[0] += 1\n"
    "    if armed[0]:  # POST /arm: the kernel dies as its next execution begins\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    'get_ipython().events.register("pre_execute", _before_execution)',
    "# GET /pid\nprint(os.getpid())",
    '# POST /record\nentry = json.loads(REQUEST)["body"]\n'
    'ran.append([entry["id"], executions[0]])\n'
    'time.sleep(entry.get("seconds", 0))\n'
    # "backlog": run until that many requests wait in the gateway's queue, or "done" exists
    'if backlog := entry.get("backlog"):\n'
    "    deadline = time.monotonic() + 30\n"
    '    while (not pathlib.Path(backlog["done"]).exists() and time.monotonic() < deadline\n'
    '           and queue_depth(backlog["port"]) < backlog["depth"]):\n'
    "        time.sleep(0.005)\n"
    'print(entry["id"])',
    "# GET /ran\nprint(json.dumps(ran))\nran.clear()",
    # Keeps the kernel busy until the file "release" exists ("limit" seconds at most).
    '# POST /hold\ngate = json.loads(REQUEST)["body"]\n'
    'pathlib.Path(gate["started"]).touch()\n'
    'deadline = time.monotonic() + gate.get("limit", 60)\n'
    'while not pathlib.Path(gate["release"]).exists() and time.monotonic() < deadline:\n'
    "    time.sleep(0.005)\n"
    'print("released" if pathlib.Path(gate["release"]).exists() else "gave up")',
    # Records itself, says it started, then runs until interrupted.
    '# POST /spin\nentry = json.loads(REQUEST)["body"]\n'
    'ran.append([entry["id"], executions[0]])\n'
    'pathlib.Path(entry["started"]).touch()\n'
    "while True:\n    time.sleep(0.01)",
    # Waits until "parties" requests have come to the meeting: only requests running side by
    # side, on different kernels, can meet.
    '# POST /meet\nmeeting = json.loads(REQUEST)["body"]\n'
    'room = pathlib.Path(meeting["room"])\n'
    '(room / meeting["id"]).touch()\n'
    'deadline = time.monotonic() + meeting["limit"]\n'
    'while len(list(room.iterdir())) < meeting["parties"] and time.monotonic() < deadline:\n'
    "    time.sleep(0.005)\n"
    'print("met" if len(list(room.iterdir())) >= meeting["parties"] else "alone")',
    # Takes the interrupt a deadline sends without stopping (it only notes it), and runs on;
    # the next request then raises the KeyboardInterrupt noted: as if the interrupt, sent just
    # as this one ended, had landed in the next one.
    '# POST /absorb-interrupt\nseconds = json.loads(REQUEST)["body"]["seconds"]\n'
    "noted = []\n"
    "signal.signal(signal.SIGINT, lambda number, frame: noted.append(number))\n"
    "time.sleep(seconds)\n"
    'print("noted" if noted else "not interrupted")',
    "# POST /deliver-interrupt\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    'if noted:\n    raise KeyboardInterrupt\nprint("nothing to deliver")',
    "# POST /exit\nraise SystemExit(3)",
    "# POST /interrupt-myself\nraise KeyboardInterrupt",
    "# GET /history\nimport linecache\n"
    "print(json.dumps([len(In), get_ipython().execution_count, len(linecache.cache)]))",
    # Its own result never reaches the gateway: the kernel's next message of that kind is
    # dropped (as if the kernel died before ZeroMQ sent it).
    "# POST /drop-my-result\nkernel = get_ipython().kernel\nsend_response = kernel.send_response\n"
    "def _drop_once(stream, msg_type, *args, **kwargs):\n"
    "    kernel.send_response = send_response\n"
    '    if msg_type != "gradbook_result":\n'
    "        return send_response(stream, msg_type, *args, **kwargs)\n"
    "kernel.send_response = _drop_once\n"
    'print("dropped")',
    "# POST /die\nos.kill(os.getpid(), signal.SIGKILL)",
    '# POST /arm\narmed[0] = True\nprint("armed")',
    # Sends, before its own result, a result for itself signed with the wrong key.
    "# POST /forge\nfrom jupyter_client.session import Session\n"
    "kernel = get_ipython().kernel\n"
    'forger = Session(key=b"not the kernel\'s key", username=kernel.session.username)\n'
    'forger.send(kernel.iopub_socket, "gradbook_result", {"index": 0, "body": "forged\\n", '
    '"info": None},\n            parent=kernel.get_parent(), ident=b"gradbook_result")\n'
    'print("genuine")',
    "# GET /quiet\n40 + 2;",
    '# GET /none\n{}.get("missing")',
    "# GET /magic\nanswer = %env KERNEL_GATEWAY\nprint(answer)",
    '# GET /unclosed\nprint("never"',
]


@contextmanager
def serve(folder: Path, kernels: int, **env: str) -> Iterator[int]:
    """The personality serving ``CELLS`` on ``kernels`` kernels, with the settings ``env``
    (``serve_notebook`` of tests/test_personality.py); yields its port once ``GET /pid``
    answers."""
    with serve_notebook(folder, CELLS, probe="/pid", env=env, kernels=kernels) as port:
        yield port


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("promises")


@pytest.fixture(scope="module")
def gateway_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")  # gateway.log: the gateway's log


@pytest.fixture(scope="module")
def gateway(gateway_folder: Path) -> Iterator[int]:
    """One kernel, batches of at most ``MAX_BATCH``, at most ``MAX_QUEUE`` waiting."""
    with serve(gateway_folder, 1, GRADBOOK_MAX_BATCH=str(MAX_BATCH),
               GRADBOOK_MAX_QUEUE=str(MAX_QUEUE)) as port:
        yield port


@pytest.fixture(scope="module")
def deadline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One kernel, batches of at most ``MAX_BATCH``, a deadline of ``DEADLINE`` seconds."""
    with serve(tmp_path_factory.mktemp("deadline"), 1, GRADBOOK_MAX_BATCH=str(MAX_BATCH),
               GRADBOOK_REQUEST_TIMEOUT=str(DEADLINE)) as port:
        yield port


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Two kernels, the default settings."""
    with serve(tmp_path_factory.mktemp("pair"), 2) as port:
        yield port


# -- helpers -----------------------------------------------------------------------------------
def record(name: str, seconds: float = 0) -> tuple[str, dict[str, Any]]:
    return "/record", {"id": name, "seconds": seconds}


def queue_them(port: int, requests: list[tuple[str, Any]]) -> list[Sent]:
    """Send ``(path, body)`` requests one at a time, each once the gateway has the one before it,
    so that they reach the queue in this order however slow the machine is (requests sent some
    milliseconds apart could be read by the gateway in another order). Every request the
    gateway gets joins the queue, and leaves it into a batch (``gradbook_batch_size_sum`` counts
    those): their sum, read from one report, counts the requests it got."""
    def received() -> float:
        report = metrics(port)
        return report.total("gradbook_batch_size_sum") + report.total("gradbook_queue_depth")

    sent: list[Sent] = []
    before = received()
    for path, body in requests:
        sent.append(Sent(port, path, body))
        wait_for(lambda: received() >= before + len(sent), f"the gateway to get {path}")
    return sent


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT:g} s for {what}"
        time.sleep(0.01)


@contextmanager
def held(port: int, folder: Path, check: bool = True) -> Iterator[None]:
    """The (first free) kernel runs ``POST /hold`` for the duration of the block, so requests
    sent in the block queue; on leaving, the hold is released and, if ``check``, must have
    answered 200 (on ``deadline`` it may get 504 on a slow day, which changes nothing)."""
    gate = folder / f"gate-{uuid.uuid4().hex}"
    started, release = gate.with_suffix(".started"), gate.with_suffix(".release")
    holder = Sent(port, "/hold", {"started": str(started), "release": str(release)})
    try:
        wait_for(started.exists, "the hold to start")
        yield
    except BaseException:
        release.touch()
        holder.connection.close()
        raise
    release.touch()
    reply = holder.reply()
    if check:
        assert (reply.status, reply.body) == (200, b"released\n")


def take_ran(port: int) -> list[list[Any]]:
    """``[[request id, execution], …]`` of the requests recorded since the last call."""
    reply = http_request(port, "GET", "/ran", None, {}, WAIT)
    assert reply.status == 200, reply.body
    return json.loads(reply.body)


def batches(ran: list[list[Any]]) -> list[list[str]]:
    """The ids of ``ran`` grouped by the kernel execution (the batch) they ran in, in order."""
    groups: list[list[str]] = []
    last = None
    for name, execution in ran:
        if execution != last:
            groups.append([])
            last = execution
        groups[-1].append(name)
    return groups


def answers(sent: list[Sent]) -> list[tuple[int, bytes]]:
    return [(reply.status, reply.body) for reply in (request.reply() for request in sent)]


def get(port: int, path: str) -> Reply:
    return http_request(port, "GET", path, None, {}, WAIT)


def kernel_pid(port: int) -> int:
    reply = get(port, "/pid")
    assert reply.status == 200, reply.body
    return int(reply.body)


def kill(pid: int) -> None:
    """SIGKILL the kernel ``pid`` and wait until it is dead (a zombie until the gateway reaps
    it), not merely signalled."""
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), f"kernel {pid} to die")


def recover(port: int) -> None:
    """After a kernel's death: wait until a request answers 200 again (a new kernel serves)."""
    deadline = time.monotonic() + WAIT
    while (reply := get(port, "/pid")).status != 200:
        assert reply.status == 503 and time.monotonic() < deadline, (reply.status, reply.body)
        time.sleep(0.2)


# -- the batch cap and FIFO order under load ---------------------------------------------------
@dataclass
class QueuedRun:
    """Ten requests queued behind a held kernel, then an eleventh refused; what followed."""

    replies: list[tuple[int, bytes]]
    refused: Reply
    ran: list[list[Any]]
    before: Metrics
    after: Metrics


QUEUED = [f"q{n}" for n in range(MAX_QUEUE)]


@pytest.fixture(scope="module")
def queued_run(gateway: int, folder: Path) -> QueuedRun:
    take_ran(gateway)
    before = metrics(gateway)
    with held(gateway, folder):
        sent = queue_them(gateway, [record(name) for name in QUEUED])
        refused = post(gateway, "/record", {"id": "refused"}, timeout=10)  # 503 at once
    replies = answers(sent)
    after = metrics(gateway)  # before GET /ran, another batch
    return QueuedRun(replies, refused, take_ran(gateway), before, after)


def test_a_batch_never_holds_more_than_max_batch_requests(queued_run: QueuedRun) -> None:
    """engine.py: a kernel that becomes free takes every waiting request "up to
    ``max_batch``" into one execution. Ten requests waiting behind a held kernel run, seen from
    inside the kernel, as batches of 4, 4 and 2 (GRADBOOK_MAX_BATCH=4): each batch as large as
    the cap allows, none larger."""
    assert [len(batch) for batch in batches(queued_run.ran)] == [4, 4, 2], queued_run.ran


def test_gradbook_batch_size_observes_each_batch_within_the_cap(queued_run: QueuedRun) -> None:
    """docs/engine.md: ``gradbook_batch_size`` is "requests per kernel execution". Over the
    hold and the ten: four executions (1, 4, 4, 2) of 11 requests, none above the cap."""
    before, after = queued_run.before, queued_run.after
    assert after.types["gradbook_batch_size"] == "histogram"
    assert delta(before, after, "gradbook_batch_size_count") == 4
    assert delta(before, after, "gradbook_batch_size_sum") == 1 + MAX_QUEUE

    def observed_up_to(size: int) -> float:
        return after.bucket("gradbook_batch_size", size) - before.bucket("gradbook_batch_size",
                                                                         size)
    assert [observed_up_to(size) for size in (1, 2, MAX_BATCH)] == [1, 2, 4]


def test_queued_requests_run_in_the_order_they_arrived(queued_run: QueuedRun) -> None:
    """engine.py, docs/engine.md: "one FIFO queue"; ``_take`` takes the requests "oldest
    first". The ten run in the order sent, across batches, and each gets its own answer."""
    assert [name for name, _ in queued_run.ran] == QUEUED
    assert queued_run.replies == [(200, f"{name}\n".encode()) for name in QUEUED]


def test_a_request_past_max_queue_waiting_gets_503_and_never_runs(queued_run: QueuedRun) -> None:
    """``BatchingKernelPool.full``: with no kernel free and ``max_queue`` (10) requests
    waiting, one more gets 503 with Retry-After, at once, and is not run later."""
    refused = queued_run.refused
    assert refused.status == 503 and error_of(refused)["status"] == 503, refused.body
    assert int(refused.headers["Retry-After"]) >= 0
    assert "refused" not in [name for name, _ in queued_run.ran]


def test_requests_arriving_while_batches_run_keep_their_order(gateway: int, folder: Path) -> None:
    """Under load, without a hold: 16 requests arrive one after the other while earlier batches
    run; each runs until 5 requests wait (or the last has been sent), so that a kernel becoming
    free always finds more waiting than it may take. They run in the order they arrived, in
    batches 1, 4, 4, 4, 3: the first alone, the next as many as the cap allows."""
    take_ran(gateway)
    names = [f"load{n}" for n in range(16)]
    done = folder / f"done-{uuid.uuid4().hex}"
    backlog = {"port": gateway, "depth": MAX_BATCH + 1, "done": str(done)}
    requests = [("/record", {"id": name, "backlog": backlog}) for name in names]
    try:
        taken = metrics(gateway).total("gradbook_batch_size_sum")
        sent = queue_them(gateway, requests[:1])
        # the first runs alone: taken before the second comes
        wait_for(lambda: metrics(gateway).total("gradbook_batch_size_sum") > taken,
                 "the kernel to take the first")
        sent += queue_them(gateway, requests[1:])
    finally:
        done.touch()
    assert answers(sent) == [(200, f"{name}\n".encode()) for name in names]
    ran = take_ran(gateway)
    assert [name for name, _ in ran] == names
    assert [len(batch) for batch in batches(ran)] == [1, 4, 4, 4, 3], ran


# -- FIFO after a deadline's interrupt ---------------------------------------------------------
def test_the_unrun_of_an_interrupted_batch_run_before_requests_queued_after_them(
    deadline: int, folder: Path,
) -> None:
    """engine.py ``_requeue``: the requests of a batch that a deadline's interrupt kept from
    running go back "at the head of the queue". A, S, B, C run as one batch; S runs until
    its deadline, and D1 and D2 arrive meanwhile. S gets 504, and then B and C run before D1
    and D2, in one batch: A, S | B, C, D1, D2. Put back at the end, they would run after D2."""
    take_ran(deadline)
    started = folder / f"spin-{uuid.uuid4().hex}"
    with held(deadline, folder, check=False):
        first = queue_them(deadline, [record("A"), ("/spin", {"id": "S", "started": str(started)}),
                                      record("B"), record("C")])
    wait_for(started.exists, "S to start")
    later = queue_them(deadline, [record("D1"), record("D2")])
    a, s, b, c = (request.reply() for request in first)
    assert s.status == 504 and error_of(s)["status"] == 504, s.body
    assert [(r.status, r.body) for r in (a, b, c)] == [(200, b"A\n"), (200, b"B\n"), (200, b"C\n")]
    assert answers(later) == [(200, b"D1\n"), (200, b"D2\n")]
    assert batches(take_ran(deadline)) == [["A", "S"], ["B", "C", "D1", "D2"]]


def test_each_request_of_a_batch_has_its_own_deadline(deadline: int, folder: Path) -> None:
    """engine.py ``_follow``: "A request running ``request_timeout`` seconds gets 504": a
    request's time starts when the one before it in the batch ended, not with the batch. Two
    requests of 0.63 × the deadline each, in one batch (1.27 × the deadline together), both
    answer 200."""
    take_ran(deadline)
    seconds = round(0.63 * DEADLINE, 2)
    with held(deadline, folder, check=False):
        sent = queue_them(deadline, [record("N1", seconds), record("N2", seconds)])
    assert answers(sent) == [(200, b"N1\n"), (200, b"N2\n")]
    assert batches(take_ran(deadline)) == [["N1", "N2"]]


def test_an_interrupt_that_lands_in_the_next_request_asks_it_to_retry(deadline: int,
                                                                      folder: Path) -> None:
    """engine.py ``Execution.on_message``: a ``KeyboardInterrupt`` in a request after the one
    that ran out of time is "the interrupt meant for an earlier request, which ended just before
    it came": 503 (retry), not a 500 of the cell's. In one batch: T runs past its deadline and
    gets 504, but takes the interrupt only as a note; the request after it raises the noted
    interrupt (503); the one after that, kept from running, runs afterwards (200)."""
    take_ran(deadline)
    with held(deadline, folder, check=False):
        sent = queue_them(deadline, [("/absorb-interrupt", {"seconds": DEADLINE + 2}),
                                     ("/deliver-interrupt", {}), record("after")])
    timed_out, hit, after = (request.reply() for request in sent)
    assert timed_out.status == 504, timed_out.body
    assert hit.status == 503 and error_of(hit)["status"] == 503, hit.body
    assert "retry" in error_of(hit)["message"] and int(hit.headers["Retry-After"]) >= 0
    assert (after.status, after.body) == (200, b"after\n")
    assert [name for name, _ in take_ran(deadline)] == ["after"]


# -- kernels free together share the queue -----------------------------------------------------
def test_kernels_free_at_the_same_time_share_the_queue(pair: int, folder: Path) -> None:
    """engine.py ``_take``: "Kernels free at the same time share the queue (two requests on two
    free kernels run side by side, not one after the other)". Both kernels held, two requests
    that can finish only together (each waits for the other, 15 s at most) queue; both holds
    are released at once: the two meet, each on its own kernel."""
    room = folder / f"room-{uuid.uuid4().hex}"
    room.mkdir()
    with held(pair, folder), held(pair, folder):
        sent = queue_them(pair, [("/meet", {"room": str(room), "id": name, "parties": 2,
                                            "limit": 15}) for name in ("m1", "m2")])
    replies = [request.reply() for request in sent]
    assert [(r.status, r.body) for r in replies] == [(200, b"met\n")] * 2
    assert replies[0].headers["X-Gradbook-Kernel"] != replies[1].headers["X-Gradbook-Kernel"]


# -- answers as each finishes; abandoned requests ----------------------------------------------
def test_each_answer_leaves_as_soon_as_its_request_finishes(gateway: int, folder: Path) -> None:
    """engine.py: "results reach their requests as each finishes", not when the batch ends.
    In one batch, ``early`` and then a hold: ``early``'s answer arrives while the hold still
    runs (the test releases the hold only once it has that answer; the hold gives up after
    15 s, and says so)."""
    take_ran(gateway)
    gate = folder / f"second-{uuid.uuid4().hex}"
    started, release = gate.with_suffix(".started"), gate.with_suffix(".release")
    with held(gateway, folder):
        early, hold = queue_them(gateway, [
            record("early"),
            ("/hold", {"started": str(started), "release": str(release), "limit": 15})])
    first = early.reply()
    release.touch()
    assert (first.status, first.body) == (200, b"early\n")
    assert answers([hold]) == [(200, b"released\n")]
    assert started.exists()


def test_a_request_whose_client_went_away_while_queued_never_runs(gateway: int,
                                                                  folder: Path) -> None:
    """engine.py: "a request whose client goes away while it is queued leaves the queue
    without running". Behind a held kernel, ``gone`` queues and its client closes the
    connection; ``kept`` queues after it. Only ``kept`` runs."""
    take_ran(gateway)
    with held(gateway, folder):
        gone = queue_them(gateway, [record("gone")])[0]
        gone.connection.close()
        kept = queue_them(gateway, [record("kept")])  # behind gone, which waits to be skipped
    assert answers(kept) == [(200, b"kept\n")]
    assert [name for name, _ in take_ran(gateway)] == ["kept"]


# -- the runner: errors stay with their request; nothing accumulates; IPython's syntax --------
def test_a_system_exit_fails_its_own_request_only(gateway: int, folder: Path) -> None:
    """runner.py ``serve``: "SystemExit too: it fails this request, not the kernel". In one
    batch, a request raising ``SystemExit`` between two others gets 500; the others run and
    answer 200, on the same kernel, which serves on."""
    take_ran(gateway)
    with held(gateway, folder):
        sent = queue_them(gateway, [record("a"), ("/exit", {}), record("b")])
    replies = [request.reply() for request in sent]
    assert [r.status for r in replies] == [200, 500, 200], [r.body for r in replies]
    assert error_of(replies[1])["status"] == 500
    assert batches(take_ran(gateway)) == [["a", "b"]]
    kernels = {r.headers.get("X-Gradbook-Kernel") for r in (replies[0], replies[2])}
    assert len(kernels) == 1 and get(gateway, "/pid").headers["X-Gradbook-Kernel"] in kernels


@pytest.mark.xfail(strict=True, reason="a KeyboardInterrupt a cell raises itself is taken for a "
                   "deadline's: 503, and the rest of its batch 503 'the kernel stopped' unrun")
def test_a_keyboard_interrupt_a_cell_raises_fails_its_own_request_only(gateway: int,
                                                                       folder: Path) -> None:
    """runner.py: "An exception fails its own request only", and docs/engine.md: a batch does
    "exactly what running them one by one would do". A cell that raises ``KeyboardInterrupt``
    itself, with no deadline involved, between two requests of a batch: alone, each of the
    three would answer 200, 500, 200."""
    take_ran(gateway)
    with held(gateway, folder):
        sent = queue_them(gateway, [record("a"), ("/interrupt-myself", {}), record("b")])
    assert [status for status, _ in answers(sent)] == [200, 500, 200]
    assert [name for name, _ in take_ran(gateway)] == ["a", "b"]


def test_batches_leave_nothing_in_ipython_history(gateway: int, folder: Path) -> None:
    """docs/engine.md: "Executions stay outside IPython's input history, and the executed line
    is the same for every batch". Three batches later, ``In``, the execution count and
    ``linecache`` (where IPython caches executed code) are as they were."""
    before = get(gateway, "/history")
    post(gateway, "/record", {"id": "alone"})
    with held(gateway, folder):
        sent = queue_them(gateway, [record(f"h{n}") for n in range(3)])
    assert [status for status, _ in answers(sent)] == [200] * 3
    after = get(gateway, "/history")
    assert before.status == after.status == 200
    assert json.loads(after.body) == json.loads(before.body)
    take_ran(gateway)


def test_a_cell_is_ipython_code_with_ipython_conventions(gateway: int) -> None:
    """runner.py: "IPython syntax (magics) allowed"; a cell ending in ';' shows no value
    (``Cell``), nor does a value of None; a cell that does not compile fails each request to
    it, with 500, and nothing else."""
    replies = {path: get(gateway, path) for path in ("/magic", "/quiet", "/none", "/unclosed")}
    assert (replies["/magic"].status, replies["/magic"].body) == (200, b"1\n")
    assert (replies["/quiet"].status, replies["/quiet"].body) == (200, b"")
    assert (replies["/none"].status, replies["/none"].body) == (200, b"")
    assert error_of(replies["/unclosed"])["status"] == 500
    assert get(gateway, "/unclosed").status == 500  # each request, not only the first
    assert get(gateway, "/quiet").status == 200


def test_a_result_with_a_wrong_signature_is_dropped(gateway: int, gateway_folder: Path) -> None:
    """engine.py ``read_message``: an IOPub message "with its signature checked, or None
    (logged) if the signature is wrong". A cell that sends, before its real result, a result
    for itself signed with another key gets its real answer, and the gateway logs the drop."""
    reply = http_request(gateway, "POST", "/forge", b"{}", {"Content-Type": "application/json"},
                         WAIT)
    assert (reply.status, reply.body) == (200, b"genuine\n")
    log = (gateway_folder / "gateway.log").read_text(errors="replace")
    assert "an IOPub message with a wrong signature was dropped" in log


# -- a kernel's death, and its journal ---------------------------------------------------------
def test_a_finished_result_lost_with_the_kernel_comes_from_the_journal(gateway: int,
                                                                       folder: Path) -> None:
    """runner.py: each result "is also written to a journal file … the gateway reads the journal
    of a kernel that died in mid-batch for the answers that did not arrive" (engine.py
    ``_recover``). In one batch, a request whose result message is lost, then one that kills
    the kernel: the first still gets its answer, 200; the killer 503."""
    try:
        with held(gateway, folder):
            dropped, killer = queue_them(gateway, [("/drop-my-result", {}), ("/die", {})])
        assert answers([dropped]) == [(200, b"dropped\n")]
        assert killer.reply().status == 503
    finally:
        recover(gateway)


def test_the_journal_of_an_earlier_batch_answers_nothing(gateway: int) -> None:
    """engine.py ``_recover``: the journal answers "only if the journal is this batch's (the
    kernel may have died before it began)". The kernel dies as the execution of a request
    begins, before its runner starts the journal anew: the request gets 503, not the answer
    of the request before it that the journal still holds."""
    try:
        armed = http_request(gateway, "POST", "/arm", b"{}",
                             {"Content-Type": "application/json"}, WAIT)
        assert (armed.status, armed.body) == (200, b"armed\n")
        victim = post(gateway, "/record", {"id": "victim"}, timeout=WAIT)
        assert victim.status == 503 and victim.body != b"armed\n", victim.body
    finally:
        recover(gateway)


def test_an_idle_kernel_that_dies_is_replaced_without_waiting_for_a_request(gateway: int) -> None:
    """engine.py ``_take``/``_serve``: an idle kernel's loop checks its kernel every second
    and replaces it if it stopped. A kernel killed while idle is replaced, while no request
    comes (``gradbook_kernels_replaced_total`` goes up by one); then a new kernel serves."""
    before = metrics(gateway)
    dead = kernel_pid(gateway)
    kill(dead)
    wait_for(lambda: delta(before, metrics(gateway), "gradbook_kernels_replaced_total") == 1,
             "the idle kernel's replacement")
    assert kernel_pid(gateway) != dead


def test_a_request_taken_for_a_dead_kernel_runs_on_its_replacement(gateway: int) -> None:
    """engine.py ``_serve``: a kernel found stopped "before running" a batch is replaced first
    and the batch runs on the new kernel: a request sent just after the kernel died answers 200
    (a request that found its kernel stopping under it would get 503)."""
    dead = kernel_pid(gateway)
    kill(dead)
    # /proc shows a zombie a moment before the kernel can be reaped (its threads still exit):
    # until then the gateway would still find it running. /healthz asks the gateway itself.
    wait_for(lambda: b"stopped" in get(gateway, "/healthz").body, "the gateway to see it dead")
    reply = post(gateway, "/record", {"id": "after the death"}, timeout=WAIT)
    assert (reply.status, reply.body) == (200, b"after the death\n")
    assert kernel_pid(gateway) != dead
