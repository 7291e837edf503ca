"""The model store with each change in a span of the trace of the request (or job) that made it
(``gradbook_service.gateway.tracing``; nothing when tracing is off)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradbook_service.gateway import tracing

from gradbook.network import MLP
from gradbook.store import Store

SPAN = "store commit"


class TracedStore:
    """``store``, its changes traced; everything else passed through."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def create(self, name: str, net: MLP, *args: Any, **kwargs: Any) -> MLP:
        with tracing.span(SPAN, {"gradbook.model": name, "gradbook.change": "created"}):
            return self.store.create(name, net, *args, **kwargs)

    def update(self, name: str, change: Callable[[MLP], object], what: str = "changed") -> MLP:
        with tracing.span(SPAN, {"gradbook.model": name, "gradbook.change": what}) as span:
            net = self.store.update(name, change, what)
            if span is not None:
                span.set_attribute("gradbook.version", net.metadata["version"])
            return net

    def delete(self, name: str) -> int:
        with tracing.span(SPAN, {"gradbook.model": name, "gradbook.change": "deleted"}):
            return self.store.delete(name)
