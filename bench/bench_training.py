"""``MLP.fit`` against scikit-learn's ``MLPClassifier`` doing the same training (issue 12).

gradbook trains with the plain equations of notebook 08; scikit-learn's ``MLPClassifier`` is the
reference implementation a reader would otherwise reach for. This prints how long each takes to
train the same network on the same data, as ratios measured in this run, with the final accuracy
of both as a check that they did comparable work. Figures only, no assertions about time.

Same work on both sides:

* data: the digits training rows as ``gradbook.datasets.load("digits")`` gives them (pixels / 16,
  the preprocessing of the service and the notebooks), labels 0-9 passed to both ``fit`` calls;
* network: [64, h, 10], tanh hidden layer, softmax output with cross-entropy, biases (the
  service's digits default, ``service/app/training.py``);
* training: plain mini-batch SGD, shuffled every epoch, no momentum, no regularisation
  (``alpha=0``), a fixed number of epochs (``tol=0`` and ``n_iter_no_change`` beyond the epoch
  count, so scikit-learn never stops early; no validation split). With the whole set as the
  batch the order of the rows does not matter, and ``MLP`` skips the shuffle.

Both record one training loss per epoch, read off the forward passes the steps need anyway.
With mini-batches ``MLP.fit`` returns each epoch's running loss, the sum of each batch's loss at
the parameters before its step; scikit-learn's ``loss_curve_`` is the same quantity over the
number of rows (its batch losses are means, weighted by batch size). With the whole set as the
batch ``MLP.fit`` records the loss after each step, from the forward pass the next step reuses
(one pass more per run than scikit-learn, which records the loss before each step).

Learning rate: ``MLP``'s loss is *summed* over a batch, scikit-learn's is *averaged*, so a step
of ``lr`` on the sum equals a step of ``lr * batch`` on the mean. Each case sets one mean-loss
rate ``eta`` and gives ``MLP`` ``lr = eta / batch`` (``eta = 0.32`` is the digits default:
``lr = 0.01`` at batch 32). Only a short last batch differs: scikit-learn averages it over its
own size, ``MLP`` takes a proportionally smaller step. Weight initialisation differs too
(N(0, 1/d_in) against Glorot uniform); neither is part of the speed question.

Timing: the best of ``--repeats`` construct-and-fit runs per side, the two sides taking turns
so that load from elsewhere on a shared machine hits both. BLAS is pinned to the same number of
threads for both (``--threads``, default 1, via threadpoolctl): one thread is how the service's
training worker runs, and it keeps the ratio about the code rather than about thread scheduling.

    .venv/bin/python bench/bench_training.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from gradbook import MLP
from gradbook.datasets import load

# (hidden units, batch size or None for the whole training set, epochs, mean-loss rate eta)
CASES: list[tuple[int, int | None, int, float]] = [
    (64, 32, 30, 0.32),
    (256, 256, 30, 0.32),
    (64, None, 300, 0.5),
    (256, None, 300, 0.5),
]


def best_seconds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """Best wall time of each function over ``repeats`` rounds, and the result of its last call.

    The functions take turns within each round, so a load change on a shared machine hits both
    sides rather than whichever happened to run then.
    """
    best = {name: (float("inf"), None) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            best[name] = (min(best[name][0], time.perf_counter() - start), result)
    return best


def fit_gradbook(X: np.ndarray, y: np.ndarray, hidden: int, batch: int, epochs: int,
                 eta: float) -> MLP:
    net = MLP([X.shape[1], hidden, 10], "tanh", "cross_entropy", bias=True, seed=0)
    net.fit(X, y, epochs=epochs, lr=eta / batch, batch_size=batch, seed=0)
    return net


def fit_sklearn(X: np.ndarray, y: np.ndarray, hidden: int, batch: int, epochs: int,
                eta: float) -> MLPClassifier:
    clf = MLPClassifier(
        hidden_layer_sizes=(hidden,), activation="tanh", solver="sgd", alpha=0.0,
        batch_size=batch, learning_rate="constant", learning_rate_init=eta, momentum=0.0,
        nesterovs_momentum=False, shuffle=True, max_iter=epochs, tol=0.0,
        n_iter_no_change=epochs + 1, early_stopping=False, random_state=0,
    )
    with warnings.catch_warnings():  # "max_iter reached": running all epochs is the point
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    return clf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per side; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for both sides")
    args = parser.parse_args()

    data = load("digits")
    X, y = data.X_train, data.Y_train
    n = X.shape[0]
    print(f"digits: {n} training rows, {data.X_test.shape[0]} test rows; [64, h, 10] tanh + "
          f"softmax/cross-entropy; best of {args.repeats}; {args.threads} BLAS thread(s) each")
    header = ("hidden", "batch", "epochs", "eta", "MLP s", "sklearn s", "MLP/sklearn",
              "MLP test acc", "sklearn test acc")
    print(f"{header[0]:>6} {header[1]:>6} {header[2]:>6} {header[3]:>5} {header[4]:>8} "
          f"{header[5]:>9} {header[6]:>11} {header[7]:>12} {header[8]:>16}")
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for hidden, batch_size, epochs, eta in CASES:
            batch = n if batch_size is None else batch_size
            runs = best_seconds({
                "MLP": partial(fit_gradbook, X, y, hidden, batch, epochs, eta),
                "sklearn": partial(fit_sklearn, X, y, hidden, batch, epochs, eta),
            }, args.repeats)
            (t_mlp, net), (t_skl, clf) = runs["MLP"], runs["sklearn"]
            acc_mlp = float(np.mean(net.predict(data.X_test) == data.Y_test))
            acc_skl = float(np.mean(clf.predict(data.X_test) == data.Y_test))
            label = "full" if batch_size is None else str(batch)
            print(f"{hidden:>6} {label:>6} {epochs:>6} {eta:>5.2f} {t_mlp:>8.3f} {t_skl:>9.3f} "
                  f"{t_mlp / t_skl:>10.2f}x {acc_mlp:>12.3f} {acc_skl:>16.3f}")


if __name__ == "__main__":
    main()
