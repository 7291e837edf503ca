"""Batching: a kernel that becomes free takes every queued request (up to GRADBOOK_MAX_BATCH) and
runs them in one execution, one after another, each with its own REQUEST, output, ResponseInfo
and error, and each answered as if it had run alone.

One gateway (the personality on a plain notebook, a pool of ONE kernel) serves the module. To
make requests queue, a test holds that kernel with ``POST /hold``, whose cell waits for a file
the test creates; requests sent meanwhile wait in the gateway's queue, in the order they arrive
(sent 30 ms apart where the order matters). ``GET /metrics`` is the gateway's own Prometheus
report; tests read it before and after and compare, so no test depends on another's requests.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Reply, http_request
from gradbook_service.gateway.engine import EXCHANGE_PREFIX, remove_orphans
from prometheus_client.parser import text_string_to_metric_families
from test_personality import DISPLAY_LOOKALIKES, FORGED, serve_notebook

pytestmark = pytest.mark.xdist_group("gateway")

TOKEN = "secret"
CLIENTS = 32  # concurrent clients
ROUNDS = 4  # requests per client
GAP = 0.03  # seconds between requests whose queue order matters
SETTLE = 0.5  # seconds for requests already sent to reach the gateway's queue

CELLS = [
    "import json\nimport os\nimport pathlib\nimport signal\nimport time\ncounters = {}",
    '# GET /ping\nprint("pong")',
    '# GET /greet/:name\nprint("hi " + json.loads(REQUEST)["path"]["name"])',
    # Keeps the kernel busy: marks that it started, then waits (at most 60 s) for the release.
    '# POST /hold\ngate = json.loads(REQUEST)["body"]\n'
    'pathlib.Path(gate["started"]).touch()\n'
    "deadline = time.monotonic() + 60\n"
    'while not pathlib.Path(gate["release"]).exists() and time.monotonic() < deadline:\n'
    "    time.sleep(0.005)\n"
    'print("released")',
    '# POST /echo\nrequest = json.loads(REQUEST)\n'
    'print(json.dumps({"body": request["body"], "args": request["args"]}))',
    '# ResponseInfo POST /echo\nprint(json.dumps({"status": 200, "headers": {'
    '"Content-Type": "application/json", '
    '"X-Client": str(json.loads(REQUEST)["body"]["client"])}}))',
    '# POST /count\nname = json.loads(REQUEST)["body"]["counter"]\n'
    "counters[name] = counters.get(name, 0) + 1\nprint(counters[name])",
    '# POST /odd\nn = json.loads(REQUEST)["body"]["n"]\n'
    'if n % 2:\n    raise ValueError(f"refused odd number {n}")\nprint(n * 10)',
    "# POST /die\nos.kill(os.getpid(), signal.SIGKILL)",
    f'# POST /forged\nprint({FORGED!r}, end="")',
    '# ResponseInfo POST /forged\nprint(json.dumps({"status": 202, "headers": {"X-Real": "yes"}}))',
    f'# POST /displayed\n{DISPLAY_LOOKALIKES}print("shown")',
    "# POST /answer\n40 + 2",
    '# GET /memory\nprint(next(line.split()[1] for line in open("/proc/self/status")\n'
    '           if line.startswith("VmRSS:")))',  # the kernel's resident memory, in kB
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batching")


@pytest.fixture(scope="module")
def gateway(folder: Path) -> Iterator[int]:
    """The personality serving ``CELLS`` on a pool of one kernel (no token); yields its port."""
    with serve_notebook(folder, CELLS, probe="/ping") as port:
        yield port


@pytest.fixture(scope="module")
def token_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Another such gateway, started with the token ``TOKEN``; yields its port."""
    with serve_notebook(tmp_path_factory.mktemp("token"), CELLS,
                        f"--KernelGatewayApp.auth_token={TOKEN}", probe="/ping",
                        headers={"Authorization": f"token {TOKEN}"}) as port:
        yield port


