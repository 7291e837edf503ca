"""Pictures of small networks for the derivation notebooks: layers as circles, weights as lines."""

from __future__ import annotations

from collections.abc import Sequence

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
