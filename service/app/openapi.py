"""The OpenAPI 3 description of the service: every operation's body, responses and error codes.

It describes what the service does, not only what the notebook's cells do: the statuses the
gateway personality answers before a kernel runs (401, 403, 413, 503), the gateway's own answers
(OPTIONS, 304 to ``If-None-Match``, the Swagger redirect), the answers to a method a path does
not take (``x-other-methods`` of each path item) and to a path that matches no template
(``x-unknown-paths`` of the document). ``default`` stands for one status only: 500, an
unexpected fault of the service.

The tests keep it honest (``check_against_spec`` in ``tests/conftest.py`` and
``tests/test_service_contract.py``): every reply they receive must have a status documented
where this description says it answers and match its schema, a request answered with 2xx must be
one this description calls valid, every status documented here is produced by a real request,
and the limits it states are the limits the service enforces.
"""

from __future__ import annotations

import math
from decimal import Decimal
from importlib.metadata import version
from typing import Any

from gradbook_service.app.inference import DATATYPES as INFERENCE_DATATYPES
from gradbook_service.app.inputs import MAX_RATE, MAX_SEED
from gradbook_service.app.jobs import JOB_ID, STATES
from gradbook_service.app.settings import (
    MAX_ELEMENTS,
    MAX_NUMBER_CHARS,
    RESPONSE_FLOOR_BYTES,
    Settings,
)
from gradbook_service.gateway import apidocs
from gradbook_service.gateway.settings import MAX_JSON_DEPTH

from gradbook.activations import ACTIVATIONS
from gradbook.datasets import DATASETS
from gradbook.losses import LOSSES
from gradbook.store import NAME

Schema = dict[str, Any]

ERRORS = {
    400: "Invalid request: malformed JSON, missing or unknown fields, wrong shapes or types, "
    "non-finite numbers, or a limit exceeded (work, response size, nesting); the message says "
    "which.",
    404: "No model of that name.",
    409: "The name is taken, another request is changing the model (retry), or the store holds "
    "its most models (delete one).",
    415: "The body is not JSON (a form, text), or its charset is not UTF-8.",
}
# The one 400 of an operation that reads no input: a response over the limit.
TOO_LONG = "The response would be larger than GRADBOOK_MAX_RESPONSE_BYTES allows."
# A 500 listed where a damaged store file causes it; any other 500 is the ``default`` response.
DAMAGED = ("The model's file in the store could not be read (it is damaged); the details are in "
           "the service log, never in the response.")
# Responses many operations share (components/responses): name -> (status, description).
SHARED = {
    "NotModified": (304, "If-None-Match names this response's ETag (or is *): no body."),
    "Unauthorized": (401, "GRADBOOK_TOKEN is set and the request lacks "
                     "'Authorization: token <value>' (or 'Bearer <value>')."),
    "Forbidden": (403, "The Host header names a host the service does not answer to (it "
                  "answers the loopback names, its own address and GRADBOOK_ALLOWED_HOSTS), or "
                  "a browser sent a request that changes something for a page of another site "
                  "or origin (Sec-Fetch-Site, Origin) without the token."),
    "NoSuchPath": (404, "No endpoint at this path."),
    "MethodNotAllowed": (405, "The path takes no such method; the Allow header names the methods "
                         "it takes. (A method the service implements on no path, anything but "
                         "GET, HEAD, POST, PUT, DELETE, PATCH and OPTIONS, gets this 405 too.)"),
    "NoSuchMethod": (405, "A method the service implements on no path (anything but GET, HEAD, "
                     "POST, PUT, DELETE, PATCH and OPTIONS), sent to a path that matches no "
                     "template: no Allow header, as there is no resource to name methods of."),
    "TooLarge": (413, "The request body is larger than the limit, the endpoint takes no body, "
                 "or the request needs more memory than the service has."),
    "Unavailable": (503, "A kernel stopped (it is replaced when next lent), too many "
                    "requests wait for a kernel, the service holds as many bytes of requests "
                    "and answers as it may (GRADBOOK_MAX_PENDING_BYTES), or the model store's "
                    "database cannot be reached: retry after Retry-After seconds."),
    "Fault": (500, "Stands for 500 only: an unexpected fault of the service (details in its "
              "log, never in the response)."),
}
# The groups of operations, in the order /docs lists them, and the paths each one holds.
TAGS = [{"name": "models", "description": "Create, read, change and delete models; predict, "
         "train, reset, gradients, training curve"},
        {"name": "jobs", "description": "Training jobs (a train request with \"wait\": false)"},
        {"name": "inference", "description": "The Open Inference Protocol (KServe V2, as Triton, "
         "KServe and MLServer speak it): its errors are {\"error\": \"…\"}"},
        {"name": "service", "description": "Health, metrics, diagnostics, this description, "
         "the pages"}]
TAG_PREFIXES = [("models", "/models"), ("jobs", "/jobs"), ("inference", "/v2")]

PREFLIGHT = {
    "summary": "CORS preflight, answered by the gateway: no token, no kernel, no body",
    "responses": {"200": {"description": "No body; the Access-Control-* headers the gateway is "
                          "configured with (KG_ALLOW_ORIGIN and the like), if any."},
                  "403": {"$ref": "#/components/responses/Forbidden"}},
}


# -- numbers sent as strings -------------------------------------------------------------------
# service.inputs reads a string as a number when, stripped of the blanks around it, it spells one
# in ASCII for int() or float(); then the field's bounds apply. The patterns below say exactly
# which strings each field takes, bounds included, so that a client's validator agrees with the
# service. A JSON Schema can constrain a string's characters but not the number they spell, so
# each bound is spelt out digit by digit. The service itself reads numbers without regular
# expressions; clients validate with these, so none has nested or overlapping unbounded
# repetition: matching takes time linear in the string's length, whatever the string.

# The blanks str.strip() removes (str.isspace()), spelt out: `\s` means a different set in each
# regular expression dialect (ECMA-262 adds U+FEFF and lacks U+001C-U+001F and U+0085).
BLANK = r"[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


