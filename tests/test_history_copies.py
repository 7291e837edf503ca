"""A recorded history keeps the values as they were when recorded, not views that move on.

``MLP`` updates its weights in place, so ``net.weights[0].ravel()`` is a view that the next step
overwrites. A live plot that kept such views drew every row as the final weights: flat traces,
whatever the run did. These tests train the way notebook 10 does and compare what was recorded
with a run the test makes itself, one step at a time.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from gradbook import MLP, liveplot
from gradbook.datasets import load
from gradbook.liveplot import LivePlot, animation

TOL = 1e-12  # the same float64 arithmetic in the same order: equal up to rounding, in fact exactly
EPOCHS, LR, SEED = 60, 1.0, 0


@pytest.fixture
def xor():
    data = load("xor")
    return data.X_train, data.Y_train


def recorded_run(X, Y) -> tuple[list[np.ndarray], LivePlot, LivePlot]:
    """Notebook 10's recording: the starting weights, then views of the weights after each epoch."""
    net = MLP([3, 4, 1], seed=SEED)
    start = [W.copy() for W in net.weights]
    w1_plot = LivePlot(values=lambda net: net.weights[0].ravel(), live=False)
    w2_plot = LivePlot(values=lambda net: net.weights[1].ravel(), live=False)
    w1_plot.update(net.weights[0].ravel())  # a view of the array that training changes in place
    w2_plot.update(net.weights[1].ravel())

    def on_epoch(epoch, loss, net):
        w1_plot.callback(epoch, loss, net)
        w2_plot.callback(epoch, loss, net)

    net.fit(X, Y, epochs=EPOCHS, lr=LR, callback=on_epoch)
    return start, w1_plot, w2_plot


def stepped_run(X, Y) -> tuple[np.ndarray, np.ndarray]:
    """The same run made here, step by step (eq. 9.1), each epoch's weights copied: (N, 3, 4) and
    (N, 4, 1) with N = EPOCHS + 1, row 0 the starting weights."""
    net = MLP([3, 4, 1], seed=SEED)
    W1s, W2s = [net.weights[0].copy()], [net.weights[1].copy()]
    for _ in range(EPOCHS):
        for W, dW in zip(net.weights, net.gradients(X, Y), strict=True):
            W -= LR * dW
        W1s.append(net.weights[0].copy())
        W2s.append(net.weights[1].copy())
    return np.array(W1s), np.array(W2s)


def test_the_first_row_is_the_starting_weights_and_differs_from_the_last(xor):
    start, w1_plot, w2_plot = recorded_run(*xor)
    for W, plot in zip(start, (w1_plot, w2_plot), strict=True):
        H = plot.history
        assert H.shape == (EPOCHS + 1, W.size)
        np.testing.assert_array_equal(H[0], W.ravel())
        assert np.abs(H[-1] - H[0]).max() > 0.01  # the weights moved, and so does the trace


def test_each_row_is_the_weights_of_its_epoch(xor):
    _, w1_plot, w2_plot = recorded_run(*xor)
    W1s, W2s = stepped_run(*xor)
    np.testing.assert_allclose(w1_plot.history, W1s.reshape(EPOCHS + 1, -1), rtol=0, atol=TOL)
    np.testing.assert_allclose(w2_plot.history, W2s.reshape(EPOCHS + 1, -1), rtol=0, atol=TOL)
    assert len({row.tobytes() for row in w1_plot.history}) == EPOCHS + 1  # no two rows alike


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(6.0).reshape(2, 3),  # float64 and contiguous: ravel() is a view
        lambda: np.arange(6.0).reshape(3, 2).T,  # a strided view
        lambda: np.array(2.5),  # 0-d
        lambda: np.arange(3.0),
    ],
    ids=["matrix", "transposed", "scalar", "vector"],
)
def test_a_recorded_row_does_not_change_when_its_array_does(make):
    A = make()
    plot = LivePlot(live=False)
    plot.update(A.ravel() if A.ndim else A)
    before = A.ravel().copy()
    A[...] = -7.0  # the in-place update that a training step makes
    np.testing.assert_array_equal(plot.history[0], before)
    plot.update(A.ravel() if A.ndim else A)
    np.testing.assert_array_equal(plot.history, [before, np.full(before.size, -7.0)])


def test_the_callbacks_values_are_copied_too():
    net = MLP([2, 3, 1], seed=SEED)
    plot = LivePlot(values=lambda net: net.weights[0], live=False)  # the array itself
    plot.callback(0, 0.0, net)
    start = net.weights[0].copy()
    net.weights[0] += 1.0
    plot.callback(1, 0.0, net)
    np.testing.assert_array_equal(plot.history, [start.ravel(), start.ravel() + 1.0])


def test_an_animation_draws_the_history_it_was_given_not_what_it_became(monkeypatch):
    monkeypatch.setattr(liveplot, "FuncAnimation",
                        lambda fig, func, frames, interval: (fig, func))
    H = np.array([[1.0, 2.0], [3.0, 4.0]])
    fig, show = animation(H, labels=["a", "b"])
    H[...] = 0.0  # after the animation was made, before its frames are drawn
    show(1)
    a, b = fig.axes[0].lines
    np.testing.assert_array_equal(a.get_ydata(), [1.0, 3.0])
    np.testing.assert_array_equal(b.get_ydata(), [2.0, 4.0])
