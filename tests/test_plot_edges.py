"""Edges of gradbook's pictures the other tests leave open, found by mutation testing.

``draw_network`` (the derivation notebooks' diagrams) and ``liveplot`` down to what a reader
sees: where each line, circle and label is, the axes' limits and labels, the legend, the frame
size and timing of an exported animation, and when a live plot is shown.
"""

import matplotlib

matplotlib.use("Agg")

import re
from types import SimpleNamespace

import IPython
import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
import pytest
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Circle

from gradbook import liveplot
from gradbook.diagrams import draw_network
from gradbook.liveplot import LivePlot, animate, animation


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


# -- draw_network ------------------------------------------------------------------------------
NODES = [["$x_1$", "$x_2$"], ["$h_1$", "$h_2$", "$h_3$"], ["$y$"]]
WEIGHTS = [
    [[f"$w_{{{p}{j}}}$" for j in range(3)] for p in range(2)],
    [[f"$v_{{{p}}}$"] for p in range(3)],
]


@pytest.fixture
def drawn():
    ax = draw_network(NODES, WEIGHTS)
    yield ax
    plt.close(ax.figure)


def test_a_network_is_drawn_on_a_new_8_by_3_5_figure_when_no_axes_are_given(drawn):
    assert tuple(drawn.figure.get_size_inches()) == (8.0, 3.5)
    _, ax = plt.subplots()
    assert draw_network(NODES, WEIGHTS, ax=ax) is ax
    plt.close(ax.figure)


def test_every_weight_is_a_grey_line_between_its_two_nodes(drawn):
    heights = [[0.5, -0.5], [1.0, 0.0, -1.0], [0.0]]  # each layer centred, first node on top
    expected = [
        ((2.5 * k, 2.5 * (k + 1)), (heights[k][p], heights[k + 1][j]))
        for k, rows in enumerate(WEIGHTS) for p, row in enumerate(rows) for j in range(len(row))
    ]
    assert [(tuple(line.get_xdata()), tuple(line.get_ydata())) for line in drawn.lines] == expected
    for line in drawn.lines:
        assert line.get_color() == "0.6" and line.get_zorder() == 1


def test_weight_labels_sit_a_third_of_the_way_along_their_line_on_white(drawn):
    texts = drawn.texts[: 2 * 3 + 3 * 1]
    assert [t.get_text() for t in texts] == [label for rows in WEIGHTS for row in rows
                                              for label in row]
    for text, line in zip(texts, drawn.lines, strict=True):
        (x0, x1), (y0, y1) = line.get_xdata(), line.get_ydata()
        assert text.get_position() == pytest.approx((x0 + 0.35 * (x1 - x0), y0 + 0.35 * (y1 - y0)))
        assert (text.get_ha(), text.get_va(), text.get_fontsize()) == ("center", "center", 9)
        box = text.get_bbox_patch()
        assert box.get_facecolor() == (1.0, 1.0, 1.0, 1.0)
        assert box.get_edgecolor()[3] == 0.0  # edgecolor "none"
        assert box.get_boxstyle().pad == pytest.approx(0.5 / 9, abs=0.005)  # 0.5 pt of 9 pt


def test_every_node_is_a_labelled_white_circle_above_the_lines(drawn):
    circles = [p for p in drawn.patches if isinstance(p, Circle)]
    labels = drawn.texts[2 * 3 + 3 * 1:]
    expected = [(2.5 * k, h) for k, hs in enumerate([[0.5, -0.5], [1.0, 0.0, -1.0], [0.0]])
                for h in hs]
    assert [tuple(c.center) for c in circles] == expected
    assert [t.get_position() for t in labels] == expected
    assert [t.get_text() for t in labels] == [label for layer in NODES for label in layer]
    for circle in circles:
        assert circle.radius == 0.3 and circle.get_zorder() == 2
        assert circle.get_facecolor() == (1.0, 1.0, 1.0, 1.0)
        assert circle.get_edgecolor() == (0.0, 0.0, 0.0, 1.0)
    for label in labels:
        assert (label.get_ha(), label.get_va(), label.get_fontsize()) == ("center", "center", 12)
        assert label.get_zorder() == 3


def test_the_drawing_is_framed_to_scale_without_axes(drawn):
    assert drawn.get_xlim() == (-0.5, 5.5)
    assert drawn.get_aspect() == 1.0
    assert not drawn.axison


# -- liveplot: one frame -----------------------------------------------------------------------
class Recorded(SimpleNamespace):
    """What ``animation`` hands to ``FuncAnimation``."""


