"""A fully connected network of any depth, trained with the equations the notebooks derive.

Row convention (notebooks 04-08): ``X`` is ``(n, d_in)``, ``W_k`` is ``(d_{k-1}, d_k)``, a bias
``b_k`` is a vector ``(d_k,)`` added to every row, and

    l_0 = X,    z_k = l_{k-1} · W_k (+ b_k),    l_k = f(z_k) for k < K,    Ŷ = l_K = g(z_K)

where the output function g is f with the half squared error, or the softmax with the
cross-entropy. The backward pass is the general rule of notebook 08, in its symbols:

    Δl_K = (Ŷ - Y) * f'(z_K)                    (half squared error, eq. 8.1)
    Δl_K = Ŷ - Y                                (softmax and cross-entropy, eq. 8.5)
    ∂L/∂W_k = l_{k-1}ᵀ · Δl_k                   (eq. 8.2)
    ∂L/∂b_k = Σ_i Δl_k^(i), the rows summed     (eq. 8.4)
    Δl_{k-1} = (Δl_k · W_kᵀ) * f'(z_{k-1})      (eq. 8.3)

with Δl_k = ∂L/∂z_k. The slope f'(z_k) is taken at the pre-activation but evaluated from the
layer's output l_k = f(z_k), which the forward pass kept: ``act.df(l_k)`` (for the sigmoid,
l_k * (1 - l_k)).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gradbook.activations import ACTIVATIONS
from gradbook.losses import LOSSES
from gradbook.validation import as_labels, as_matrix, brief, positive_float, positive_int

Callback = Callable[[int, float, "MLP"], None]


class MLP:
    """Multi-layer perceptron ``sizes = [d_in, h1, …, d_out]`` in float64.

    ``weights`` (and ``biases`` when ``bias=True``) are plain arrays that every call reads, so
    changing one in place changes ``forward``, ``loss`` and ``gradients``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "sigmoid",
        loss: str = "half_sse",
        bias: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
            raise ValueError(
                f"sizes must be a list [d_in, …, d_out] of at least 2 ints; got {brief(sizes)}"
            )
        self.sizes = [positive_int(f"sizes[{i}]", s) for i, s in enumerate(sizes)]
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}; got {brief(activation)}"
            )
        if not isinstance(loss, str) or loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {brief(loss)}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be true or false; got {brief(bias)}")
        self.activation, self.loss_name, self.bias = activation, loss, bias
        self.act, self.loss_fn = ACTIVATIONS[activation], LOSSES[loss]
        self.metadata: dict[str, Any] = {}
        self.reset(seed)

    def reset(self, seed: int = 0) -> None:
        """Draw fresh weights ~ N(0, gain / d_{k-1}) and zero biases, reproducibly from ``seed``."""
        rng = np.random.default_rng(seed)
        gain = 2.0 if self.activation == "relu" else 1.0
        pairs = list(pairwise(self.sizes))
        self.weights = [rng.normal(0.0, np.sqrt(gain / a), (a, b)) for a, b in pairs]
        self.biases = [np.zeros(b) for _, b in pairs] if self.bias else []

    @property
    def parameters(self) -> list[np.ndarray]:
        """Weights, then biases: the same arrays, in the order ``gradients`` returns."""
        return self.weights + self.biases

    @property
    def is_classifier(self) -> bool:
        return self.loss_name == "cross_entropy"

    @property
    def config(self) -> dict[str, Any]:
        """The arguments that rebuild this architecture."""
        return {"sizes": self.sizes, "activation": self.activation, "loss": self.loss_name,
                "bias": self.bias}

    # -- forward -----------------------------------------------------------------------------
    def _hidden(self, X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Hidden layer outputs ``[l_0 = X, …, l_{K-1}]`` and the output pre-activation ``z_K``.

        Each ``z_k`` is its layer's own fresh array, so the activations work in place.
        """
        ls = [X]
        K = len(self.weights)
        hidden_f = self.act.f_ or self.act.f
        for k, W in enumerate(self.weights):
            z = ls[-1] @ W
            if self.bias:
                z += self.biases[k]
            if k < K - 1:
                ls.append(hidden_f(z))
        return ls, z

    def _layers(self, X: np.ndarray) -> list[np.ndarray]:
        """Layer outputs ``[l_0 = X, l_1, …, l_K]``."""
        ls, z = self._hidden(X)
        ls.append(self.loss_fn.output(z, self.act))
        return ls

    def _layers_loss(self, X: np.ndarray, Y: np.ndarray) -> tuple[list[np.ndarray], float]:
        """``_layers(X)`` and the loss at ``Y``, which reuses the output layer's work."""
        ls, z = self._hidden(X)
        l, loss = self.loss_fn.output_value(z, Y, self.act)
        ls.append(l)
        return ls, loss

    def _check_X(self, X: Any) -> np.ndarray:
        return as_matrix("X", X, self.sizes[0])

    def _check_Y(self, Y: Any, n: int) -> np.ndarray:
        d_out = self.sizes[-1]
        if self.is_classifier and np.ndim(Y) == 1:
            Y = as_labels("Y", Y, d_out)
        Y = as_matrix("Y", Y, d_out)
        if Y.shape[0] != n:
            raise ValueError(f"Y must have one row per row of X ({n}); got shape {Y.shape}")
        if self.is_classifier and (np.any(Y < 0) or not np.allclose(Y.sum(axis=1), 1.0)):
            # eq. 8.5 (delta = ŷ − Y) assumes each row of Y is a distribution over the classes
            raise ValueError("Y rows must be class probabilities (>= 0, sum 1), e.g. one-hot")
        return Y

    def forward(self, X: Any) -> np.ndarray:
        """Network output ``l_K`` of shape ``(n, d_out)`` for ``X`` of shape ``(n, d_in)``."""
        return self._layers(self._check_X(X))[-1]

    def predict(self, X: Any) -> np.ndarray:
        """Class indices ``(n,)`` for a classifier (cross_entropy), else outputs ``(n, d_out)``."""
        out = self.forward(X)
        return out.argmax(axis=1) if self.is_classifier else out

    def loss(self, X: Any, Y: Any) -> float:
        """The loss summed over all examples (and outputs), as in the derivations."""
        X = self._check_X(X)
        return self._loss(X, self._check_Y(Y, X.shape[0]))

    def _loss(self, X: np.ndarray, Y: np.ndarray) -> float:
        return self._layers_loss(X, Y)[1]

    # -- backward ----------------------------------------------------------------------------
    def gradients(self, X: Any, Y: Any) -> list[np.ndarray]:
        """∂L/∂W_k for each layer, then ∂L/∂b_k if the net has biases (shaped as ``parameters``)."""
        X = self._check_X(X)
        return self._gradients(X, self._check_Y(Y, X.shape[0]))

    def _gradients(self, X: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
        return self._backward(self._layers(X), Y)

    def _backward(self, ls: list[np.ndarray], Y: np.ndarray) -> list[np.ndarray]:
        """The gradients from the forward pass ``ls = self._layers(X)`` at the parameters.

        It uses up ``ls``: each hidden ``l_k``, once read for eq. 8.2, is overwritten with the
        slope ``f'(z_k)``, evaluated from ``l_k``, for eq. 8.3.
        """
        df_ = self.act.df_
        delta = self.loss_fn.delta(ls[-1], Y, self.act)  # eq. 8.1 or 8.5
        dW: list[np.ndarray] = []
        db: list[np.ndarray] = []
        for k in range(len(self.weights) - 1, -1, -1):
            dW.append(ls[k].T @ delta)  # eq. 8.2
            if self.bias:
                db.append(delta.sum(axis=0))  # eq. 8.4
            if k > 0:
                delta = delta @ self.weights[k].T  # eq. 8.3 (weights[k] is W_{k+1}), then:
                delta *= self.act.df(ls[k]) if df_ is None else df_(ls[k])  # ... * f'(z_k)
        dW.reverse()
        db.reverse()
        return dW + db

    # -- training ----------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        Y: Any,
        epochs: int,
        lr: float,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        callback: Callback | None = None,
        progress: bool = False,
    ) -> list[float]:
        """Gradient descent on the summed loss; returns one loss per epoch, summed over ``X``.

        ``batch_size=None`` uses the whole batch per step. Because the loss is a sum, the step of
        one mini-batch grows with its size: pick ``lr`` for the batch size you use.

        Each epoch's loss is read off forward passes that the steps need anyway:

        * mini-batches (``batch_size < n``): the sum of each batch's loss at the parameters
          before its step, the running training loss that scikit-learn's ``loss_curve_`` and
          Keras report (there averaged). It covers every example once, but at parameters that
          change during the epoch; ``loss(X, Y)`` gives the loss at the parameters it ends with.
        * the whole set as the batch: the loss on all of ``X`` at the parameters after the
          epoch's step, whose forward pass the next step reuses.

        ``callback(epoch, loss, net)`` runs after each epoch (for live plots) with the loss the
        history records; ``progress`` shows a tqdm bar.
        """
        X = self._check_X(X)
        Y = self._check_Y(Y, X.shape[0])
        epochs = positive_int("epochs", epochs)
        lr = positive_float("lr", lr)
        n = X.shape[0]
        batch = n if batch_size is None else positive_int("batch_size", batch_size)
        rng = np.random.default_rng(seed)
        epoch_range: Any = range(epochs)
        if progress:
            # the text bar: a widget bar needs a live frontend, and headless runs and rendered
            # pages have none (they showed "0/60"); Jupyter still redraws the text in place
            from tqdm.std import tqdm

            epoch_range = tqdm(epoch_range, desc="epochs")
        history: list[float] = []
        # The forward pass on all of X that measured the last epoch's loss. A full-batch step runs
        # the same pass (same rows, same order, same parameters), so it takes this one instead.
        forward: list[np.ndarray] | None = None
        for epoch in epoch_range:
            if batch >= n:
                ls = forward if forward is not None else self._layers(X)
                self._descend(self._backward(ls, Y), lr)
                forward, loss = self._layers_loss(X, Y)  # at the parameters this epoch ends with
            else:
                Xs, Ys = X, Y
                if shuffle:  # permuted once per epoch, so that each batch below is a view
                    order = rng.permutation(n)
                    Xs, Ys = X[order], Y[order]
                loss = 0.0
                for start in range(0, n, batch):
                    rows = slice(start, start + batch)
                    loss += self._step(Xs[rows], Ys[rows], lr)
            history.append(loss)
            if callback is not None:
                callback(epoch, loss, self)
                forward = None  # the callback may have changed the parameters
        return history

    def _step(self, X: np.ndarray, Y: np.ndarray, lr: float) -> float:
        """One gradient-descent step on the batch ``X, Y``; returns its loss before the step.

        The loss is read off the forward pass that the gradients need, before ``_backward``
        uses it up.
        """
        ls, loss = self._layers_loss(X, Y)
        self._descend(self._backward(ls, Y), lr)
        return loss

    def _descend(self, grads: list[np.ndarray], lr: float) -> None:
        """One gradient-descent step ``p ← p − lr · ∂L/∂p``, scaling ``grads`` in place."""
        for p, g in zip(self.parameters, grads, strict=True):
            g *= lr
            p -= g

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write architecture, parameters and ``metadata`` to an ``.npz`` file, atomically.

        The file is written beside its destination and renamed over it, so a reader sees either
        the old file or the new one, never half of one.
        """
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it (mkstemp: owner only)
            with os.fdopen(fd, "wb") as f:
                self.write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write(self, f: BinaryIO) -> None:
        """Write the ``.npz`` that ``save`` saves to the open binary file ``f``."""
        arrays = {f"W{k}": W for k, W in enumerate(self.weights)}
        arrays.update({f"b{k}": b for k, b in enumerate(self.biases)})
        header = json.dumps({"config": self.config, "metadata": self.metadata})
        np.savez(f, header=np.array(header), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MLP:
        """Rebuild a network saved with ``save``; parameters round-trip bit for bit."""
        # the file is opened here, so that it is closed even when it is no valid .npz
        with open(path, "rb") as f:
            return cls.read(f)

    @classmethod
    def read(cls, f: BinaryIO) -> MLP:
        """Rebuild a network from an open binary file holding what ``write`` wrote."""
        with np.load(f, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            net = cls(**header["config"])
            net.weights = [data[f"W{k}"] for k in range(len(net.weights))]
            net.biases = [data[f"b{k}"] for k in range(len(net.biases))]
        net.metadata = header["metadata"]
        return net


def _umask() -> int:
    """This process's file mode mask, read without changing it (``os.umask`` sets it while it
    reads it, a moment in which another thread's files would get the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022  # the usual mask, where /proc does not say
