"""Which web pages may talk to the gateway: the ``Host`` it answers to, and requests a browser
sends on behalf of another site.

A service on 127.0.0.1 is reachable from every web page its user opens. Two ways in, and the
answer to each, the way Jupyter Server answers them:

* **DNS rebinding.** A page of ``attacker.example`` makes its name resolve to 127.0.0.1 and then
  reads the service's answers as same-origin ones. Its requests still carry
  ``Host: attacker.example``, so a service on loopback answers only the hosts it knows
  (``HostPolicy``): the loopback names, its own address and those of
  ``GRADBOOK_ALLOWED_HOSTS``; others get 403. Listening on another address, where remote clients
  are the point and the token is required, any host is answered unless the setting names them.
* **Cross-site requests.** Any page may *send* a POST to ``http://127.0.0.1:8888/…`` (a form, or
  ``fetch`` in ``no-cors`` mode) even though it cannot read the answer: without a token that is
  enough to change a model. Browsers say where a request comes from (``Sec-Fetch-Site``, and
  ``Origin`` in older ones), so a request that changes state and comes from another site or
  origin (``cross_site``) is refused unless it carries the token, which no other page has.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # methods that change nothing
SAME_ORIGIN = ("same-origin", "none")  # Sec-Fetch-Site of the page's own requests, or typed in


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port: ``[::1]:8888`` → ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostPolicy:
    """The hosts a service listening on ``listen_host`` answers to (see the module docstring).

    ``allowed`` is ``GRADBOOK_ALLOWED_HOSTS``: comma-separated names or addresses, or ``*``.
    """

    def __init__(self, listen_host: str, allowed: str = "") -> None:
        names = {name.strip().lower() for name in allowed.split(",") if name.strip()}
        self.any = "*" in names or (not names and not is_loopback(listen_host))
        self.names = {*LOOPBACK_NAMES, listen_host.strip("[]").lower(), *names}

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header is answered. A request without one
        (HTTP/1.0, a health checker) comes from no browser, which always sends it."""
        if self.any or header is None:
            return True
        name = host_name(header)
        return name in self.names or is_loopback(name)


def cross_site(method: str, headers: Mapping[str, str]) -> bool:
    """Whether a browser sent this request, one that may change state, for a page of another
    site or origin.

    ``Sec-Fetch-Site`` decides where the browser sends it (every current browser does): only
    ``same-origin`` (the service's own page) and ``none`` (typed in, a bookmark) pass; a page on
    another port of the same machine is ``same-site`` and is refused too. Older browsers send
    ``Origin`` with a cross-origin POST: it must name the host the request was sent to. A
    request with neither header comes from no browser.
    """
    if method.upper() in SAFE_METHODS:
        return False
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        return site.strip().lower() not in SAME_ORIGIN
    origin = headers.get("Origin")
    if origin is None:
        return False
    host = (headers.get("Host") or "").strip().lower()
    return origin.strip().lower() == "null" or urlsplit(origin.strip()).netloc.lower() != host