@pytest.fixture
def recorded(monkeypatch):
    """``animation(...)`` returns the arguments it gave FuncAnimation instead of one."""

    def record(fig, func, frames, interval):
        return Recorded(fig=fig, func=func, frames=frames, interval=interval,
                        ax=fig.axes[0])

    monkeypatch.setattr(liveplot, "FuncAnimation", record)


def test_animation_defaults(recorded):
    anim = animation([1.0, 2.0, 4.0])
    assert (anim.frames, anim.interval) == ([0, 1, 2], 100)
    anim.func(0)
    assert anim.ax.get_title() == "(update 0)"
    assert anim.ax.get_xlabel() == "update i"
    assert anim.ax.get_ylim() == pytest.approx((0.85, 4.15))  # padded by 5 % of the range
    assert anim.ax.get_xlim() == (-0.5, 2.5)


def test_animation_arguments_reach_the_frames(recorded):
    anim = animation(np.arange(10.0), title="loss", every=4, interval=250)
    assert (anim.frames, anim.interval) == ([0, 4, 8, 9], 250)
    anim.func(4)
    assert anim.ax.get_title() == "loss  (update 4)"


def test_the_figure_is_480_by_280_pixels_with_fixed_margins(recorded):
    fig = animation([1.0, 2.0]).fig
    assert tuple(fig.get_size_inches()) == (6.0, 3.5) and fig.dpi == 80
    params = fig.subplotpars
    assert (params.left, params.right, params.bottom, params.top) == (0.12, 0.97, 0.14, 0.9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": 0}, "every must be at least 1; got 0"),
        ({"interval": 0}, "interval must be at least 1; got 0"),
        ({"style": "bars"}, "style must be one of ('trace', 'snapshot'); got 'bars'"),
    ],
)
def test_animation_messages(kwargs, message):
    with pytest.raises(ValueError, match=exactly(message)):
        animation([1.0, 2.0], **kwargs)


def test_a_trace_shows_each_value_up_to_the_frame(recorded):
    H = np.array([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0]])
    anim = animation(H, labels=["a", "b"])
    anim.func(1)
    for j, line in enumerate(anim.ax.lines):
        np.testing.assert_array_equal(line.get_xdata(), [0, 1])
        np.testing.assert_array_equal(line.get_ydata(), H[:2, j])
    assert [t.get_text() for t in anim.ax.get_legend().get_texts()] == ["a", "b"]


def test_a_snapshot_shows_one_row_against_the_labelled_values(recorded):
    H = np.array([[1.0, 5.0, 2.0], [2.0, 6.0, 0.0]])
    anim = animation(H, labels=["a", "b", "c"], style="snapshot")
    anim.func(1)
    [line] = anim.ax.lines
    np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2])
    np.testing.assert_array_equal(line.get_ydata(), H[1])
    assert (line.get_marker(), line.get_linestyle()) == ("o", "-")
    assert anim.ax.get_xlabel() == "value j"
    assert [t.get_text() for t in anim.ax.get_xticklabels()] == ["a", "b", "c"]
    assert anim.ax.get_xlim() == (-0.5, 2.5)  # the values, not the updates
    assert anim.ax.get_legend() is None


@pytest.mark.parametrize(
    ("history", "ylim"),
    [
        ([2.0, 2.0], (1.5, 2.5)),  # no range: half a unit either side
        ([np.nan, np.inf], (-0.5, 0.5)),  # nothing finite: around 0
        ([1.0, None, 3.0], (0.9, 3.1)),  # a missing value is not drawn
        ([-1.0, np.inf, 3.0], (-1.2, 3.2)),
    ],
)
def test_limits_fit_the_finite_values(recorded, history, ylim):
    assert animation(history).ax.get_ylim() == pytest.approx(ylim)


def test_the_legend_stays_in_the_upper_right_in_small_type(recorded):
    rising = np.linspace([0.0, 0.1], [1.0, 1.1], 10)  # the data fill the upper right corner
    anim = animation(rising, labels=["a", "b"])
    anim.func(9)
    anim.fig.canvas.draw()
    legend = anim.ax.get_legend()
    box, frame = legend.get_window_extent(), anim.ax.get_window_extent()
    assert frame.x1 - box.x1 < 10 and frame.y1 - box.y1 < 10  # pixels
    small = FontProperties(size="small").get_size_in_points()
    assert [t.get_fontsize() for t in legend.get_texts()] == [small, small]


# -- liveplot: files ---------------------------------------------------------------------------
def gif_durations(path) -> list[int]:
    with PIL.Image.open(path) as gif:
        assert gif.size == (480, 280)
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
        return durations


