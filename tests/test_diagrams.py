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


def test_draw_graph_of_notebook_05_has_no_label_over_a_box_or_another_label():
    """The layout of notebook 05's graph, with its longest labels: arrows end on the boxes'
    borders, and no box, edge label or red label covers another."""
    from gradbook.diagrams import graph_overlaps

    nodes = {
        "x": ((0, -0.6), "$x^{3} = -0.64$", None),
        "w1": ((0, 1.8), "$w_1^{3} = -0.36$", r"$\partial L/\partial w_1^{3} = -0.0142$"),
        "z1": ((2, 0.6), "$z_1 = -0.32$", r"$\Delta l_1 = -0.0221$"),
        "l1": ((4, 0.6), "$l_1 = 0.578$", r"$\partial L/\partial l_1 = -0.0908$"),
        "w2": ((4, 2.4), "$w_2 = -1.30$", r"$\partial L/\partial w_2 = -0.0403$"),
        "z2": ((6, 0.6), "$z_2 = -0.75$", r"$\Delta l_2 = -0.0696$"),
        "yhat": ((8, 0.6), r"$\hat y = 0.680$", r"$\partial L/\partial \hat y = -0.320$"),
        "L": ((10, 0.6), "$L = 0.0512$", r"$\partial L/\partial L = 1$"),
    }
    edges = [
        ("x", "z1", "$w_1^{3}$"),
        ("w1", "z1", "$x^{3} = -0.64$"),
        ("z1", "l1", r"$\sigma'(z_1) = 0.244$"),
        ("l1", "z2", "$w_2 = -1.30$"),
        ("w2", "z2", "$l_1 = 0.578$"),
        ("z2", "yhat", r"$\sigma'(z_2) = 0.218$"),
        ("yhat", "L", r"$\hat y - y = -0.320$"),
    ]
    ax = draw_graph(nodes, edges)
    assert graph_overlaps(ax) == []
    plt.close(ax.figure)


def test_graph_overlaps_reports_boxes_drawn_on_top_of_each_other():
    from gradbook.diagrams import graph_overlaps

    ax = draw_graph({"a": ((0, 0), "$a = 1$", None), "b": ((0.1, 0), "$b = 2$", None)},
                    [("a", "b", "$1$")])
    assert ("$a = 1$", "$b = 2$") in graph_overlaps(ax)
    plt.close(ax.figure)


def _gate(symbol: str = "$+$"):
    from gradbook.diagrams import draw_circuit

    return draw_circuit(
        {"g": ((2.6, 0.0), symbol)},
        {"a": ((0.0, 1.1), "$a$"), "b": ((0.0, -1.1), "$b$"), "q": ((4.8, 0.0), "$q$")},
        [("a", "g", "2.00", "1.50"), ("b", "g", "-3.00", "0.00"), ("g", "q", "2.00", "1.75")],
    )


def test_draw_circuit_writes_values_over_and_gradients_under_each_wire():
    ax = _gate("max")
    renderer = ax.figure.canvas.get_renderer()
    texts = {(t.get_gid(), t.get_text()): t for t in ax.texts}
    assert {("end", "$a$"), ("end", "$b$"), ("end", "$q$"), ("value", "-3.00"),
            ("gradient", "1.50"), ("gradient", "0.00"), ("gradient", "1.75")} <= set(texts)
    assert len([t for t in ax.texts if t.get_gid() == "wire"]) == 3  # one arrow per wire
    assert [p.get_label() for p in ax.patches if p.get_gid() == "gate"] == ["g"]
    assert any(t.get_text() == "max" for t in ax.texts)
    # on the level output wire, the value sits above the gradient, which is red
    value, gradient = texts[("value", "2.00")], texts[("gradient", "1.75")]
    assert value.get_window_extent(renderer).y0 > gradient.get_window_extent(renderer).y1
    assert gradient.get_color() == "C3"
    plt.close(ax.figure)


def test_circuit_overlaps_is_empty_for_a_gate_and_finds_what_covers_what():
    from gradbook.diagrams import circuit_overlaps, draw_circuit

    ax = _gate()
    assert circuit_overlaps(ax) == []
    plt.close(ax.figure)
    # two gates on top of each other, and a wire from a to the far gate running through both
    ax = draw_circuit({"g": ((2, 0), "$+$"), "h": ((2.1, 0), r"$\times$"), "k": ((4, 0), "$+$")},
                      {"a": ((0, 0), "$a$")}, [("a", "k", "1", "2")])
    found = circuit_overlaps(ax)
    assert ("g", "h") in found
    assert ("a->k", "g") in found and ("a->k", "h") in found
    plt.close(ax.figure)
