"""Every endpoint of the service and every kind of bad input, against the real gateway.

The ``service`` fixture (conftest.py) checks each reply against the served OpenAPI description.
"""

from __future__ import annotations

import http.client
import json
import socket

import numpy as np
import pytest
from conftest import Reply

from gradbook.datasets import load
from gradbook.store import ModelStore

pytestmark = pytest.mark.xdist_group("gateway")

XOR_X = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]
XOR_Y = [[0], [1], [1], [0]]


def create(service, name: str, **fields) -> dict:
    reply = service.post("/models", {"name": name, "sizes": [3, 4, 1], **fields})
    assert reply.status == 201, reply.body
    return reply.json()


def test_healthz_is_brief_and_diagnostics_name_the_kernel_and_the_store(service) -> None:
    for path in ("/healthz", "/readyz"):
        health = service.get(path).json()
        notebook = health.pop("notebooks")["api"]
        assert health == {"status": "ok", "kernels": 2, "models": 2}
        assert notebook["path"] == "/" and notebook["kernels"] == 2
        assert notebook["reload"] == {"result": "none"}  # never reloaded: no --reload here
        assert len(notebook["version"]) == 12 and str(service.store) not in json.dumps(notebook)
    diagnostics = service.get("/diagnostics").json()
    assert diagnostics["kernel"]["pid"] in service.kernel_pids
    assert diagnostics["store"] == {"path": str(service.store), "models": 2}
    assert diagnostics["limits"]["max_body_bytes"] == 4 * 2**20


def test_a_fresh_store_starts_with_trained_default_models(service) -> None:
    models = {m["name"]: m for m in service.get("/models").json()["models"]}
    assert models["xor"]["sizes"] == [3, 4, 1] and models["xor"]["activation"] == "sigmoid"
    outputs = service.post("/models/xor/predict", {"X": XOR_X}).json()["outputs"]
    assert [round(y[0]) for y in outputs] == [0, 1, 1, 0]
    digits = load("digits")
    reply = service.post("/models/digits/predict", {"X": digits.X_test.tolist()}).json()
    hits = sum(c == y for c, y in zip(reply["classes"], digits.Y_test, strict=True))
    accuracy = hits / len(digits.Y_test)
    assert accuracy >= 0.97
    metrics = models["digits"]["metrics"]
    assert metrics["held_out_accuracy"] == pytest.approx(accuracy)
    assert metrics["held_out_examples"] == len(digits.Y_test)
    assert metrics["training_examples"] == len(digits.Y_train)


def test_a_model_from_creation_to_deletion(service) -> None:
    reply = service.post("/models", {"name": "life", "sizes": ["3", 4, 1], "seed": 5})
    assert reply.status == 201 and reply.headers["Location"] == "/models/life"
    # a new model starts above every deleted model's version: 1 in a store without deletes
    first = reply.json()["version"]
    assert first >= 1 and reply.json()["sizes"] == [3, 4, 1]
    assert service.post("/models", {"name": "life", "sizes": [2, 1]}).status == 409

    changed = service.put("/models/life", {"lr": "3.5", "epochs": 700}).json()
    assert changed["version"] == first + 1
    assert changed["hyperparameters"] == {"lr": 3.5, "epochs": 700, "batch_size": None}

    trained = service.post("/models/life/train", {"data": "xor"}).json()
    assert trained["version"] == first + 2 and len(trained["history"]) == 700
    assert trained["run"]["lr"] == 3.5 and trained["history"][-1] < trained["history"][0]
    model = service.get("/models/life").json()
    assert model["version"] == first + 2 and model["metrics"]["data"] == "xor"
    assert model["training"]["runs"] == 1 and model["training"]["epochs"] == 700

    reset = service.post("/models/life/reset", {}).json()
    assert reset["version"] == first + 3 and reset["seed"] == 5
    assert reset["training"]["runs"] == 0
    assert service.post("/models/life/reset", {"seed": 6}).json()["seed"] == 6

    gone = {"name": "life", "version": first + 4, "deleted": True}
    assert service.delete("/models/life").json() == gone
    assert service.get("/models/life").status == 404
    assert service.delete("/models/life").status == 404


