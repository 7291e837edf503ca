"""Every setting of the gateway, each read from a ``GRADBOOK_*`` environment variable.

A setting is one trait of ``Settings`` tagged with its variable and its default
(``.tag(env=…, fallback=…)``); ``FromEnvironment`` turns each tag into the trait's dynamic
default (the variable, read by the trait's type, or the fallback when it is unset or empty) and
into the end of its help text. Explicit configuration still wins over the environment.

``GatewaySettings`` holds what serving any notebook needs; gradbook's API adds its own
(``gradbook_service.app.settings``) in a subclass, read the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from traitlets import Bool, Enum, Float, Integer, TraitType, Unicode
from traitlets.config import Configurable

MAX_JSON_DEPTH = 32  # nesting of a request body; ours need 4, Python's recursion limit is ~1000
# "1" in the kernels' environment when the gateway asks for a token: the kernels never see the
# token itself, but the description they serve must say whether one is needed.
TOKEN_REQUIRED = "GRADBOOK_TOKEN_REQUIRED"

def flag(value: str) -> bool:
    """``"1"`` or ``"0"``, as an on/off environment variable is spelled."""
    if value not in ("0", "1"):
        raise ValueError(value)
    return value == "1"


# How a variable is read for each type of trait, and what the error calls a bad value.
READERS: dict[type, tuple[Callable[[str], Any], str]] = {
    Unicode: (str, "text"),
    Integer: (int, "an integer"),
    Float: (float, "a number"),
    Bool: (flag, "0 or 1"),
    Enum: (str, "one of its values"),  # allowed() names the values
}


class FromEnvironment(Configurable):
    """A ``Configurable`` whose traits tagged ``env`` and ``fallback`` default to that variable.

    The defaults are attached in ``__init_subclass__``, before traitlets sets the class up, so
    they are dynamic defaults like those of ``@default`` methods.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, trait in list(vars(cls).items()):
            if isinstance(trait, TraitType) and "env" in trait.metadata:
                env, fallback = trait.metadata["env"], trait.metadata["fallback"]
                trait.help += f" ({env}, default {fallback if fallback != '' else 'unset'})."
                setattr(cls, f"_{name}_default", _reader(trait, env, fallback))


class SettingError(ValueError):
    """A setting's value that the service cannot use: which setting, what it got, what it
    allows. ``str()`` names the environment variable; the ``gradbook`` command names its flag
    instead when the value came from one."""

    def __init__(self, name: str, env: str, value: str, allowed: str) -> None:
        self.name, self.env, self.value, self.allowed = name, env, value, allowed
        super().__init__(self.worded(env))

    def worded(self, source: str) -> str:
        return f"{source} must be {self.allowed}; got {self.value!r}"


def allowed(trait: TraitType) -> str:
    """What a trait accepts, in words: ``an integer from 1 to 65535``, ``text or json``."""
    if isinstance(trait, Enum):
        *others, last = map(str, trait.values)
        return f"{', '.join(others)} or {last}" if others else last
    kind = READERS[type(trait)][1]
    low, high = getattr(trait, "min", None), getattr(trait, "max", None)
    if high is not None and not math.isfinite(high):
        high = None
    if low is not None and high is not None:
        return f"{kind} from {low} to {high}"
    if low is not None:
        return f"{kind} of at least {low}"
    return kind


def _reader(trait: TraitType, env: str, fallback: Any) -> Callable[[Configurable], Any]:
    parse = READERS[type(trait)][0]

    def read(self: Configurable) -> Any:
        value = os.getenv(env, "")
        if not value:
            return fallback
        try:
            parsed = parse(value.strip())
        except ValueError:
            parsed = None
        low, high = getattr(trait, "min", None), getattr(trait, "max", None)
        if parsed is None or (isinstance(parsed, float) and not math.isfinite(parsed)) \
                or (low is not None and parsed < low) or (high is not None and parsed > high) \
                or (isinstance(trait, Enum) and parsed not in trait.values):
            raise SettingError(trait.name, env, value, allowed(trait))
        return parsed

    return read


