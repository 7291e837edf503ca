"""The Open Inference Protocol (KServe's "V2" REST protocol, which Triton, KServe, MLServer and
TorchServe speak) for gradbook's models, so that their clients call gradbook as they are.

Each model is a protocol model with one input tensor and one or two outputs::

    input   FP64  [-1, d_in]    the examples X, a row each (FP32 and integer types accepted)
    output  FP64  [-1, d_out]   the output layer l_K (softmax probabilities for a classifier)
    class   INT64 [-1]          the arg-max class, for a classifier only

``infer`` answers exactly the numbers ``POST /models/:name/predict`` answers for the same rows
(both run ``MLP.forward`` in float64). A request's tensors may come as JSON (``data`` flat or
nested, row-major) or as raw bytes after the JSON header (the binary tensor extension: the
``Inference-Header-Content-Length`` header says where the JSON ends, each input's
``parameters.binary_data_size`` how many little-endian bytes it takes), which is what Triton's
client sends by default; answers are always JSON, which every client reads. Errors are the
protocol's ``{"error": "…"}``. Server health (``/v2/health/live`` and ``/ready``) is answered by
the gateway itself, like ``/healthz``.

Reading is linear in the request and bounded before any array is made: the element count must
match the shape, the shape must match the model, and the batch must pass ``limits.check_batch``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from gradbook_service.app import limits
from gradbook_service.app.http import Request, Response, json_response
from gradbook_service.app.settings import Settings
from gradbook_service.gateway.body import is_json, json_value
from gradbook_service.gateway.errors import ServiceError

import gradbook
from gradbook.network import MLP
from gradbook.store import Store, check_name
from gradbook.validation import brief

PLATFORM = "gradbook_mlp"
INPUT, OUTPUT, CLASS = "input", "output", "class"
HEADER_LENGTH = "Inference-Header-Content-Length"
# the protocol's numeric types: numpy's little-endian type of each, and whether it is integral
DATATYPES = {
    "FP64": ("<f8", False), "FP32": ("<f4", False), "FP16": ("<f2", False),
    "INT8": ("<i1", True), "INT16": ("<i2", True), "INT32": ("<i4", True), "INT64": ("<i8", True),
    "UINT8": ("<u1", True), "UINT16": ("<u2", True), "UINT32": ("<u4", True),
    "UINT64": ("<u8", True),
}
MAX_DEPTH = 8  # nesting of a tensor's JSON data: rows of rows of … numbers


def error_body(error: ServiceError) -> dict[str, Any]:
    """The protocol's error: ``{"error": "…"}``."""
    return {"error": error.message}


