"""The MLP contract: gradients of exactly ``loss``, training, persistence, stability."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gradbook import ACTIVATIONS, LOSSES, MLP, gradcheck, sigmoid, softmax
from gradbook.datasets import load

COMBOS = list(itertools.product(sorted(ACTIVATIONS), sorted(LOSSES), [False, True]))
GRAD_TOL = 1e-6
KINK_MARGIN = 1e-3  # far beyond what a step of 1e-5 in one parameter moves a z


def random_problem(net: MLP, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ~ N(0, 1) and targets of the right kind for ``net``'s loss."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, net.sizes[0]))
    if net.is_classifier:
        return X, rng.integers(0, net.sizes[-1], size=n)
    return X, rng.random((n, net.sizes[-1]))


def randomise_biases(net: MLP, seed: int) -> None:
    """Biases start at zero; make them non-zero so their gradients are really exercised."""
    rng = np.random.default_rng(seed)
    for b in net.biases:
        b[:] = rng.normal(size=b.shape)


@pytest.mark.parametrize("activation, loss, bias", COMBOS)
@pytest.mark.parametrize("sizes", [[3, 1], [3, 4, 1], [5, 4, 3, 2], [2, 6, 5, 4, 3]])
def test_gradients_match_central_differences(sizes, activation, loss, bias):
    net = MLP(sizes, activation, loss, bias, seed=1)
    randomise_biases(net, seed=2)
    X, Y = random_problem(net, n=6, seed=3)
    err = gradcheck(lambda: net.loss(X, Y), net.parameters, net.gradients(X, Y))
    assert err < GRAD_TOL


def distance_to_relu_kinks(net: MLP, X: np.ndarray) -> float:
    """The smallest |z| over the hidden pre-activations: how close ``X`` is to a kink of relu."""
    l, nearest = X, np.inf
    for k, W in enumerate(net.weights[:-1]):
        z = l @ W + (net.biases[k] if net.bias else 0.0)
        nearest = min(nearest, float(np.abs(z).min()))
        l = net.act.f(z)
    return nearest


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    widths=st.lists(st.integers(1, 16), min_size=2, max_size=5),
    n=st.integers(1, 32),
    combo=st.sampled_from(COMBOS),
    seed=st.integers(0, 2**16),
)
def test_gradients_match_central_differences_property(widths, n, combo, seed):
    activation, loss, bias = combo
    if loss == "cross_entropy" and widths[-1] == 1:
        widths = [*widths[:-1], 2]  # a softmax over one class has a constant output
    net = MLP(widths, activation, loss, bias, seed=seed)
    randomise_biases(net, seed + 1)
    X, Y = random_problem(net, n, seed + 2)
    # relu has no derivative at 0: a difference step across a kink measures a mix of both slopes
    assume(activation != "relu" or distance_to_relu_kinks(net, X) > KINK_MARGIN)
    grads = net.gradients(X, Y)
    assert [g.shape for g in grads] == [p.shape for p in net.parameters]
    assert gradcheck(lambda: net.loss(X, Y), net.parameters, grads, eps=1e-5) < GRAD_TOL


def test_parameters_are_read_live():
    net = MLP([3, 4, 1], seed=0)
    X, Y = random_problem(net, 4, 0)
    before_out, before_loss = net.forward(X).copy(), net.loss(X, Y)
    net.weights[0][1, 2] += 0.5
    assert not np.allclose(net.forward(X), before_out)
    assert net.loss(X, Y) != before_loss


def test_half_sse_is_half_the_summed_squared_error():
    net = MLP([3, 2, 2], seed=4)
    X, Y = random_problem(net, 5, 4)
    assert net.loss(X, Y) == pytest.approx(0.5 * np.sum((Y - net.forward(X)) ** 2), rel=1e-14)


def test_cross_entropy_accepts_labels_or_one_hot():
    net = MLP([4, 3, 3], "tanh", "cross_entropy", seed=5)
    X, labels = random_problem(net, 6, 5)
    one_hot = np.eye(3)[labels]
    assert net.loss(X, labels) == pytest.approx(net.loss(X, one_hot), rel=1e-14)
    expected = -np.sum(np.log(net.forward(X))[np.arange(6), labels])
    assert net.loss(X, labels) == pytest.approx(expected, rel=1e-12)
    assert np.allclose(net.forward(X).sum(axis=1), 1.0)
    assert net.predict(X).shape == (6,)


def test_no_overflow_warnings_for_huge_pre_activations():
    z = np.array([[-1e4, -800.0, 0.0, 800.0, 1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = sigmoid(z)
        p = softmax(z)
        for activation, loss in itertools.product(sorted(ACTIVATIONS), sorted(LOSSES)):
            net = MLP([2, 3, 2], activation, loss, seed=0)
            X = np.array([[1e4, -1e4], [-1e4, 1e4]])
            Y = np.array([0, 1]) if loss == "cross_entropy" else np.array([[0.0, 1.0], [1.0, 0.0]])
            assert np.isfinite(net.loss(X, Y))
            assert all(np.all(np.isfinite(g)) for g in net.gradients(X, Y))
    assert s[0, 0] == 0.0 and s[0, -1] == 1.0 and s[0, 2] == 0.5
    assert p[0, -1] == 1.0 and np.isfinite(p).all()


def test_toy_data_is_learned_by_a_3_4_1_sigmoid_net():
    data = load("xor")
    net = MLP([3, 4, 1], "sigmoid", "half_sse", seed=0)
    history = net.fit(data.X_train, data.Y_train, epochs=3000, lr=1.0)
    assert history[-1] < history[0] / 100
    assert np.all(np.abs(net.forward(data.X_train) - data.Y_train) < 0.1)


def test_fit_calls_back_once_per_epoch_with_the_recorded_loss():
    """With mini-batches the recorded loss is the running one: the sum of each batch's loss at
    the parameters before its step, the batches shuffled once per epoch by ``seed``."""
    X, Y = load("xor").X_train, load("xor").Y_train
    net, twin = MLP([3, 4, 1], seed=0), MLP([3, 4, 1], seed=0)
    seen: list[tuple[int, float]] = []
    history = net.fit(X, Y, epochs=5, lr=0.5, batch_size=2,
                      callback=lambda epoch, loss, n: seen.append((epoch, loss)))
    assert seen == list(enumerate(history))
    rng, expected = np.random.default_rng(0), []
    for _ in range(5):
        order, running = rng.permutation(4), 0.0
        for rows in (order[:2], order[2:]):
            running += twin.loss(X[rows], Y[rows])
            for W, dW in zip(twin.weights, twin.gradients(X[rows], Y[rows]), strict=True):
                W -= 0.5 * dW
        expected.append(running)
    assert history == expected
    assert all(np.array_equal(W, V) for W, V in zip(net.weights, twin.weights, strict=True))


def test_fit_is_reproducible_for_a_seed():
    data = load("xor")
    a, b = MLP([3, 4, 1], seed=7), MLP([3, 4, 1], seed=7)
    ha = a.fit(data.X_train, data.Y_train, epochs=20, lr=0.5, batch_size=1, seed=3)
    hb = b.fit(data.X_train, data.Y_train, epochs=20, lr=0.5, batch_size=1, seed=3)
    assert ha == hb
    assert all(np.array_equal(p, q) for p, q in zip(a.parameters, b.parameters, strict=True))


def test_digits_reach_97_percent_held_out():
    data = load("digits")
    net = MLP([64, 64, 10], "tanh", "cross_entropy", bias=True, seed=0)
    net.fit(data.X_train, data.Y_train, epochs=60, lr=0.01, batch_size=32)
    assert np.mean(net.predict(data.X_test) == data.Y_test) >= 0.97


@pytest.mark.parametrize("activation, loss, bias", COMBOS)
def test_save_load_round_trips_exactly(tmp_path, activation, loss, bias):
    net = MLP([3, 5, 2], activation, loss, bias, seed=9)
    randomise_biases(net, 10)
    net.metadata = {"version": 3, "history": [1.5, 0.25], "note": "ünïcode"}
    path = tmp_path / "model.npz"
    net.save(path)
    again = MLP.load(path)
    assert again.config == net.config
    assert again.metadata == net.metadata
    assert all(np.array_equal(p, q) for p, q in zip(again.parameters, net.parameters, strict=True))
    X, _ = random_problem(net, 4, 11)
    assert np.array_equal(again.forward(X), net.forward(X))
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary left behind


def test_save_replaces_an_existing_file_whole(tmp_path):
    path = tmp_path / "model.npz"
    MLP([3, 4, 1], seed=1).save(path)
    newer = MLP([3, 4, 1], seed=2)
    newer.save(path)
    loaded = MLP.load(path).parameters
    assert all(np.array_equal(p, q) for p, q in zip(loaded, newer.parameters, strict=True))


def test_reset_draws_fresh_reproducible_weights():
    net = MLP([3, 4, 1], seed=0)
    first = [W.copy() for W in net.weights]
    net.reset(seed=1)
    assert not np.array_equal(net.weights[0], first[0])
    net.reset(seed=0)
    assert all(np.array_equal(W, F) for W, F in zip(net.weights, first, strict=True))