# What /healthz says of each notebook the gateway serves (gradbook_service.gateway.personality)
NOTEBOOK_HEALTH = {
    "type": "object", "additionalProperties": False,
    "required": ["path", "version", "kernels", "reload"],
    "properties": {
        "path": {"type": "string", "description": "Where its endpoints are: / or /<name>"},
        "version": {"type": "string", "nullable": True,
                    "description": "A hash of its code cells (null: not served yet)"},
        "kernels": {"type": "integer", "minimum": 0},
        "reload": {"type": "object", "additionalProperties": False, "required": ["result"],
                   "properties": {"result": {"type": "string", "enum": ["none", "ok", "failed"]},
                                  "at": {"type": "string", "format": "date-time"},
                                  "error": {"type": "string"}}}}}

def spelling(numerals: str) -> str:
    """The pattern of a string holding one of ``numerals`` between blanks, as the service reads
    it (``str.strip()``)."""
    return f"^{BLANK}*(?:{numerals}){BLANK}*$"


def digits_from(low: int, high: int) -> str:
    """A regular expression for one digit from ``low`` to ``high``."""
    return str(low) if low == high else f"[{low}-{high}]"


def any_digits(least: int, most: int) -> str:
    """A regular expression for ``least`` to ``most`` digits."""
    if most == 0:
        return ""
    return "[0-9]" + ("" if least == most == 1 else f"{{{least}}}" if least == most
                      else f"{{{least},{most}}}")


def up_to(limit: int) -> str:
    """The whole numbers 1 to ``limit`` (no leading zero), as a regular expression: the digits
    decide, case by case. For 2000: up to three digits, or 1 and three more, or 2000 itself."""
    digits = str(limit)
    alternatives = [f"[1-9]{any_digits(0, len(digits) - 2)}"] if len(digits) > 1 else []
    for i, digit in enumerate(map(int, digits)):  # as long, and smaller from digit i on
        low = 1 if i == 0 else 0  # no leading zero
        if digit > low:
            rest = len(digits) - i - 1
            alternatives.append(digits[:i] + digits_from(low, digit - 1) + any_digits(rest, rest))
    return "(?:" + "|".join([*alternatives, digits]) + ")"


def fraction_up_to(digits: str) -> str:
    """The digit strings f (the empty one too) with 0.f <= 0.``digits``: a prefix of ``digits``
    and then a smaller digit and any digits, or all of ``digits`` and then zeros."""
    pattern = "0*"
    for digit in reversed(digits):
        smaller = f"{digits_from(0, int(digit) - 1)}[0-9]*|" if digit != "0" else ""
        pattern = f"(?:{smaller}{digit}{pattern})?"
    return pattern


def rate_numerals(limit: float) -> str:
    """Decimal numerals (no exponent) of the numbers in (0, ``limit``] for a whole ``limit``:
    below 1, from 1 to below ``limit`` with any fraction, and ``limit`` with any fraction that
    float() rounds down to it: at most half a unit in the last place of ``limit`` (a tie
    rounds to ``limit``, whose last binary digit is 0, as it is for 1000)."""
    whole = int(limit)
    tie = format(Decimal(math.ulp(limit) / 2), "f").split(".")[1]  # a power of 2: exact
    if whole != limit or float(f"{whole}.{tie}") != limit:
        raise ValueError(f"no pattern here for rates up to {limit!r}: a whole number whose last "
                         "binary digit is 0 is needed")
    below_one = r"\.0*[1-9][0-9]*"
    below_limit = [rf"{up_to(whole - 1)}(?:\.[0-9]*)?"] if whole > 1 else []
    at_limit = rf"{whole}(?:\.{fraction_up_to(tie)})?"
    return rf"\+?0*(?:{'|'.join([below_one, *below_limit, at_limit])})"


