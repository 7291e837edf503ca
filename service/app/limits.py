"""What one request may cost, checked before the work starts.

A kernel serves one request at a time, so a request that runs for minutes takes a kernel away
from everyone. Every limit here is checked from the request's shape alone, before any work, and
refused with a ``ValueError`` (400) that says what to send instead.

Training time is estimated by a cost model of ``MLP.fit`` (``gradbook/network.py``): each epoch
takes ``steps = ⌈n / batch_size⌉`` gradient steps, and each step has a fixed cost (Python and
numpy call overhead, per layer) plus a cost per parameter (the update reads and writes every
weight, whatever the batch) plus a cost per example in the batch (the matrix products, eqs.
8.1-8.4, and the element-wise work on every unit). The epoch's loss comes from passes the
steps make anyway (``MLP.fit``); the per-example constant still counts a pass over all ``n``
examples for it, as ``MLP.fit`` made before it recorded the running loss, so the estimate
stays an upper bound. The constants were measured on a 2-core machine with
``bench/bench_admission.py`` and rounded up (the slowest activation, with biases), so that the
estimate is an upper bound there: that benchmark prints the estimate against the measured time
of the largest runs the default limit admits.
"""

from __future__ import annotations

import math

from gradbook_service.app.settings import MAX_ELEMENTS, RESPONSE_FLOOR_BYTES

from gradbook.network import MLP

STEP_SECONDS = 4e-6  # fixed cost of one gradient step
LAYER_STEP_SECONDS = 14e-6  # per layer and step: a dozen numpy calls forward and back
PARAMETER_STEP_SECONDS = 3.5e-9  # per parameter and step: gradient and update of every weight
EXAMPLE_SECONDS = 40e-9  # per example and epoch: indexing, shuffling, the epoch's loss
EXAMPLE_PARAMETER_SECONDS = 0.15e-9  # per example and parameter: the products, forward and back
EXAMPLE_UNIT_SECONDS = 20e-9  # per example and unit: activations and their slopes
NUMBER_BYTES = 25  # a float64 in a JSON response: up to 23 characters and ", "


def check_batch(net: MLP, n: int) -> None:
    """Refuse ``n`` examples at once beyond ``MAX_ELEMENTS`` examples × widest layer: every
    layer's output is an ``(n, d_k)`` array."""
    elements = n * max(net.sizes)
    if elements > MAX_ELEMENTS:
        raise ValueError(
            f"{n} examples are too many for this network at once (examples × widest layer "
            f"{elements} > {MAX_ELEMENTS}); send fewer"
        )


def training_seconds(net: MLP, n: int, epochs: int, batch_size: int | None) -> float:
    """Estimated seconds of ``net.fit`` on ``n`` examples (an upper bound on a 2-core machine)."""
    steps = math.ceil(n / (batch_size or n))
    K = len(net.weights)
    P = sum(p.size for p in net.parameters)
    units = sum(net.sizes)
    per_step = STEP_SECONDS + K * LAYER_STEP_SECONDS + P * PARAMETER_STEP_SECONDS
    per_example = EXAMPLE_SECONDS + P * EXAMPLE_PARAMETER_SECONDS + units * EXAMPLE_UNIT_SECONDS
    return epochs * (steps * per_step + n * per_example)


def check_training(
    net: MLP, n: int, epochs: int, batch_size: int | None, max_seconds: float
) -> None:
    """Refuse a training run estimated to take longer than ``max_seconds``."""
    check_batch(net, n)
    seconds = training_seconds(net, n, epochs, batch_size)
    if seconds > max_seconds:
        steps = math.ceil(n / (batch_size or n))
        raise ValueError(
            f"this training run is estimated to take {seconds:.0f} s ({epochs} epochs × {steps} "
            f"steps, batch_size {batch_size or n}), more than the limit of "
            f"{max_seconds:g} s; use fewer epochs or examples, or a larger batch_size"
        )


def check_response(estimated_bytes: int, max_bytes: int, fewer: str) -> None:
    """Refuse a request whose response would exceed ``max_bytes``; ``fewer`` says what to cut."""
    if estimated_bytes > max_bytes:
        raise ValueError(
            f"the response would have about {estimated_bytes} bytes, more than the limit of "
            f"{max_bytes}; send {fewer}"
        )


def check_amplification(estimated_bytes: int, request_bytes: int, ratio: float,
                        fewer: str) -> None:
    """Refuse an answer of ``estimated_bytes`` to a request of ``request_bytes``, before the
    work, when it exceeds ``ratio`` times the request (and ``RESPONSE_FLOOR_BYTES``, which any
    request may have): a small request must not buy a large answer, which costs the kernel's
    time, the gateway's memory and the network's bytes."""
    allowed = max(RESPONSE_FLOOR_BYTES, int(ratio * request_bytes))
    if estimated_bytes > allowed:
        raise ValueError(
            f"the response would have about {estimated_bytes} bytes for a request of "
            f"{request_bytes}: more than {allowed}, the most an answer may have "
            f"({ratio:g} times the request's bytes, GRADBOOK_MAX_RESPONSE_RATIO, and at least "
            f"{RESPONSE_FLOOR_BYTES}); send {fewer}"
        )
