"""Cross-check against an independent automatic-differentiation library (autograd).

The loss is written a second time here, directly in ``autograd.numpy`` and without any of
gradbook's code, so a mistake shared by the forward and backward pass of gradbook would show.
"""

from __future__ import annotations

import itertools

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad

from gradbook import ACTIVATIONS, LOSSES, MLP, relative_error

AUTOGRAD_TOL = 1e-10

NONLINEARITIES = {
    "sigmoid": lambda z: 1.0 / (1.0 + anp.exp(-z)),
    "tanh": anp.tanh,
    "relu": lambda z: anp.maximum(z, 0.0),
}


def reference_loss(params, X, Y, activation, loss, n_layers, bias):
    """Σ over examples of the loss, computed the textbook way."""
    weights, biases = params[:n_layers], params[n_layers:]
    f = NONLINEARITIES[activation]
    a = X
    for k, W in enumerate(weights):
        z = anp.dot(a, W) + (biases[k] if bias else 0.0)
        last = k == n_layers - 1
        a = z if last and loss == "cross_entropy" else f(z)
    if loss == "half_sse":
        return 0.5 * anp.sum((Y - a) ** 2)
    log_probs = a - anp.log(anp.sum(anp.exp(a), axis=1, keepdims=True))
    return -anp.sum(Y * log_probs)


@pytest.mark.parametrize(
    "activation, loss, bias",
    list(itertools.product(sorted(ACTIVATIONS), sorted(LOSSES), [False, True])),
)
@pytest.mark.parametrize("sizes", [[4, 3], [4, 6, 3], [4, 5, 5, 3], [4, 3, 7, 2, 3]])
def test_gradients_agree_with_autograd(sizes, activation, loss, bias):
    net = MLP(sizes, activation, loss, bias, seed=len(sizes))
    rng = np.random.default_rng(42)
    for b in net.biases:
        b[:] = rng.normal(size=b.shape)
    X = rng.normal(size=(9, sizes[0]))
    Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], 9)] if loss == "cross_entropy" else rng.random(
        (9, sizes[-1])
    )
    n_layers = len(net.weights)
    expected = grad(reference_loss)(list(net.parameters), X, Y, activation, loss, n_layers, bias)
    assert net.loss(X, Y) == pytest.approx(
        reference_loss(net.parameters, X, Y, activation, loss, n_layers, bias), rel=1e-12
    )
    for ours, theirs in zip(net.gradients(X, Y), expected, strict=True):
        assert relative_error(ours, theirs) < AUTOGRAD_TOL
