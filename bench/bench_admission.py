"""How long the slowest training request the service admits really takes, against its estimate.

``service/app/limits.py`` admits a training request when ``training_seconds`` (a cost model of
``MLP.fit``) estimates it under ``max_train_seconds`` (60 s by default), and the estimate is meant
to be an upper bound on a 2-core machine. This benchmark builds the worst requests those limits
let through and times them, to say how long a kernel can really be held by one request and how
good the estimate is (ratio measured / estimate: above 1 the estimate is not an upper bound here).

Each shape is one kind of worst case, scaled up until its estimate sits just under the budget
(0.99 × ``max_train_seconds``) while respecting every other limit in force: at most
``MAX_LAYERS`` sizes and ``MAX_PARAMETERS`` parameters (counted with biases, as ``POST /models``
does), examples × widest layer ≤ ``MAX_ELEMENTS``, epochs ≤ ``max_epochs``, and no more examples
than the tersest JSON body under ``max_body_bytes`` can carry (``[0,1]`` rows, labels ``0``):

* per-step overhead: ``[1, 1]`` and 16 sizes of 1, batch 1, sigmoid, tanh and relu;
* the digits networks ``[64, 10]`` and ``[64, 64, 10]`` with softmax / cross-entropy, batch 1;
* memory-bound: ``[999, 1000]``, whose update reads and writes a million weights per step,
  with batch 1 and batch 32, and ``[499, 1000, 499]`` with batch 1;
* flop-bound: ``[1, 998, 998, 1]`` (the widest two hidden layers under a million parameters)
  with the whole batch in one step;
* deep and wide: 14 hidden layers of 276 units, the whole batch and batch 1.

All use biases (more work per step than without) and synthetic data from a fixed-seed numpy
generator: inputs in [0, 1), targets in [0, 1] for half_sse, class labels for cross_entropy.
Each request runs as the service runs it, ``gradbook_service.app.training.train`` (``MLP.fit``,
then the
evaluation), in this process with plain numpy and its default BLAS threads. Any ``OPENBLAS_*``
variables set on the machine are left as they are (tests and CI run under them too); the run
prints them with the BLAS threads in use.

A whole run per shape would take a minute each, so each shape runs briefly (about 1 s by the
estimate: a few epochs, or one epoch on a fraction of the examples with the same batch size), three
times, and each time is extrapolated linearly: the epochs' time per epoch (per example, for a
fraction) times the epochs asked for, plus the evaluation once. The table gives the median of the
three and their range. The runs that stream a million weights per step at batch 1 vary most, within
a process and from one to the next (a fast and a slow mode, cause unknown): they set the
per-parameter cost of a step, which was raised from 2.5 to 3.5 ns after single steps measured up
to 1.37 times the old estimate; with OpenBLAS's two threads they now measure about 0.45 to 1.0
times the estimate, and less with ``OPENBLAS_NUM_THREADS=1``. ``--full`` then also runs the
shape with the longest extrapolated time in full, to check the extrapolation. Figures only, no
assertions on time.

The figures hold for a machine doing nothing else: the run prints the load average before, and
the CPU time other processes and the hypervisor (steal) took during the measurements. When other
work shares the two cores (the service's second kernel training at the same time, a test run),
OpenBLAS's two threads per process oversubscribe them and the small matrix products of batch-1
steps slow down most: ``[999, 1000]`` at batch 1 measured several times its estimate here at a
load average of 3.

    .venv/bin/python bench/bench_admission.py [--full]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
from gradbook_service.app import limits
from gradbook_service.app.settings import MAX_ELEMENTS, MAX_LAYERS, MAX_PARAMETERS, Settings
from gradbook_service.app.training import TrainingData, train
from threadpoolctl import threadpool_info

from gradbook.network import MLP

FILL = 0.99  # each shape is scaled until its estimate is this fraction of the budget
SHORT_SECONDS = 1.0  # estimated seconds of each short run
REPEATS = 3  # short runs per shape: the median is reported, and the range
# {"data":{"X":[...],"Y":[...]},"epochs":10000,"lr":0.001,"batch_size":32} without the rows
ENVELOPE_BYTES = 80


@dataclass(frozen=True)
class Shape:
    """One worst-case network and batch size; ``n`` and ``epochs`` are chosen by ``scale``."""

    what: str
    sizes: list[int]
    activation: str
    loss: str
    batch_size: int | None

    @property
    def label(self) -> str:
        runs: list[str] = []
        sizes = self.sizes
        i = 0
        while i < len(sizes):  # 16 sizes of 1 read 1x16
            j = i
            while j < len(sizes) and sizes[j] == sizes[i]:
                j += 1
            runs.append(f"{sizes[i]}x{j - i}" if j - i > 2 else "-".join([str(sizes[i])] * (j - i)))
            i = j
        return f"{'-'.join(runs)} {self.activation}"


def deep_wide_width() -> int:
    """Widest ``w`` with ``[1] + [w] * 14 + [1]`` under ``MAX_PARAMETERS`` (biases counted)."""
    w = 1
    while parameters([1] + [w + 1] * (MAX_LAYERS - 2) + [1]) <= MAX_PARAMETERS:
        w += 1
    return w


def parameters(sizes: list[int]) -> int:
    """Parameters as ``POST /models`` counts them: weights and biases."""
    return sum(a * b + b for a, b in pairwise(sizes))


def shapes() -> list[Shape]:
    w = deep_wide_width()
    deep_wide = [1] + [w] * (MAX_LAYERS - 2) + [1]
    narrow = [1] * MAX_LAYERS
    activations = ("sigmoid", "tanh", "relu")
    out = [Shape("per-step overhead", [1, 1], a, "half_sse", 1) for a in activations]
    out += [Shape("per-layer overhead", narrow, a, "half_sse", 1) for a in activations]
    out += [
        Shape("digits, one at a time", [64, 10], "tanh", "cross_entropy", 1),
        Shape("digits, one at a time", [64, 64, 10], "tanh", "cross_entropy", 1),
        Shape("digits, one at a time", [64, 64, 10], "sigmoid", "cross_entropy", 1),
        Shape("memory-bound update", [999, 1000], "sigmoid", "half_sse", 1),
        Shape("memory-bound update", [499, 1000, 499], "sigmoid", "half_sse", 1),
        Shape("memory-bound update", [999, 1000], "sigmoid", "half_sse", 32),
        Shape("memory-bound update", [999, 1000], "tanh", "half_sse", 32),
        Shape("flop-bound products", [1, 998, 998, 1], "sigmoid", "half_sse", None),
        Shape("flop-bound products", [1, 998, 998, 1], "relu", "half_sse", None),
        Shape("deep and wide", deep_wide, "sigmoid", "half_sse", None),
        Shape("deep and wide", deep_wide, "sigmoid", "half_sse", 1),
    ]
    for s in out:
        assert len(s.sizes) <= MAX_LAYERS and parameters(s.sizes) <= MAX_PARAMETERS, s
    return out


def body_rows(shape: Shape, max_body_bytes: int) -> int:
    """Most examples the tersest JSON body can carry: ``[0,0,…],`` per row of X, and a label
    ``0,`` (cross_entropy) or a row ``[0,…],`` (half_sse) per row of Y."""
    d_in, d_out = shape.sizes[0], shape.sizes[-1]
    row = 2 * d_in + 2 + (2 if shape.loss == "cross_entropy" else 2 * d_out + 2)
    return (max_body_bytes - ENVELOPE_BYTES) // row


@dataclass(frozen=True)
class Request:
    shape: Shape
    net: MLP
    n: int
    epochs: int
    estimate: float


def scale(shape: Shape, settings: Settings) -> Request:
    """The most examples and epochs whose estimate stays under ``FILL`` × the budget: the
    fewest epochs that reach it with the most examples allowed, then as many examples as fit."""
    net = MLP(shape.sizes, shape.activation, shape.loss, bias=True, seed=0)
    n_max = min(MAX_ELEMENTS // max(shape.sizes), body_rows(shape, settings.max_body_bytes))
    target = FILL * settings.max_train_seconds

    def estimate(n: int, epochs: int) -> float:
        return limits.training_seconds(net, n, epochs, shape.batch_size)

    epochs = min(settings.max_epochs, max(1, math.ceil(target / estimate(n_max, 1))))
    lo, hi = 1, n_max  # the largest n with estimate(n, epochs) <= target, or 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if estimate(mid, epochs) <= target else (lo, mid - 1)
    limits.check_training(net, lo, epochs, shape.batch_size, settings.max_train_seconds)
    return Request(shape, net, lo, epochs, estimate(lo, epochs))


def synthetic(shape: Shape, n: int) -> TrainingData:
    """``n`` examples as a request would send them, evaluated on themselves."""
    rng = np.random.default_rng(0)
    X = rng.random((n, shape.sizes[0]))
    d_out = shape.sizes[-1]
    Y: Any = (
        rng.integers(0, d_out, n) if shape.loss == "cross_entropy" else rng.random((n, d_out))
    )
    return TrainingData(X, Y, X, Y, "request", "training")


class TimedMLP(MLP):
    """An ``MLP`` whose ``fit`` records when it starts and when each epoch ends."""

    marks: list[float]

    def fit(self, *args: Any, **kwargs: Any) -> list[float]:
        self.marks = [time.perf_counter()]
        kwargs["callback"] = lambda *_: self.marks.append(time.perf_counter())
        return super().fit(*args, **kwargs)


def run(request: Request, m: int, epochs: int) -> tuple[float, float]:
    """Train a fresh copy of ``request.net`` on ``m`` examples for ``epochs`` as the service
    does; the seconds of the whole ``train`` call and of ``fit``'s epochs."""
    shape = request.shape
    net = TimedMLP(shape.sizes, shape.activation, shape.loss, bias=True, seed=0)
    net.metadata.update(runs=[], curve=[])
    data = synthetic(shape, m)
    lr = 0.01 / (shape.batch_size or m)  # the loss is a sum over the batch: keep steps small
    start = time.perf_counter()
    train(net, data, epochs, lr, shape.batch_size)
    total = time.perf_counter() - start
    return total, net.marks[-1] - net.marks[0]