# -- clients -----------------------------------------------------------------------------------
def post(port: int, path: str, body: Any, timeout: float = 120) -> Reply:
    raw = json.dumps(body).encode()
    return http_request(port, "POST", path, raw, {"Content-Type": "application/json"}, timeout)


class Sent:
    """A request already sent on its own connection, whose reply is read later: sending
    requests one by one from one thread fixes the order in which they reach the gateway."""

    def __init__(self, port: int, path: str, body: Any, timeout: float = 120) -> None:
        self.path, self.body = path, body
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.connection.request("POST", path, body=json.dumps(body).encode(),
                                headers={"Content-Type": "application/json"})

    def reply(self) -> Reply:
        try:
            response = self.connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            self.connection.close()


def send_in_order(port: int, requests: list[tuple[str, Any]]) -> list[Sent]:
    """Send ``(path, body)`` requests ``GAP`` seconds apart, so they queue in this order."""
    sent = []
    for path, body in requests:
        sent.append(Sent(port, path, body))
        time.sleep(GAP)
    return sent


@contextmanager
def kernel_held(port: int, folder: Path) -> Iterator[None]:
    """The pool's only kernel runs ``POST /hold`` for the duration of the block, so requests
    sent in the block queue; on leaving, the hold is released and must have answered 200."""
    gate = folder / f"gate-{uuid.uuid4().hex}"
    started, release = gate.with_suffix(".started"), gate.with_suffix(".release")
    replies: list[Reply] = []
    holder = threading.Thread(target=lambda: replies.append(
        post(port, "/hold", {"started": str(started), "release": str(release)})))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline and holder.is_alive(), f"no hold: {replies}"
            time.sleep(0.01)
        yield
    finally:
        release.touch()
        holder.join(timeout=120)
    assert [(r.status, r.body) for r in replies] == [(200, b"released\n")]


def concurrently(port: int, folder: Path, request: Callable[[int, int], Any]) -> list[list[Any]]:
    """``request(client, round)`` for ``CLIENTS`` clients, each in a thread of its own making
    ``ROUNDS`` requests in a row; the results by client and round. The clients start while the
    kernel is held, so that their first requests queue up and run in batches."""
    def client(number: int) -> list[Any]:
        return [request(number, n) for n in range(ROUNDS)]

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        with kernel_held(port, folder):
            futures = [pool.submit(client, number) for number in range(CLIENTS)]
            time.sleep(SETTLE)
        return [future.result(timeout=300) for future in futures]


def error_of(reply: Reply) -> dict[str, Any]:
    """The JSON error of an error reply, checked for its shape."""
    assert reply.headers["Content-Type"].split(";")[0] == "application/json", reply.body
    error = json.loads(reply.body)["error"]
    assert error["status"] == reply.status and isinstance(error["message"], str)
    return error


# -- metrics -----------------------------------------------------------------------------------
@dataclass
class Metrics:
    """One ``GET /metrics`` report: each family's type, and every sample's value."""

    types: dict[str, str]
    samples: list[tuple[str, dict[str, str], float]]

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(value for sample, sample_labels, value in self.samples
                   if sample == name and labels.items() <= sample_labels.items())

    def bucket(self, name: str, le: float) -> float:
        """A histogram's cumulative count at bucket ``le``, summed over its other labels."""
        found = [value for sample, labels, value in self.samples
                 if sample == f"{name}_bucket" and float(labels["le"]) == le]
        assert found, f"{name} has no bucket le={le}"
        return sum(found)


def metrics(port: int, headers: dict[str, str] | None = None) -> Metrics:
    reply = http_request(port, "GET", "/metrics", None, headers or {}, 30)
    assert reply.status == 200, f"GET /metrics: {reply.status} {reply.body[:300]!r}"
    assert reply.headers["Content-Type"].split(";")[0] == "text/plain"
    families = list(text_string_to_metric_families(reply.body.decode()))
    return Metrics({f.name: f.type for f in families},
                   [(s.name, s.labels, s.value) for f in families for s in f.samples])


def delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


