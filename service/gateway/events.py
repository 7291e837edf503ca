"""Server-Sent Events: how a streamed request's answer is framed (``text/event-stream``).

Each line the cell prints is one event whose ``data`` is the line. The format ends a field at
CR, LF or CRLF, so a line holding a carriage return (a progress bar redrawing itself) is cut
there into several events: nothing a cell prints can end an event early or forge a field. The
last event is ``end``, with the status and headers the ``ResponseInfo`` cell set, or ``error``,
with the error the request would have answered, as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

CONTENT_TYPE = "text/event-stream; charset=utf-8"
END, ERROR = "end", "error"


def data(lines: Iterable[str]) -> bytes:
    """One event per line, a line's carriage returns splitting it."""
    parts: list[str] = []
    for line in lines:
        for piece in line.removesuffix("\r").split("\r"):
            parts.append(f"data: {piece}\n\n")
    return "".join(parts).encode("utf-8", "replace")


def last(kind: str, payload: dict[str, Any]) -> bytes:
    """The stream's last event: ``end`` or ``error`` with ``payload`` as JSON."""
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()
