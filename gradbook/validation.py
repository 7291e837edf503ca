"""Input checks shared by the network and the service.

Every check raises ``ValueError`` with a message that names the argument and says what was
expected, so a caller (a notebook reader or an HTTP client) can fix the input from the message
alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BRIEF_CHARS = 100


def brief(value: Any) -> str:
    """``repr(value)`` cut to ``BRIEF_CHARS`` characters: a message quotes what it refuses, but
    never echoes a huge input whole."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr would cost, or refuse
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= BRIEF_CHARS else text[:BRIEF_CHARS] + "…"


def as_matrix(name: str, value: Any, cols: int | None = None) -> np.ndarray:
    """Return ``value`` as a finite float64 array of shape ``(n, cols)`` with n >= 1.

    Parameters
    ----------
    name : the argument's name, used in error messages.
    value : anything ``np.asarray`` accepts; bools, strings and objects are refused.
    cols : required number of columns, or ``None`` for any.
    """
    expected = f"(n, {cols if cols is not None else 'd'})"
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of shape {expected}: {err}") from None
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"{name} must contain real numbers; got dtype {array.dtype}")
    if array.ndim != 2 or (cols is not None and array.shape[1] != cols):
        raise ValueError(f"{name} must have shape {expected}; got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row; got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; it contains NaN or infinity")
    return array


def as_labels(name: str, value: Any, classes: int) -> np.ndarray:
    """Return integer class labels ``(n,)`` in ``[0, classes)`` as a one-hot ``(n, classes)``."""
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] == 0:
        raise ValueError(f"{name} labels must have shape (n,); got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} labels must be integers; got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= classes:
        raise ValueError(
            f"{name} labels must lie in [0, {classes}); got [{array.min()}, {array.max()}]"
        )
    return np.eye(classes)[array]


def positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    """Return ``value`` as an int >= 1 (and <= ``maximum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer; got {brief(value)}")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be at least 1{bound}; got {brief(value)}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """Return ``value`` as a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number; got {brief(value)}")
    try:
        number = float(value)  # an int beyond float's range overflows here, not in isfinite
    except OverflowError:
        number = float("inf")
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {brief(value)}")
    return number
