"""Activation functions and their derivatives, written in terms of the layer *output*.

The derivations express every derivative through the value a layer already produced
(σ' = l (1 − l), notebook 01, eq. 1.2), so the backward pass never recomputes the
pre-activation. Each entry of ``ACTIVATIONS`` follows that shape: ``f(z)`` and ``df(l)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function 1 / (1 + e^-z) without overflow for any finite z.

    ``exp`` only ever sees ``-|z|``, so it stays in (0, 1].
    """
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _row_max(z: np.ndarray) -> np.ndarray:
    """The maximum of each row of ``z``, as a column.

    numpy reduces a row-major array one row at a time, slowly when rows are as short as an
    output layer's; a column-major copy, reduced column by column, is up to 5x faster there
    (it loses from about 50 columns). The maximum is exact, so the order does not change it.
    """
    if z.shape[1] <= 32:
        z = np.asfortranarray(z)
    return z.max(axis=1, keepdims=True)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax; subtracting the row maximum keeps ``exp`` from overflowing."""
    e = np.exp(z - _row_max(z))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log of the softmax, computed without taking the log of a rounded zero."""
    shifted = z - _row_max(z)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_log_(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``softmax(z)`` and ``log_softmax(z)`` at once, the log-softmax written into ``z``.

    The two share the shifted rows ``z − max`` and their normaliser ``Σ e^(z − max)``, so each
    is computed once; the operations are those of the two functions above, so are the bits.
    """
    z -= _row_max(z)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    e /= total
    z -= np.log(total)
    return e, z


@dataclass(frozen=True)
class Activation:
    """Element-wise non-linearity ``f`` and its derivative ``df`` as a function of ``l = f(z)``."""

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    df: Callable[[np.ndarray], np.ndarray]
    # The same two, overwriting their argument and returning it (same operations, same bits):
    # the training loop uses them on arrays nothing else holds, to save the temporaries.
    f_: Callable[[np.ndarray], np.ndarray] | None = None
    df_: Callable[[np.ndarray], np.ndarray] | None = None


def _sigmoid_df_(l: np.ndarray) -> np.ndarray:
    """σ' = l (1 − l) (eq. 1.2), into ``l``."""
    l *= 1.0 - l
    return l


def _tanh_f_(z: np.ndarray) -> np.ndarray:
    return np.tanh(z, out=z)


def _tanh_df_(l: np.ndarray) -> np.ndarray:
    """tanh' = 1 − l², into ``l`` (``l * l`` is what ``l**2`` computes, bit for bit)."""
    np.multiply(l, l, out=l)
    return np.subtract(1.0, l, out=l)


def _relu_f_(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0, out=z)


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", sigmoid, lambda l: l * (1.0 - l), df_=_sigmoid_df_),
    "tanh": Activation("tanh", np.tanh, lambda l: 1.0 - l**2, _tanh_f_, _tanh_df_),
    "relu": Activation("relu", lambda z: np.maximum(z, 0.0), lambda l: (l > 0).astype(l.dtype),
                       _relu_f_),
}
