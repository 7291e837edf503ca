"""Creating, training and resetting served models, and the models a fresh store starts with.

Besides its weights, a served model keeps in ``net.metadata`` (saved in the same file):

    version, created, updated   stamped by ``gradbook.store``
    seed                        seed of the initial weights (reset draws from it again)
    hyperparameters             defaults for training: {"lr", "epochs", "batch_size"}
    metrics                     of the last training run (see ``train``)
    runs                        summaries of the last ``MAX_RUNS`` training runs
    curve                       the loss of each epoch since the last reset (last ``MAX_CURVE``)

The loss of an epoch is what ``MLP.fit`` records: with mini-batches the running loss, each
batch's loss before its step summed over the epoch; with the whole set as the batch the loss
after the epoch's step. The loss after a run (``training_loss``, a run's ``loss_end``) is
measured once more at the final weights, over all the training examples.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradbook.datasets import Dataset, load
from gradbook.network import MLP, Callback
from gradbook.store import Store

MAX_RUNS = 100
MAX_CURVE = 10_000
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {"lr": 0.1, "epochs": 100, "batch_size": None}


@dataclass(frozen=True)
class TrainingData:
    """Examples to train on and to evaluate on afterwards; ``label`` names them in the metrics.

    ``X`` is ``(n, d_in)``; ``Y`` is ``(n, d_out)``, or class labels ``(n,)`` for a classifier
    (checked by ``MLP.fit``); ``X_eval``, ``Y_eval`` likewise.
    """

    X: np.ndarray
    Y: Any
    X_eval: np.ndarray
    Y_eval: Any
    label: str
    evaluated_on: str  # "held_out" or "training": names the accuracy in the metrics


_LOADED: dict[str, Dataset] = {}  # each named data set, once loaded in this process


def _dataset(name: str) -> Dataset:
    if name not in _LOADED:
        _LOADED[name] = load(name)
    return _LOADED[name]


def loaded_data() -> list[str]:
    """The named data sets this process has loaded, by name."""
    return sorted(_LOADED)


def named_data(name: str) -> TrainingData:
    """A registered data set (``gradbook.datasets``), evaluated on its held-out part."""
    d = _dataset(name)
    evaluated_on = "training" if d.X_test is d.X_train else "held_out"  # xor has no held-out part
    return TrainingData(d.X_train, d.Y_train, d.X_test, d.Y_test, name, evaluated_on)


def new_model(
    sizes: Sequence[int],
    activation: str,
    loss: str,
    bias: bool,
    seed: int,
    hyperparameters: Mapping[str, Any],
) -> MLP:
    """A network with weights drawn from ``seed`` and training defaults ``hyperparameters``
    (completed from ``DEFAULT_HYPERPARAMETERS``); ``MLP`` checks the architecture."""
    net = MLP(sizes, activation, loss, bias, seed)
    net.metadata.update(hyperparameters={**DEFAULT_HYPERPARAMETERS, **hyperparameters})
    reset(net, seed)
    return net


def reset(net: MLP, seed: int) -> None:
    """Fresh weights drawn from ``seed``; the training record goes, as it described the old ones."""
    net.reset(seed)
    net.metadata.update(seed=seed, metrics={}, runs=[], curve=[])


class DivergedError(ValueError):
    """The loss or the weights became NaN or infinite during training."""


def train(
    net: MLP, data: TrainingData, epochs: int, lr: float, batch_size: int | None,
    callback: Callback | None = None,
) -> list[float]:
    """Gradient descent on ``data`` (``MLP.fit``, which calls ``callback`` after each epoch);
    records metrics, a run summary and the curve. Returns the loss of each epoch (``MLP.fit``).

    ``metrics`` names each figure by the examples it was measured on: ``training_loss`` (the
    loss at the final weights, summed over the ``training_examples``, as in the derivations)
    and, for classifiers, ``held_out_accuracy`` over ``held_out_examples`` kept out of
    training, or ``training_accuracy`` when the data has no held-out part. Raises
    ``DivergedError`` when the loss or the weights stop being finite, so nothing is committed.
    """
    start = time.perf_counter()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        history = net.fit(data.X, data.Y, epochs=epochs, lr=lr, batch_size=batch_size,
                          callback=callback)
        final_loss = net.loss(data.X, data.Y)  # one forward pass, at the weights the run ends with
    if not (np.all(np.isfinite([*history, final_loss]))
            and all(np.all(np.isfinite(p)) for p in net.parameters)):
        epoch = next((i for i, loss in enumerate(history) if not np.isfinite(loss)), epochs - 1)
        raise DivergedError(
            f"training diverged: the loss became NaN or infinite at epoch {epoch + 1}, so "
            f"nothing was saved; try a smaller lr than {lr:g}, or inputs of a smaller magnitude"
        )
    metrics: dict[str, Any] = {
        "data": data.label, "training_loss": final_loss, "training_examples": len(data.X)
    }
    if net.is_classifier:
        labels = np.asarray(data.Y_eval)
        labels = labels if labels.ndim == 1 else labels.argmax(axis=1)
        on = data.evaluated_on
        metrics[f"{on}_accuracy"] = float(np.mean(net.predict(data.X_eval) == labels))
        if on == "held_out":
            metrics["held_out_examples"] = len(data.X_eval)
    run = {
        "data": data.label,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "loss_start": history[0],
        "loss_end": final_loss,
        "seconds": round(time.perf_counter() - start, 4),
    }
    net.metadata.update(
        metrics=metrics,
        runs=[*net.metadata["runs"], run][-MAX_RUNS:],
        curve=[*net.metadata["curve"], *history][-MAX_CURVE:],
    )
    return history


@dataclass(frozen=True)
class DefaultModel:
    sizes: list[int]
    activation: str
    loss: str
    bias: bool
    hyperparameters: dict[str, Any]


# xor: the derivations' 3-4-1 sigmoid net; digits: the summary's network (about 97.8 % held-out).
DEFAULT_MODELS = {
    "xor": DefaultModel(
        [3, 4, 1], "sigmoid", "half_sse", False, {"lr": 2.0, "epochs": 2000, "batch_size": None}
    ),
    "digits": DefaultModel(
        [64, 64, 10], "tanh", "cross_entropy", True, {"lr": 0.01, "epochs": 60, "batch_size": 32}
    ),
}


def create_default_models(store: Store) -> list[str]:
    """Create and train each default model missing from ``store``, on the data set of its name."""
    created = []
    for name, spec in DEFAULT_MODELS.items():
        if name in store.names():
            continue
        net = new_model(spec.sizes, spec.activation, spec.loss, spec.bias, 0, spec.hyperparameters)
        train(net, named_data(name), **spec.hyperparameters)
        store.create(name, net)
        created.append(name)
    return created
