"""The endpoints of ``notebooks/api.ipynb``: a method per annotated cell, Request in, Response out.

Every response about one model carries its top-level ``version``. Reads go through the store's
read-through cache, so whichever pooled kernel answers, it answers with the latest committed
version; writes go through the store's ``update`` (locked, atomic).
"""

from __future__ import annotations

import copy
import json
import math
import os
from itertools import pairwise
from typing import Any

import numpy as np
from gradbook_service.app import inputs, limits, training
from gradbook_service.app.http import Request, Response, json_response
from gradbook_service.app.jobs import open_jobs, public
from gradbook_service.app.openapi import openapi_spec
from gradbook_service.app.plots import draw_loss_curve
from gradbook_service.app.settings import MAX_LAYERS, MAX_PARAMETERS, Settings
from gradbook_service.app.traced_store import TracedStore
from gradbook_service.gateway import tracing

from gradbook.datasets import DATASETS
from gradbook.network import MLP, Callback
from gradbook.store import ModelNotFoundError, Store, StoreError, check_name
from gradbook.validation import brief

HYPERPARAMETERS = tuple(training.DEFAULT_HYPERPARAMETERS)  # lr, epochs, batch_size


# What a cancel adds to a record: the state "cancelled", a finish time, cancel_requested true
CANCEL_GROWTH_BYTES = 64