def wait_for_queue(port: int, depth: int) -> float:
    """Poll ``gradbook_queue_depth`` until it reads ``depth`` (at most 30 s); the last reading."""
    deadline = time.monotonic() + 30
    while (seen := metrics(port).total("gradbook_queue_depth")) != depth:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return seen


# -- a kernel killed in mid-batch --------------------------------------------------------------
@dataclass
class KillOutcome:
    before: list[tuple[Sent, Reply]]  # the echo requests queued before the killer
    killer: Reply
    after: list[tuple[Sent, Reply]]  # the echo requests queued after it
    recovered: Reply  # the first 200 after the kill, or the last reply if none came in time
    metrics_before: Metrics | None  # None: GET /metrics failed
    metrics_after: Metrics | None


def try_metrics(port: int) -> Metrics | None:
    try:
        return metrics(port)
    except AssertionError:
        return None


@pytest.fixture(scope="module")
def kill_outcome(gateway: int, folder: Path) -> KillOutcome:
    """While the kernel is held, 8 echo requests, ``POST /die`` (its cell SIGKILLs its own
    kernel) and 8 more echo requests queue in that order; the kernel then takes them as one
    batch. After the replies, requests are retried until one answers 200 (``recover``).
    Run once per module; the metrics are read before and after."""
    metrics_before = try_metrics(gateway)
    echo = [("/echo", {"client": f"kill-{n}", "text": f"before {n}"}) for n in range(8)]
    later = [("/echo", {"client": f"kill-{n}", "text": f"after {n}"}) for n in range(8, 16)]
    with kernel_held(gateway, folder):
        sent = send_in_order(gateway, [*echo, ("/die", {}), *later])
        time.sleep(SETTLE)
    replies = [(request, request.reply()) for request in sent]
    return KillOutcome(replies[:8], replies[8][1], replies[9:], recover(gateway), metrics_before,
                       try_metrics(gateway))


def recover(port: int) -> Reply:
    """Echo requests until one answers 200 (at most 60 s): that one, or the last reply."""
    deadline = time.monotonic() + 60
    while True:
        reply = post(port, "/echo", {"client": "recovered"}, timeout=30)
        if reply.status == 200 or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_counter_counts_each_concurrent_request_once(gateway: int, folder: Path) -> None:
    """32 clients × 4 requests to an endpoint incrementing a global counter get 1..128, each
    exactly once: batched requests run one after another, none twice, none lost."""
    counter = uuid.uuid4().hex

    def count(client: int, round_: int) -> tuple[int, bytes]:
        reply = post(gateway, "/count", {"counter": counter})
        return reply.status, reply.body

    results = concurrently(gateway, folder, count)
    answers = [answer for client in results for answer in client]
    assert {status for status, _ in answers} == {200}, answers
    assert sorted(int(body) for _, body in answers) == list(range(1, CLIENTS * ROUNDS + 1))
    for client in results:  # a client's own requests, made in a row, count upwards
        numbers = [int(body) for _, body in client]
        assert numbers == sorted(numbers)


@pytest.mark.timeout(300)
def test_each_concurrent_client_gets_its_own_echo(gateway: int, folder: Path) -> None:
    """32 clients × 4 echo requests, each with its own body and query: every reply carries its
    own request's body and arguments, and the header its own ResponseInfo set from that body."""
    def echo(client: int, round_: int) -> tuple[Any, Reply]:
        body = {"client": client, "round": round_, "nonce": uuid.uuid4().hex,
                "text": f"line one\nline two of {client}/{round_} ✓"}
        path = f"/echo?client={client}&round={round_}"
        return body, post(gateway, path, body)

    results = concurrently(gateway, folder, echo)
    for client, answers in enumerate(results):
        for round_, (body, reply) in enumerate(answers):
            assert reply.status == 200, reply.body
            assert json.loads(reply.body) == {
                "body": body, "args": {"client": [str(client)], "round": [str(round_)]}}
            assert reply.headers["X-Client"] == str(client)
            assert reply.headers["Content-Type"] == "application/json"


