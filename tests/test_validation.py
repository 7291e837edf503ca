"""Every validation path: bad input raises ValueError naming the argument and the expectation."""

from __future__ import annotations

import numpy as np
import pytest

from gradbook import MLP, gradcheck
from gradbook.datasets import load


@pytest.fixture
def net() -> MLP:
    return MLP([3, 4, 2], seed=0)


@pytest.fixture
def classifier() -> MLP:
    return MLP([3, 4, 2], "tanh", "cross_entropy", seed=0)


GOOD_Y = np.zeros((2, 2))


@pytest.mark.parametrize(
    "X, message",
    [
        (np.zeros((2, 4)), r"X must have shape \(n, 3\); got shape \(2, 4\)"),
        (np.zeros(3), r"X must have shape \(n, 3\); got shape \(3,\)"),
        (np.zeros((1, 2, 3)), r"X must have shape \(n, 3\); got shape \(1, 2, 3\)"),
        (np.zeros((0, 3)), r"X must have at least one row"),
        ([[1.0, np.nan, 0.0], [0, 0, 0]], r"X must be finite"),
        ([[1.0, np.inf, 0.0], [0, 0, 0]], r"X must be finite"),
        ([["1", "2", "3"], ["4", "5", "6"]], r"X must contain real numbers; got dtype <U1"),
        ([[True, False, True], [True, True, True]], r"X must contain real numbers; got dtype bool"),
        ([[1, 2, 3], [4, 5]], r"X must be a rectangular array of shape \(n, 3\)"),
        ([[1 + 2j, 0, 0], [0, 0, 0]], r"X must contain real numbers; got dtype complex128"),
    ],
)
def test_bad_X_is_refused_everywhere(net, X, message):
    for call in (lambda: net.forward(X), lambda: net.loss(X, GOOD_Y),
                 lambda: net.gradients(X, GOOD_Y), lambda: net.fit(X, GOOD_Y, 1, 0.1)):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize(
    "Y, message",
    [
        (np.zeros((3, 2)), r"Y must have one row per row of X \(2\); got shape \(3, 2\)"),
        (np.zeros((2, 3)), r"Y must have shape \(n, 2\); got shape \(2, 3\)"),
        (np.zeros(2), r"Y must have shape \(n, 2\); got shape \(2,\)"),
        ([[0.0, np.nan], [0, 0]], r"Y must be finite"),
    ],
)
def test_bad_Y_is_refused(net, Y, message):
    with pytest.raises(ValueError, match=message):
        net.loss(np.zeros((2, 3)), Y)


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0, 2], r"Y labels must lie in \[0, 2\); got \[0, 2\]"),
        ([-1, 0], r"Y labels must lie in \[0, 2\)"),
        ([0.0, 1.0], r"Y labels must be integers; got dtype float64"),
        ([0, 1, 1], r"Y must have one row per row of X \(2\); got shape \(3, 2\)"),
        ([[0.5, 0.0], [0.0, 1.0]], r"Y rows must be class probabilities"),
        ([[0.0, 0.0], [0.0, 1.0]], r"Y rows must be class probabilities"),
        ([[2.0, -1.0], [0.0, 1.0]], r"Y rows must be class probabilities"),
    ],
)
def test_bad_labels_are_refused(classifier, labels, message):
    with pytest.raises(ValueError, match=message):
        classifier.loss(np.zeros((2, 3)), labels)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sizes": [3]}, r"sizes must be a list \[d_in, …, d_out\] of at least 2 ints"),
        ({"sizes": "34"}, r"sizes must be a list"),
        ({"sizes": [3, 0]}, r"sizes\[1\] must be at least 1; got 0"),
        ({"sizes": [3, -2, 1]}, r"sizes\[1\] must be at least 1; got -2"),
        ({"sizes": [3, 2.5]}, r"sizes\[1\] must be a positive integer; got 2.5"),
        ({"sizes": [True, 2]}, r"sizes\[0\] must be a positive integer; got True"),
        (
            {"sizes": [3, 1], "activation": "swish"},
            r"activation must be one of \['relu', 'sigmoid', 'tanh'\]",
        ),
        ({"sizes": [3, 1], "loss": "mse"}, r"loss must be one of \['cross_entropy', 'half_sse'\]"),
        ({"sizes": [3, 1], "activation": ["tanh"]}, r"activation must be one of"),
        ({"sizes": [3, 1], "loss": {"a": 1}}, r"loss must be one of"),
        ({"sizes": [3, 1], "bias": "yes"}, r"bias must be true or false; got 'yes'"),
    ],
)
def test_bad_architecture_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0, "lr": 0.1}, r"epochs must be at least 1; got 0"),
        ({"epochs": 1.5, "lr": 0.1}, r"epochs must be a positive integer; got 1.5"),
        ({"epochs": 1, "lr": -0.1}, r"lr must be a finite number > 0; got -0.1"),
        ({"epochs": 1, "lr": float("nan")}, r"lr must be a finite number > 0; got nan"),
        ({"epochs": 1, "lr": "fast"}, r"lr must be a positive number; got 'fast'"),
        ({"epochs": 1, "lr": 0.1, "batch_size": 0}, r"batch_size must be at least 1; got 0"),
    ],
)
def test_bad_training_settings_are_refused(net, kwargs, message):
    with pytest.raises(ValueError, match=message):
        net.fit(np.zeros((2, 3)), GOOD_Y, **kwargs)


def test_gradcheck_refuses_mismatched_gradients(net):
    with pytest.raises(ValueError, match="got 1 gradients for 2 parameters"):
        gradcheck(lambda: 0.0, net.parameters, net.parameters[:1])
    mismatch = r"gradient shape \(4, 3\) does not match parameter \(3, 4\)"
    with pytest.raises(ValueError, match=mismatch):
        gradcheck(lambda: 0.0, net.parameters, [net.weights[0].T, net.weights[1]])


def test_unknown_data_set_is_refused():
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'; known: \['digits', 'xor'\]"):
        load("mnist")
