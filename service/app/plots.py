"""The training curve of a served model, drawn with pyplot in the kernel that serves it.

The endpoint cell that calls ``draw_loss_curve`` prints nothing: the figure it draws is its
answer, as a figure drawn in a Jupyter cell is its output (matplotlib's inline backend renders and
closes it after the cell; ``gradbook_service.gateway.runner``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

FIGSIZE = (6.4, 4.0)  # inches; the inline backend renders at matplotlib's figure.dpi


def draw_loss_curve(curve: Sequence[float], title: str) -> Figure:
    """A pyplot figure of ``curve`` (each epoch's loss, as ``MLP.fit`` records it), on a log
    scale when the loss is positive."""
    import matplotlib.pyplot as plt  # here: pyplot's state costs every kernel that never draws

    fig = plt.figure(figsize=FIGSIZE, layout="tight")
    ax = fig.subplots()
    if len(curve) > 0:
        ax.plot(np.arange(1, len(curve) + 1), curve, color="tab:blue")
        if min(curve) > 0:
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "not trained since the last reset", ha="center", transform=ax.transAxes)
    ax.set(title=title, xlabel="epoch", ylabel="loss (summed over examples)")
    ax.grid(alpha=0.3)
    return fig
