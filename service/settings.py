"""Every setting of the service, each read from a ``GRADBOOK_*`` environment variable.

The launcher, the gateway personality and the notebook's kernels each build a ``Settings()``;
kernels inherit the launcher's environment, so all three agree (except on the token, which the
launcher hands to the gateway and removes from the kernels' environment).
"""

from __future__ import annotations

import os

from traitlets import Integer, Unicode, default
from traitlets.config import Configurable

from gradbook.store import DEFAULT_ROOT

# Fixed limits of one request, so that none holds a kernel for long or exhausts its memory.
MAX_LAYERS = 16
MAX_PARAMETERS = 1_000_000
MAX_ELEMENTS = 10_000_000  # examples × widest layer (about 80 MB per layer's outputs)
MAX_TRAINING_WORK = 20_000_000_000  # epochs × examples × parameters (tens of seconds)


def _env_int(name: str, fallback: int) -> int:
    value = os.getenv(name)
    if value is None:
        return fallback
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {value!r}") from None


class Settings(Configurable):
    """The service's configuration; each trait's help names its environment variable."""

    host_env = "GRADBOOK_HOST"
    host = Unicode(config=True, help="Address to listen on (GRADBOOK_HOST, default 127.0.0.1).")

    @default("host")
    def _host_default(self) -> str:
        return os.getenv(self.host_env, "127.0.0.1")

    port_env = "GRADBOOK_PORT"
    port = Integer(min=1, max=65535, config=True, help="Port to listen on (GRADBOOK_PORT, 8888).")

    @default("port")
    def _port_default(self) -> int:
        return _env_int(self.port_env, 8888)

    kernels_env = "GRADBOOK_KERNELS"
    kernels = Integer(min=1, config=True, help="Kernels in the pool (GRADBOOK_KERNELS, 2).")

    @default("kernels")
    def _kernels_default(self) -> int:
        return _env_int(self.kernels_env, 2)

    store_env = "GRADBOOK_STORE"
    store = Unicode(
        config=True, help=f"Model store folder (GRADBOOK_STORE, default {DEFAULT_ROOT})."
    )

    @default("store")
    def _store_default(self) -> str:
        return os.getenv(self.store_env) or str(DEFAULT_ROOT)

    token_env = "GRADBOOK_TOKEN"
    token = Unicode(
        config=True,
        help="When set, every endpoint but /healthz requires 'Authorization: token <value>' "
        "(GRADBOOK_TOKEN, default unset).",
    )

    @default("token")
    def _token_default(self) -> str:
        return os.getenv(self.token_env, "")

    max_body_bytes_env = "GRADBOOK_MAX_BODY_BYTES"
    max_body_bytes = Integer(
        min=1,
        config=True,
        help="Largest request body accepted, in bytes; larger ones get 413 "
        "(GRADBOOK_MAX_BODY_BYTES, default 4 MiB).",
    )

    @default("max_body_bytes")
    def _max_body_bytes_default(self) -> int:
        return _env_int(self.max_body_bytes_env, 4 * 2**20)

    max_epochs_env = "GRADBOOK_MAX_EPOCHS"
    max_epochs = Integer(
        min=1,
        config=True,
        help="Most epochs one train request may ask for; more get 400 "
        "(GRADBOOK_MAX_EPOCHS, default 10000).",
    )

    @default("max_epochs")
    def _max_epochs_default(self) -> int:
        return _env_int(self.max_epochs_env, 10_000)