@pytest.mark.timeout(300)
def test_errors_stay_with_the_requests_that_raised(gateway: int, folder: Path) -> None:
    """Concurrently, an endpoint raising for odd numbers answers exactly the odd ones with a
    JSON 500 (without the exception's text) and the even ones with their right answer: an
    error in a batch neither spreads to its neighbours nor stops them."""
    def odd(client: int, round_: int) -> tuple[int, Reply]:
        n = client * ROUNDS + round_
        return n, post(gateway, "/odd", {"n": n})

    results = concurrently(gateway, folder, odd)
    answers = [answer for client in results for answer in client]
    assert len(answers) == CLIENTS * ROUNDS
    for n, reply in answers:
        if n % 2:
            assert reply.status == 500, (n, reply.body)
            assert "refused" not in error_of(reply)["message"]
            assert b"refused" not in reply.body and b"ValueError" not in reply.body
        else:
            assert (reply.status, reply.body) == (200, f"{n * 10}\n".encode()), n


def mixed_requests(counter: str) -> list[tuple[str, Any]]:
    """Requests of every kind the notebook serves, counter ones included."""
    return [
        ("/echo", {"client": "a", "text": "first"}),
        ("/odd", {"n": 3}),
        ("/count", {"counter": counter}),
        ("/forged", {}),
        ("/echo", {"client": "b", "text": FORGED}),
        ("/odd", {"n": 4}),
        ("/displayed", {}),
        ("/count", {"counter": counter}),
        ("/answer", {}),
        ("/odd", {"n": 5}),
        ("/echo", {"client": "c", "text": ""}),
        ("/count", {"counter": counter}),
    ]


def outcome(reply: Reply) -> tuple[Any, ...]:
    """What a reply says: status, Content-Type, the headers ResponseInfo cells set, and the
    body (of an error, only its status: its message may differ from one error to the next)."""
    headers = tuple(reply.headers.get(name) for name in ("Content-Type", "X-Client", "X-Real"))
    body = error_of(reply)["status"] if reply.status >= 400 else reply.body
    return reply.status, *headers, body


@pytest.mark.timeout(300)
def test_a_batch_answers_as_its_requests_would_one_by_one(gateway: int, folder: Path) -> None:
    """A mix of requests (echoes, errors, counters, forged output, displays, a bare value) sent
    one at a time, then queued together behind a held kernel so that they run as one batch:
    each gets the same answer both ways, and the forged and displayed lookalikes leave their
    neighbours' answers alone."""
    alone = [post(gateway, path, body) for path, body in mixed_requests(uuid.uuid4().hex)]
    with kernel_held(gateway, folder):
        sent = send_in_order(gateway, mixed_requests(uuid.uuid4().hex))
        time.sleep(SETTLE)
    batched = [request.reply() for request in sent]
    assert [outcome(r) for r in batched] == [outcome(r) for r in alone]
    statuses = [r.status for r in batched]
    assert statuses == [200, 500, 200, 202, 200, 200, 200, 200, 200, 500, 200, 200]
    assert [batched[i].body for i in (2, 7, 11)] == [b"1\n", b"2\n", b"3\n"]
    assert batched[3].body.decode() == FORGED and "X-Forged" not in batched[3].headers
    assert batched[6].body == b"shown\n" and "X-Forged" not in batched[6].headers
    assert json.loads(batched[4].body)["body"]["text"] == FORGED
    assert json.loads(batched[8].body) == {"text/plain": "42"}


@pytest.mark.timeout(300)
def test_a_kernel_killed_mid_batch_fails_only_the_unfinished(kill_outcome: KillOutcome) -> None:
    """Of a batch whose 9th request kills the kernel, the 8 before it keep their real answers;
    the killer and the 8 after it get 503 with Retry-After; then the pool recovers (a newly
    seeded kernel replaces the dead one) and answers 200 again."""
    for request, reply in kill_outcome.before:
        assert reply.status == 200, (request.body, reply.status, reply.body)
        assert json.loads(reply.body) == {"body": request.body, "args": {}}
        assert reply.headers["X-Client"] == request.body["client"]
    for request, reply in [(None, kill_outcome.killer), *kill_outcome.after]:
        assert reply.status == 503, (request and request.body, reply.status, reply.body)
        error_of(reply)
        assert int(reply.headers["Retry-After"]) >= 0
    recovered = kill_outcome.recovered
    assert recovered.status == 200, recovered.body
    assert json.loads(recovered.body) == {"body": {"client": "recovered"}, "args": {}}