class InferenceAPI:
    """The protocol's endpoints over gradbook's model store (cells of ``api.ipynb`` call them
    through ``respond(..., errors=error_body)``)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store, self.settings = store, settings

    def server(self, request: Request) -> Response:
        """``GET /v2``: the server's name, version and extensions (none)."""
        return json_response({"name": "gradbook", "version": gradbook.__version__,
                              "extensions": []})

    def model(self, request: Request) -> Response:
        """``GET /v2/models/:model[/versions/:version]``: the model's tensors."""
        name, net = self._model(request)
        kept = [str(each["version"]) for each in self.store.versions(name)]
        return json_response({"name": name, "versions": kept,
                              "platform": PLATFORM, "inputs": [tensor(INPUT, "FP64", net.sizes[0])],
                              "outputs": outputs(net)})

    def config(self, request: Request) -> Response:
        """``GET /v2/models/:model[/versions/:version]/config``: the model's configuration as
        Triton describes one (its model configuration extension, which Triton's client asks
        for with ``get_model_config``); no batching dimension apart (``max_batch_size`` 0)."""
        name, net = self._model(request)

        def described(tensor: dict[str, Any]) -> dict[str, Any]:
            return {"name": tensor["name"], "data_type": f"TYPE_{tensor['datatype']}",
                    "dims": tensor["shape"]}

        return json_response({"name": name, "platform": PLATFORM, "max_batch_size": 0,
                              "input": [described(tensor(INPUT, "FP64", net.sizes[0]))],
                              "output": [described(each) for each in outputs(net)]})

    def ready(self, request: Request) -> Response:
        """``GET /v2/models/:model[/versions/:version]/ready``: 200 when it can infer."""
        name, _ = self._model(request)
        return json_response({"name": name, "ready": True})

    def infer(self, request: Request) -> Response:
        """``POST /v2/models/:model[/versions/:version]/infer``: the output tensor (and the
        class tensor of a classifier) for the input rows."""
        header, binary = read_request(request)
        name, net = self._model(request)
        X = read_input(header, binary, net)
        limits.check_batch(net, len(X))
        wanted = requested(header, net)
        row_bytes = (net.sizes[-1] + 1) * limits.NUMBER_BYTES
        limits.check_response(len(X) * row_bytes, self.settings.max_response_bytes, "fewer rows")
        with np.errstate(over="ignore", invalid="ignore"):
            l_K = net.forward(X)
        if not np.all(np.isfinite(l_K)):
            raise ValueError("the output overflowed to NaN or infinity for this input; send "
                             "values of a smaller magnitude")
        tensors = {OUTPUT: {"name": OUTPUT, "datatype": "FP64", "shape": list(l_K.shape),
                            "data": l_K.ravel().tolist()}}
        if net.is_classifier:
            tensors[CLASS] = {"name": CLASS, "datatype": "INT64", "shape": [len(X)],
                              "data": l_K.argmax(axis=1).tolist()}
        answer: dict[str, Any] = {"model_name": name,
                                  "model_version": str(net.metadata["version"]),
                                  "outputs": [tensors[each] for each in wanted]}
        if "id" in header:
            answer["id"] = header["id"]
        return json_response(answer)

    def _model(self, request: Request) -> tuple[str, MLP]:
        """The model the path names, at the version it names (one the store keeps)."""
        name = check_name(request.path.get("model", ""))
        version = request.path.get("version")
        if version is None:
            return name, self.store.get(name)
        if not (version.isascii() and version.isdigit() and 0 < len(version) <= 19):
            self.store.get(name)  # an unknown model is a 404 first
            raise ServiceError(404, f"model {name} has no version {brief(version)}: versions "
                                    "are numbers")
        return name, self.store.version(name, int(version))


def tensor(name: str, datatype: str, width: int | None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [-1] if width is None else [-1, width]}


def outputs(net: MLP) -> list[dict[str, Any]]:
    return [tensor(OUTPUT, "FP64", net.sizes[-1])] + (
        [tensor(CLASS, "INT64", None)] if net.is_classifier else [])


