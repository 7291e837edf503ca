"""Request-body checks on top of ``gradbook.validation``: field names and numbers sent as strings.

Clients built around forms or spreadsheets often send numbers as strings (``{"X1": "61.1"}``).
Strings that spell a decimal number are accepted as that number; every other string is refused
by the ``gradbook.validation`` check that follows, with its usual message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from gradbook.validation import as_matrix, positive_float, positive_int

INTEGER = re.compile(r"[+-]?\d{1,300}", re.ASCII)
DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
MAX_DEPTH = 2  # a matrix: a list of lists of numbers


def numeric(name: str, value: Any) -> Any:
    """``value`` with strings that spell numbers replaced by those numbers.

    A scalar that is not a number passes unchanged, for the check that follows to refuse with
    its own message. Inside (nested) lists every entry must be a number or spell one: anything
    else (another string, a boolean, null) is a ``ValueError`` naming ``name``.
    """
    if isinstance(value, list):
        return [_entry(name, v, 1) for v in value]
    return _parse(value)


def _entry(name: str, value: Any, depth: int) -> Any:
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"{name} may nest lists at most {MAX_DEPTH} deep (rows of numbers)")
        return [_entry(name, v, depth + 1) for v in value]
    value = _parse(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must hold only numbers (or strings spelling them); got {value!r}")
    return value


def _parse(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if INTEGER.fullmatch(text):
            return int(text)
        if DECIMAL.fullmatch(text):
            return float(text)
    return value


def fields(body: Any, required: Iterable[str] = (), optional: Iterable[str] = ()) -> dict[str, Any]:
    """``body`` as a dict after checking it is a JSON object with all ``required`` fields and no
    field outside ``required`` and ``optional`` (a misspelt field is an error, not ignored)."""
    required, optional = list(required), list(optional)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValueError(f"the request body must be a JSON object; got {type(body).__name__}")
    missing = [name for name in required if name not in body]
    if missing:
        raise ValueError(f"missing field(s) {missing}; required: {required}")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: {required + optional}")
    return body


def matrix(name: str, value: Any, cols: int | None = None) -> np.ndarray:
    """``value`` as a finite float64 ``(n, cols)`` array (see ``gradbook.validation.as_matrix``)."""
    return as_matrix(name, numeric(name, value), cols)


def count(name: str, value: Any, maximum: int | None = None) -> int:
    return positive_int(name, numeric(name, value), maximum)


def rate(name: str, value: Any) -> float:
    return positive_float(name, numeric(name, value))


def seed(name: str, value: Any) -> int:
    """A random seed: an integer >= 0."""
    value = numeric(name, value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0; got {value!r}")
    return value
