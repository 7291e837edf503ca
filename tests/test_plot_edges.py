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


def test_the_figure_is_480_by_280_pixels_and_keeps_one_layout_for_every_frame(recorded):
    anim = animation(np.cumsum(np.ones((12, 3)), axis=0), title="a title", every=5)
    fig, ax = anim.fig, anim.ax
    assert tuple(fig.get_size_inches()) == (6.0, 3.5) and fig.dpi == 80
    positions = []
    for i in anim.frames:
        anim.func(i)
        fig.draw_without_rendering()
        positions.append(tuple(ax.get_position().bounds))
    assert len(set(positions)) == 1  # laid out once: the axes never move between frames
    drawn, canvas = ax.get_tightbbox(), fig.bbox  # title, axis names, the ticks shown
    assert canvas.x0 <= drawn.x0 and drawn.x1 <= canvas.x1
    assert canvas.y0 <= drawn.y0 and drawn.y1 <= canvas.y1


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


@pytest.mark.parametrize("M", [2, 12, 30])
def test_the_legend_sits_beside_the_axes_never_over_the_lines(recorded, M):
    rising = np.linspace(np.arange(M) * 0.1, 1.0 + np.arange(M) * 0.1, 10)  # fills the corner
    anim = animation(rising, labels=[f"W1[{j // 4},{j % 4}]" for j in range(M)])
    anim.func(9)
    anim.fig.draw_without_rendering()
    legend = anim.ax.get_legend()
    box, frame, canvas = legend.get_window_extent(), anim.ax.get_window_extent(), anim.fig.bbox
    assert box.x0 > frame.x1  # right of the axes, so it covers no line
    assert abs(box.y1 - frame.y1) < 2  # top aligned with the axes (pixels)
    assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 and box.y0 >= canvas.y0
    assert anim.fig.get_size_inches()[0] > 6.0  # the figure widened for it...
    plain = animation(rising)  # ...so the axes are as wide as without a legend
    plain.fig.draw_without_rendering()
    assert frame.width == pytest.approx(plain.ax.get_window_extent().width, abs=2)
    small = FontProperties(size="small").get_size_in_points()
    assert {t.get_fontsize() for t in legend.get_texts()} == {small}
    assert [t.get_text() for t in legend.get_texts()] == [f"W1[{j // 4},{j % 4}]" for j in range(M)]
    assert legend._ncols == -(-M // liveplot.LEGEND_ROWS)


@pytest.mark.parametrize("M", [1, 2, 10, 11, 12, 20, 21, 40, 256])
def test_distinct_colors_are_m_colours_no_two_alike(M):
    colors = liveplot.distinct_colors(M)
    assert len(colors) == M == len(set(colors))
    assert all(len(c) == 4 for c in colors)


def test_the_first_ten_colours_are_matplotlibs_default_cycle():
    default = plt.rcParamsDefault["axes.prop_cycle"].by_key()["color"]
    cycle = [matplotlib.colors.to_rgba(c) for c in default]
    assert liveplot.distinct_colors(10) == cycle
    assert liveplot.distinct_colors(12)[:10] == cycle  # pale partners only from the eleventh


@pytest.mark.parametrize("M", [3, 12, 25])
def test_every_line_of_a_trace_has_its_own_colour(recorded, M):
    anim = animation(np.zeros((2, M)), labels=[str(j) for j in range(M)])
    colors = [matplotlib.colors.to_rgba(line.get_color()) for line in anim.ax.lines]
    assert colors == liveplot.distinct_colors(M)


def test_colours_and_axis_names_can_be_chosen(recorded):
    anim = animation(np.zeros((2, 2)), labels=["a", "b"], colors=["red", "#0000ff"],
                     xlabel="epoch", ylabel="weight")
    assert [line.get_color() for line in anim.ax.lines] == ["red", "#0000ff"]
    assert (anim.ax.get_xlabel(), anim.ax.get_ylabel()) == ("epoch", "weight")
    message = "colors must give each of the 2 values one; got 1"
    with pytest.raises(ValueError, match=exactly(message)):
        animation(np.zeros((2, 2)), colors=["red"])


def test_a_single_named_value_names_the_y_axis_instead_of_a_legend(recorded):
    anim = animation([3.0, 2.0], labels=["loss"])
    assert anim.ax.get_legend() is None and anim.ax.get_ylabel() == "loss"
    assert tuple(anim.fig.get_size_inches()) == (6.0, 3.5)
    assert animation([3.0, 2.0]).ax.get_ylabel() == "value"
    assert animation([3.0, 2.0], labels=["loss"], ylabel="L").ax.get_ylabel() == "L"


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
                      "every": 2, "colors": None, "xlabel": None, "ylabel": None}
    assert kwargs_40["interval"] == 40


def test_a_live_plot_lays_out_again_when_its_ticks_change_and_only_then(shown, monkeypatch):
    layouts = []
    execute = liveplot.ConstrainedLayoutEngine.execute
    monkeypatch.setattr(liveplot.ConstrainedLayoutEngine, "execute",
                        lambda self, fig: layouts.append(fig) or execute(self, fig))
    plot = LivePlot(labels=["a", "b"], title="a live plot", live=True)
    plot.update([0.0, 1.0])
    plot.draw()  # the same row, the same ticks: the layout stands
    assert len(shown) == 2 and len(layouts) == 1
    plot.update([-123456.0, 1.0])  # wider tick labels
    assert len(layouts) == 2
    fig, ax = plot._drawing.fig, plot._drawing.ax
    fig.draw_without_rendering()
    drawn, canvas = ax.get_tightbbox(), fig.bbox  # the ticks, names, title and legend
    assert canvas.x0 <= drawn.x0 and drawn.x1 <= canvas.x1
    assert canvas.y0 <= drawn.y0 and drawn.y1 <= canvas.y1
    assert ax.title.get_window_extent().y0 >= ax.get_window_extent().y1  # above the lines
    assert ax.get_legend().get_window_extent().x0 > ax.get_window_extent().x1


def test_a_live_plot_draws_and_exports_with_its_colours_and_names(shown, monkeypatch, tmp_path):
    options = {"colors": ["red", "blue"], "xlabel": "epoch", "ylabel": "weight"}
    plot = LivePlot(labels=["a", "b"], live=True, **options)
    plot.update([1.0, 2.0])
    ax = plot._drawing.ax
    assert [line.get_color() for line in ax.lines] == ["red", "blue"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "weight")
    calls = []
    monkeypatch.setattr(liveplot, "animate", lambda *args, **kwargs: calls.append(kwargs))
    plot.animate(tmp_path / "a.gif")
    assert {key: calls[0][key] for key in options} == options


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