def short_runs(request: Request) -> tuple[str, list[float]]:
    """Short runs of ``request``, each one's time extrapolated to the whole request, sorted."""
    n, batch = request.n, request.shape.batch_size
    per_epoch = limits.training_seconds(request.net, n, 1, batch)
    if batch is None or per_epoch <= SHORT_SECONDS:
        m, epochs = n, max(1, min(request.epochs, int(SHORT_SECONDS / per_epoch)))
    else:  # one epoch on a fraction of the examples, whole batches of the same size
        m, epochs = min(n, max(batch, round(n * SHORT_SECONDS / per_epoch / batch) * batch)), 1
    extrapolated = []
    for _ in range(REPEATS):
        total, in_epochs = run(request, m, epochs)
        extrapolated.append((total + (request.epochs - epochs) * in_epochs / epochs) * n / m)
    what = f"{epochs} ep" if m == n else f"{epochs} ep on {m / n:.1%}"
    return what, sorted(extrapolated)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds since boot that all processes used, and that the hypervisor held the CPUs
    for other machines (steal), from ``/proc/stat``; zeros where there is none."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(
                int, f.readline().split()[1:9]
            )
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def describe_blas() -> str:
    blas = [f"{i['internal_api']} {i['num_threads']} threads" for i in threadpool_info()]
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS")]
    return f"{', '.join(blas) or 'no BLAS found'}; {' '.join(env) or 'no OPENBLAS_* variables'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true",
        help="also run the request with the longest extrapolated time in full (about a minute)",
    )
    args = parser.parse_args()
    settings = Settings()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs; {describe_blas()}")
    print(f"limits: max_train_seconds {settings.max_train_seconds:g}, max_epochs "
          f"{settings.max_epochs}, max_body_bytes {settings.max_body_bytes}, MAX_ELEMENTS "
          f"{MAX_ELEMENTS}, MAX_PARAMETERS {MAX_PARAMETERS}, MAX_LAYERS {MAX_LAYERS}")
    print(f"load average (1 min) before: {os.getloadavg()[0]:.2f}; other work on the machine "
          f"slows every figure below")
    start, (busy, steal), own = time.perf_counter(), cpu_seconds(), own_seconds()
    print(f"each request scaled to an estimate of {FILL} x the budget; 'measured' is the median "
          f"of {REPEATS} short runs, each extrapolated to the whole request, 'range' their spread")
    requests = [scale(s, settings) for s in shapes()]
    run(requests[0], 1000, 2)  # warm up: first calls, BLAS threads, allocator

    header = ("shape", "kind", "n", "batch", "epochs", "short run", "estimate s", "measured s",
              "range s", "ratio")
    row = "{:<20} {:<22} {:>6} {:>5} {:>6} {:>14} {:>10} {:>10} {:>11} {:>5}"
    print(row.format(*header))
    results = []
    for r in requests:
        what, runs = short_runs(r)
        median = statistics.median(runs)
        results.append((r, median, runs[-1]))
        print(row.format(
            r.shape.label, r.shape.what, r.n, r.shape.batch_size or "all", r.epochs, what,
            f"{r.estimate:.1f}", f"{median:.1f}", f"{runs[0]:.1f}-{runs[-1]:.1f}",
            f"{median / r.estimate:.2f}",
        ), flush=True)

    def named(r: Request) -> str:
        epochs = f"{r.epochs} epoch{'s' if r.epochs > 1 else ''}"
        return f"{r.shape.label}, n={r.n}, batch {r.shape.batch_size or 'all'}, {epochs}"

    slowest, slowest_s, _ = max(results, key=lambda x: x[1])
    worst, worst_s, _ = max(results, key=lambda x: x[1] / x[0].estimate)
    high, _, high_s = max(results, key=lambda x: x[2])
    budget = settings.max_train_seconds
    print(f"slowest admitted request: {slowest_s:.1f} s (median) against a budget of {budget:g} s "
          f"({named(slowest)})")
    print(f"largest ratio measured / estimate: {worst_s / worst.estimate:.2f} ({named(worst)})")
    print(f"slowest single short run: {high_s:.1f} s extrapolated, ratio "
          f"{high_s / high.estimate:.2f} ({named(high)})")
    if args.full:
        total, _ = run(slowest, slowest.n, slowest.epochs)
        print(f"in full: {total:.1f} s, ratio {total / slowest.estimate:.2f} (extrapolated "
              f"{slowest_s:.1f} s, estimate {slowest.estimate:.1f} s; {named(slowest)})")
    busy_end, steal_end = cpu_seconds()
    others = (busy_end - busy) - (own_seconds() - own)
    print(f"during these {time.perf_counter() - start:.0f} s other processes used "
          f"{max(others, 0.0):.1f} CPU seconds and the hypervisor took {steal_end - steal:.1f} "
          f"(steal); both 0 on an idle machine")


if __name__ == "__main__":
    main()
