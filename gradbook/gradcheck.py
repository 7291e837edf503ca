"""Central finite differences, the numerical check behind every derivation."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np


def numerical_gradient(f: Callable[[], float], A: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """∂f/∂A by central differences (f(A + ε) − f(A − ε)) / 2ε, one entry at a time.

    ``A`` is perturbed in place (and restored), so ``f`` must read it rather than a copy.
    """
    grad = np.zeros_like(A, dtype=np.float64)
    for i in np.ndindex(A.shape):
        old = A[i]
        A[i] = old + eps
        plus = f()
        A[i] = old - eps
        minus = f()
        A[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / (‖a‖ + ‖b‖), and 0 when both are zero: scale-free and safe near zero entries."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def gradcheck(
    f: Callable[[], float],
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    eps: float = 1e-6,
) -> float:
    """Largest relative error between analytic ``grads`` and finite differences of ``f``.

    Examples
    --------
    >>> gradcheck(lambda: net.loss(X, Y), net.parameters, net.gradients(X, Y))  # doctest: +SKIP
    """
    if len(params) != len(grads):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    errors = []
    for P, G in zip(params, grads, strict=True):
        if np.shape(P) != np.shape(G):
            raise ValueError(f"gradient shape {np.shape(G)} does not match parameter {np.shape(P)}")
        errors.append(relative_error(G, numerical_gradient(f, P, eps)))
    return max(errors, default=0.0)


@contextmanager
def shape_errors_fail(what: str) -> Iterator[None]:
    """Report numpy refusing a formula as a failed check: an AssertionError naming ``what``.

    A wrong formula usually fails an ``assert`` (a wrong number or shape). It may also ask numpy
    for something impossible: a product of arrays whose shapes do not fit (ValueError) or an
    entry that does not exist (IndexError). That is a failed check too, and the notebooks report
    it as one, so that every wrong derivation stops a notebook the same way.
    """
    try:
        yield
    except (ValueError, IndexError) as err:
        raise AssertionError(f"{what}: {err}") from err


def derivation(f: Callable) -> Callable:
    """Mark ``f`` as code implementing derived formulas: numpy refusing it is a failed check
    (``shape_errors_fail``)."""

    @functools.wraps(f)
    def checked(*args: np.ndarray) -> object:
        with shape_errors_fail(f.__name__):
            return f(*args)

    return checked