DECIMAL = spelling(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # any number
COUNT = spelling(r"\+?0*[1-9][0-9]*")  # a whole number >= 1
WHOLE = spelling(r"\+?[0-9]+|-0+")  # a whole number >= 0: "-0" is read as 0
SEED = spelling(rf"\+?0*{up_to(MAX_SEED)}|[+-]?0+")  # 0 to MAX_SEED
# An exponent of 0 or below, down to -99 ("2.5e0", "5E-04"), keeps a number in (0, MAX_RATE] in
# range: a numeral of at most MAX_NUMBER_CHARS characters spells no positive number so small that
# 10**-99 times it is below the smallest float. Other exponents can take a numeral out of range
# into it ("5000e-3", "0.5e1"), which only arithmetic tells: the service reads those by value,
# and the pattern leaves them out.
SHRINKING = r"[eE](?:[+-]?0+|-0*[1-9][0-9]?)"
RATE = spelling(rf"{rate_numerals(MAX_RATE)}(?:{SHRINKING})?")  # in (0, MAX_RATE]


def count_up_to(limit: int) -> str:
    """The pattern of a whole number from 1 to ``limit`` sent as a string."""
    return spelling(rf"\+?0*{up_to(limit)}")


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def shared(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def obj(properties: Schema, required: list[str] | None = None, **extra: Any) -> Schema:
    """A JSON object with exactly these properties (clients learn of typos)."""
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return {**schema, **({"required": required} if required else {}), **extra}


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def json_content(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def streamed(responses: dict[int, Schema]) -> dict[int, Schema]:
    """``responses`` whose 200 may also be Server-Sent Events (``Accept: text/event-stream``)."""
    ok = responses[200]
    events = {"schema": {"type": "string", "description": "Server-Sent Events: a 'data' line "
                         "per line the cell prints, then an 'end' or 'error' event"}}
    return {**responses, 200: {**ok, "content": {**ok["content"], "text/event-stream": events}}}


def errors(*statuses: int, **descriptions: str) -> dict[int, str]:
    """``{status: description}`` from ``ERRORS``; ``descriptions`` (``e400=…``) override."""
    chosen = {status: ERRORS[status] for status in statuses}
    return {**chosen, **{int(key[1:]): text for key, text in descriptions.items()}}


def operation(summary: str, ok: Schema, own: dict[int, str], body: str | None = None,
              public: bool = False, body_required: bool = True, get: bool = False,
              queued: bool = True, error: str = "Error") -> Schema:
    """One operation of an endpoint cell. ``ok`` maps success statuses to responses, ``own`` the
    operation's error statuses to descriptions. 401 (unless ``public``), 403, 413 and 503 (for
    the ``queued``, those a kernel answers) can answer any request, as the gateway personality
    checks them first; a GET answered with 200 carries an ETag, and 304 answers an
    If-None-Match that names it."""
    responses = {str(status): response for status, response in ok.items()}
    # a protocol's own errors, or the gateway's (a body it refused, before any cell)
    schema = ref(error) if error == "Error" else {"oneOf": [ref("Error"), ref(error)]}
    responses.update({str(code): (too_many(text) if code == 429 else
                                  json_content(schema, text)) for code, text in own.items()})
    responses.update({"403": shared("Forbidden"), "413": shared("TooLarge")})
    if queued and error == "Error":
        responses["503"] = shared("Unavailable")
    elif queued:  # the gateway's 503, or the store's in the operation's own error
        either = {"oneOf": [ref("Error"), ref(error)]}
        responses["503"] = {**unavailable(SHARED["Unavailable"][1]),
                            "content": {"application/json": {"schema": either}}}
    if not public:
        responses["401"] = shared("Unauthorized")
    if get:
        etag = {"ETag": {"required": True, "schema": {"type": "string"}}}
        responses["200"] = {**responses["200"],
                            "headers": {**responses["200"].get("headers", {}), **etag}}
        responses["304"] = shared("NotModified")
    responses = {code: responses[code] for code in sorted(responses)}
    result: Schema = {"summary": summary, "responses": {**responses, "default": shared("Fault")}}
    if body is not None:
        content = {"application/json": {"schema": ref(body)}}
        result["requestBody"] = {
            "required": body_required, "content": content,
            "description": "JSON, Content-Type application/json (any application/…+json type "
            "is read as JSON too); a charset other than UTF-8 gets 415."}
    if public:
        result["security"] = []
    return result


def at_version(operation: Schema) -> Schema:
    """``operation`` with the query parameter ``version``: a kept version instead of the
    latest (404, naming those kept, for another)."""
    parameter = {"name": "version", "in": "query", "required": False,
                 "description": "A version the store keeps (GET /models/{name}/versions); the "
                                "latest without it",
                 "schema": {"type": "integer", "minimum": 1}}
    return {**operation, "parameters": [parameter]}


def unavailable(description: str) -> Schema:
    """A 503, with a Retry-After header."""
    retry = {"required": True, "schema": {"type": "integer", "minimum": 1}}
    return {**json_content(ref("Error"), description), "headers": {"Retry-After": retry}}


too_many = unavailable  # a 429 carries Retry-After too


def health_path(summary: str, unwell: str) -> Schema:
    """The path item of ``/healthz`` or ``/readyz``: public, GET only, never a kernel."""
    etag = {"ETag": {"required": True, "schema": {"type": "string"}}}
    healthy = {**json_content(ref("Health"), "Healthy (ready)."), "headers": etag}
    responses = {"200": healthy, "304": shared("NotModified"), "403": shared("Forbidden"),
                 "413": shared("TooLarge"), "503": unavailable(unwell),
                 "default": shared("Fault")}
    return {"get": {"summary": summary, "security": [], "responses": responses},
            "x-options": preflight(),
            "x-other-methods": {"403": shared("Forbidden"), "405": shared("MethodNotAllowed")}}


def path_parameter(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


def preflight() -> Schema:
    """How the gateway answers OPTIONS on a path item (its ``x-options``). A CORS preflight is
    not an operation on the resource: it is answered for whatever the path's parameters hold (a
    model deleted, or never made, gets 200 too), so it is described beside the operations, not
    as one, where a client generator or fuzzer would take it for a read of the resource."""
    return PREFLIGHT


def shared_responses() -> Schema:
    """components/responses: ``SHARED`` as response objects."""
    responses = {}
    for name, (status, description) in SHARED.items():
        if status == 304:
            responses[name] = {"description": description}
        elif status == 503:
            responses[name] = unavailable(description)
        else:
            responses[name] = json_content(ref("Error"), description)
    allow = {"required": True, "schema": {"type": "string"},
             "description": "The methods the path takes, e.g. \"DELETE, GET, PUT\"."}
    responses["MethodNotAllowed"]["headers"] = {"Allow": allow}
    challenge = {"required": True, "schema": {"type": "string"},
                 "description": "Bearer realm=\"gradbook\": send the token."}
    responses["Unauthorized"]["headers"] = {"WWW-Authenticate": challenge}
    return responses


def schemas(settings: Settings) -> Schema:
    spelt = {"type": "string", "maxLength": MAX_NUMBER_CHARS}  # a number sent as a string
    number = {"oneOf": [{"type": "number"}, {**spelt, "pattern": DECIMAL}],
              "description": 'A number, or a string spelling one ("61.1").'}
    count = {"oneOf": [{"type": "integer", "minimum": 1},  # the string form: ASCII digits only
                       {**spelt, "pattern": COUNT}]}
    seed = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                      {**spelt, "pattern": SEED}]}
    rate = {**spelt, "pattern": RATE,
            "description": "A decimal numeral in range (\"0.05\"), possibly followed by an "
            "exponent from -99 to 0 (\"5e-2\"). The service also reads other spellings with an "
            "exponent (\"0.5e1\", \"5000e-3\") when the number they spell is in range; as no "
            "pattern can bound that number, this one leaves them out."}
    hyperparameters = {
        "lr": {"oneOf": [{"type": "number", "minimum": 0, "exclusiveMinimum": True,
                          "maximum": MAX_RATE}, rate],
               "description": f"Learning rate, > 0 and at most {MAX_RATE:g}; the loss is summed "
               "over a batch."},
        "epochs": {"oneOf": [{**count["oneOf"][0], "maximum": settings.max_epochs},
                             {**spelt, "pattern": count_up_to(settings.max_epochs)}],
                   "description": f"Epochs per training run, 1 to {settings.max_epochs}."},
        "batch_size": {"anyOf": [{**count["oneOf"][0], "nullable": True}, count["oneOf"][1]],
                       "description": "Examples per step; null for the whole data set."},
    }
    matrix = array(array(number, minItems=1), minItems=1, description="Rows of numbers, (n, d).")
    labels = array({"oneOf": [{"type": "integer", "minimum": 0}, {**spelt, "pattern": WHOLE}]},
                   minItems=1)
    targets = {"oneOf": [matrix, labels],
               "description": "Targets (n, d_out), or class labels (n,) for cross_entropy models."}
    architecture = {
        "sizes": array({"type": "integer", "minimum": 1}, minItems=2),
        "activation": {"type": "string", "enum": sorted(ACTIVATIONS)},
        "loss": {"type": "string", "enum": sorted(LOSSES)},
        "bias": {"type": "boolean"},
        "classifier": {"type": "boolean", "description": "true for cross_entropy models."},
    }
    metrics = {"type": "object",
               "description": "Of the last training run, each named by the examples it was "
               "measured on ({} before a run): the loss at the final weights, summed over the "
               "training examples; for classifiers the accuracy on held-out examples (digits) or, "
               "for data without a held-out part, on the training examples.",
               "properties": {"data": {"type": "string"}, "training_loss": {"type": "number"},
                              "training_examples": {"type": "integer"},
                              "held_out_accuracy": {"type": "number"},
                              "held_out_examples": {"type": "integer"},
                              "training_accuracy": {"type": "number"}}}
    numbers = {"lr": {"type": "number"}, "epochs": {"type": "integer"},
               "batch_size": {"type": "integer", "nullable": True}}
    epoch_losses = ("The loss of each epoch, summed over its examples: with mini-batches each "
                    "batch's loss before its step, added up over the epoch (the running training "
                    "loss); with the whole data set as the batch, the loss after the epoch's step.")
    run = obj({"data": {"type": "string"}, **numbers,
               "loss_start": {"type": "number", "description": "The loss of the run's first "
                              "epoch."},
               "loss_end": {"type": "number", "description": "The loss at the final weights, "
                            "summed over the training examples (metrics.training_loss)."},
               "seconds": {"type": "number"},
               "version": {"type": "integer", "description": "The version the run made."},
               "job": {"type": "string", "description": "The training job that ran it."}})
    name = {"type": "string", "pattern": f"^{NAME.pattern}$"}
    version = {"type": "integer", "minimum": 1, "description": "Grows by one on every change."}
    model = {"name": name, "version": version}
    vector, rows = array({"type": "number"}), array(array({"type": "number"}))
    stamp = {"type": "string", "format": "date-time"}
    job = {
        "id": {"type": "string", "pattern": f"^{JOB_ID.pattern}$"}, "model": name,
        "state": {"type": "string", "enum": list(STATES)},
        "data": {"type": "string", "description": "The data set's name, or \"request\" for "
                 "data sent with the request."},
        "hyperparameters": obj(numbers, list(numbers)),
        "epoch": {"type": "integer", "minimum": 0, "description": "Epochs done."},
        "epochs": {"type": "integer", "minimum": 1},
        "version": {**version, "nullable": True, "description": "The version it committed."},
        "error": obj({"status": {"type": "integer"}, "message": {"type": "string"}},
                     ["status", "message"], nullable=True),
        "cancel_requested": {"type": "boolean"},
        "created": stamp, "started": {**stamp, "nullable": True},
        "finished": {**stamp, "nullable": True},
    }
    tensor = obj({"name": {"type": "string"}, "datatype": {"type": "string"},
                  "shape": array({"type": "integer", "minimum": -1})},
                 ["name", "datatype", "shape"])
    config_tensor = obj({"name": {"type": "string"}, "data_type": {"type": "string"},
                         "dims": array({"type": "integer", "minimum": -1})},
                        ["name", "data_type", "dims"])
    return {
        "InferenceError": obj({"error": {"type": "string"}}, ["error"]),
        "ServerMetadata": obj({"name": {"type": "string"}, "version": {"type": "string"},
                               "extensions": array({"type": "string"})},
                              ["name", "version", "extensions"]),
        "ModelMetadata": obj({"name": {"type": "string"}, "versions": array({"type": "string"}),
                              "platform": {"type": "string"}, "inputs": array(tensor),
                              "outputs": array(tensor)},
                             ["name", "versions", "platform", "inputs", "outputs"]),
        "ModelConfig": obj({"name": {"type": "string"}, "platform": {"type": "string"},
                            "max_batch_size": {"type": "integer", "minimum": 0},
                            "input": array(config_tensor), "output": array(config_tensor)},
                           ["name", "platform", "max_batch_size", "input", "output"]),
        "ModelReady": obj({"name": {"type": "string"}, "ready": {"type": "boolean"}},
                          ["name", "ready"]),
        "InferenceRequest": {
            "type": "object", "required": ["inputs"],
            "description": "One input tensor, 'input', of shape [n, d_in]; its data flat or "
                           "nested, row-major, or (the binary tensor extension) as little-endian "
                           "bytes after the JSON header, whose length the "
                           "Inference-Header-Content-Length header gives",
            "properties": {
                "id": {"type": "string"},
                "inputs": array({"type": "object", "required": ["name", "shape", "datatype"],
                                 "properties": {
                                     "name": {"type": "string", "enum": ["input"]},
                                     "shape": array({"type": "integer", "minimum": 1},
                                                    minItems=2, maxItems=2),
                                     "datatype": {"type": "string",
                                                  "enum": list(INFERENCE_DATATYPES)},
                                     "data": {"type": "array"},
                                     "parameters": {"type": "object"}}},
                                minItems=1, maxItems=1),
                "outputs": array({"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string", "enum": ["output", "class"]},
                    "parameters": {"type": "object"}}}),
                "parameters": {"type": "object"}}},
        "InferenceResponse": obj({
            "model_name": {"type": "string"}, "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": array(obj({"name": {"type": "string"}, "datatype": {"type": "string"},
                                  "shape": array({"type": "integer", "minimum": 0}),
                                  "data": array({"type": "number"})},
                                 ["name", "datatype", "shape", "data"]))},
            ["model_name", "model_version", "outputs"]),
        "InferenceHealth": obj({"live": {"type": "boolean"}, "ready": {"type": "boolean"}}),
        "VersionList": obj({"name": name, "versions": array(obj({
            "version": {"type": "integer", "minimum": 1},
            "updated": {"type": "string", "format": "date-time", "nullable": True},
            "change": {"type": "string", "nullable": True,
                       "description": "What made it: created, trained, reset, rolled back …"},
            "metrics": {"type": "object"}}, ["version", "updated", "change", "metrics"]))},
            ["name", "versions"]),
        "Rollback": obj({"version": {"type": "integer", "minimum": 1,
                                     "description": "A version the store keeps"}},
                        ["version"]),
        "Error": obj({"error": obj({
            "status": {"type": "integer"}, "message": {"type": "string"},
            "id": {"type": "string", "description": "A 500's id: the service log's line with "
                   "the traceback names it"},
            "exception": {"type": "object", "description": "With GRADBOOK_DEBUG on, a 500's "
                          "exception: name, message, traceback"},
            "available": array({"type": "string"}, description="A 406's types: what the "
                               "endpoint can answer")},
            ["status", "message"])}, ["error"]),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]},
                       "kernels": {"type": "integer", "minimum": 0},
                       "models": {"type": "integer", "minimum": 0, "nullable": True},
                       "notebooks": {"type": "object", "additionalProperties": NOTEBOOK_HEALTH,
                                     "description": "Each served notebook, by name"}},
                      ["status", "kernels", "models", "notebooks"]),
        "Diagnostics": obj({
            "kernel": obj({"pid": {"type": "integer"},
                           "cached_models": {"type": "integer", "minimum": 0},
                           "cache_size": {"type": "integer", "minimum": 1},
                           "data_sets": array({"type": "string"}, description="The named "
                                              "data sets loaded (at seed time, when served).")},
                          ["pid", "cached_models", "cache_size", "data_sets"]),
            "store": obj({"path": {"type": "string"}, "models": {"type": "integer"}},
                         ["path", "models"]),
            "limits": {"type": "object", "additionalProperties": {"type": "number"}},
        }, ["kernel", "store", "limits"]),
        "ModelSummary": obj({**model, **architecture, "metrics": metrics},
                            [*model, *architecture, "metrics"]),
        "UnreadableModel": obj({"name": name, "error": {"type": "string"}}, ["name", "error"]),
        "ModelList": obj({"models": array({"oneOf": [ref("ModelSummary"),
                                                     ref("UnreadableModel")]})}, ["models"]),
        "Model": obj({
            **model, **architecture, "seed": {"type": "integer"},
            "hyperparameters": obj(numbers, list(numbers)),
            "metrics": metrics,
            "training": obj({"runs": {"type": "integer"}, "epochs": {"type": "integer"},
                             "curve_points": {"type": "integer"}, "history": array(run)},
                            ["runs", "epochs", "curve_points", "history"]),
            "created": {"type": "string", "format": "date-time"},
            "updated": {"type": "string", "format": "date-time"},
        }, [*model, *architecture, "seed", "hyperparameters", "metrics", "training", "created",
            "updated"]),
        "CreateModel": obj({
            "name": name,
            "sizes": array(count, minItems=2, maxItems=16,
                           description="[d_in, hidden…, d_out]; at most 1,000,000 parameters."),
            "activation": {**architecture["activation"], "default": "sigmoid"},
            "loss": {**architecture["loss"], "default": "half_sse"},
            "bias": {"type": "boolean", "default": False},
            "seed": {**seed, "default": 0},
            **hyperparameters,
        }, ["name", "sizes"]),
        "UpdateModel": obj(hyperparameters, minProperties=1),
        "Reset": obj({"seed": {**seed,
                               "description": "Default: the model's seed (its first weights)."}},
                     nullable=True, description="null, like no body, resets to the model's seed."),
        "Predict": {"oneOf": [obj({"x": array(number, minItems=1)}, ["x"]),
                              obj({"X": matrix}, ["X"])]},
        "Prediction": {"oneOf": [
            obj({**model, "output": vector, "class": {"type": "integer"}}, [*model, "output"]),
            obj({**model, "outputs": rows, "classes": array({"type": "integer"})},
                [*model, "outputs"]),
        ], "description": "For a classifier the outputs are the softmax probabilities."},
        "Train": obj({"data": {"oneOf": [{"type": "string", "enum": sorted(DATASETS)},
                                         obj({"X": matrix, "Y": targets}, ["X", "Y"])]},
                      **hyperparameters,
                      "wait": {"type": "boolean", "default": True,
                               "description": "false: answer 202 with a training job at once "
                               "instead of when trained."}}, ["data"]),
        "Job": obj({**job, "losses": array({"type": "number", "nullable": True},
                                           description=f"{epoch_losses} So far; null where it "
                                           "was not finite.")}, [*job, "losses"]),
        "JobList": obj({"jobs": array(obj(
            {**job, "loss": {"type": "number", "nullable": True,
                             "description": "The last loss recorded."}}, [*job, "loss"]))},
            ["jobs"]),
        "Training": obj({**model, "history": array({"type": "number"}, description=epoch_losses),
                         "metrics": metrics,
                         "run": run}, [*model, "history", "metrics", "run"]),
        "GradientsRequest": obj({"X": matrix, "Y": targets}, ["X", "Y"]),
        "Gradients": obj({
            **model, "loss": {"type": "number"},
            "gradients": {"type": "object", "additionalProperties": {"oneOf": [vector, rows]},
                          "description": "dL/dW1 … dL/dWK, then dL/db1 … dL/dbK if biased."},
        }, [*model, "loss", "gradients"]),
        "Deleted": obj({"name": name, "deleted": {"type": "boolean"},
                        "version": {"type": "integer", "minimum": 0, "description": "Its last "
                                    "version; 0 if its file was damaged."}},
                       [*model, "deleted"]),
    }


