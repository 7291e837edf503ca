"""Unit tests of gradbook.liveplot: the history matrix, in-place redraws and exported animations."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import PIL.Image
import pytest

from gradbook import MLP, liveplot
from gradbook.datasets import load
from gradbook.liveplot import LivePlot, animate, animation, frame_rows


class FakeHandle:
    """Stands in for IPython's DisplayHandle and records what a live plot shows."""

    def __init__(self, shown: list) -> None:
        self.shown = shown

    def update(self, image) -> None:
        self.shown.append(("update", image))


@pytest.fixture
def shown(monkeypatch) -> list:
    """Every display / update a live plot makes, in order, as ("display" | "update", image)."""
    events: list = []

    def fake_display(image, display_id):
        assert display_id is True
        events.append(("display", image))
        return FakeHandle(events)

    monkeypatch.setattr(liveplot, "display", fake_display)
    return events


def gif_frames(path) -> int:
    with PIL.Image.open(path) as gif:
        return gif.n_frames


def test_history_has_one_row_per_update_in_order():
    plot = LivePlot()
    rows = np.arange(12.0).reshape(4, 3)
    for row in rows:
        plot.update(row)
    assert plot.history.shape == (4, 3)
    np.testing.assert_array_equal(plot.history, rows)
    plot.history[0, 0] = 99.0  # a copy: the record cannot be changed from outside
    assert plot.history[0, 0] == 0.0


def test_empty_history_and_scalar_updates():
    plot = LivePlot()
    assert plot.history.shape == (0, 0)
    plot.update(0.5)
    plot.update(np.float64(0.25))
    np.testing.assert_array_equal(plot.history, [[0.5], [0.25]])


def test_update_refuses_a_row_of_a_different_length():
    plot = LivePlot()
    plot.update([1.0, 2.0])
    with pytest.raises(ValueError, match="values must hold 2 numbers; got 3"):
        plot.update([1.0, 2.0, 3.0])


def test_update_refuses_rows_that_miss_a_label_or_hold_nothing():
    with pytest.raises(ValueError, match="values must hold 2 numbers; got 1"):
        LivePlot(labels=["a", "b"]).update([1.0])
    with pytest.raises(ValueError, match="at least 1"):
        LivePlot().update([])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"style": "bars"}, "style"), ({"every": 0}, "every"), ({"every": 1.5}, "every")],
)
def test_constructor_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LivePlot(**kwargs)


def test_callback_records_loss_by_default_and_values_when_given():
    xor = load("xor")
    net = MLP([3, 4, 1], seed=0)
    loss_plot = LivePlot()
    weights_plot = LivePlot(values=lambda net: np.concatenate([W.ravel() for W in net.weights]))

    def on_epoch(epoch, loss, net):
        loss_plot.callback(epoch, loss, net)
        weights_plot.callback(epoch, loss, net)

    losses = net.fit(xor.X_train, xor.Y_train, epochs=5, lr=1.0, callback=on_epoch)
    np.testing.assert_array_equal(loss_plot.history[:, 0], losses)
    assert weights_plot.history.shape == (5, 3 * 4 + 4)
    np.testing.assert_array_equal(weights_plot.history[-1, -4:], net.weights[1].ravel())


@pytest.mark.parametrize(
    ("n", "every", "rows"),
    [
        (0, 1, []),
        (1, 5, [0]),
        (4, 1, [0, 1, 2, 3]),
        (10, 3, [0, 3, 6, 9]),
        (11, 3, [0, 3, 6, 9, 10]),
    ],
)
def test_frame_rows_start_at_zero_step_by_every_and_end_on_the_last_row(n, every, rows):
    assert frame_rows(n, every) == rows


def test_outside_a_kernel_a_live_plot_only_records(monkeypatch):
    monkeypatch.setattr(liveplot, "display", lambda *a, **k: pytest.fail("must not display"))
    plot = LivePlot()
    assert plot.live is False
    plot.update([1.0, 2.0])
    plot.draw()
    assert plot.history.shape == (1, 2)


def test_live_plot_displays_once_then_updates_in_place(shown):
    plot = LivePlot(labels=["loss"], every=2, live=True)
    for loss in [5.0, 4.0, 3.0, 2.0, 1.0]:  # rows 0, 2 and 4 are due for a redraw
        plot.update(loss)
    assert [kind for kind, _ in shown] == ["display", "update", "update"]
    plot.draw()
    assert [kind for kind, _ in shown][-1] == "update"
    assert all(image.data.startswith(b"\x89PNG") for _, image in shown)


def test_live_snapshot_draws_without_displaying_twice(shown):
    plot = LivePlot(labels=["a", "b", "c"], style="snapshot", live=True)
    plot.update([1.0, 2.0, 3.0])
    plot.update([3.0, 2.0, 1.0])
    assert [kind for kind, _ in shown] == ["display", "update"]


def test_a_diverging_run_is_still_drawn(shown):
    plot = LivePlot(live=True)
    for loss in [1.0, np.inf, np.nan]:
        plot.update(loss)
    assert len(shown) == 3
    plot_of_nothing_finite = LivePlot(live=True)
    plot_of_nothing_finite.update(np.nan)
    assert len(shown) == 4


def test_gif_has_one_frame_per_frame_row(tmp_path):
    history = np.cumsum(np.random.default_rng(0).normal(size=(7, 3)), axis=0)
    path = animate(history, tmp_path / "walk.gif", every=3)
    assert path == tmp_path / "walk.gif" and path.stat().st_size > 0
    assert gif_frames(path) == len(frame_rows(7, 3)) == 3


def test_gif_keeps_frames_whose_values_do_not_change(tmp_path):
    path = animate(np.ones((4, 2)), tmp_path / "flat.gif", style="snapshot")
    assert gif_frames(path) == 4


def test_live_plot_exports_html_with_every_frame_embedded(tmp_path):
    plot = LivePlot(labels=["x", "y"], title="demo", every=2)
    for i in range(5):
        plot.update([i, i**2])
    path = plot.animate(tmp_path / "demo.HTML")
    html = path.read_text(encoding="utf-8")
    assert "<script" in html
    assert html.count("data:image/png;base64") == len(frame_rows(5, 2)) == 3


def test_animation_treats_a_1d_history_as_one_value_over_time():
    anim = animation([3.0, 2.0, 1.0])
    assert anim.to_jshtml().count("data:image/png;base64") == 3


@pytest.mark.parametrize("history", [np.zeros((0, 3)), np.zeros((3, 0)), np.zeros((2, 2, 2))])
def test_animation_refuses_histories_that_are_not_n_by_m(history):
    with pytest.raises(ValueError, match="history must have shape"):
        animation(history)


def test_animation_refuses_labels_of_the_wrong_length():
    with pytest.raises(ValueError, match="labels"):
        animation(np.zeros((3, 2)), labels=["only one"])


def test_animate_refuses_unknown_formats_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif or \.html"):
        animate(np.zeros((3, 2)), tmp_path / "walk.mp4")
    assert not any(tmp_path.iterdir())
