"""Every setting of the service, each read from a ``GRADBOOK_*`` environment variable.

The launcher, the gateway personality and the notebook's kernels each build a ``Settings()``;
kernels inherit the launcher's environment, so all three agree (except on the token, which the
launcher hands to the gateway and removes from the kernels' environment).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from traitlets import Integer, Unicode, default
from traitlets.config import Configurable

from gradbook.store import DEFAULT_ROOT

# Fixed limits of one request, so that none holds a kernel for long or exhausts its memory.
MAX_LAYERS = 16
MAX_PARAMETERS = 1_000_000
MAX_ELEMENTS = 10_000_000  # examples × widest layer (about 80 MB per layer's outputs)
MAX_TRAINING_WORK = 20_000_000_000  # epochs × examples × parameters (tens of seconds)

T = TypeVar("T")


def from_env(trait: str, env: str, fallback: T, parse: Callable[[str], T]) -> Any:
    """A dynamic default for ``trait``: the variable ``env`` read with ``parse`` (``str`` or
    ``int``), or ``fallback`` when it is unset or empty. Explicit configuration still wins."""

    def read(self: Configurable) -> T:
        value = os.getenv(env, "")
        if not value:
            return fallback
        try:
            return parse(value)
        except ValueError:
            raise ValueError(f"{env} must be an integer; got {value!r}") from None

    return default(trait)(read)


class Settings(Configurable):
    """The service's configuration; each trait's help names its environment variable."""

    host_env = "GRADBOOK_HOST"
    host = Unicode(config=True, help="Address to listen on (GRADBOOK_HOST, default 127.0.0.1).")
    _host_default = from_env("host", host_env, "127.0.0.1", str)

    port_env = "GRADBOOK_PORT"
    port = Integer(min=1, max=65535, config=True, help="Port to listen on (GRADBOOK_PORT, 8888).")
    _port_default = from_env("port", port_env, 8888, int)

    kernels_env = "GRADBOOK_KERNELS"
    kernels = Integer(min=1, config=True, help="Kernels in the pool (GRADBOOK_KERNELS, 2).")
    _kernels_default = from_env("kernels", kernels_env, 2, int)

    store_env = "GRADBOOK_STORE"
    store = Unicode(
        config=True, help=f"Model store folder (GRADBOOK_STORE, default {DEFAULT_ROOT})."
    )
    _store_default = from_env("store", store_env, str(DEFAULT_ROOT), str)

    token_env = "GRADBOOK_TOKEN"
    token = Unicode(
        config=True,
        help="When set, every endpoint but /healthz requires 'Authorization: token <value>' "
        "(GRADBOOK_TOKEN, default unset).",
    )
    _token_default = from_env("token", token_env, "", str)

    max_body_bytes_env = "GRADBOOK_MAX_BODY_BYTES"
    max_body_bytes = Integer(
        min=1,
        config=True,
        help="Largest request body accepted, in bytes; larger ones get 413 "
        "(GRADBOOK_MAX_BODY_BYTES, default 4 MiB).",
    )
    _max_body_bytes_default = from_env("max_body_bytes", max_body_bytes_env, 4 * 2**20, int)

    max_epochs_env = "GRADBOOK_MAX_EPOCHS"
    max_epochs = Integer(
        min=1,
        config=True,
        help="Most epochs one train request may ask for; more get 400 "
        "(GRADBOOK_MAX_EPOCHS, default 10000).",
    )
    _max_epochs_default = from_env("max_epochs", max_epochs_env, 10_000, int)
