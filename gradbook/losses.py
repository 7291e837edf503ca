"""Losses, each paired with the activation of the output layer it expects.

A loss provides its value and ``delta``, the gradient of the loss with respect to the
output layer's pre-activation ``z`` (the ``Δl`` of the last layer in the notebooks).

* ``half_sse``: L = Σ ½ (y − ŷ)², summed over examples and outputs. The output layer uses
  the network's activation, so delta = (ŷ − y) * f'(ŷ) (notebook 06, eq. 6.1; notebook 08, eq. 8.1).
* ``cross_entropy``: L = −Σ y log softmax(z). With a softmax output the Jacobian and the
  log cancel, leaving delta = ŷ − y (notebook 08, eq. 8.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradbook.activations import Activation, log_softmax, softmax


@dataclass(frozen=True)
class Loss:
    """``value(z, l, Y)`` and ``delta(z, l, Y, act)`` for output pre-activation ``z``, output ``l``.

    ``output`` is the output layer's function, or ``None`` for "the network's activation".
    """

    name: str
    output: Callable[[np.ndarray], np.ndarray] | None
    value: Callable[[np.ndarray, np.ndarray, np.ndarray], float]
    delta: Callable[[np.ndarray, np.ndarray, np.ndarray, Activation], np.ndarray]


def _half_sse_delta(z: np.ndarray, l: np.ndarray, Y: np.ndarray, act: Activation) -> np.ndarray:
    return (l - Y) * act.df(l)


HALF_SSE = Loss(
    "half_sse",
    output=None,
    value=lambda z, l, Y: float(0.5 * np.sum((Y - l) ** 2)),
    delta=_half_sse_delta,
)

CROSS_ENTROPY = Loss(
    "cross_entropy",
    output=softmax,
    value=lambda z, l, Y: float(-np.sum(Y * log_softmax(z))),
    delta=lambda z, l, Y, act: l - Y,
)

LOSSES: dict[str, Loss] = {loss.name: loss for loss in (HALF_SSE, CROSS_ENTROPY)}
