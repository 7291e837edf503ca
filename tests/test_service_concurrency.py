"""Changes that meet in the real service, made to meet on purpose.

The test process opens the service's store itself (``ModelStore(service.store)``) and holds a
model's writer lock, as a kernel changing that model does. Requests sent meanwhile wait for the
lock inside the kernels, whose open lock files (``/proc/<pid>/fd``) show that they wait; the
test then lets them go, or lets the wait run out. No outcome depends on how fast anything runs,
only the 2 s busy wait (``ModelStore.lock_timeout``) must be longer than a small training run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Reply, Service, kernel_pids
from gradbook_service.app import training

from gradbook.network import MLP
from gradbook.store import ModelStore

pytestmark = pytest.mark.xdist_group("gateway")

BUSY_WAIT = 2.0  # seconds: the service's ModelStore(lock_timeout=…) default
SMALL_TRAIN = {"data": "xor", "epochs": 50}


def message(reply: Reply) -> str:
    return reply.json()["error"]["message"]


def at_once(calls: dict[str, Callable[[], Reply]]) -> dict[str, tuple[Reply, float]]:
    """Each call in a thread of its own, all started together: its reply and its seconds."""
    results: dict[str, tuple[Reply, float]] = {}

    def run(label: str, call: Callable[[], Reply]) -> None:
        start = time.monotonic()
        reply = call()
        results[label] = (reply, time.monotonic() - start)

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert sorted(results) == sorted(calls), "a request did not finish"
    return results


def in_background(calls: dict[str, Callable[[], Reply]]) -> Callable[[], dict[str, Reply]]:
    """Start ``at_once(calls)`` in a thread; the returned function waits for the replies."""
    results: dict[str, tuple[Reply, float]] = {}
    thread = threading.Thread(target=lambda: results.update(at_once(calls)))
    thread.start()

    def replies() -> dict[str, Reply]:
        thread.join(timeout=120)
        assert not thread.is_alive()
        return {label: reply for label, (reply, _) in results.items()}

    return replies


def kernels_waiting_for(service: Service, lock: str) -> int:
    """How many of the service's kernels have ``.locks/<lock>`` open. A kernel opens a lock file
    only to take that lock and closes it once done, so while the test holds the lock, each of
    them waits for it."""
    target = str(service.store / ".locks" / lock)
    waiting = 0
    for pid in kernel_pids(service.process.pid):
        fds = Path(f"/proc/{pid}/fd")
        try:
            names = list(fds.iterdir())
        except OSError:  # the process is gone
            continue
        opened = set()
        for fd in names:
            try:
                opened.add(os.readlink(fd))
            except OSError:  # closed since listed
                continue
        waiting += target in opened
    return waiting


def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``condition`` (an observation, not a guess at a duration) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def test_a_change_to_a_model_being_changed_is_a_409_after_the_busy_wait(service) -> None:
    """Train, PUT, reset and DELETE of a model whose lock another writer holds: each waits the
    2 s busy wait, then 409 with a message that says so, and nothing is committed; reads do not
    wait. Once the lock is free the same requests succeed."""
    name = "held"
    created = service.post("/models", {"name": name, "sizes": [3, 4, 1]})
    assert created.status == 201
    v = created.json()["version"]
    changes: dict[str, tuple[str, str, Any]] = {
        "train": ("POST", f"/models/{name}/train", SMALL_TRAIN),
        "update": ("PUT", f"/models/{name}", {"lr": 2.5}),
        "reset": ("POST", f"/models/{name}/reset", {"seed": 1}),
        "delete": ("DELETE", f"/models/{name}", None),
    }

    def send(label: str) -> Reply:
        return service.request(*changes[label], timeout=60)

    with ModelStore(service.store).lock(name):
        refused = at_once({label: lambda label=label: send(label) for label in changes})
        read = service.get(f"/models/{name}", timeout=10)
    for label, (reply, seconds) in refused.items():
        assert reply.status == 409, (label, reply.status, reply.body)
        assert f"model {name!r} is being changed" in message(reply), label
        assert "retry" in message(reply), label
        assert BUSY_WAIT <= seconds < 30, (label, seconds)
    assert read.status == 200 and read.json()["version"] == v

    assert [send(label).json()["version"] for label in changes] == [v + 1, v + 2, v + 3, v + 3]
    assert service.get(f"/models/{name}").status == 404


def test_a_train_meeting_another_train_of_the_model_gets_409_after_2_s(service) -> None:
    """README: two trains of one model run one after the other, or the second gets 409 after 2 s.
    Here the first train runs in the test process, through the store as a kernel would, and lasts
    until the second (sent to the service meanwhile) has been answered: 409. Sent again, it trains
    the first one's result."""
    name = "second-train"
    created = service.post("/models", {"name": name, "sizes": [3, 4, 1]})
    assert created.status == 201
    v = created.json()["version"]
    answers: list[tuple[Reply, float]] = []

    def first_train(net: MLP) -> None:
        training.train(net, training.named_data("xor"), epochs=30, lr=2.0, batch_size=None)
        start = time.monotonic()
        reply = service.post(f"/models/{name}/train", SMALL_TRAIN, timeout=60)
        answers.append((reply, time.monotonic() - start))

    assert ModelStore(service.store).update(name, first_train).metadata["version"] == v + 1
    [(second, seconds)] = answers
    assert second.status == 409 and "is being changed" in message(second)
    assert BUSY_WAIT <= seconds < 30

    again = service.post(f"/models/{name}/train", SMALL_TRAIN)
    assert again.status == 200 and again.json()["version"] == v + 2
    model = service.get(f"/models/{name}").json()
    assert model["training"]["runs"] == 2 and model["training"]["epochs"] == 30 + 50
    assert service.delete(f"/models/{name}").status == 200


