"""Every setting of the service, each read from a ``GRADBOOK_*`` environment variable.

The launcher, the gateway personality and the notebook's kernels each build a ``Settings()``;
kernels inherit the launcher's environment, so all three agree (except on the token, which the
launcher hands to the gateway and removes from the kernels' environment).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from traitlets import Bool, Float, Integer, Unicode, default
from traitlets.config import Configurable

from gradbook.store import DEFAULT_ROOT

# Fixed limits of one request, so that none holds a kernel for long or exhausts its memory.
MAX_LAYERS = 16
MAX_PARAMETERS = 1_000_000
MAX_ELEMENTS = 10_000_000  # examples × widest layer (about 80 MB per layer's outputs)
MAX_JSON_DEPTH = 32  # nesting of a request body; ours need 4, Python's recursion limit is ~1000
MAX_NUMBER_CHARS = 64  # a number sent as a string; float64 needs at most 24

T = TypeVar("T")


KINDS = {int: "an integer", float: "a number", str: "text"}


def from_env(trait: str, env: str, fallback: T, parse: Callable[[str], T]) -> Any:
    """A dynamic default for ``trait``: the variable ``env`` read with ``parse`` (``str``,
    ``int``, ``float`` or ``flag``), or ``fallback`` when it is unset or empty. Explicit
    configuration still wins."""

    def read(self: Configurable) -> T:
        value = os.getenv(env, "")
        if not value:
            return fallback
        try:
            return parse(value)
        except ValueError:
            kind = KINDS.get(parse, "0 or 1")
            raise ValueError(f"{env} must be {kind}; got {value!r}") from None

    return default(trait)(read)


def flag(value: str) -> bool:
    """``"1"`` or ``"0"``, as an on/off environment variable is spelled."""
    if value not in ("0", "1"):
        raise ValueError(value)
    return value == "1"


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

    max_train_seconds_env = "GRADBOOK_MAX_TRAIN_SECONDS"
    max_train_seconds = Float(
        min=0.001,
        config=True,
        help="Most seconds one training request may take, as estimated before it starts by "
        "service.limits (calibrated on a 2-core machine); longer runs get 400 "
        "(GRADBOOK_MAX_TRAIN_SECONDS, default 60).",
    )
    _max_train_seconds_default = from_env("max_train_seconds", max_train_seconds_env, 60.0, float)

    max_response_bytes_env = "GRADBOOK_MAX_RESPONSE_BYTES"
    max_response_bytes = Integer(
        min=1,
        config=True,
        help="Largest response body, in bytes; a request that would get a larger one gets 400 "
        "(GRADBOOK_MAX_RESPONSE_BYTES, default 16 MiB).",
    )
    _max_response_bytes_default = from_env(
        "max_response_bytes", max_response_bytes_env, 16 * 2**20, int
    )

    body_timeout_env = "GRADBOOK_BODY_TIMEOUT"
    body_timeout = Float(
        min=0.001,
        config=True,
        help="Seconds a client has to send a request's headers and body, and that an idle "
        "connection is kept; then it is closed (GRADBOOK_BODY_TIMEOUT, default 30).",
    )
    _body_timeout_default = from_env("body_timeout", body_timeout_env, 30.0, float)

    max_queue_env = "GRADBOOK_MAX_QUEUE"
    max_queue = Integer(
        min=0,
        config=True,
        help="Most requests waiting for a free kernel; more get 503 with Retry-After "
        "(GRADBOOK_MAX_QUEUE, default 64).",
    )
    _max_queue_default = from_env("max_queue", max_queue_env, 64, int)

    model_cache_env = "GRADBOOK_MODEL_CACHE"
    model_cache = Integer(
        min=1,
        config=True,
        help="Models each kernel keeps loaded, least recently used dropped first "
        "(GRADBOOK_MODEL_CACHE, default 16).",
    )
    _model_cache_default = from_env("model_cache", model_cache_env, 16, int)

    max_models_env = "GRADBOOK_MAX_MODELS"
    max_models = Integer(
        min=1,
        config=True,
        help="Most models in the store; creating one more gets 409 "
        "(GRADBOOK_MAX_MODELS, default 100).",
    )
    _max_models_default = from_env("max_models", max_models_env, 100, int)

    allow_open_env = "GRADBOOK_ALLOW_OPEN"
    allow_open = Bool(
        config=True,
        help="1: listen on an address other than loopback without GRADBOOK_TOKEN "
        "(GRADBOOK_ALLOW_OPEN, default 0: refuse to start).",
    )
    _allow_open_default = from_env("allow_open", allow_open_env, False, flag)
