"""The model store's part in ``/healthz`` and ``/readyz`` (the gateway's ``check``, run in a
thread; ``gradbook_service.gateway.personality.HealthHandler`` does the rest).

A folder store must be readable for liveness and readiness alike. A database store counts for
readiness only: an orchestrator that restarted every replica whenever the database blinked would
turn its outage into theirs. Either way, the answer says how many models there are when the
store was asked.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from gradbook_service.app.settings import Settings
from gradbook_service.gateway.personality import Unwell
from tornado.log import app_log

from gradbook.store import ModelStore, Store, StoreError, open_store


@cache
def _store() -> Store:
    return open_store(Settings().store)


def check(readiness: bool) -> dict[str, Any]:
    """``{"models": n}`` (``None`` when a database store is not asked); ``Unwell`` if the store
    cannot be read."""
    store = _store()
    if not (readiness or isinstance(store, ModelStore)):
        return {"models": None}
    if not store.readable():
        app_log.error("the model store %s is not readable", store.location)
        raise Unwell("the model store is not readable (the service log says more)")
    try:
        return {"models": len(store.names())}
    except StoreError as err:  # the database went away since readable()
        raise Unwell(str(err)) from None
