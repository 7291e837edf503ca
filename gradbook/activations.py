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


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax; subtracting the row maximum keeps ``exp`` from overflowing."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log of the softmax, computed without taking the log of a rounded zero."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


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