def read_request(request: Request) -> tuple[dict[str, Any], bytes]:
    """The request's JSON header and the bytes after it (the binary tensor extension). Triton's
    client sends no ``Content-Type``, so JSON is read whatever the type says, but for a type
    that is neither JSON nor absent."""
    content_type = request.header("Content-Type")
    media_type = content_type.split(";")[0].strip().lower()
    if content_type and not is_json(content_type) and media_type != "application/octet-stream":
        raise ServiceError(415, f"send the request as JSON (or the protocol's binary tensors), "
                                f"not {brief(media_type)}")
    body = request.body
    if is_json(content_type):  # JSON the gateway decoded already
        raw = None
        header: Any = body
    else:  # text, or bytes (base64-encoded by the gateway)
        raw = base64.b64decode(body) if request.encoding == "base64" \
            else str(body or "").encode("utf-8")
    length_text = request.header(HEADER_LENGTH)
    if raw is not None:
        length = len(raw)
        if length_text:
            if not length_text.isdigit() or not 0 < int(length_text) <= len(raw):
                raise ValueError(f"{HEADER_LENGTH} must be the length of the JSON header, from "
                                 f"1 to the body's {len(raw)} bytes; got {brief(length_text)}")
            length = int(length_text)
        try:
            header = json_value(raw[:length].decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("the request's JSON header is not UTF-8 text: with binary tensors, "
                             f"send {HEADER_LENGTH}") from None
        return _object(header), raw[length:]
    if length_text:
        raise ValueError(f"{HEADER_LENGTH} needs the binary tensors after the JSON header, not "
                         "a JSON body alone")
    return _object(header), b""


def _object(header: Any) -> dict[str, Any]:
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ValueError('send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    return header


def read_input(header: dict[str, Any], binary: bytes, net: MLP) -> np.ndarray:
    """The one input tensor as ``X``, an ``(n, d_in)`` float64 array."""
    d_in = net.sizes[0]
    inputs = header["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or inputs[0].get("name") != INPUT:
        raise ValueError(f'send one input tensor, named "{INPUT}", of shape [n, {d_in}]')
    given = inputs[0]
    shape, datatype = given.get("shape"), given.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ValueError(f"input datatype must be one of {', '.join(DATATYPES)}; got "
                         f"{brief(datatype)}")
    if (not isinstance(shape, list) or len(shape) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in shape)
            or shape[0] < 1 or shape[1] != d_in):
        raise ValueError(f"input shape must be [n, {d_in}] with n at least 1; got {brief(shape)}")
    n = shape[0]
    limits.check_batch(net, n)
    dtype, integral = DATATYPES[datatype]
    parameters = given.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is not None:
        expected = n * d_in * np.dtype(dtype).itemsize
        if size != expected or len(binary) != expected:
            raise ValueError(f"the input's binary data must be {expected} bytes ({n}×{d_in} "
                             f"{datatype}); binary_data_size says {brief(size)} and "
                             f"{len(binary)} bytes follow the header")
        X = np.frombuffer(binary, dtype=dtype).astype(np.float64)
    else:
        if binary:
            raise ValueError("bytes follow the JSON header, but the input has no "
                             "binary_data_size")
        X = np.array(flat_numbers(given.get("data"), n * d_in, integral, datatype),
                     dtype=np.float64)
        if datatype in ("FP32", "FP16"):  # the values the client's type can hold
            X = X.astype(dtype).astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise ValueError("input data must be finite numbers")
    return X.reshape(n, d_in)


def flat_numbers(data: Any, count: int, integral: bool, datatype: str) -> list[float | int]:
    """A tensor's JSON ``data``, flat or nested, as its ``count`` numbers in row-major order;
    a ``ValueError`` saying what is wrong. Each list is visited once, at most ``MAX_DEPTH``
    deep, and no more than ``count`` numbers are taken."""
    numbers: list[float | int] = []
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list):
            if depth >= MAX_DEPTH:
                raise ValueError(f"input data nests lists more than {MAX_DEPTH} deep")
            stack.extend((each, depth + 1) for each in reversed(item))
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"input data must hold numbers only; got {brief(item)}")
        elif integral and not (isinstance(item, int) or float(item).is_integer()):
            raise ValueError(f"{datatype} data must be integers; got {brief(item)}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError("input data must be finite numbers")
        else:
            numbers.append(item)
            if len(numbers) > count:
                break
    if len(numbers) != count or not isinstance(data, list):
        raise ValueError(f"input data must hold {count} numbers, as its shape says; got "
                         f"{'more' if len(numbers) > count else len(numbers)}")
    return numbers


def requested(header: dict[str, Any], net: MLP) -> list[str]:
    """The output tensors the request names (all when it names none)."""
    names = [OUTPUT, CLASS] if net.is_classifier else [OUTPUT]
    wanted = header.get("outputs")
    if wanted is None:
        return names
    if not isinstance(wanted, list) or not all(isinstance(each, Mapping) for each in wanted):
        raise ValueError('outputs must be a list of {"name": …}')
    chosen = [each.get("name") for each in wanted]
    for name in chosen:
        if name not in names:
            raise ValueError(f"no output {brief(name)}; this model has {', '.join(names)}")
    return list(dict.fromkeys(chosen))