def test_two_trains_waiting_together_run_one_after_the_other(service) -> None:
    """README: two trains of one model run one after the other. Both kernels are made to wait
    for the model's lock at once; let go, each trains in turn and none is lost."""
    name = "queued-trains"
    created = service.post("/models", {"name": name, "sizes": [3, 8, 1]})
    assert created.status == 201
    v = created.json()["version"]
    url = f"/models/{name}/train"
    with ModelStore(service.store).lock(name):
        replies = in_background({
            label: lambda: service.post(url, SMALL_TRAIN, timeout=60) for label in ("a", "b")
        })
        until(lambda: kernels_waiting_for(service, f"{name}.lock") == 2,
              "both kernels wait for the model's lock")
    answered = replies()
    assert {reply.status for reply in answered.values()} == {200}
    assert sorted(reply.json()["version"] for reply in answered.values()) == [v + 1, v + 2]
    assert len({reply.kernel for reply in answered.values()}) == 2
    model = service.get(f"/models/{name}").json()
    assert model["version"] == v + 2
    assert model["training"]["runs"] == 2 and model["training"]["curve_points"] == 2 * 50
    assert service.delete(f"/models/{name}").status == 200


def test_concurrent_creates_of_one_name_make_the_winners_model(service) -> None:
    """Two kernels create one name at once (both wait at the store's locks until let go together):
    one 201, the other 409, and the model served is the winner's, whole."""
    name = "contested"
    bodies = {
        "a": {"name": name, "sizes": [3, 4, 1], "seed": 1, "lr": 0.5},
        "b": {"name": name, "sizes": [2, 6, 1], "activation": "tanh", "seed": 2, "lr": 1.5},
    }
    with ModelStore(service.store).lock(name):  # the first kernel holds .store.lock, waits here
        replies = in_background({
            label: lambda body=body: service.post("/models", body, timeout=60)
            for label, body in bodies.items()
        })
        until(lambda: kernels_waiting_for(service, ".store.lock") == 2,
              "both kernels are inside create")
    answered = replies()
    assert sorted(reply.status for reply in answered.values()) == [201, 409]
    [winner] = [label for label, reply in answered.items() if reply.status == 201]
    [loser] = [label for label, reply in answered.items() if reply.status == 409]
    assert f"a model named {name!r} already exists" in message(answered[loser])
    created = answered[winner].json()
    served = service.get(f"/models/{name}").json()
    assert served == created and served["version"] >= 1
    body = bodies[winner]
    assert (served["sizes"], served["seed"], served["hyperparameters"]["lr"]) == (
        body["sizes"], body["seed"], body["lr"])
    x = [1] * body["sizes"][0]
    assert service.post(f"/models/{name}/predict", {"x": x}).status == 200
    assert service.delete(f"/models/{name}").status == 200
