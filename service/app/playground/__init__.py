"""The playground page served at ``GET /``: ``index.html`` with its stylesheet and script put
inline, so the page is one response, needs nothing from the internet and no build step."""

from __future__ import annotations

from functools import cache
from pathlib import Path

HERE = Path(__file__).parent


@cache
def page() -> str:
    """The page's HTML, with ``playground.css`` and ``playground.js`` inline."""
    html = (HERE / "index.html").read_text(encoding="utf-8")
    css = (HERE / "playground.css").read_text(encoding="utf-8")
    js = (HERE / "playground.js").read_text(encoding="utf-8")
    return (html.replace("/*PLAYGROUND_CSS*/", css)
                .replace("/*PLAYGROUND_JS*/", js))
