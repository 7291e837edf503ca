"""The training curve of a served model as a PNG, drawn without pyplot (no global figure state)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def loss_curve_png(curve: Sequence[float], title: str) -> bytes:
    """A PNG of ``curve`` (each epoch's loss, as ``MLP.fit`` records it), on a log scale when
    the loss is positive."""
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="tight")
    ax = fig.subplots()
    if len(curve) > 0:
        ax.plot(np.arange(1, len(curve) + 1), curve, color="tab:blue")
        if min(curve) > 0:
            ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "not trained since the last reset", ha="center", transform=ax.transAxes)
    ax.set(title=title, xlabel="epoch", ylabel="loss (summed over examples)")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