def test_a_gif_shows_each_frame_for_the_interval(tmp_path):
    assert set(gif_durations(animate([1.0, 2.0], tmp_path / "a.gif"))) == {100}
    assert set(gif_durations(animate([1.0, 2.0], tmp_path / "b.gif", interval=250))) == {250}


def test_a_gif_is_written_by_pillow_whatever_the_default_movie_writer(tmp_path):
    with matplotlib.rc_context({"animation.writer": "html"}):
        path = animate([1.0, 2.0], tmp_path / "a.gif")
    with PIL.Image.open(path) as gif:
        assert gif.format == "GIF"


@pytest.mark.parametrize(("kwargs", "interval"), [({}, "100.0"), ({"interval": 250}, "250.0")])
def test_an_html_animation_plays_at_the_interval(tmp_path, kwargs, interval):
    html = animate([1.0, 2.0], tmp_path / "a.html", **kwargs).read_text(encoding="utf-8")
    assert f"new Animation(frames, img_id, slider_id, {interval}," in html
    assert html.isascii()  # so the encoding it is written in cannot matter


def test_animate_names_the_refused_path(tmp_path):
    with pytest.raises(ValueError, match=exactly("path must end in .gif or .html; got 'a.png'")):
        animate([1.0], "a.png")


# -- LivePlot ----------------------------------------------------------------------------------
@pytest.fixture
def shown(monkeypatch) -> list:
    """The images a live plot displays (or updates in place), in order."""
    images: list = []

    class Handle:
        def update(self, image) -> None:
            images.append(image)

    def display(image, display_id):
        images.append(image)
        return Handle()

    monkeypatch.setattr(liveplot, "display", display)
    return images


def test_live_plot_defaults_and_messages():
    plot = LivePlot(live=False)
    assert (plot.title, plot.style, plot.every, plot.labels) == ("", "trace", 1, None)
    with pytest.raises(ValueError, match=exactly("every must be at least 1; got 0")):
        LivePlot(every=0)
    with pytest.raises(ValueError, match=exactly("values must hold at least 1 numbers; got 0")):
        plot.update([])


def test_history_is_float64_whatever_the_values():
    plot = LivePlot(live=False)
    plot.update([1, 2])
    assert plot.history.dtype == np.float64


def test_a_live_plot_redraws_every_nth_row_from_the_first(shown):
    plot = LivePlot(every=3, live=True)
    for loss in range(7):
        plot.update(float(loss))
    assert len(shown) == 3  # rows 0, 3 and 6


def test_a_live_plot_shows_its_latest_row_with_its_labels_and_title(shown):
    plot = LivePlot(labels=["a", "b"], title="run", live=True)
    plot.update([1.0, 2.0])
    plot.update([3.0, 5.0])
    ax = plot._drawing.ax
    assert ax.get_title() == "run  (update 1)"
    np.testing.assert_array_equal(ax.lines[1].get_ydata(), [2.0, 5.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def test_a_live_plot_shows_pngs_whatever_the_default_file_format(shown):
    with matplotlib.rc_context({"savefig.format": "svg"}):
        LivePlot(live=True).update(1.0)
    [image] = shown
    assert image.format == "png" and image.data.startswith(b"\x89PNG\r\n\x1a\n")


def test_live_plot_animate_hands_on_its_settings(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(liveplot, "animate", lambda *args, **kwargs: calls.append((args, kwargs)))
    plot = LivePlot(labels=["a"], title="run", every=2, style="snapshot", live=False)
    plot.update(1.0)
    plot.animate(tmp_path / "a.gif")
    plot.animate(tmp_path / "b.gif", interval=40)
    (args, kwargs), (_, kwargs_40) = calls
    np.testing.assert_array_equal(args[0], [[1.0]])
    assert args[1] == tmp_path / "a.gif"
    assert kwargs == {"interval": 100, "labels": ["a"], "title": "run", "style": "snapshot",
                      "every": 2}
    assert kwargs_40["interval"] == 40


@pytest.mark.parametrize(
    ("shell", "backend", "live"),
    [
        (SimpleNamespace(kernel=object()), "module://matplotlib_inline.backend_inline", True),
        (SimpleNamespace(kernel=object()), "agg", False),  # a kernel that only writes files
        (SimpleNamespace(kernel=object()), "svg", False),
        (SimpleNamespace(kernel=None), "module://matplotlib_inline.backend_inline", False),
        (SimpleNamespace(), "module://matplotlib_inline.backend_inline", False),  # terminal
        (None, "module://matplotlib_inline.backend_inline", False),  # plain Python
    ],
)
def test_live_by_default_only_in_a_kernel_that_shows_figures(monkeypatch, shell, backend, live):
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setattr(matplotlib, "get_backend", lambda: backend)
    assert LivePlot().live is live
