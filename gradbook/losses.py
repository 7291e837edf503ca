"""Losses, each paired with the activation of the output layer it expects.

A loss provides the output layer ``l = output(z)`` of the output pre-activation ``z``, the loss
value at ``l`` and ``delta``, the gradient of the loss with respect to ``z`` (the ``Δl`` of the
last layer in the notebooks).

* ``half_sse``: L = Σ ½ (y − ŷ)², summed over examples and outputs. The output layer uses
  the network's activation, so delta = (ŷ − y) * f'(ŷ) (notebook 06, eq. 6.1; notebook 08, eq. 8.1).
* ``cross_entropy``: L = −Σ y log softmax(z). With a softmax output the Jacobian and the
  log cancel, leaving delta = ŷ − y (notebook 08, eq. 8.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradbook.activations import Activation, softmax, softmax_log_


@dataclass(frozen=True)
class Loss:
    """The output layer and the loss on it, for output pre-activation ``z`` and targets ``Y``.

    ``output(z, act)`` is the output ``l``; ``output_value(z, Y, act)`` is ``l`` and the loss at
    it in one pass, the loss reusing the output's work; ``delta(l, Y, act)`` is ``∂L/∂z``. ``act``
    is the network's activation. The first two may overwrite ``z``.
    """

    name: str
    output: Callable[[np.ndarray, Activation], np.ndarray]
    output_value: Callable[[np.ndarray, np.ndarray, Activation], tuple[np.ndarray, float]]
    delta: Callable[[np.ndarray, np.ndarray, Activation], np.ndarray]


def _activation_output(z: np.ndarray, act: Activation) -> np.ndarray:
    return (act.f_ or act.f)(z)  # in place where the activation can


def _half_sse_output_value(
    z: np.ndarray, Y: np.ndarray, act: Activation
) -> tuple[np.ndarray, float]:
    l = _activation_output(z, act)
    return l, float(0.5 * np.sum((Y - l) ** 2))


def _half_sse_delta(l: np.ndarray, Y: np.ndarray, act: Activation) -> np.ndarray:
    return (l - Y) * act.df(l)


def _cross_entropy_output_value(
    z: np.ndarray, Y: np.ndarray, act: Activation
) -> tuple[np.ndarray, float]:
    l, log_l = softmax_log_(z)  # ŷ (eq. 8.11) and log ŷ, from one row maximum and normaliser
    # L = −Σ Y log ŷ (eq. 8.13)
    return l, float(-np.sum(Y * log_l))


HALF_SSE = Loss(
    "half_sse",
    output=_activation_output,
    output_value=_half_sse_output_value,
    delta=_half_sse_delta,
)

CROSS_ENTROPY = Loss(
    "cross_entropy",
    output=lambda z, act: softmax(z),
    output_value=_cross_entropy_output_value,
    delta=lambda l, Y, act: l - Y,
)

LOSSES: dict[str, Loss] = {loss.name: loss for loss in (HALF_SSE, CROSS_ENTROPY)}
