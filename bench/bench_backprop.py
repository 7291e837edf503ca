"""Vectorised batch backprop (notebook 07/08) against its baseline, one example at a time.

The derivations first compute gradients for one example (notebooks 02-06) and then show that a
batch is a single matrix product (notebook 07). This prints how much that buys: time and peak
memory of ``MLP.gradients`` on a whole batch, as ratios against summing per-example gradients,
both measured in this run. Figures only, no assertions.

    .venv/bin/python bench/bench_backprop.py
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from functools import partial

import numpy as np

from gradbook import MLP, relative_error
from gradbook.datasets import load


def per_example(net: MLP, X: np.ndarray, Y: np.ndarray) -> list[np.ndarray]:
    """Baseline: Σ over rows of the single-example gradients (the loss is a sum over examples)."""
    total = [np.zeros_like(p) for p in net.parameters]
    for i in range(X.shape[0]):
        for acc, g in zip(total, net.gradients(X[i : i + 1], Y[i : i + 1]), strict=True):
            acc += g
    return total


def seconds(fn: Callable[[], object], budget: float = 0.5) -> float:
    """Best time of one call over repeated calls for about ``budget`` seconds."""
    best, spent = float("inf"), 0.0
    while spent < budget:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
    return best


def peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    data = load("digits")
    net = MLP([64, 64, 10], "tanh", "cross_entropy", bias=True, seed=0)
    Y_all = np.eye(10)[data.Y_train]
    print("MLP [64, 64, 10] tanh + softmax/cross-entropy, digits training rows")
    header = ("batch", "batched ms", "loop ms", "speed-up", "peak memory batched/loop")
    print(f"{header[0]:>6} {header[1]:>11} {header[2]:>9} {header[3]:>9} {header[4]:>25}")
    for n in (1, 32, 256, data.X_train.shape[0]):
        X, Y = data.X_train[:n], Y_all[:n]
        batched = partial(net.gradients, X, Y)
        looped = partial(per_example, net, X, Y)
        assert max(map(relative_error, batched(), looped())) < 1e-12
        t_batch, t_loop = seconds(batched), seconds(looped)
        mem_ratio = peak_bytes(batched) / peak_bytes(looped)
        print(f"{n:>6} {t_batch * 1e3:>11.3f} {t_loop * 1e3:>9.3f} {t_loop / t_batch:>8.1f}x "
              f"{mem_ratio:>24.2f}x")


if __name__ == "__main__":
    main()
