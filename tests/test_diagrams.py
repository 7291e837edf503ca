"""gradbook.diagrams.draw_graph: every node, edge label and backward label reaches the figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from gradbook.diagrams import draw_graph


def test_draw_graph_writes_every_label_and_one_back_arrow_per_backward_edge():
    nodes = {
        "w": ((0, 0), "$w = 1$", r"$\partial L/\partial w = 2$"),
        "x": ((0, 1), "$x = 2$", None),
        "z": ((2, 0), "$z = 2$", "$1$"),
    }
    edges = [("w", "z", "$x$"), ("x", "z", "$w$")]
    ax = draw_graph(nodes, edges)
    texts = {t.get_text() for t in ax.texts}
    assert {"$w = 1$", "$x = 2$", "$z = 2$", r"$\partial L/\partial w = 2$", "$1$", "$x$",
            "$w$"} <= texts
    arrows = [c for c in ax.get_children() if isinstance(c, matplotlib.text.Annotation)]
    assert len(arrows) == 3  # two forward arrows, one backward (x has no gradient)
    plt.close(ax.figure)
