"""The OpenAPI 3 description of the service: every operation's body, responses and error codes.

The tests keep it honest: the spec validates, its operations are exactly the notebook's annotated
cells, and every response the tests receive has a documented status and matches its schema.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

from gradbook.activations import ACTIVATIONS
from gradbook.datasets import DATASETS
from gradbook.losses import LOSSES
from gradbook.store import NAME
from service.inputs import MAX_RATE, MAX_SEED
from service.settings import MAX_ELEMENTS, MAX_JSON_DEPTH, MAX_NUMBER_CHARS, Settings

Schema = dict[str, Any]

ERRORS = {
    400: "Invalid request: malformed JSON, missing or unknown fields, wrong shapes or types, "
    "non-finite numbers, or a limit exceeded (work, response size, nesting); the message says "
    "which.",
    401: "GRADBOOK_TOKEN is set and the request lacks 'Authorization: token <value>'.",
    404: "No model of that name.",
    409: "The name is taken, another request is changing the model (retry), or the store holds "
    "its most models (delete one).",
    413: "The request body is larger than the limit, or the endpoint takes no body.",
    415: "The body is not JSON (a form, text), or its charset is not UTF-8.",
    500: "Fault of the service (details in its log, never in the response).",
    503: "A kernel stopped (it is replaced), the store is not readable, or too many requests "
    "wait for a kernel; retry after Retry-After seconds.",
}
# Strings that spell numbers, as service.inputs reads them (surrounding blanks allowed), for
# clients and their validators: the service itself reads them without regular expressions.
DECIMAL = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
COUNT = r"^\s*\+?\d+\s*$"  # a positive whole number


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Schema, required: list[str] | None = None, **extra: Any) -> Schema:
    """A JSON object with exactly these properties (clients learn of typos)."""
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return {**schema, **({"required": required} if required else {}), **extra}


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def json_content(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def operation(summary: str, ok: Schema, errors: list[int], body: str | None = None,
              public: bool = False, body_required: bool = True) -> Schema:
    """One operation. ``ok`` maps success statuses to responses; 401 (unless ``public``), 413,
    500 and 503 can answer any request, as the gateway personality checks them first."""
    codes = sorted({*errors, 413, 500, 503} | (set() if public else {401}))
    responses = {str(status): response for status, response in ok.items()}
    responses.update({str(code): json_content(ref("Error"), ERRORS[code]) for code in codes})
    result: Schema = {"summary": summary, "responses": responses}
    if body is not None:
        content = {"application/json": {"schema": ref(body)}}
        result["requestBody"] = {"required": body_required, "content": content}
    if public:
        result["security"] = []
    return result


def schemas(settings: Settings) -> Schema:
    spelt = {"type": "string", "maxLength": MAX_NUMBER_CHARS}  # a number sent as a string
    number = {"oneOf": [{"type": "number"}, {**spelt, "pattern": DECIMAL}],
              "description": 'A number, or a string spelling one ("61.1").'}
    count = {"oneOf": [{"type": "integer", "minimum": 1},  # the string form: ASCII digits only
                       {**spelt, "pattern": COUNT}]}
    seed = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": MAX_SEED},
                      {**spelt, "pattern": COUNT}]}
    hyperparameters = {
        "lr": {"oneOf": [{"type": "number", "minimum": 0, "exclusiveMinimum": True,
                          "maximum": MAX_RATE}, number["oneOf"][1]],
               "description": f"Learning rate, > 0 and at most {MAX_RATE:g}; the loss is summed "
               "over a batch."},
        "epochs": {"oneOf": [{**count["oneOf"][0], "maximum": settings.max_epochs},
                             count["oneOf"][1]],
                   "description": f"Epochs per training run, 1 to {settings.max_epochs}."},
        "batch_size": {"anyOf": [{**count["oneOf"][0], "nullable": True}, count["oneOf"][1]],
                       "description": "Examples per step; null for the whole data set."},
    }
    matrix = array(array(number, minItems=1), minItems=1, description="Rows of numbers, (n, d).")
    labels = array({"oneOf": [{"type": "integer", "minimum": 0}, count["oneOf"][1]]}, minItems=1)
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
               "measured on ({} before a run): the final loss summed over the training examples; "
               "for classifiers the accuracy on held-out examples (digits) or, for data without "
               "a held-out part, on the training examples.",
               "properties": {"data": {"type": "string"}, "training_loss": {"type": "number"},
                              "training_examples": {"type": "integer"},
                              "held_out_accuracy": {"type": "number"},
                              "held_out_examples": {"type": "integer"},
                              "training_accuracy": {"type": "number"}}}
    numbers = {"lr": {"type": "number"}, "epochs": {"type": "integer"},
               "batch_size": {"type": "integer", "nullable": True}}
    run = obj({"data": {"type": "string"}, **numbers, "loss_start": {"type": "number"},
               "loss_end": {"type": "number"}, "seconds": {"type": "number"}})
    name = {"type": "string", "pattern": f"^{NAME.pattern}$"}
    version = {"type": "integer", "minimum": 1, "description": "Grows by one on every change."}
    model = {"name": name, "version": version}
    vector, rows = array({"type": "number"}), array(array({"type": "number"}))
    return {
        "Error": obj({"error": obj({"status": {"type": "integer"}, "message": {"type": "string"}},
                                   ["status", "message"])}, ["error"]),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]},
                       "models": {"type": "integer"}}, ["status", "models"]),
        "Diagnostics": obj({
            "kernel": obj({"pid": {"type": "integer"},
                           "cached_models": {"type": "integer", "minimum": 0},
                           "cache_size": {"type": "integer", "minimum": 1}},
                          ["pid", "cached_models", "cache_size"]),
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
                               "description": "Default: the model's seed (its first weights)."}}),
        "Predict": {"oneOf": [obj({"x": array(number, minItems=1)}, ["x"]),
                              obj({"X": matrix}, ["X"])]},
        "Prediction": {"oneOf": [
            obj({**model, "output": vector, "class": {"type": "integer"}}, [*model, "output"]),
            obj({**model, "outputs": rows, "classes": array({"type": "integer"})},
                [*model, "outputs"]),
        ], "description": "For a classifier the outputs are the softmax probabilities."},
        "Train": obj({"data": {"oneOf": [{"type": "string", "enum": sorted(DATASETS)},
                                         obj({"X": matrix, "Y": targets}, ["X", "Y"])]},
                      **hyperparameters}, ["data"]),
        "Training": obj({**model, "history": array({"type": "number"}), "metrics": metrics,
                         "run": run}, [*model, "history", "metrics", "run"]),
        "GradientsRequest": obj({"X": matrix, "Y": targets}, ["X", "Y"]),
        "Gradients": obj({
            **model, "loss": {"type": "number"},
            "gradients": {"type": "object", "additionalProperties": {"oneOf": [vector, rows]},
                          "description": "dL/dW1 … dL/dWK, then dL/db1 … dL/dbK if biased."},
        }, [*model, "loss", "gradients"]),
        "Deleted": obj({**model, "deleted": {"type": "boolean"}}, [*model, "deleted"]),
    }


def openapi_spec(settings: Settings) -> Schema:
    """The description served at ``GET /openapi.json``, with this service's limits filled in."""
    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    png = {"description": "PNG; the X-Gradbook-Version header holds the model's version.",
           "headers": {"X-Gradbook-Version": {"schema": {"type": "integer"}}},
           "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
    read, write = [400, 404], [400, 404, 409, 415]

    def ok(schema: str, description: str, status: int = 200) -> Schema:
        return {status: json_content(ref(schema), description)}

    paths = {
        "/healthz": {"get": operation("Liveness and readiness: kernels up, store readable",
                                      ok("Health", "Serving."), [], public=True)},
        "/diagnostics": {"get": operation(
            "The answering kernel, the store's folder and the limits in force",
            ok("Diagnostics", "Diagnostics."), [])},
        "/openapi.json": {"get": operation(
            "This description", {200: json_content({"type": "object"}, "OpenAPI 3.0")}, [])},
        "/models": {
            "get": operation("List the models", ok("ModelList", "All models."), []),
            "post": operation("Create a model", ok("Model", "Created, version 1.", 201),
                              [400, 409, 415], "CreateModel"),
        },
        "/models/{name}": {
            "parameters": name,
            "get": operation("A model and its training history", ok("Model", "The model."), read),
            "put": operation("Change the training defaults (lr, epochs, batch_size)",
                             ok("Model", "Changed: a new version."), write, "UpdateModel"),
            "delete": operation("Delete a model", ok("Deleted", "Gone; its last version."),
                                [*read, 409]),
        },
        "/models/{name}/predict": {"parameters": name, "post": operation(
            "Outputs for one example (x) or a batch (X); classes too for classifiers",
            ok("Prediction", "Outputs."), [*read, 415], "Predict")},
        "/models/{name}/train": {"parameters": name, "post": operation(
            "Train; hyperparameters left out come from the model's defaults",
            ok("Training", "Trained: a new version."), write, "Train")},
        "/models/{name}/reset": {"parameters": name, "post": operation(
            "Fresh weights drawn from a seed; clears the training record",
            ok("Model", "Reset: a new version."), write, "Reset", body_required=False)},
        "/models/{name}/gradients": {"parameters": name, "post": operation(
            "Loss and gradients of every weight and bias at X, Y",
            ok("Gradients", "Gradients, as the W_k and b_k they belong to."), [*read, 415],
            "GradientsRequest")},
        "/models/{name}/loss.png": {"parameters": name, "get": operation(
            "Training curve since the last reset", {200: png}, read)},
    }
    description = (
        "Small neural networks served from notebooks/api.ipynb by the Jupyter Kernel Gateway. "
        f"Request bodies are JSON objects (Content-Type: application/json, UTF-8) of at most "
        f"{settings.max_body_bytes} bytes, nested at most {MAX_JSON_DEPTH} levels; GET and "
        "DELETE take no body. A training run takes at most "
        f"{settings.max_epochs} epochs and an estimated {settings.max_train_seconds:g} seconds; "
        f"one request may ask for at most {MAX_ELEMENTS} examples × widest layer; a response has "
        f"at most {settings.max_response_bytes} bytes. Errors are "
        '{"error": {"status", "message"}}. The X-Gradbook-Kernel header of every response names '
        "the kernel that served it."
    )
    token = {"type": "apiKey", "in": "header", "name": "Authorization",
             "description": "'token <value>', when the service runs with GRADBOOK_TOKEN."}
    return {
        "openapi": "3.0.3",
        "info": {"title": "gradbook", "version": version("gradbook"), "description": description},
        "components": {"schemas": schemas(settings), "securitySchemes": {"token": token}},
        "security": [{"token": []}],
        "paths": paths,
    }