class ModelAPI:
    """Endpoint functions over one model store, with the limits of ``settings``."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.settings = settings
        self.jobs = open_jobs(store, settings.job_lease, settings.max_queued_jobs,
                              settings.max_job_bytes)
        self.store: Store = TracedStore(store)  # type: ignore[assignment]

    @staticmethod
    def load_data() -> None:
        """Load every named data set (``gradbook.datasets``) into this process now: a kernel
        does it while it is seeded, so no request waits for scikit-learn's digits."""
        for name in DATASETS:
            training.named_data(name)

    # -- service -----------------------------------------------------------------------------
    def diagnostics(self, request: Request) -> Response:
        """What an operator looks at: this kernel, the store and the limits in force."""
        settings = self.settings
        limits = {
            "max_body_bytes": settings.max_body_bytes,
            "max_response_bytes": settings.max_response_bytes,
            "max_response_ratio": settings.max_response_ratio,
            "max_epochs": settings.max_epochs,
            "max_train_seconds": settings.max_train_seconds,
            "max_models": settings.max_models,
            "max_queue": settings.max_queue,
            "request_timeout": settings.request_timeout,
            "lock_timeout": settings.lock_timeout,
            "body_timeout": settings.body_timeout,
            "max_pending_bytes": settings.max_pending_bytes,
            "max_connections": settings.max_connections,
            "max_queued_jobs": settings.max_queued_jobs,
            "max_job_bytes": settings.max_job_bytes,
            "max_job_seconds": settings.max_job_seconds,
        }
        return self._json(
            {
                "kernel": {
                    "pid": os.getpid(),
                    "cached_models": self.store.cached,
                    "cache_size": self.store.cache_size,
                    "data_sets": training.loaded_data(),
                },
                "store": {"path": self.store.location, "models": len(self.store.names())},
                "limits": limits,
            }
        )

    def openapi(self, request: Request) -> Response:
        return self._json(openapi_spec(self.settings))

    # -- collection --------------------------------------------------------------------------
    def list_models(self, request: Request) -> Response:
        models = []
        for name in self.store.names():
            try:  # the file's header only: listing loads no weights, and evicts no model
                config, metadata = self.store.header(name)
            except ModelNotFoundError:  # deleted since listed
                continue
            except StoreError as err:  # one damaged file must not hide the others
                models.append({"name": name, "error": str(err)})
                continue
            models.append(
                {
                    "name": name,
                    **_architecture(config),
                    "version": metadata["version"],
                    "metrics": metadata["metrics"],
                }
            )
        return self._json({"models": models})

    def create_model(self, request: Request) -> Response:
        body = inputs.fields(
            request.json(),
            ["name", "sizes"],
            ["activation", "loss", "bias", "seed", *HYPERPARAMETERS],
        )
        name = check_name(body["name"])
        sizes = inputs.numeric("sizes", body["sizes"])
        if isinstance(sizes, list) and len(sizes) > MAX_LAYERS:
            raise ValueError(f"sizes may list at most {MAX_LAYERS} layers; got {len(sizes)}")
        if isinstance(sizes, list) and all(isinstance(s, int) for s in sizes):
            parameters = sum(a * b + b for a, b in pairwise(sizes))
            if parameters > MAX_PARAMETERS:
                raise ValueError(
                    f"the network may have at most {MAX_PARAMETERS} parameters; "
                    f"sizes {sizes} give {parameters}"
                )
        net = training.new_model(
            sizes,
            body.get("activation", "sigmoid"),
            body.get("loss", "half_sse"),
            body.get("bias", False),
            inputs.seed("seed", body.get("seed", 0)),
            self._hyperparameters(body),
        )
        self.store.create(name, net, max_models=self.settings.max_models)
        return self._json(_details(name, net), 201, {"Location": f"/models/{name}"})

    # -- one model ---------------------------------------------------------------------------
    def get_model(self, request: Request) -> Response:
        name = _name(request)
        return self._json(_details(name, self.store.get(name)))

    def update_model(self, request: Request) -> Response:
        body = inputs.fields(request.json(), optional=HYPERPARAMETERS)
        if not body:
            raise ValueError(f"nothing to change: send one or more of {list(HYPERPARAMETERS)}")
        changes = self._hyperparameters(body)
        name = _name(request)
        net = self.store.update(name, lambda net: net.metadata["hyperparameters"].update(changes),
                                "training defaults changed")
        return self._json(_details(name, net))

    def list_versions(self, request: Request) -> Response:
        """The versions the store keeps of the model, newest first: number, time, what made
        it, metrics."""
        name = _name(request)
        return self._json({"name": name, "versions": self.store.versions(name)})

    def rollback(self, request: Request) -> Response:
        """A new version whose weights, training defaults, metrics, curve and training record
        are version N's (``{"version": N}``): versions only go up, and every cache sees it as
        any change."""
        body = inputs.fields(request.json(), ["version"])
        name = _name(request)
        number = inputs.version("version", body["version"])
        source = self.store.version(name, number)

        def change(net: MLP) -> None:
            if net.config != source.config:  # a model deleted and made again differently
                raise ValueError(f"version {number} has another architecture; it cannot come "
                                 "back")
            net.weights = [W.copy() for W in source.weights]
            net.biases = [b.copy() for b in source.biases]
            for key in ("hyperparameters", "metrics", "curve", "seed", "runs"):  # all of
                net.metadata[key] = copy.deepcopy(source.metadata[key])  # the weights' record

        net = self.store.update(name, change, f"rolled back to version {number}")
        return self._json(_details(name, net))

    def delete_model(self, request: Request) -> Response:
        name = _name(request)
        return self._json({"name": name, "version": self.store.delete(name), "deleted": True})

    def reset(self, request: Request) -> Response:
        body = inputs.fields(request.json(), optional=["seed"])
        name = _name(request)
        seed = inputs.seed("seed", body["seed"]) if "seed" in body else None

        def change(net: MLP) -> None:
            training.reset(net, net.metadata["seed"] if seed is None else seed)

        return self._json(_details(name, self.store.update(name, change, "reset")))

    def predict(self, request: Request) -> Response:
        """``x`` of shape ``(d_in,)`` or ``X`` of shape ``(n, d_in)`` → the output layer ``l_K``,
        ``(d_out,)`` or ``(n, d_out)``; for a classifier (whose outputs are the softmax
        probabilities) also the arg-max class."""
        body = inputs.fields(request.json(), optional=["x", "X"])
        if len(body) != 1:
            raise ValueError('send {"x": [...]} for one example or {"X": [[...], ...]} for a batch')
        name = _name(request)
        net = self._at_version(request, name)
        d_in = net.sizes[0]
        one = "x" in body
        if one:
            x = body["x"]
            if not isinstance(x, list) or len(x) != d_in or list in map(type, x):
                raise ValueError(f"x must be one example, {d_in} numbers; send a batch as X")
            X = inputs.matrix("x", [x], d_in)
        else:
            X = inputs.matrix("X", body["X"], d_in)
        limits.check_batch(net, len(X))
        row_bytes = net.sizes[-1] * limits.NUMBER_BYTES + 8  # brackets and the class
        self._check_answer(request, len(X) * row_bytes, "fewer rows")
        with np.errstate(over="ignore", invalid="ignore"):
            outputs = _finite("outputs", net.forward(X))
        result: dict[str, Any] = {"name": name, "version": net.metadata["version"]}
        if one:
            result["output"] = outputs[0].tolist()
            if net.is_classifier:
                result["class"] = int(outputs[0].argmax())
        else:
            result["outputs"] = outputs.tolist()
            if net.is_classifier:
                result["classes"] = outputs.argmax(axis=1).tolist()
        return self._json(result)

    def train(self, request: Request) -> Response:
        """Train now and answer with the run (``"wait": true``, the default), or queue the run as
        a job for the training worker and answer 202 at once (``"wait": false``)."""
        body = inputs.fields(request.json(), ["data"], [*HYPERPARAMETERS, "wait"])
        wait = body.get("wait", True)
        if not isinstance(wait, bool):
            raise ValueError("wait must be true (answer when trained) or false (answer 202 with "
                             f"a job at once); got {brief(wait)}")
        name = _name(request)
        net = self.store.get(name)
        data = training_data(body["data"], net)
        chosen = self._hyperparameters(body)
        if not wait:  # what the job will run is fixed now: the defaults of this version
            hyperparameters = {**net.metadata["hyperparameters"], **chosen}
            self._check_training(net, data, hyperparameters)
            job = public(self.jobs.create(name, hyperparameters, body["data"],
                                          tracing.current_traceparent()))
            return self._json(job, 202, {"Location": f"/jobs/{job['id']}"})
        net, history = self.run_training(name, data, chosen,
                                         print_epoch if request.streamed else None)
        return self._json(
            {
                "name": name,
                "version": net.metadata["version"],
                "history": history,
                "metrics": net.metadata["metrics"],
                "run": net.metadata["runs"][-1],
            }
        )

    def run_training(
        self, name: str, data: training.TrainingData, chosen: dict[str, Any],
        callback: Callback | None = None, job_id: str | None = None,
    ) -> tuple[MLP, list[float]]:
        """Train a private copy of the latest version of ``name`` with ``chosen`` hyperparameters
        (the rest from its defaults) and commit it as the next version (the store's lock
        serializes concurrent trains of one model); the committed model and the loss after each
        epoch. ``callback`` is called after each epoch; if it raises, nothing is committed.

        The run's summary names the version it makes and, for a job, the job: saved in the same
        file as the weights, it is the proof that a job cut short did commit."""
        history: list[float] = []

        def change(net: MLP) -> None:
            hyperparameters = {**net.metadata["hyperparameters"], **chosen}
            self._check_training(net, data, hyperparameters)
            history.extend(training.train(net, data, **hyperparameters, callback=callback))
            net.metadata["runs"][-1]["version"] = net.metadata["version"] + 1
            if job_id is not None:
                net.metadata["runs"][-1]["job"] = job_id

        what = "trained" if job_id is None else f"trained by job {job_id}"
        return self.store.update(name, change, what), history

    # -- jobs --------------------------------------------------------------------------------
    def list_jobs(self, request: Request) -> Response:
        """Every job kept, oldest first, each without its losses (``GET /jobs/:id`` has them)."""
        jobs = []
        for job in map(public, self.jobs.all()):
            losses = job.pop("losses")
            jobs.append({**job, "loss": losses[-1] if losses else None})
        return self._json({"jobs": jobs})

    def get_job(self, request: Request) -> Response:
        return self._json(public(self.jobs.get(request.path.get("id", ""))))

    def cancel_job(self, request: Request) -> Response:
        """200 when the job is cancelled now (it was queued), 202 when it runs (the worker stops
        it after the epoch it is in and commits nothing), 409 when it has ended already
        (succeeded, failed, or cancelled before)."""
        job_id = request.path.get("id", "")
        # the answer is the record: refused for its size before anything changes, not after
        record = len(json_response(self.jobs.get(job_id)).body) + CANCEL_GROWTH_BYTES
        limits.check_response(record, self.settings.max_response_bytes, "less")
        job = public(self.jobs.cancel(job_id))
        return json_response(job, 202 if job["state"] == "running" else 200)

    def gradients(self, request: Request) -> Response:
        """The loss at ``X``, ``Y`` and ``MLP.gradients``: ∂L/∂W_k = l_{k-1}ᵀ · Δl_k (eq. 8.2),
        then ∂L/∂b_k = 1ᵀ · Δl_k (eq. 8.4), named ``W1…WK``, ``b1…bK`` as in the notebooks."""
        body = inputs.fields(request.json(), ["X", "Y"])
        name = _name(request)
        net = self._at_version(request, name)
        X = inputs.matrix("X", body["X"], net.sizes[0])
        limits.check_batch(net, len(X))
        parameters = sum(p.size for p in net.parameters)
        self._check_answer(request, parameters * limits.NUMBER_BYTES,
                           "a smaller model's gradients (raise GRADBOOK_MAX_RESPONSE_BYTES or "
                           "GRADBOOK_MAX_RESPONSE_RATIO to get these)")
        Y = inputs.numeric("Y", body["Y"])
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss = float(_finite("loss", np.array(net.loss(X, Y))))
            grads = [_finite("gradients", g) for g in net.gradients(X, Y)]
        K = len(net.weights)
        labels = [f"W{k}" for k in range(1, K + 1)] + [f"b{k}" for k in range(1, K + 1) if net.bias]
        return self._json(
            {
                "name": name,
                "version": net.metadata["version"],
                "loss": loss,
                "gradients": {label: g.tolist() for label, g in zip(labels, grads, strict=True)},
            }
        )

    def loss_png(self, request: Request) -> Response:
        """Draw the model's training curve (``draw_loss_curve``): the figure is the answer, in
        the type the response's ``Content-Type`` names. The body printed is empty."""
        name = _name(request)
        net = self.store.get(name)
        version = net.metadata["version"]
        draw_loss_curve(net.metadata["curve"], f"{name} (version {version})")
        return Response(200, "", {"Content-Type": "image/png", "X-Gradbook-Version": str(version)})

    # -- helpers -----------------------------------------------------------------------------
    def _at_version(self, request: Request, name: str) -> MLP:
        """The model at the version ``?version=N`` names, else its latest."""
        given = request.args.get("version")
        if not given:
            return self.store.get(name)
        if len(given) != 1:
            raise ValueError("give one version: ?version=N")
        return self.store.version(name, inputs.version("version", given[0], text=True))

    def _json(
        self, payload: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        """``json_response``, refused when it is larger than the response limit (the checks
        before the work estimate the size where they can; this catches the rest)."""
        response = json_response(payload, status, headers)
        limits.check_response(len(response.body), self.settings.max_response_bytes, "less")
        return response

    def _check_answer(self, request: Request, estimated_bytes: int, fewer: str) -> None:
        """Refuse, before the work, an answer larger than the response limit or than the
        request's size allows (``limits.check_amplification``)."""
        limits.check_response(estimated_bytes, self.settings.max_response_bytes, fewer)
        limits.check_amplification(estimated_bytes, request.size,
                                   self.settings.max_response_ratio, fewer)

    def _check_training(
        self, net: MLP, data: training.TrainingData, hyperparameters: dict[str, Any]
    ) -> None:
        limits.check_training(
            net, len(data.X), hyperparameters["epochs"], hyperparameters["batch_size"],
            self.settings.max_train_seconds,
        )

    def _hyperparameters(self, body: dict[str, Any]) -> dict[str, Any]:
        """The hyperparameters present in ``body``, checked (``batch_size: null`` = full batch)."""
        checked: dict[str, Any] = {}
        if "lr" in body:
            checked["lr"] = inputs.rate("lr", body["lr"])
        if "epochs" in body:
            checked["epochs"] = inputs.count("epochs", body["epochs"], self.settings.max_epochs)
        if "batch_size" in body:
            size = body["batch_size"]
            checked["batch_size"] = None if size is None else inputs.count("batch_size", size)
        return checked


def _name(request: Request) -> str:
    return check_name(request.path.get("name", ""))


def _finite(what: str, array: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"the {what} overflowed to NaN or infinity for this input; "
            "send values of a smaller magnitude"
        )
    return array


def _architecture(config: dict[str, Any]) -> dict[str, Any]:
    """``MLP.config`` (sizes, activation, loss, bias) and whether the model is a classifier."""
    return {**config, "classifier": config["loss"] == "cross_entropy"}


def _details(name: str, net: MLP) -> dict[str, Any]:
    meta = net.metadata
    runs = meta["runs"]
    return {
        "name": name,
        "version": meta["version"],
        **_architecture(net.config),
        "seed": meta["seed"],
        "hyperparameters": meta["hyperparameters"],
        "metrics": meta["metrics"],
        "training": {
            "runs": len(runs),
            "epochs": sum(run["epochs"] for run in runs),
            "curve_points": len(meta["curve"]),
            "history": runs,
        },
        "created": meta["created"],
        "updated": meta["updated"],
    }


def training_data(spec: Any, net: MLP) -> training.TrainingData:
    """A registered data set by name, or ``{"X": …, "Y": …}`` (then evaluated on itself)."""
    if isinstance(spec, str):
        if spec not in DATASETS:
            raise ValueError(
                f"unknown data set {brief(spec)}; known: {sorted(DATASETS)}, "
                'or send {"X": [[...]], "Y": [...]}'
            )
        data = training.named_data(spec)
        if data.X.shape[1] != net.sizes[0]:
            raise ValueError(
                f"data set {spec!r} has {data.X.shape[1]} inputs per example; "
                f"this model takes {net.sizes[0]}"
            )
        return data
    if not isinstance(spec, dict):
        raise ValueError('data must be the name of a data set or {"X": [[...]], "Y": [...]}')
    arrays = inputs.fields(spec, ["X", "Y"])
    X = inputs.matrix("data.X", arrays["X"], net.sizes[0])
    Y = inputs.numeric("data.Y", arrays["Y"])
    net._check_Y(Y, len(X))  # the check MLP.fit makes: a job is refused before its 202
    return training.TrainingData(X, Y, X, Y, "request", "training")


def print_epoch(epoch: int, loss: float, net: MLP) -> None:
    """Print one epoch's loss as a line of JSON, at once: a streamed train request
    (``Accept: text/event-stream``) gets it as an event while the training goes on."""
    print(json.dumps({"epoch": epoch + 1, "loss": loss if math.isfinite(loss) else None}),
          flush=True)
