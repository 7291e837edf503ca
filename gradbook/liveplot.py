"""Plots that follow a training run as it happens, and the same pictures as an animation.

A run is recorded as a *history matrix* ``H`` of shape ``(N, M)``: row ``i`` holds the ``M``
tracked values (the loss, or every weight) after update ``i``, so time runs down the rows
(notebook 10, eq. 10.1). ``"trace"`` style draws each column as a line against the update
number; ``"snapshot"`` style draws only the latest row against the column index.

A row is a copy of the values it was given, taken when it is recorded: training updates the
weights in place, so a row that kept a view of them would follow them and every row of the
history would end up as the last one.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from IPython.display import Image, display
from matplotlib import colormaps
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from gradbook.validation import positive_int

if TYPE_CHECKING:
    from gradbook.network import MLP

STYLES = ("trace", "snapshot")
_FILE_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}
WIDTH, HEIGHT, DPI = 6.0, 3.5, 80  # inches, inches, pixels per inch: 480 x 280 without a legend
LEGEND_ROWS = 14  # legend entries per column that fit beside the axes in small type

Color = tuple[float, float, float, float]


def frame_rows(n: int, every: int) -> list[int]:
    """Rows of an ``n``-row history drawn as frames: ``0, every, 2·every, …`` and the last one."""
    return [*range(0, n - 1, every), n - 1] if n > 0 else []


def distinct_colors(M: int) -> list[Color]:
    """``M`` RGBA colours, no two alike, for the ``M`` lines of one trace.

    Up to 10: matplotlib's default cycle (tab10). Up to 20: tab20, its ten strong colours first
    and then their pale partners. More: ``M`` evenly spaced stops of turbo, all distinct up to
    its 256 entries (a legend of so many lines has long stopped being read anyway).
    """
    if M <= 10:
        colors = colormaps["tab10"].colors[:M]
    elif M <= 20:
        pairs = colormaps["tab20"].colors
        colors = [*pairs[0::2], *pairs[1::2]][:M]
    else:
        colors = colormaps["turbo"](np.linspace(0.0, 1.0, M))
    return [to_rgba(c) for c in colors]


class _Drawing:
    """A figure (outside pyplot, so notebooks never show it twice) for one frame of ``(N, M)``.

    A trace of several named values gets a legend beside the axes, never over the lines: the
    figure widens by the legend's width, so the axes keep their size.
    """

    def __init__(self, M: int, labels: Sequence[str] | None, title: str, style: str,
                 colors: Sequence[Any] | None = None, xlabel: str | None = None,
                 ylabel: str | None = None) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}; got {style!r}")
        if labels is not None and len(labels) != M:
            raise ValueError(f"labels must name each of the {M} values; got {len(labels)}")
        if colors is not None and len(colors) != M:
            raise ValueError(f"colors must give each of the {M} values one; got {len(colors)}")
        trace = style == "trace"
        if xlabel is None:
            xlabel = "update i" if trace else "value j"
        if ylabel is None:  # a single named value needs no legend: its name labels the axis
            ylabel = labels[0] if labels and M == 1 else "value"
        self.fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI)  # laid out by lay_out, when needed
        self.ax = self.fig.add_subplot(xlabel=xlabel, ylabel=ylabel)
        self.title, self.style = title, style
        self._ticks: tuple = ()  # the tick labels the current layout was made for
        if not trace:
            self.lines = self.ax.plot([], [], "o-")
            if labels:
                self.ax.set_xticks(range(M), labels)
            return
        colors = distinct_colors(M) if colors is None else colors
        names = labels or [None] * M
        self.lines = [self.ax.plot([], [], color=c, label=name)[0]
                      for name, c in zip(names, colors, strict=True)]
        if labels and M > 1:
            legend = self.ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0),
                                    borderaxespad=0.0, fontsize="small",
                                    ncols=-(-M // LEGEND_ROWS))
            width = legend.get_window_extent().width / DPI
            self.fig.set_size_inches(WIDTH + width + 0.1, HEIGHT)

    def fit_limits(self, H: np.ndarray) -> None:
        """Axes that fit all of ``H``: an animation keeps one scale, a live plot never shrinks.

        Only finite values count, so a run that diverges to inf or nan is still drawn.
        """
        finite = H[np.isfinite(H)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        pad = 0.05 * (hi - lo) or 0.5
        self.ax.set_ylim(lo - pad, hi + pad)
        self.ax.set_xlim(-0.5, H.shape[0 if self.style == "trace" else 1] - 0.5)

    def lay_out(self) -> None:
        """Place the axes, their names, ticks and the legend so that nothing overlaps or is cut off
        (matplotlib's constrained layout), unless the tick labels are those of the last layout.

        Laying out costs about as much as drawing, and between two frames only the tick labels
        can change what it finds (the title's height, the names and the legend stay): a live plot
        redraws many times, but needs a new layout only when its limits bring new tick labels.
        """
        ticks = tuple((axis.get_major_formatter().format_ticks(axis.get_majorticklocs()),
                       axis.get_major_formatter().get_offset())
                      for axis in (self.ax.xaxis, self.ax.yaxis))
        if ticks != self._ticks:
            ConstrainedLayoutEngine().execute(self.fig)
            self._ticks = ticks

    def show(self, H: np.ndarray, i: int) -> None:
        """Draw frame ``i``: rows ``0..i`` as traces, or row ``i`` as a snapshot."""
        if self.style == "trace":
            for j, line in enumerate(self.lines):
                line.set_data(np.arange(i + 1), H[: i + 1, j])
        else:
            self.lines[0].set_data(np.arange(H.shape[1]), H[i])
        # Naming the update also keeps consecutive frames distinct: Pillow merges equal GIF frames.
        self.ax.set_title(f"{self.title}  (update {i})".strip())


def animation(history: Any, labels: Sequence[str] | None = None, title: str = "",
              style: str = "trace", every: int = 1, interval: int = 100,
              colors: Sequence[Any] | None = None, xlabel: str | None = None,
              ylabel: str | None = None) -> FuncAnimation:
    """Animate ``history`` ``(N, M)`` (1-D: ``(N,)`` as M = 1), frames ``frame_rows(N, every)``.

    ``interval`` is the time between frames in milliseconds. ``colors`` (one per value, any
    matplotlib colour) default to ``distinct_colors(M)``; ``xlabel`` and ``ylabel`` name the
    axes (by default "update i" and "value", or the single value's label). The animation draws
    from its own copy of ``history``, so changing that array later changes no frame.
    """
    H = np.array(history, dtype=np.float64)
    H = H[:, None] if H.ndim == 1 else H
    if H.ndim != 2 or 0 in H.shape:
        raise ValueError(f"history must have shape (N updates, M values), N, M >= 1; got {H.shape}")
    drawing = _Drawing(H.shape[1], labels, title, style, colors, xlabel, ylabel)
    drawing.fit_limits(H)
    frames = frame_rows(H.shape[0], positive_int("every", every))
    interval = positive_int("interval", interval)
    drawing.show(H, frames[-1])  # a title as long as any frame's
    drawing.lay_out()  # once: the limits, and so the ticks, are those of every frame
    return FuncAnimation(drawing.fig, lambda i: drawing.show(H, i), frames=frames,
                         interval=interval)


def animate(history: Any, path: str | Path, interval: int = 100, **options: Any) -> Path:
    """Write ``animation(history, interval=interval, **options)`` to a ``.gif`` or ``.html`` file.

    The GIF is assembled by Pillow; the HTML page embeds every frame with play controls.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".html"):
        raise ValueError(f"path must end in .gif or .html; got {str(path)!r}")
    anim = animation(history, interval=interval, **options)
    if suffix == ".gif":
        anim.save(path, writer=PillowWriter(fps=1000 / interval))
    else:
        path.write_text(anim.to_jshtml(), encoding="utf-8")
    return path


def _in_notebook() -> bool:
    """True inside a Jupyter kernel whose matplotlib backend can show figures."""
    from IPython import get_ipython

    in_kernel = getattr(get_ipython(), "kernel", None) is not None
    return in_kernel and matplotlib.get_backend().lower() not in _FILE_BACKENDS


class LivePlot:
    """A history matrix ``(N, M)`` that grows one row per ``update`` and redraws in place.

    Parameters
    ----------
    labels : names of the ``M`` values (legend or tick labels), or ``None``.
    title : title of the figure.
    every : redraw at rows ``0, every, 2·every, …`` (the frames ``animate`` writes too); every
        row is recorded regardless. ``draw()`` shows the latest row, e.g. after training.
    style : ``"trace"`` or ``"snapshot"``.
    values : what ``callback`` records, ``values(net) -> (M,)``; by default the epoch's loss.
        Each row is a copy, so ``values`` may return a view of the weights that training
        then changes in place.
    live : display while recording; by default only inside a Jupyter kernel.
    colors, xlabel, ylabel : the lines' colours and the axes' names; see ``animation``.

    Examples
    --------
    >>> plot = LivePlot(labels=["loss"], every=10)  # doctest: +SKIP
    >>> net.fit(X, Y, epochs=500, lr=1.0, callback=plot.callback)  # doctest: +SKIP
    """

    def __init__(self, labels: Sequence[str] | None = None, title: str = "", every: int = 1,
                 style: str = "trace", values: Callable[[MLP], Any] | None = None,
                 live: bool | None = None, colors: Sequence[Any] | None = None,
                 xlabel: str | None = None, ylabel: str | None = None) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}; got {style!r}")
        self.labels = None if labels is None else list(labels)
        self.colors = None if colors is None else list(colors)
        self.xlabel, self.ylabel = xlabel, ylabel
        self.title, self.style, self.values = title, style, values
        self.every = positive_int("every", every)
        self.live = _in_notebook() if live is None else live
        self._rows: list[np.ndarray] = []
        self._drawing: _Drawing | None = None
        self._handle: Any = None

    @property
    def history(self) -> np.ndarray:
        """A copy of the rows recorded so far, shape ``(N, M)``; ``(0, 0)`` before the first."""
        return np.array(self._rows) if self._rows else np.empty((0, 0))

    def update(self, values: Any) -> None:
        """Append a copy of ``values``, ``M`` numbers (a scalar is M = 1), as the next row, and
        redraw if the row is a frame.

        The copy is the point: ``values`` is often a view of weights that the next training step
        overwrites in place (``net.weights[0].ravel()``), and a row must keep what they were now.
        """
        row = np.array(values, dtype=np.float64).ravel()  # np.array copies; asarray would not
        M = self._rows[0].size if self._rows else len(self.labels) if self.labels else row.size
        if row.size != M or M == 0:
            raise ValueError(f"values must hold {M or 'at least 1'} numbers; got {row.size}")
        self._rows.append(row)
        if (len(self._rows) - 1) % self.every == 0:
            self.draw()

    def callback(self, epoch: int, loss: float, net: MLP) -> None:
        """``MLP.fit(callback=…)`` hook: records ``values(net)``, or ``loss`` by default."""
        self.update(loss if self.values is None else self.values(net))

    def draw(self) -> None:
        """Show the latest row, replacing this plot's previous output (only when ``live``)."""
        if not (self.live and self._rows):
            return
        H = self.history
        if self._drawing is None:
            self._drawing = _Drawing(H.shape[1], self.labels, self.title, self.style,
                                     self.colors, self.xlabel, self.ylabel)
        self._drawing.fit_limits(H)
        self._drawing.show(H, H.shape[0] - 1)
        self._drawing.lay_out()
        png = io.BytesIO()
        self._drawing.fig.savefig(png, format="png")
        image = Image(data=png.getvalue(), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)

    def animate(self, path: str | Path, interval: int = 100) -> Path:
        """Write the whole history to ``path`` (``.gif`` or ``.html``); see ``animate``."""
        return animate(self.history, path, interval=interval, labels=self.labels,
                       title=self.title, style=self.style, every=self.every, colors=self.colors,
                       xlabel=self.xlabel, ylabel=self.ylabel)
