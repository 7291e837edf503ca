"""Request-body checks on top of ``gradbook.validation``: field names and numbers sent as strings.

Clients built around forms or spreadsheets often send numbers as strings (``{"X1": "61.1"}``).
Strings that spell a decimal number are accepted as that number; every other string is refused
by the ``gradbook.validation`` check that follows, with its usual message.

Every byte here comes from a client, so every check is linear in its input: a numeric string
longer than ``MAX_NUMBER_CHARS`` is refused before it is read, and a shorter one is checked
character by character (no regular expression, whose backtracking could cost the square of the
length) and then converted by ``int`` or ``float``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from gradbook_service.app.settings import MAX_NUMBER_CHARS

from gradbook.validation import as_matrix, brief, positive_float, positive_int

NUMBER_CHARS = frozenset("0123456789+-.eE")  # with them int/float spell only decimal numbers
NUMBER_TYPES = frozenset({int, float})  # exact types: a bool (an int subclass) is not a number
MAX_DEPTH = 2  # a matrix: a list of lists of numbers
MAX_SEED = 2**64 - 1
MAX_RATE = 1000.0  # far above any rate that trains these networks; 2**64 is a client's mistake


def numeric(name: str, value: Any) -> Any:
    """``value`` with strings that spell numbers replaced by those numbers.

    A scalar that is not a number passes unchanged, for the check that follows to refuse with
    its own message. Inside (nested) lists every entry must be a number or spell one: anything
    else (another string, a boolean, null) is a ``ValueError`` naming ``name``.
    """
    if isinstance(value, list):
        return _entry(name, value, 0)
    return _parse(name, value)


def _entry(name: str, value: Any, depth: int) -> Any:
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"{name} may nest lists at most {MAX_DEPTH} deep (rows of numbers)")
        if NUMBER_TYPES.issuperset(map(type, value)):  # the usual row: nothing to convert
            return value
        return [_entry(name, v, depth + 1) for v in value]
    value = _parse(name, value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must hold only numbers (or strings spelling them); got {brief(value)}"
        )
    return value


def _parse(name: str, value: Any) -> Any:
    """A string that spells a decimal number (``"-12"``, ``"6.1e-3"``) as that ``int`` or
    ``float``; anything else unchanged."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_NUMBER_CHARS:
        raise ValueError(
            f"{name}: a number sent as a string may have at most {MAX_NUMBER_CHARS} characters; "
            f"got {len(value)}"
        )
    text = value.strip()
    if not text or not NUMBER_CHARS.issuperset(text):  # no "inf", "nan", "1_000", "0x1f"
        return value
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            continue
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
        raise ValueError(f"unknown field(s) {brief(unknown)}; allowed: {required + optional}")
    return body


def matrix(name: str, value: Any, cols: int | None = None) -> np.ndarray:
    """``value`` as a finite float64 ``(n, cols)`` array (see ``gradbook.validation.as_matrix``)."""
    return as_matrix(name, numeric(name, value), cols)


def count(name: str, value: Any, maximum: int | None = None) -> int:
    return positive_int(name, numeric(name, value), maximum)


def rate(name: str, value: Any) -> float:
    """A learning rate: a number > 0 and at most ``MAX_RATE``."""
    value = positive_float(name, numeric(name, value))
    if value > MAX_RATE:
        raise ValueError(f"{name} must be at most {MAX_RATE:g}; got {value:g}")
    return value


def seed(name: str, value: Any) -> int:
    """A random seed: an integer from 0 to 2⁶⁴ − 1."""
    value = numeric(name, value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2**64 - 1; got {brief(value)}")
    return value


MAX_VERSION = 2**63 - 1  # a version is a bigint in the PostgreSQL store


def version(name: str, value: Any, text: bool = False) -> int:
    """A model's version: an integer of at least 1; with ``text``, its digits (a query
    argument)."""
    if text and isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise ValueError(f"{name} must be a version: an integer of at least 1; got "
                         f"{brief(value)}")
    return value