def test_metrics_count_the_replaced_kernel(kill_outcome: KillOutcome) -> None:
    """``gradbook_kernels_replaced_total`` (a counter) went up by exactly one over the kill."""
    before, after = kill_outcome.metrics_before, kill_outcome.metrics_after
    assert before is not None and after is not None, "GET /metrics did not answer 200"
    assert after.types["gradbook_kernels_replaced"] == "counter"
    assert delta(before, after, "gradbook_kernels_replaced_total") == 1


@pytest.mark.timeout(300)
def test_queued_requests_run_in_batches_of_more_than_one(gateway: int, folder: Path) -> None:
    """10 requests queued behind a held kernel run in batches: ``gradbook_batch_size`` gains an
    observation above 1, and its observations add up to the 11 requests run (hold included)."""
    before = metrics(gateway)
    with kernel_held(gateway, folder):
        sent = send_in_order(gateway, [("/echo", {"client": n}) for n in range(10)])
        time.sleep(SETTLE)
    for n, request in enumerate(sent):
        reply = request.reply()
        assert reply.status == 200 and json.loads(reply.body)["body"] == {"client": n}
    after = metrics(gateway)
    assert after.types["gradbook_batch_size"] == "histogram"
    count = delta(before, after, "gradbook_batch_size_count")
    singles = after.bucket("gradbook_batch_size", 1) - before.bucket("gradbook_batch_size", 1)
    assert count - singles >= 1, f"{count} batches, all of one request"
    assert delta(before, after, "gradbook_batch_size_sum") == 11
    assert after.bucket("gradbook_batch_size", 1) < after.total("gradbook_batch_size_count")


def kernel_memory_kb(port: int) -> int:
    reply = http_request(port, "GET", "/memory", None, {}, 60)
    assert reply.status == 200, reply.body
    return int(reply.body)


@pytest.mark.timeout(300)
def test_kernel_memory_stays_flat_under_batched_load(gateway: int) -> None:
    """32 clients sending 8 KB echo requests as fast as they are answered: after a warm-up, 30 MB
    more of requests (in batches, the metrics show) grow the kernel by less than 4 MB. A kernel
    that kept anything of each request or batch (IPython's cache of executed code, its output
    history, the runner's results) would grow by about the traffic."""
    padding = "x" * 8192

    def load(requests_per_client: int) -> None:
        def client(number: int) -> None:
            for _ in range(requests_per_client):
                reply = post(gateway, "/echo", {"client": number, "padding": padding})
                assert reply.status == 200 and reply.headers["X-Client"] == str(number)

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            for future in [pool.submit(client, number) for number in range(CLIENTS)]:
                future.result(timeout=240)

    load(40)
    before, batches_before = kernel_memory_kb(gateway), metrics(gateway)
    load(120)
    after, batches_after = kernel_memory_kb(gateway), metrics(gateway)
    batches = delta(batches_before, batches_after, "gradbook_batch_size_count")
    requests = delta(batches_before, batches_after, "gradbook_batch_size_sum")
    assert requests >= CLIENTS * 120 and batches < requests, "the load did not run in batches"
    assert after - before < 4096, f"the kernel grew from {before} kB to {after} kB"


