"""The pooled kernels agree: each answers with the latest committed version of a model.

Each kernel holds its own state; they agree only through the model store. Sequential requests
alternate between the two kernels of the pool (it hands out the longest-idle kernel), and the
``X-Gradbook-Kernel`` header shows which one answered.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest

pytestmark = pytest.mark.xdist_group("gateway")

XOR_X = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]


def test_after_each_change_both_kernels_answer_with_its_version(service) -> None:
    assert service.post("/models", {"name": "shared", "sizes": [3, 4, 1]}).status == 201
    changes = [
        lambda: service.post("/models/shared/train", {"data": "xor", "epochs": 200, "lr": 3}),
        lambda: service.put("/models/shared", {"lr": 4.0}),
        lambda: service.post("/models/shared/reset", {"seed": 3}),
        lambda: service.post("/models/shared/train", {"data": "xor", "epochs": 10}),
    ]
    for change in changes:
        version = change().json()["version"]
        replies = [service.get("/models/shared") for _ in range(20)]
        assert [reply.json()["version"] for reply in replies] == [version] * 20
        assert len({reply.kernel for reply in replies}) == 2

    assert service.delete("/models/shared").status == 200
    replies = [service.post("/models/shared/predict", {"x": [1, 0, 1]}) for _ in range(20)]
    assert [reply.status for reply in replies] == [404] * 20
    assert len({reply.kernel for reply in replies}) == 2


def test_two_trains_of_one_model_run_one_after_the_other(service) -> None:
    """Both kernels train the same model at once: the store's lock makes the second wait, so it
    trains the first one's result and both runs are in the history (none is lost)."""
    created = service.post("/models", {"name": "pair", "sizes": [3, 8, 1]})
    assert created.status == 201
    v = created.json()["version"]
    replies = []

    def train() -> None:
        replies.append(service.post("/models/pair/train", {"data": "xor", "epochs": 1000}))

    threads = [threading.Thread(target=train) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(reply.json()["version"] for reply in replies) == [v + 1, v + 2]
    assert len({reply.kernel for reply in replies}) == 2
    model = service.get("/models/pair").json()
    assert model["training"]["runs"] == 2 and model["training"]["curve_points"] == 2000


def test_predictions_while_training_see_whole_versions_in_order(service) -> None:
    """Clients predict while another trains again and again: every reply is 200, each client
    sees versions that never go back, and all replies of one version carry the same outputs
    (no reply mixes the weights of two versions)."""
    created = service.post("/models", {"name": "busy", "sizes": [3, 8, 1]})
    assert created.status == 201
    v = created.json()["version"]
    training_done = threading.Event()
    seen: dict[int, list[tuple[int, int, str]]] = defaultdict(list)  # client -> replies
    trained_versions = []

    def predict(client: int) -> None:
        while not training_done.is_set():
            reply = service.post("/models/busy/predict", {"X": XOR_X}, timeout=60)
            outputs = reply.json().get("outputs")
            seen[client].append((reply.status, reply.json().get("version"), str(outputs)))

    def train() -> None:
        try:
            for _ in range(5):
                reply = service.post("/models/busy/train", {"data": "xor", "epochs": 1500, "lr": 2})
                trained_versions.append(reply.json()["version"])
        finally:
            training_done.set()

    threads = [threading.Thread(target=predict, args=(client,)) for client in range(3)]
    threads.append(threading.Thread(target=train))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert trained_versions == [v + 1, v + 2, v + 3, v + 4, v + 5]

    outputs_of_version: dict[int, set[str]] = defaultdict(set)
    for replies in seen.values():
        assert {status for status, _, _ in replies} == {200}
        versions = [version for _, version, _ in replies]
        assert versions == sorted(versions)
        for _, version, outputs in replies:
            outputs_of_version[version].add(outputs)
    assert sum(len(replies) for replies in seen.values()) > 20
    assert len(outputs_of_version) > 2  # the clients saw the model change under them
    assert all(len(outputs) == 1 for outputs in outputs_of_version.values())
    final = service.post("/models/busy/predict", {"X": XOR_X}).json()
    assert final["version"] == v + 5
    assert outputs_of_version[v + 5] <= {str(final["outputs"])}
