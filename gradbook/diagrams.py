"""Pictures for the derivation notebooks: networks (layers as circles, weights as lines) and
computational graphs (forward values, local derivatives, gradients flowing back)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes


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
        the node (e.g. ``"$z_1 = 0.31$"``); ``backward_label`` (e.g.
        ``r"$\\partial L/\\partial z_1 = -0.02$"``) is written in red under it (over it for nodes
        above the median height), or omitted when None.
    edges : ``(source, target, local_derivative)`` for each forward step ``source -> target``:
        a black arrow labelled with ``local_derivative`` (the derivative of target with respect
        to source), written above the arrow's middle. When both ends have a backward label, a
        red dashed arrow bends back from target to source, below the black one: the gradient at
        the target times the edge's label is the gradient at the source.
    ax : where to draw; a new figure when omitted.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 4))
    for source, target, derivative in edges:
        (x0, y0), (x1, y1) = nodes[source][0], nodes[target][0]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": "k", "shrinkA": 28, "shrinkB": 28})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.18, derivative, ha="center", va="bottom",
                fontsize=9, zorder=3,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
        if nodes[source][2] is not None and nodes[target][2] is not None:
            ax.annotate("", xy=(x0, y0), xytext=(x1, y1), zorder=1,
                        arrowprops={"arrowstyle": "-|>", "color": "C3", "linestyle": "--",
                                    "shrinkA": 28, "shrinkB": 28,
                                    "connectionstyle": "arc3,rad=-0.4"})
    xs = [xy[0] for xy, _, _ in nodes.values()]
    ys = [xy[1] for xy, _, _ in nodes.values()]
    middle = float(np.median(ys))
    for (x, y), forward_label, backward_label in nodes.values():
        ax.text(x, y, forward_label, ha="center", va="center", fontsize=10, zorder=4,
                bbox={"boxstyle": "round,pad=0.4", "facecolor": "white", "edgecolor": "k"})
        if backward_label is not None:  # under the node, or over it for nodes above the middle
            above = y > middle
            ax.text(x, y + 0.4 if above else y - 0.75, backward_label, ha="center",
                    va="bottom" if above else "top", fontsize=9, color="C3", zorder=4)
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(min(ys) - 1.4, max(ys) + 1.0)
    ax.axis("off")
    return ax
