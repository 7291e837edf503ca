"""Pictures for the derivation notebooks: networks (layers as circles, weights as lines),
computational graphs (forward values, local derivatives, gradients flowing back) and small
circuits of gates (a value over each wire, its gradient under it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.transforms import Bbox, offset_copy


def draw_network(
    node_labels: Sequence[Sequence[str]],
    weight_labels: Sequence[Sequence[Sequence[str]]],
    ax: Axes | None = None,
) -> Axes:
    """Draw each layer as a column of circles and each weight as a labelled line.

    Parameters
    ----------
    node_labels : one list of (LaTeX) labels per layer, input layer first.
    weight_labels : one nested list per weight matrix; ``weight_labels[k][p][j]`` labels the line
        from node p of layer k to node j of layer k + 1 (rows index inputs, as in ``W``).
    ax : where to draw; a new figure when omitted.
    """
    spacing = 2.5
    heights = [(len(nodes) - 1) / 2 - np.arange(len(nodes)) for nodes in node_labels]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    for k, rows in enumerate(weight_labels):
        for p, row in enumerate(rows):
            for j, label in enumerate(row):
                x0, x1 = k * spacing, (k + 1) * spacing
                y0, y1 = heights[k][p], heights[k + 1][j]
                ax.plot([x0, x1], [y0, y1], color="0.6", zorder=1)
                ax.text(x0 + 0.35 * (x1 - x0), y0 + 0.35 * (y1 - y0), label, ha="center",
                        va="center", fontsize=9,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    for k, labels in enumerate(node_labels):
        for height, label in zip(heights[k], labels, strict=True):
            ax.add_patch(plt.Circle((k * spacing, height), 0.3, facecolor="white", edgecolor="k",
                                    zorder=2))
            ax.text(k * spacing, height, label, ha="center", va="center", fontsize=12, zorder=3)
    ax.set_xlim(-0.5, (len(node_labels) - 1) * spacing + 0.5)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def draw_graph(
    nodes: Mapping[str, tuple[tuple[float, float], str, str | None]],
    edges: Sequence[tuple[str, str, str]],
    ax: Axes | None = None,
) -> Axes:
    """Draw a computational graph: forward values in the nodes, local derivatives on the edges,
    and the gradient of the loss flowing back in red.

    Parameters
    ----------
    nodes : ``{name: ((x, y), forward_label, backward_label)}``. ``forward_label`` is written in
        a box at ``(x, y)`` (e.g. ``"$z_1 = 0.31$"``); ``backward_label`` (e.g.
        ``r"$\\partial L/\\partial z_1 = -0.02$"``) is written in red under the box (over it for
        nodes above the median height), or omitted when None.
    edges : ``(source, target, local_derivative)`` for each forward step ``source -> target``:
        a black arrow from box edge to box edge, labelled with ``local_derivative`` (the
        derivative of target with respect to source) beside the middle of its visible part. When
        both ends have a backward label, a red dashed arrow bends back from target to source on
        the other side of the black one: the gradient at the target times the edge's label is the
        gradient at the source.
    ax : where to draw; a new figure when omitted.

    Arrows start and end on the boxes' borders (the boxes are measured once drawn), so a box
    never hides an arrow head, however long its label. The caller's coordinates must leave room
    for the labels: ``graph_overlaps(ax)`` lists any label that covers a box or another label.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 4))
    fig = ax.figure
    xs = [xy[0] for xy, _, _ in nodes.values()]
    ys = [xy[1] for xy, _, _ in nodes.values()]
    middle = float(np.median(ys))
    above = {name: xy[1] > middle for name, (xy, _, _) in nodes.items()}
    # Room for the red labels: under the low boxes, over the high ones.
    low = min(y - (0.9 if back is not None and not above[n] else 0.45)
              for n, ((_, y), _, back) in nodes.items())
    high = max(y + (0.9 if back is not None and above[n] else 0.45)
               for n, ((_, y), _, back) in nodes.items())
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(low, high)
    ax.axis("off")

    boxes: dict[str, Bbox] = {}  # each node's box in data coordinates
    renderer = fig.canvas.get_renderer()
    to_data = ax.transData.inverted()
    for name, ((x, y), forward_label, _) in nodes.items():
        text = ax.text(x, y, forward_label, ha="center", va="center", fontsize=10, zorder=4,
                       bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "k"})
        text.set_gid("node")
        pad = 0.4 * 10 * fig.dpi / 72 + 1  # the box's pad (0.4 font sizes) and its line
        extent = text.get_window_extent(renderer).padded(pad)
        boxes[name] = Bbox(to_data.transform(extent.get_points()))

    for source, target, derivative in edges:
        start, end = _border_points(boxes[source], boxes[target])
        ax.annotate("", xy=end, xytext=start, zorder=3,
                    arrowprops={"arrowstyle": "-|>", "color": "k", "shrinkA": 2, "shrinkB": 2})
        # Beside the arrow's visible middle: over a level or rising arrow, and on the lower-left
        # side of a falling one (an input coming down from above), whose other side gets the
        # red arrow.
        (x0, y0), (x1, y1) = _display(ax, start), _display(ax, end)
        length = max(float(np.hypot(x1 - x0, y1 - y0)), 1e-9)
        nx, ny = -(y1 - y0) / length, (x1 - x0) / length  # left of the arrow's direction
        falling = (y1 - y0) < -0.2 * abs(x1 - x0)
        side = -1.0 if falling else 1.0
        nx, ny = side * nx, side * ny
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        away = 4.0  # points between the arrow and its label
        if abs(ny) > 0.9:  # a level arrow: the label goes over both boxes' tops, clear of them
            heights = [_display(ax, (0, box.y1))[1] - _display(ax, (0, box.y0))[1]
                       for box in (boxes[source], boxes[target])]
            away += max(heights) / 2 * 72 / fig.dpi
        label = ax.text(*mid, derivative, fontsize=9, zorder=5,
                        ha="left" if nx > 0.35 else "right" if nx < -0.35 else "center",
                        va="bottom" if ny > 0.35 else "top" if ny < -0.35 else "center",
                        transform=offset_copy(ax.transData, fig, x=away * nx, y=away * ny,
                                              units="points"),
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
        label.set_gid("edge")
        if nodes[source][2] is not None and nodes[target][2] is not None:
            back_start, back_end = _border_points(boxes[target], boxes[source])
            ax.annotate("", xy=back_end, xytext=back_start, zorder=2,
                        arrowprops={"arrowstyle": "-|>", "color": "C3", "linestyle": "--",
                                    "shrinkA": 3, "shrinkB": 3,
                                    "connectionstyle": f"arc3,rad={0.35 if falling else -0.35}"})

    for name, ((x, _), _, backward_label) in nodes.items():
        if backward_label is None:
            continue
        box = boxes[name]
        gap = 12.0 if above[name] else -12.0  # points: clear of the red arrows leaving the box
        text = ax.text(x, box.y1 if above[name] else box.y0, backward_label,
                       ha="center", va="bottom" if above[name] else "top", fontsize=9,
                       color="C3", zorder=5,
                       transform=offset_copy(ax.transData, fig, y=gap, units="points"))
        text.set_gid("backward")
    return ax


def graph_overlaps(ax: Axes) -> list[tuple[str, str]]:
    """Pairs of texts of a ``draw_graph`` picture that cover each other (boxes, edge labels, red
    labels), as drawn: empty when the layout is readable."""
    renderer = ax.figure.canvas.get_renderer()
    drawn = []
    for text in ax.texts:
        if text.get_gid() not in ("node", "edge", "backward"):
            continue
        extent = text.get_window_extent(renderer)
        if text.get_gid() == "node":
            extent = extent.padded(0.4 * 10 * ax.figure.dpi / 72)
        drawn.append((text.get_text(), extent))
    return [(a, b) for i, (a, box_a) in enumerate(drawn) for b, box_b in drawn[i + 1:]
            if box_a.overlaps(box_b)]


def _display(ax: Axes, point: tuple[float, float]) -> tuple[float, float]:
    x, y = ax.transData.transform(point)
    return float(x), float(y)


def _border_points(a: Bbox, b: Bbox) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where the segment between the centres of boxes a and b leaves a and enters b."""
    (ax_, ay), (bx, by) = a.get_points().mean(axis=0), b.get_points().mean(axis=0)

    def exit_fraction(box: Bbox, dx: float, dy: float) -> float:
        # the fraction of (dx, dy) that stays inside box, going out from its centre
        half_w, half_h = box.width / 2, box.height / 2
        fx = half_w / abs(dx) if dx else np.inf
        fy = half_h / abs(dy) if dy else np.inf
        return float(min(fx, fy))

    dx, dy = bx - ax_, by - ay
    fa, fb = exit_fraction(a, dx, dy), exit_fraction(b, dx, dy)
    start = (float(ax_ + fa * dx), float(ay + fa * dy))
    end = (float(bx - fb * dx), float(by - fb * dy))
    return start, end


def draw_circuit(
    gates: Mapping[str, tuple[tuple[float, float], str]],
    ends: Mapping[str, tuple[tuple[float, float], str]],
    wires: Sequence[tuple[str, str, str, str]],
    ax: Axes | None = None,
) -> Axes:
    """Draw a small circuit of gates, each wire carrying its forward value above it and the
    gradient of the loss with respect to that value, in red, below it.

    Parameters
    ----------
    gates : ``{name: ((x, y), symbol)}``: a circle at ``(x, y)`` with ``symbol`` inside (e.g.
        ``"$+$"``, ``r"$\\times$"``, ``"max"``).
    ends : ``{name: ((x, y), label)}``: the circuit's loose ends, a dot at ``(x, y)`` with its
        label (e.g. ``"$x$"``) on the outer side: left of an input, right of an output.
    wires : ``(source, target, value, gradient)`` for each wire from ``source`` to ``target``
        (gates or ends), drawn from circle border to circle border with its head at the target;
        ``value`` goes over the middle of the wire, ``gradient`` under it.
    ax : where to draw; a new figure when omitted.

    ``circuit_overlaps(ax)`` lists any label that covers a gate or another label.
    """
    radius = 0.35
    points = {name: xy for name, (xy, _) in {**ends, **gates}.items()}
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    fig = ax.figure
    xs = [x for x, _ in points.values()]
    ys = [y for _, y in points.values()]
    ax.set_xlim(min(xs) - 0.9, max(xs) + 0.9)
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.set_aspect("equal")
    ax.axis("off")

    for name, ((x, y), symbol) in gates.items():
        circle = plt.Circle((x, y), radius, facecolor="white", edgecolor="k", zorder=3)
        circle.set_gid("gate")
        circle.set_label(name)
        ax.add_patch(circle)
        small = len(symbol) > 2 and "$" not in symbol  # a word such as "max"
        ax.text(x, y, symbol, ha="center", va="center", fontsize=8 if small else 11, zorder=4)

    sources = {source for source, _, _, _ in wires}
    for name, ((x, y), label) in ends.items():
        ax.plot([x], [y], "o", color="k", markersize=3, zorder=3)
        outer = -1.0 if name in sources else 1.0  # an input's label on its left
        text = ax.text(x, y, label, ha="right" if outer < 0 else "left", va="center",
                       fontsize=11, zorder=4,
                       transform=offset_copy(ax.transData, fig, x=4.0 * outer, units="points"))
        text.set_gid("end")

    for source, target, value, gradient in wires:
        (x0, y0), (x1, y1) = points[source], points[target]
        length = max(float(np.hypot(x1 - x0, y1 - y0)), 1e-9)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        if source in gates:
            x0, y0 = x0 + radius * ux, y0 + radius * uy
        if target in gates:
            x1, y1 = x1 - radius * ux, y1 - radius * uy
        arrow = ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=2,
                            arrowprops={"arrowstyle": "-|>", "color": "k", "shrinkA": 0,
                                        "shrinkB": 0 if target in gates else 3})
        arrow.set_gid("wire")
        arrow.set_label(f"{source}->{target}")  # for circuit_overlaps
        nx, ny = -uy, ux  # left of the wire's direction; "up" for a wire running right
        if ny < 0:
            nx, ny = -nx, -ny
        mid = ((x0 + x1) / 2, (y0 + y1) / 2)
        for text, side, color, gid in ((value, 1.0, "k", "value"),
                                       (gradient, -1.0, "C3", "gradient")):
            sx, sy = side * nx, side * ny
            label = ax.text(*mid, text, fontsize=10, color=color, zorder=5,
                            ha="left" if sx > 0.35 else "right" if sx < -0.35 else "center",
                            va="bottom" if sy > 0.35 else "top" if sy < -0.35 else "center",
                            transform=offset_copy(ax.transData, fig, x=3.0 * sx, y=3.0 * sy,
                                                  units="points"))
            label.set_gid(gid)
    return ax


def circuit_overlaps(ax: Axes) -> list[tuple[str, str]]:
    """What covers what in a ``draw_circuit`` picture, as drawn: pairs of labels or gates (a
    gate is named by its key in ``gates``) that overlap, and wires (``"source->target"``) that
    run through a gate other than their own ends. Empty when the layout is readable."""
    renderer = ax.figure.canvas.get_renderer()
    drawn = [(text.get_text(), text.get_window_extent(renderer)) for text in ax.texts
             if text.get_gid() in ("value", "gradient", "end")]
    circles = [patch for patch in ax.patches if patch.get_gid() == "gate"]
    drawn += [(circle.get_label(), circle.get_window_extent(renderer)) for circle in circles]
    found = [(a, b) for i, (a, box_a) in enumerate(drawn) for b, box_b in drawn[i + 1:]
             if box_a.overlaps(box_b)]
    for wire in ax.texts:
        if wire.get_gid() != "wire":
            continue
        source, target = wire.get_label().split("->")
        (x0, y0), (x1, y1) = wire.xyann, wire.xy  # type: ignore[attr-defined]
        for circle in circles:
            if circle.get_label() in (source, target):
                continue
            (cx, cy), r = circle.center, circle.radius
            t = np.clip(((cx - x0) * (x1 - x0) + (cy - y0) * (y1 - y0))
                        / max((x1 - x0) ** 2 + (y1 - y0) ** 2, 1e-12), 0.0, 1.0)
            if np.hypot(x0 + t * (x1 - x0) - cx, y0 + t * (y1 - y0) - cy) < r:
                found.append((wire.get_label(), circle.get_label()))
    return found
