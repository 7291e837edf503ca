"""A request's ``Accept`` header, read for the engine: which of a cell's displayed outputs it
wants (``gradbook_service.gateway.runner.choose``), and whether it asks for a stream.

Stock notebook-http ignores ``Accept``, and so does the gateway for a request that asks for no
type in particular: no header, or ``*/*`` alone (what curl and most HTTP libraries send). Ranges
that do not parse are skipped, as RFC 9110 lets a server do, rather than refused: a client whose
header the gateway cannot read gets stock's answer, not an error it never had before. Reading is
linear in the header's size (which the gateway bounds with the request's head) and keeps at most
``MAX_RANGES`` ranges.
"""

from __future__ import annotations

import re

MAX_RANGES = 64
STREAM = "text/event-stream"
ANY = "*/*"
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def ranges(header: str | None) -> list[list[str | float]] | None:
    """The media ranges of an ``Accept`` header as ``[[range, q], …]`` in its order
    (lowercase, parameters other than ``q`` dropped), or ``None`` when the request asks for no
    type in particular."""
    found: list[list[str | float]] = []
    for part in (header or "").split(",")[:MAX_RANGES]:
        media, *parameters = part.split(";")
        media = media.strip().lower()
        major, slash, minor = media.partition("/")
        if not (slash and TOKEN.fullmatch(major) and TOKEN.fullmatch(minor)) or (
                major == "*" and minor != "*"):
            continue
        q = _quality(parameters)
        if q is not None:
            found.append([media, q])
    return None if all(media == ANY for media, _ in found) else found


def _quality(parameters: list[str]) -> float | None:
    """A range's ``q`` (1 when it has none), ``None`` when it is malformed."""
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            value = value.strip()
            return float(value) if QVALUE.fullmatch(value) else None
    return 1.0


def streams(accepted: list[list[str | float]] | None) -> bool:
    """Whether the request asks for its answer as Server-Sent Events: ``text/event-stream``
    named (not through a wildcard), with a quality no other range beats."""
    if not accepted:
        return False
    best = max(float(q) for _, q in accepted)
    return any(media == STREAM and float(q) == best > 0 for media, q in accepted)