class GatewaySettings(FromEnvironment):
    """The gateway's configuration, for any notebook it serves; each trait's help names its
    environment variable."""
    host = Unicode(config=True, help="Address to listen on").tag(
        env="GRADBOOK_HOST", fallback="127.0.0.1")
    port = Integer(min=1, max=65535, config=True, help="Port to listen on").tag(
        env="GRADBOOK_PORT", fallback=8888)
    kernels = Integer(min=1, config=True, help="Kernels in the pool").tag(
        env="GRADBOOK_KERNELS", fallback=2)
    token = Unicode(
        config=True,
        help="When set, every endpoint but /, /healthz and /readyz requires "
        "'Authorization: token <value>' (or 'Bearer <value>')",
    ).tag(env="GRADBOOK_TOKEN", fallback="")
    allow_open = Bool(
        config=True,
        help="1: listen on an address other than loopback without GRADBOOK_TOKEN (0: refuse to "
        "start)",
    ).tag(env="GRADBOOK_ALLOW_OPEN", fallback=False)
    log_format = Enum(
        ("text", "json"), config=True,
        help="How the log is written: 'text', one line per record ('[I 2026-12-07 "
        "13:06:25.482 gradbook] …'), or 'json', one JSON object per line for a log pipeline",
    ).tag(env="GRADBOOK_LOG_FORMAT", fallback="text")
    max_body_bytes = Integer(
        min=1, config=True, help="Largest request body accepted, in bytes; larger ones get 413"
    ).tag(env="GRADBOOK_MAX_BODY_BYTES", fallback=4 * 2**20)
    max_response_bytes = Integer(
        min=1,
        config=True,
        help="Largest response body, in bytes; a request that would get a larger one gets 400",
    ).tag(env="GRADBOOK_MAX_RESPONSE_BYTES", fallback=16 * 2**20)
    body_timeout = Float(
        min=0.001,
        config=True,
        help="Seconds a client has to send a request's headers and body, and that an idle "
        "connection is kept; then it is closed",
    ).tag(env="GRADBOOK_BODY_TIMEOUT", fallback=30.0)
    max_queue = Integer(
        min=0, config=True, help="Most requests waiting for a free kernel; more get 503"
    ).tag(env="GRADBOOK_MAX_QUEUE", fallback=1000)
    max_pending_bytes = Integer(
        min=1, config=True,
        help="Most bytes of requests and answers the gateway holds at once: bodies being "
        "received, requests waiting for or running on a kernel, answers not yet sent; a request "
        "that would go past it gets 503",
    ).tag(env="GRADBOOK_MAX_PENDING_BYTES", fallback=128 * 2**20)
    max_connections = Integer(
        min=1, config=True,
        help="Most client connections open at once; one more is answered 503 and closed",
    ).tag(env="GRADBOOK_MAX_CONNECTIONS", fallback=4096)
    allowed_hosts = Unicode(
        config=True,
        help="Comma-separated host names (and addresses) the service answers to in the Host "
        "header besides the loopback names and GRADBOOK_HOST; '*' for any. Others get 403: a "
        "web page's DNS rebinding cannot reach the service. Unset with a non-loopback "
        "GRADBOOK_HOST, any host is answered",
    ).tag(env="GRADBOOK_ALLOWED_HOSTS", fallback="")
    request_timeout = Float(
        min=0.001, config=True,
        help="Seconds a request's cell may run; then it gets 504 and its kernel is interrupted "
        "(replaced if the interrupt does not take). Training jobs are not bounded by it",
    ).tag(env="GRADBOOK_REQUEST_TIMEOUT", fallback=60.0)
    max_batch = Integer(
        min=1, config=True,
        help="Most queued requests a kernel that becomes free takes into one execution",
    ).tag(env="GRADBOOK_MAX_BATCH", fallback=64)
    debug = Bool(
        config=True,
        help="1: a request whose cell raises gets the exception's name, message and the cell's "
        "traceback in its 500 answer, besides the error id the log names (0: the id only). For "
        "development: a traceback can show what a caller should not see",
    ).tag(env="GRADBOOK_DEBUG", fallback=False)
    reload = Bool(
        config=True,
        help="1: when a served notebook's file changes, serve its new version (started beside "
        "the old one, which serves until the new one is ready); a folder's new notebooks are "
        "served and deleted ones stop. For development",
    ).tag(env="GRADBOOK_RELOAD", fallback=False)

    @property
    def token_required(self) -> bool:
        """Whether requests need the token (known to the kernels too, which lack the token)."""
        return bool(self.token) or os.getenv(TOKEN_REQUIRED) == "1"

    def check(self) -> None:
        """Read every setting now, so that a bad one is a ``SettingError`` at start-up, not
        later in a kernel or a request."""
        for name in self.trait_names(config=True):
            getattr(self, name)

    @classmethod
    def env(cls, name: str) -> str:
        """The environment variable of setting ``name``."""
        return cls.class_traits()[name].metadata["env"]