def openapi_spec(settings: Settings) -> Schema:
    """The description served at ``GET /openapi.json``, with this service's limits filled in."""
    name = [path_parameter("name", {"pattern": f"^{NAME.pattern}$"},
                           "A model's name; any other string gets 400.")]
    job_id = [path_parameter("id", {"pattern": f"^{JOB_ID.pattern}$"},
                             "A job's id, 32 lowercase hexadecimal digits; any other string "
                             "names no job (404).")]
    png = {"description": "PNG; the X-Gradbook-Version header holds the model's version.",
           "headers": {"X-Gradbook-Version": {"required": True, "schema": {"type": "integer"}}},
           "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
    read, write = errors(400, 404, e500=DAMAGED), errors(400, 404, 409, 415, e500=DAMAGED)
    listing = errors(e400=TOO_LONG)  # what an operation that reads no input can get wrong

    def ok(schema: str, description: str, status: int = 200) -> Schema:
        return {status: json_content(ref(schema), description)}

    paths = {
        "/diagnostics": {"get": operation(
            "The answering kernel, the store's folder and the limits in force",
            ok("Diagnostics", "Diagnostics."), listing, get=True)},
        "/openapi.json": {"get": operation(
            "This description", {200: json_content({"type": "object"}, "OpenAPI 3.0")}, listing,
            get=True)},
        "/models": {
            "get": operation("List the models", ok("ModelList", "All models."), listing,
                             get=True),
            "post": operation("Create a model", ok("Model", "Created, version 1.", 201),
                              errors(400, 409, 415, e500="The store's record of deleted models' "
                                     "versions is damaged, or the store cannot be written."),
                              "CreateModel"),
        },
        "/models/{name}": {
            "parameters": name,
            "get": operation("A model and its training history", ok("Model", "The model."), read,
                             get=True),
            "put": operation("Change the training defaults (lr, epochs, batch_size)",
                             ok("Model", "Changed: a new version."), write, "UpdateModel"),
            "delete": operation("Delete a model (a damaged one too)",
                                ok("Deleted", "Gone; its last version (0 if it was damaged)."),
                                errors(400, 404, 409)),
        },
        "/models/{name}/predict": {"parameters": name, "post": at_version(operation(
            "Outputs for one example (x) or a batch (X); classes too for classifiers",
            ok("Prediction", "Outputs."), {**read, **errors(415)}, "Predict"))},
        "/models/{name}/train": {"parameters": name, "post": operation(
            "Train; hyperparameters left out come from the model's defaults",
            {**streamed(ok("Training", "Trained: a new version. Asked with 'Accept: "
                           "text/event-stream', Server-Sent Events instead: one per epoch, "
                           "{\"epoch\", \"loss\"}, as it ends, then this answer, then an 'end' "
                           "event with the status (or an 'error' event).")),
             **ok("Job", "With \"wait\": false: a training job, queued; Location names it.",
                  202)}, {**write, **errors(
                e422="The loss or the weights became NaN or infinite: nothing was saved (a "
                "smaller lr, or inputs of a smaller magnitude).",
                e504="The run took longer than GRADBOOK_REQUEST_TIMEOUT and was stopped: "
                "nothing was saved, unless the stop came just after the commit (check the "
                "model's version).",
                e429="With \"wait\": false: GRADBOOK_MAX_QUEUED_JOBS jobs wait already, or "
                "the job's data would take the data of the jobs not finished past "
                "GRADBOOK_MAX_JOB_BYTES; retry after Retry-After seconds.")}, "Train")},
        "/": {"get": operation(
            "The playground page: the models, a digit to draw, training, gradients as heatmaps. "
            "Sent by the gateway itself: no kernel, no place in the queue, no token",
            {200: {"description": "One HTML document (its CSS and JavaScript inline, allowed by "
                   "their hashes in its Content-Security-Policy, which also keeps it out of "
                   "other sites' frames); it asks for the token when GRADBOOK_TOKEN is set.",
                   "headers": {"Content-Security-Policy": {"required": True,
                                                           "schema": {"type": "string"}}},
                   "content": {"text/html": {"schema": {"type": "string"}}}}},
            {}, public=True, get=True, queued=False)},
        "/docs": {"get": operation(
            "This description, rendered by Swagger UI to read and try. Sent by the gateway "
            "itself from the swagger-ui-bundle package (nothing loaded from another site): no "
            "kernel, no place in the queue, no token",
            {200: {"description": "One HTML document that loads /docs/swagger-ui-bundle.js and "
                   "/docs/swagger-ui.css; it asks for the token when /openapi.json needs one.",
                   "headers": {"Content-Security-Policy": {"required": True,
                                                           "schema": {"type": "string"}}},
                   "content": {"text/html": {"schema": {"type": "string"}}}}},
            {}, public=True, get=True, queued=False)},
        **{f"/docs/{asset}": {"get": operation(
            f"Swagger UI's {asset}, for /docs", {200: {
                "description": f"The file as swagger-ui-bundle ships it ({kind.split(';')[0]}).",
                "content": {kind.split(";")[0]: {"schema": {"type": "string"}}}}},
            {}, public=True, get=True, queued=False)}
           for asset, kind in apidocs.ASSETS.items()},
        "/jobs": {"get": operation("Every training job kept, oldest first, without losses",
                                   ok("JobList", "The jobs."), listing, get=True)},
        "/jobs/{id}": {
            "parameters": job_id,
            "get": operation("A training job: state, progress, losses so far, outcome",
                             ok("Job", "The job."),
                             errors(e400=TOO_LONG, e404="No job of that id."), get=True),
        },
        "/jobs/{id}/cancel": {
            "parameters": job_id,
            "post": operation(
                "Cancel a training job; nothing is committed. The record stays, to be read",
                {**ok("Job", "Cancelled now: it was queued."),
                 **ok("Job", "Running: it stops after its current epoch.", 202)},
                errors(e400=TOO_LONG, e404="No job of that id.", e409="The job has ended "
                       "already: succeeded, failed, or cancelled before."), body=None),
        },
        "/models/{name}/reset": {"parameters": name, "post": operation(
            "Fresh weights drawn from a seed; clears the training record",
            ok("Model", "Reset: a new version."), write, "Reset", body_required=False)},
        "/models/{name}/gradients": {"parameters": name, "post": at_version(operation(
            "Loss and gradients of every weight and bias at X, Y",
            ok("Gradients", "Gradients, as the W_k and b_k they belong to."),
            {**read, **errors(415)}, "GradientsRequest"))},
        "/models/{name}/versions": {"parameters": name, "get": operation(
            "The versions the store keeps of the model (GRADBOOK_KEEP_VERSIONS), newest first",
            ok("VersionList", "Each kept version: number, time, what made it, metrics."), read,
            get=True)},
        "/models/{name}/rollback": {"parameters": name, "post": operation(
            "A new version whose weights, training defaults, metrics and curve are a kept "
            "version's", ok("Model", "Rolled back: a new version."),
            {**write, 404: "No such model, or that version is not kept (the message lists "
                           "those that are)."}, "Rollback")},
        "/models/{name}/loss.png": {"parameters": name, "get": operation(
            "Training curve since the last reset", {200: png}, read, get=True)},
    }
    for item in paths.values():  # the gateway's answers on every endpoint path
        guarded = any("security" not in op for key, op in item.items() if key != "parameters")
        item["x-options"] = preflight()
        item["x-other-methods"] = {**({"401": shared("Unauthorized")} if guarded else {}),
                                   "403": shared("Forbidden"), "405": shared("MethodNotAllowed")}
    paths["/healthz"] = health_path(
        "Liveness, answered by the gateway without a kernel: every kernel process alive, and a "
        "folder store readable (a database store counts for readiness only, so an outage of "
        "the database restarts no replica, and models is null)",
        "A kernel stopped (it is being replaced), or the store's folder is not readable; the "
        "message says which.")
    paths["/readyz"] = health_path(
        "Readiness, answered by the gateway without a kernel: alive as for /healthz, the store "
        "readable (its database answering), the kernels seeded, and fewer requests waiting "
        "than GRADBOOK_MAX_QUEUE",
        "Not ready: as for /healthz, or the store is not readable, or the kernels are "
        "starting, or the queue is full; the message says which.")
    paths.update(inference_paths(read))
    paths["/metrics"] = {
        "get": {"summary": "Prometheus metrics of this gateway process: requests by endpoint and "
                "status, latency, batch sizes, queue depth, kernels replaced",
                "responses": {
                    "200": {"description": "The Prometheus text exposition format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": shared("Unauthorized"), "403": shared("Forbidden"),
                    "default": shared("Fault")}},
        "x-other-methods": {"403": shared("Forbidden"), "405": shared("MethodNotAllowed")},
    }
    location = {"required": True, "schema": {"type": "string", "enum": ["/openapi.json"]}}
    paths["/_api/spec/swagger.json"] = {
        "get": {"summary": "The gateway's stock Swagger path, which its start-up log names",
                "security": [],
                "responses": {"301": {"description": "Moved to /openapi.json; no body.",
                                      "headers": {"Location": location}},
                              "403": shared("Forbidden")}},
        "x-other-methods": {"403": shared("Forbidden"), "405": shared("MethodNotAllowed")},
    }
    limits = {
        "max_body_bytes": settings.max_body_bytes, "max_json_depth": MAX_JSON_DEPTH,
        "max_epochs": settings.max_epochs, "max_train_seconds": settings.max_train_seconds,
        "max_elements": MAX_ELEMENTS, "max_response_bytes": settings.max_response_bytes,
        "max_response_ratio": settings.max_response_ratio,
        "min_response_allowance": RESPONSE_FLOOR_BYTES,
        "max_queued_jobs": settings.max_queued_jobs, "max_job_bytes": settings.max_job_bytes,
    }
    description = (
        "Small neural networks served from notebooks/api.ipynb by the Jupyter Kernel Gateway. "
        f"Request bodies are JSON objects (Content-Type: application/json, UTF-8) of at most "
        f"{settings.max_body_bytes} bytes, nested at most {MAX_JSON_DEPTH} levels; GET and "
        "DELETE take no body. A training run takes at most "
        f"{settings.max_epochs} epochs and an estimated {settings.max_train_seconds:g} seconds; "
        f"one request may ask for at most {MAX_ELEMENTS} examples × widest layer; a response has "
        f"at most {settings.max_response_bytes} bytes, and a prediction or gradients at most "
        f"{settings.max_response_ratio:g} times its request's bytes or {RESPONSE_FLOOR_BYTES}, "
        "whichever is more (info.x-limits lists these limits). Errors "
        'are {"error": {"status", "message"}}. The X-Gradbook-Kernel header of every response '
        "a kernel served names that kernel.\n\n"
        "Every status the service answers is documented: an operation lists its statuses, and "
        "its `default` response stands for 500 only, an unexpected fault. A method a path does "
        "not list is answered as the path's `x-other-methods` say (405 with an Allow header "
        "naming the methods it takes"
        f"{', or 401 first where the path needs the token' if settings.token_required else ''}"
        "); a path "
        "that matches no template as the document's `x-unknown-paths` say (404; 405 without "
        "Allow for a method the service implements nowhere). OPTIONS (a CORS preflight) is "
        "answered on every endpoint path as its `x-options` say. A GET answered with 200 "
        "carries an ETag: sent back in If-None-Match, it gets 304 without a body. (A request "
        "that is not HTTP at all, a malformed header say, gets the HTTP server's bare 400 and "
        "is closed; "
        f"a connection made while {settings.max_connections} are open, GRADBOOK_MAX_CONNECTIONS, "
        "gets 503 with Retry-After before its request is read, and is closed.)"
    )
    token = {"type": "http", "scheme": "bearer",
             "description": "The service's token (GRADBOOK_TOKEN), sent as 'Authorization: "
             "Bearer <value>' or, as Jupyter also takes it, 'Authorization: token <value>'."}
    for path, item in paths.items():  # grouped as /docs shows them
        tag = next((tag for tag, prefix in TAG_PREFIXES if path.startswith(prefix)), "service")
        for key, part in item.items():
            if key in ("get", "put", "post", "delete", "patch"):
                part["tags"] = [tag]
    spec: Schema = {
        "openapi": "3.0.3",
        "info": {"title": "gradbook", "version": version("gradbook"), "description": description,
                 "x-limits": limits},
        "components": {"schemas": schemas(settings), "responses": shared_responses(),
                       "securitySchemes": {"token": token}},
        "security": [{"token": []}],
        "tags": TAGS,
        "paths": paths,
        "x-unknown-paths": {"403": shared("Forbidden"), "404": shared("NoSuchPath"),
                            "405": shared("NoSuchMethod")},
    }
    return spec if settings.token_required else without_token(spec)


def without_token(spec: Schema) -> Schema:
    """``spec`` as a service without a token answers: no security requirement and no 401."""
    spec = {key: value for key, value in spec.items() if key != "security"}
    spec["components"] = {key: value for key, value in spec["components"].items()
                          if key != "securitySchemes"}
    del spec["components"]["responses"]["Unauthorized"]
    for item in spec["paths"].values():
        for key, part in item.items():
            if isinstance(part, dict):
                part.pop("security", None)
                responses = part.get("responses", part) if key != "parameters" else {}
                responses.pop("401", None)
    return spec


def inference_paths(read: dict[int, str]) -> Schema:
    """The Open Inference Protocol's paths (``gradbook_service.app.inference``): health from the
    gateway, the rest from the API notebook's cells, each also under /versions/{version}."""
    model = path_parameter("model", {"pattern": f"^{NAME.pattern}$"},
                           "A model's name; any other string gets 400.")
    version = path_parameter("version", {}, "A version the store keeps of the model (the last "
                                            "GRADBOOK_KEEP_VERSIONS); another gets 404.")
    own = {**read, 404: "No such model, or no such version of it kept."}

    def ok(schema: str, description: str) -> Schema:
        return {200: json_content(ref(schema), description)}

    def health(readiness: bool) -> Schema:
        which, like = ("ready", "/readyz") if readiness else ("live", "/healthz")
        item = health_path(f"The protocol's server health ({which}), answered by the gateway "
                           f"as {like} is", 'Not so: {"error": "…"} says why.')
        answers = item["get"]["responses"]
        answers["200"] = {**json_content(ref("InferenceHealth"), f'{{"{which}": true}}'),
                          "headers": answers["200"]["headers"]}
        answers["503"] = {**answers["503"],
                          "content": {"application/json": {"schema": ref("InferenceError")}}}
        return item

    paths: Schema = {
        "/v2/health/live": health(False),
        "/v2/health/ready": health(True),
        "/v2": {"get": operation("The protocol's server metadata: name, version, extensions",
                                 ok("ServerMetadata", "The server."), {}, get=True,
                                 error="InferenceError")}}
    for prefix, parameters in (("/v2/models/{model}", [model]),
                               ("/v2/models/{model}/versions/{version}", [model, version])):
        paths[prefix] = {"parameters": parameters, "get": operation(
            "The model's metadata: its input and output tensors", ok(
                "ModelMetadata", "input FP64 [-1, d_in]; output FP64 [-1, d_out]; class INT64 "
                "[-1] for a classifier."), own, get=True, error="InferenceError")}
        paths[f"{prefix}/config"] = {"parameters": parameters, "get": operation(
            "The model's configuration as Triton describes one (its model configuration "
            "extension; Triton's client asks for it with get_model_config)",
            ok("ModelConfig", "TYPE_FP64 input [-1, d_in] and outputs; no batching dimension "
               "apart (max_batch_size 0)."), own, get=True, error="InferenceError")}
        paths[f"{prefix}/ready"] = {"parameters": parameters, "get": operation(
            "Whether the model can infer", ok("ModelReady", "Ready."), own, get=True,
            error="InferenceError")}
        infer = operation(
            "Infer: the output tensor (and the class tensor of a classifier) for the input rows, "
            "the numbers POST /models/{name}/predict answers", ok(
                "InferenceResponse", "The outputs, as JSON (asked-for binary outputs too)."),
            {**own, **errors(415)}, "InferenceRequest", error="InferenceError")
        infer["requestBody"]["content"]["application/octet-stream"] = {"schema": {
            "type": "string", "format": "binary", "description": "The JSON header, then the "
            "binary tensors; Inference-Header-Content-Length gives the header's length"}}
        infer["requestBody"]["description"] = (
            "JSON, with Content-Type application/json or none (Triton's client sends none); "
            "or the binary tensor extension.")
        paths[f"{prefix}/infer"] = {"parameters": parameters, "post": infer}
    for item in paths.values():
        item.setdefault("x-options", preflight())
        item.setdefault("x-other-methods", {"401": shared("Unauthorized"),
                                            "403": shared("Forbidden"),
                                            "405": shared("MethodNotAllowed")})
    return paths