def test_training_on_sent_data_uses_the_model_defaults(service) -> None:
    create(service, "custom", lr=2.0, epochs=50, batch_size=2)
    reply = service.post("/models/custom/train", {"data": {"X": XOR_X, "Y": XOR_Y}}).json()
    assert len(reply["history"]) == 50
    run = reply["run"]
    assert (run["lr"], run["epochs"], run["batch_size"]) == (2.0, 50, 2)
    assert reply["metrics"]["data"] == "request" and reply["metrics"]["training_examples"] == 4
    short = service.post("/models/custom/train", {"data": "xor", "epochs": "3", "batch_size": None})
    assert len(short.json()["history"]) == 3 and short.json()["run"]["batch_size"] is None


def test_one_example_and_a_batch_agree(service) -> None:
    one = service.post("/models/xor/predict", {"x": [1, 0, 1]}).json()
    batch = service.post("/models/xor/predict", {"X": XOR_X}).json()
    assert one["output"] == batch["outputs"][2]
    assert one["version"] == batch["version"]


def test_numbers_may_come_as_strings(service) -> None:
    as_numbers = service.post("/models/xor/predict", {"x": [1, 0, 1]}).json()["output"]
    as_strings = service.post("/models/xor/predict", {"x": ["1", " 0.0 ", "1e0"]}).json()["output"]
    assert as_strings == as_numbers


