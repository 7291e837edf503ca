"""The Open Inference Protocol (KServe V2) against the real service, with Triton's own client
(``tritonclient.http.InferenceServerClient``) and with plain HTTP: health, metadata, readiness,
and infer answering exactly what ``POST /models/:name/predict`` answers."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.http as triton
from conftest import Service
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.xdist_group("gateway")

RNG = np.random.default_rng(7)
XOR_X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]])
DIGITS_X = RNG.integers(0, 17, size=(5, 64)).astype(np.float64)


def client(service: Service, **kwargs: object) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{service.port}", **kwargs)


def tensor(X: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    given = triton.InferInput("input", list(X.shape), datatype)
    given.set_data_from_numpy(X, binary_data=binary)
    return given


def predicted(service: Service, name: str, X: np.ndarray) -> dict:
    reply = service.post(f"/models/{name}/predict", {"X": X.tolist()})
    assert reply.status == 200, reply.body
    return reply.json()


def test_health_metadata_and_readiness_through_tritons_client(service: Service) -> None:
    triton_client = client(service)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.get_server_metadata()["name"] == "gradbook"
    assert triton_client.is_model_ready("xor") and triton_client.is_model_ready("digits")
    assert not triton_client.is_model_ready("no-such-model")
    digits = triton_client.get_model_metadata("digits")
    assert digits["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 64]}]
    assert digits["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [-1, 10]},
                                 {"name": "class", "datatype": "INT64", "shape": [-1]}]
    xor = triton_client.get_model_metadata("xor")
    assert [output["name"] for output in xor["outputs"]] == ["output"]  # not a classifier
    config = triton_client.get_model_config("digits")
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP64", "dims": [-1, 64]}]
    assert [output["name"] for output in config["output"]] == ["output", "class"]
    version = service.get("/models/xor").json()["version"]
    assert xor["versions"] == [str(version)]
    assert triton_client.is_model_ready("xor", str(version))
    assert not triton_client.is_model_ready("xor", str(version + 1))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ["FP64", "FP32"])
def test_infer_answers_what_predict_answers(service: Service, datatype: str,
                                            binary: bool) -> None:
    """xor and digits, a batch of several rows each, in either type and either encoding: the
    outputs are predict's for the same numbers (FP32 rows are the values FP32 holds)."""
    triton_client = client(service)
    for name, X in (("xor", XOR_X), ("digits", DIGITS_X)):
        sent = X.astype(np.float32 if datatype == "FP32" else np.float64)
        result = triton_client.infer(name, [tensor(sent, datatype, binary)], request_id="r-7")
        expected = predicted(service, name, sent.astype(np.float64))
        assert result.as_numpy("output").tolist() == expected["outputs"]
        assert result.get_response()["id"] == "r-7"
        assert result.get_response()["model_version"] == str(expected["version"])
        if name == "digits":
            assert result.as_numpy("class").tolist() == expected["classes"]


def test_integer_inputs_and_a_chosen_output(service: Service) -> None:
    triton_client = client(service)
    result = triton_client.infer("digits", [tensor(DIGITS_X.astype(np.int32), "INT32", True)],
                                 outputs=[triton.InferRequestedOutput("class")])
    assert result.as_numpy("output") is None
    assert result.as_numpy("class").tolist() == predicted(service, "digits", DIGITS_X)["classes"]


@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda: tensor(np.zeros((2, 4), np.float32), "FP32", True), "400", "shape must be [n, 3]"),
    (lambda: tensor(np.zeros((3,), np.float64), "FP64", False), "400", "shape must be [n, 3]"),
    (lambda: tensor(np.array([[b"a", b"b", b"c"]], dtype=np.object_), "BYTES", True), "400",
     "datatype must be one of"),
    (lambda: tensor(np.array([[True, False, True]]), "BOOL", False), "400",
     "datatype must be one of"),
])
def test_a_wrong_shape_or_datatype_is_the_protocols_400(service: Service, make: Callable,
                                                        status: str, words: str) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client(service).infer("xor", [make()])
    assert raised.value.status() == status and words in raised.value.message()


def test_an_unknown_model_or_version_is_404(service: Service) -> None:
    triton_client = client(service)
    with pytest.raises(InferenceServerException) as raised:
        triton_client.infer("no-such-model", [tensor(XOR_X.astype(float), "FP64", True)])
    assert raised.value.status() == "404"
    with pytest.raises(InferenceServerException) as raised:
        triton_client.get_model_metadata("xor", "999999")
    assert raised.value.status() == "404" and "no version 999999 kept" in raised.value.message()


def test_plain_http_json_without_a_content_type_nested_data_and_errors(service: Service) -> None:
    body = {"id": "plain", "inputs": [{"name": "input", "shape": [4, 3], "datatype": "FP64",
                                       "data": XOR_X.tolist()}],
            "outputs": [{"name": "output"}]}
    # no Content-Type, as Triton's client sends it: which no OpenAPI content type can say
    reply = service.request("POST", "/v2/models/xor/infer", raw=json.dumps(body).encode(),
                            check=False)
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert answer["id"] == "plain" and answer["model_name"] == "xor"
    (output,) = answer["outputs"]
    assert output["shape"] == [4, 1] and output["datatype"] == "FP64"
    assert [[value] for value in output["data"]] == predicted(service, "xor", XOR_X)["outputs"]
    bad = service.post("/v2/models/xor/infer", {"inputs": [{**body["inputs"][0],
                                                            "data": [1, 2, 3]}]})
    assert bad.status == 400 and bad.json() == {
        "error": "input data must hold 12 numbers, as its shape says; got 3"}
    unknown = service.post("/v2/models/xor/infer", {**body, "outputs": [{"name": "class"}]})
    assert unknown.status == 400 and "no output 'class'" in unknown.json()["error"]
    cut = service.request("POST", "/v2/models/xor/infer", raw=b'{"inputs": []}' + b"\x00" * 8,
                          headers={"Inference-Header-Content-Length": "99"})
    assert cut.status == 400 and "Inference-Header-Content-Length" in cut.json()["error"]


def test_the_protocol_takes_the_token_but_its_health_does_not(
        start_service: Callable[..., Service]) -> None:
    guarded = start_service(token="v2-token")
    anonymous = client(guarded)
    assert anonymous.is_server_live() and anonymous.is_server_ready()
    with pytest.raises(InferenceServerException) as raised:
        anonymous.get_model_metadata("xor")
    assert raised.value.status() == "401"
    authorized = client(guarded)
    metadata = authorized.get_model_metadata("xor",
                                             headers={"Authorization": "Bearer v2-token"})
    assert metadata["name"] == "xor"
