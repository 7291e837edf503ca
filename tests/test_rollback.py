"""Versions through the service: the listing, predicting and inferring at a kept version, and a
rollback that makes a new version equal to the chosen one, seen at once by every kernel."""

from __future__ import annotations

import pytest
from conftest import Service

pytestmark = pytest.mark.xdist_group("gateway")

XOR_X = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]


def outputs(service: Service, name: str, query: str = "") -> tuple[list, int]:
    reply = service.post(f"/models/{name}/predict{query}", {"X": XOR_X})
    assert reply.status == 200, reply.body
    return reply.json()["outputs"], reply.json()["version"]


def test_predict_at_a_version_then_roll_back_to_it(service: Service) -> None:
    created = service.post("/models", {"name": "rolled", "sizes": [3, 4, 1], "seed": 3})
    assert created.status == 201
    first = created.json()["version"]
    before, _ = outputs(service, "rolled")
    trained = service.post("/models/rolled/train", {"data": "xor", "epochs": 300, "lr": 2.0})
    assert trained.status == 200 and trained.json()["version"] == first + 1
    after, _ = outputs(service, "rolled")
    assert after != before

    listed = service.get("/models/rolled/versions").json()["versions"]
    assert [(each["version"], each["change"]) for each in listed] == [
        (first + 1, "trained"), (first, "created")]
    assert listed[0]["metrics"]["training_loss"] < 1.0 and listed[1]["metrics"] == {}

    assert outputs(service, "rolled", f"?version={first}") == (before, first)
    reply = service.post("/models/rolled/gradients?version=" + str(first),
                         {"X": XOR_X, "Y": [[0], [1], [1], [0]]})
    assert reply.status == 200 and reply.json()["version"] == first

    rolled = service.post("/models/rolled/rollback", {"version": first})
    assert rolled.status == 200 and rolled.json()["version"] == first + 2
    assert rolled.json()["metrics"] == {}
    kernels = set()
    for _ in range(8):  # both kernels of the pool: every one sees the new version at once
        reply = service.post("/models/rolled/predict", {"X": XOR_X})
        kernels.add(reply.kernel)
        assert reply.json() == {"name": "rolled", "version": first + 2, "outputs": before}
    assert len(kernels) == 2
    assert service.get("/models/rolled/versions").json()["versions"][0]["change"] == (
        f"rolled back to version {first}")

    infer = service.post(f"/v2/models/rolled/versions/{first + 1}/infer", {"inputs": [
        {"name": "input", "shape": [4, 3], "datatype": "FP64",
         "data": [x for row in XOR_X for x in row]}]})
    assert infer.status == 200
    assert infer.json()["outputs"][0]["data"] == [row[0] for row in after]
    assert service.delete("/models/rolled").status == 200


def test_a_version_not_kept_is_404_naming_those_kept(service: Service) -> None:
    version = service.get("/models/xor").json()["version"]
    reply = service.post(f"/models/xor/predict?version={version + 100}", {"x": [1, 0, 1]})
    assert reply.status == 404
    message = reply.json()["error"]["message"]
    assert f"no version {version + 100} kept" in message and str(version) in message
    assert service.post("/models/xor/rollback", {"version": version + 100}).status == 404
    assert service.post("/models/xor/predict?version=x", {"x": [1, 0, 1]}).status == 400
    assert service.post("/models/xor/rollback", {"version": "2"}).status == 400
    assert service.get("/v2/models/xor/versions/0/ready").status == 404