def forward(
    weights: list[np.ndarray], biases: list[np.ndarray], X: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A tanh network written out again, independently of ``MLP``: ``l_k = tanh(l_{k-1} · W_k +
    b_k)``; the output layer's pre-activation ``z_K`` and ``l_K``."""
    l = X
    for W, b in zip(weights, biases, strict=True):
        z = l @ W + b
        l = np.tanh(z)
    return z, l


def test_a_classifier_answers_with_class_and_probabilities(service) -> None:
    """Checked against the stored weights run by hand: softmax of the last layer's z."""
    digits = load("digits")
    net = ModelStore(service.store).get("digits")
    z, _ = forward(net.weights, net.biases, digits.X_test[:20])
    softmax = np.exp(z - z.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    for x, p in zip(digits.X_test[:20], softmax, strict=True):
        reply = service.post("/models/digits/predict", {"x": x.tolist()}).json()
        np.testing.assert_allclose(reply["output"], p, rtol=1e-9, atol=1e-15)
        assert reply["class"] == int(np.argmax(p))
    create(service, "labels", sizes=[3, 5, 2], activation="tanh", loss="cross_entropy", bias=True)
    trained = service.post("/models/labels/train", {"data": {"X": XOR_X, "Y": [0, 1, "1", 0]}})
    assert trained.status == 200
    metrics = trained.json()["metrics"]  # sent data has no held-out part
    assert set(metrics) == {"data", "training_loss", "training_examples", "training_accuracy"}


def test_gradients_over_http_match_central_differences(service) -> None:
    """Every weight's and bias's gradient against central differences of the loss computed by
    hand (tanh layers, half squared error), not against ``MLP.gradients``."""
    create(service, "grads", sizes=[3, 4, 2], activation="tanh", bias=True, seed=3)
    trained = service.post("/models/grads/train",  # so that the biases are not all zero
                           {"data": {"X": XOR_X, "Y": [[0, 1], [1, 0], [1, 0], [0, 1]]},
                            "epochs": 20, "lr": 0.1})
    assert trained.status == 200
    X = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, 1.0], [0.0, 0.3, -0.7]])
    Y = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    reply = service.post("/models/grads/gradients", {"X": X.tolist(), "Y": Y.tolist()}).json()
    net = ModelStore(service.store).get("grads")
    assert reply["version"] == net.metadata["version"] == trained.json()["version"]
    weights = [W.copy() for W in net.weights]
    biases = [b.copy() for b in net.biases]
    assert all(np.any(b != 0) for b in biases)

    def loss() -> float:
        return 0.5 * float(np.sum((forward(weights, biases, X)[1] - Y) ** 2))

    assert reply["loss"] == pytest.approx(loss(), rel=1e-12)
    assert list(reply["gradients"]) == ["W1", "W2", "b1", "b2"]
    h = 1e-6
    for label, p in zip(reply["gradients"], weights + biases, strict=True):
        expected = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            p[i] += h
            up = loss()
            p[i] -= 2 * h
            down = loss()
            p[i] += h
            expected[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(reply["gradients"][label], expected, rtol=1e-6, atol=1e-9,
                                   err_msg=label)
    assert service.delete("/models/grads").status == 200


def test_the_training_curve_is_a_png(service) -> None:
    reply = service.get("/models/xor/loss.png")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/png"
    assert reply.body.startswith(b"\x89PNG\r\n\x1a\n") and len(reply.body) > 5000
    assert int(reply.headers["X-Gradbook-Version"]) == service.get("/models/xor").json()["version"]


def test_training_asked_for_a_stream_sends_each_epoch_as_it_ends(service) -> None:
    """``Accept: text/event-stream``: an event per epoch, then the usual answer, then the status;
    the losses are those the answer holds."""
    create(service, "streamed")
    reply = service.post("/models/streamed/train", {"data": "xor", "epochs": 5},
                         headers={"Accept": "text/event-stream"})
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/event-stream")
    events = [block.split("\n") for block in reply.body.decode().strip().split("\n\n")]
    data = [json.loads(lines[0].removeprefix("data: ")) for lines in events[:-1]]
    assert [line["epoch"] for line in data[:5]] == [1, 2, 3, 4, 5]
    answer = data[5]
    assert [line["loss"] for line in data[:5]] == answer["history"] and len(data) == 6
    assert events[-1][0] == "event: end"
    assert json.loads(events[-1][1].removeprefix("data: "))["status"] == 200
    assert service.get("/models/streamed").json()["version"] == answer["version"]
    assert service.delete("/models/streamed").status == 200


BIG = b'{"X": [' + b"[0, 0, 1], " * 400_000 + b"[0, 0, 1]]}"  # over the 4 MiB default limit
PREDICT, TRAIN = "/models/xor/predict", "/models/xor/train"


def bad(method: str, path: str, status: int, words: str, body: object = None,
        raw: bytes | None = None, content_type: str = "application/json") -> object:
    """A bad request: ``body`` goes as JSON, ``raw`` as is; the reply must have ``status`` and an
    error message containing ``words``."""
    return pytest.param(method, path, body, raw, content_type, status, words, id=words)


BAD_REQUESTS = [
    bad("POST", PREDICT, 400, "not valid JSON", raw=b'{"x": [1, 0'),
    bad("POST", PREDICT, 415, "send the body as JSON", raw=b'{"x": [1, 0, 1]}',
        content_type="application/x-www-form-urlencoded"),
    bad("POST", PREDICT, 400, "JSON object", raw=b"[1, 0, 1]"),
    bad("POST", PREDICT, 400, 'send {"x"'),
    bad("POST", PREDICT, 400, 'for one example or', {"x": [1, 0, 1], "X": [[1, 0, 1]]}),
    bad("POST", PREDICT, 400, "unknown field", {"x": [1, 0, 1], "typo": 1}),
    bad("POST", PREDICT, 400, "x must be one example, 3", {"x": [1, 0]}),
    bad("POST", PREDICT, 400, "rectangular", {"X": [[1, 0, 1], [1, 0]]}),
    bad("POST", PREDICT, 400, "shape (n, 3)", {"X": [[1, 0]]}),
    bad("POST", PREDICT, 400, "real numbers", {"X": "abc"}),
    bad("POST", PREDICT, 400, "only numbers (or strings spelling them); got 'abc'",
        {"x": [1, "abc", 1]}),
    bad("POST", PREDICT, 400, "only numbers (or strings spelling them); got True",
        {"x": [1, True, 1]}),
    bad("POST", PREDICT, 400, "only numbers (or strings spelling them); got None",
        {"x": [1, None, 1]}),
    bad("POST", PREDICT, 400, "x must be finite", raw=b'{"x": [1, NaN, 1]}'),
    bad("POST", PREDICT, 400, "X must be finite", raw=b'{"X": [[Infinity, 0, 1]]}'),
    bad("POST", PREDICT, 400, "must be finite", raw=b'{"x": [1e999, 0, 1]}'),
    bad("POST", PREDICT, 400, "only numbers (or strings spelling them); got '١'",
        {"x": [1, "١", 1]}),  # an Arabic-Indic digit: only ASCII digits spell numbers
    bad("POST", PREDICT, 400, "nests JSON more than 32", raw=b'{"X": ' + b"[" * 100_000 + b"]}"),
    bad("POST", PREDICT, 400, "may nest lists at most 2 deep", {"X": [[[1, 0, 1]]]}),
    bad("POST", "/models/digits/gradients", 400, "class probabilities",
        {"X": [[0] * 64], "Y": [[0] * 10]}),
    bad("POST", "/models/nope/predict", 404, "no model named 'nope'", {"x": [1, 0, 1]}),
    bad("GET", "/models/no.such", 400, "name must be"),
    bad("POST", PREDICT, 413, "the limit is 4194304", raw=BIG),
    bad("POST", TRAIN, 400, "at most 10000", {"data": "xor", "epochs": 10001}),
    bad("POST", TRAIN, 400, "epochs must be a positive integer", {"data": "xor", "epochs": 2.5}),
    bad("POST", TRAIN, 400, "lr must be a positive number", {"data": "xor", "lr": "fast"}),
    bad("POST", TRAIN, 400, "lr must be a finite number > 0", {"data": "xor", "lr": -1}),
    bad("POST", TRAIN, 400, "batch_size must be at least 1", {"data": "xor", "batch_size": 0}),
    bad("POST", TRAIN, 400, "missing field(s) ['data']", {"epochs": 5}),
    bad("POST", TRAIN, 400, "unknown data set", {"data": "mnist"}),
    bad("POST", TRAIN, 400, "has 64 inputs", {"data": "digits"}),
    bad("POST", TRAIN, 400, "one row per row of X", {"data": {"X": XOR_X, "Y": [[0], [1]]}}),
    bad("POST", "/models/digits/train", 400, "labels must lie in [0, 10)",
        {"data": {"X": [[0] * 64], "Y": [10]}}),
    bad("POST", "/models", 400, "missing field(s) ['name']", {"sizes": [3, 1]}),
    bad("POST", "/models", 400, "name must be", {"name": "../up", "sizes": [3, 1]}),
    bad("POST", "/models", 400, "at least 2", {"name": "a", "sizes": [3]}),
    bad("POST", "/models", 400, "sizes[1] must be", {"name": "a", "sizes": [3, 0]}),
    bad("POST", "/models", 400, "parameters", {"name": "a", "sizes": [3, 2000, 2000]}),
    bad("POST", "/models", 400, "activation must be one of",
        {"name": "a", "sizes": [3, 1], "activation": "elu"}),
    bad("POST", "/models", 400, "activation must be one of",
        {"name": "a", "sizes": [3, 1], "activation": ["tanh"]}),
    bad("POST", "/models", 400, "bias must be", {"name": "a", "sizes": [3, 1], "bias": "yes"}),
    bad("POST", "/models", 400, "seed must be", {"name": "a", "sizes": [3, 1], "seed": -1}),
    bad("POST", "/models", 409, "already exists", {"name": "xor", "sizes": [3, 1]}),
    bad("PUT", "/models/xor", 400, "nothing to change", {}),
    bad("PUT", "/models/xor", 400, "unknown field", {"sizes": [3, 1]}),
    bad("POST", "/models/xor/gradients", 400, "missing field(s) ['Y']", {"X": XOR_X}),
    bad("POST", "/models/xor/reset", 400, "seed must be", {"seed": "x"}),
    bad("DELETE", "/models/nope", 404, "no model named"),
    bad("PATCH", "/models/xor", 405, "PATCH is not supported", {"lr": 1}),
    bad("POST", "/healthz", 405, "use GET"),
    bad("GET", "/nowhere", 404, "no endpoint /nowhere"),
]


@pytest.mark.parametrize(("method", "path", "body", "raw", "content_type", "status", "words"),
                         BAD_REQUESTS)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(
    service, method, path, body, raw, content_type, status, words
) -> None:
    reply = service.request(method, path, body, raw=raw, headers={"Content-Type": content_type})
    assert reply.status == status, reply.body
    assert words in reply.json()["error"]["message"]


def test_requests_too_large_for_a_kernel_are_refused(service) -> None:
    """Small bodies can still ask for huge work from a wide network: refused up front."""
    created = service.post("/models", {"name": "wide", "sizes": [1, 300_000, 1]})
    assert created.status == 201
    try:
        reply = service.post("/models/wide/predict", {"X": [[0.5]] * 40})
        assert reply.status == 400 and "examples are too many" in reply.json()["error"]["message"]
        data = {"X": [[0.5]] * 10, "Y": [[0.0]] * 10}
        reply = service.post("/models/wide/train", {"data": data, "epochs": 10_000})
        assert reply.status == 400
        assert "training run is estimated to take" in reply.json()["error"]["message"]
        # nothing was committed
        assert service.get("/models/wide").json()["version"] == created.json()["version"]
        assert service.post("/models/wide/predict", {"X": [[0.5]] * 2}).status == 200
    finally:
        assert service.delete("/models/wide").status == 200


def test_bodies_over_the_limit_are_refused_with_json_however_they_arrive(service) -> None:
    """Over tornado's own 100 MB limit too, sent in chunks, or waiting for ``100 Continue``;
    the kernels never see them and keep serving."""
    huge = service.post(PREDICT, raw=b" " * (101 * 2**20),
                        headers={"Content-Type": "application/json"})
    assert huge.status == 413 and "the limit is 4194304" in huge.json()["error"]["message"]

    chunks = (b" " * 2**20 for _ in range(5))  # no Content-Length: the size shows as it arrives
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=60)
    try:
        connection.request("POST", PREDICT, body=chunks, encode_chunked=True,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        chunked = Reply(response.status, response.headers, response.read())
    finally:
        connection.close()
    assert chunked.status == 413, chunked.body
    assert "more than 4194304 bytes" in chunked.json()["error"]["message"]

    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as client:
        client.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       "Content-Type: application/json"
                       f"\r\nContent-Length: {10 * 2**20}\r\nExpect: 100-continue\r\n\r\n"
                       .encode())
        answer = client.makefile("rb").read()  # answered and closed with no body sent
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")  # not "100 Continue" first
    assert json.loads(body)["error"]["status"] == 413

    assert service.post(PREDICT, {"x": [1, 0, 1]}).status == 200


def test_json_with_a_charset_is_json(service) -> None:
    reply = service.post("/models/xor/predict", raw=b'{"x": [1, 0, 1]}',
                         headers={"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 200 and len(reply.json()["output"]) == 1


def test_both_kernels_keep_serving_after_bad_requests(service) -> None:
    service.post("/models/xor/predict", raw=b"{", headers={"Content-Type": "application/json"})
    replies = [service.post("/models/xor/predict", {"x": [1, 0, 1]}) for _ in range(4)]
    assert all(reply.status == 200 for reply in replies)
    assert len({reply.kernel for reply in replies}) == 2


def test_a_damaged_model_file_is_a_500_without_details(service) -> None:
    damaged = service.store / "damaged.npz"
    damaged.write_bytes(b"garbage")
    try:
        reply = service.get("/models/damaged")
        assert reply.status == 500
        assert reply.json()["error"]["message"].startswith("model 'damaged' could not be read")
        listed = service.get("/models").json()["models"]
        assert {"name": "damaged", "error": reply.json()["error"]["message"]} in listed
    finally:
        damaged.unlink()