@pytest.mark.timeout(300)
def test_metrics_count_requests_by_endpoint_and_status(gateway: int) -> None:
    """``gradbook_requests_total`` counts answers by method, annotated endpoint (``/greet/:name``
    for ``/greet/ada``) and status, and ``gradbook_request_duration_seconds`` observes each."""
    before = metrics(gateway)
    for n in range(5):
        post(gateway, "/odd", {"n": n})
    for n in range(3):
        post(gateway, "/echo", {"client": n})
    http_request(gateway, "GET", "/echo", None, {}, 30)  # 405
    for name in ("ada", "bob"):
        assert http_request(gateway, "GET", f"/greet/{name}", None, {}, 30).body == b"hi " + \
            name.encode() + b"\n"
    after = metrics(gateway)
    assert after.types["gradbook_requests"] == "counter"
    assert after.types["gradbook_request_duration_seconds"] == "histogram"
    requests = "gradbook_requests_total"
    assert delta(before, after, requests, method="POST", endpoint="/odd", status="200") == 3
    assert delta(before, after, requests, method="POST", endpoint="/odd", status="500") == 2
    assert delta(before, after, requests, method="POST", endpoint="/echo", status="200") == 3
    assert delta(before, after, requests, method="GET", endpoint="/echo", status="405") == 1
    assert delta(before, after, requests, endpoint="/odd") == 5
    # a path with parameters counts under its annotation, not under each path it matched
    assert delta(before, after, requests, method="GET", endpoint="/greet/:name",
                 status="200") == 2
    assert delta(before, after, "gradbook_request_duration_seconds_count") >= 11
    assert delta(before, after, "gradbook_request_duration_seconds_sum") > 0


@pytest.mark.timeout(300)
def test_metrics_show_the_queue_while_the_kernel_is_busy(gateway: int, folder: Path) -> None:
    """``GET /metrics`` answers while the only kernel is busy (the gateway serves it, not a
    kernel), and its gauge ``gradbook_queue_depth`` shows the 5 requests waiting for a kernel,
    then none once they ran."""
    assert metrics(gateway).types["gradbook_queue_depth"] == "gauge"
    with kernel_held(gateway, folder):
        sent = send_in_order(gateway, [("/echo", {"client": n}) for n in range(5)])
        queued = wait_for_queue(gateway, 5)
    replies = [request.reply() for request in sent]
    assert queued == 5
    assert [r.status for r in replies] == [200] * 5
    assert wait_for_queue(gateway, 0) == 0


def test_metrics_need_the_token_when_one_is_set(token_gateway: int) -> None:
    """With ``auth_token`` set, ``GET /metrics`` without the token, or with a wrong one, is a
    JSON 401; with it, a 200 Prometheus report."""
    for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": TOKEN}):
        reply = http_request(token_gateway, "GET", "/metrics", None, headers, 30)
        assert reply.status == 401, (headers, reply.status, reply.body)
        assert error_of(reply)["status"] == 401
    report = metrics(token_gateway, {"Authorization": f"token {TOKEN}"})
    assert report.types["gradbook_requests"] == "counter"
    unauthorised = post(token_gateway, "/echo", {"client": "x"})
    assert unauthorised.status == 401 and error_of(unauthorised)["status"] == 401


@pytest.mark.timeout(300)
def test_a_lone_request_killing_its_kernel_gets_503_then_the_pool_recovers(gateway: int) -> None:
    """A request alone in its batch that kills the kernel gets 503 with Retry-After, and a
    newly seeded kernel serves the requests after it (each kill in a row, three times)."""
    for attempt in range(3):
        killer = post(gateway, "/die", {})
        assert killer.status == 503, (attempt, killer.status, killer.body)
        assert error_of(killer)["status"] == 503 and int(killer.headers["Retry-After"]) >= 0
        recovered = recover(gateway)
        assert recovered.status == 200, (attempt, recovered.status, recovered.body)


def test_a_start_removes_the_folders_of_gateways_that_are_gone(tmp_path: Path) -> None:
    """A gateway killed with SIGKILL leaves its batch folder; the next start removes it (the
    folder's name holds its gateway's pid), and leaves those of running gateways alone."""
    gone = tmp_path / f"{EXCHANGE_PREFIX}{2**31 - 1}-abc"  # no such process
    running = tmp_path / f"{EXCHANGE_PREFIX}{os.getpid()}-def"
    for folder in (gone, running):
        folder.mkdir()
        (folder / "kernel.jsonl").write_text("{}\n")
    remove_orphans(tmp_path)
    assert (gone.exists(), running.exists()) == (False, True)
