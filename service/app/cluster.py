"""``gradbook cluster`` (``make cluster``): several replicas behind HAProxy, one store.

What it runs, in this order (and stops in the reverse one):

1. PostgreSQL (``gradbook_service.app.postgres.PostgresServer`` in ``.gradbook/postgres``, or in
   ``postgres`` under ``GRADBOOK_CLUSTER_DIR`` if that is set, as are the logs; port
   ``GRADBOOK_PG_PORT``, default 55432), unless ``GRADBOOK_STORE`` already is a
   ``postgresql://`` URL, which is then used as it is;
2. ``GRADBOOK_REPLICAS`` (default 2) replicas, each ``gradbook serve`` on 127.0.0.1,
   port ``GRADBOOK_PORT + i`` (i = 1 … N), with every other ``GRADBOOK_*`` setting of this
   environment (token, kernels, limits, ``GRADBOOK_TRAINING_WORKER`` …). The first is started
   alone and the others once it is ready: it creates the store's schema and default models;
3. HAProxy (``Balancer``), listening on ``GRADBOOK_HOST:GRADBOOK_PORT`` and routing to the
   replicas whose ``GET /readyz`` answers 200.

How the balancer is set up, and why:

* Active health checks of ``GET /readyz`` every 500 ms, down after 2 failures, up after 1
  success, and a server is also marked down at its first connection error (``observe layer4``):
  a dead replica stops getting requests within about a second, a replica whose store is
  unreachable (``/readyz`` 503) too.
* Retries: ``retries 3`` with ``option redispatch 1`` sends every retry to another server.
  HAProxy's ``retry-on`` does *not* look at the method: any condition listed there retries
  POST, PUT and DELETE as well, even those a server may already have acted on (HAProxy's own
  retries tutorial says nothing about idempotency, and ``http-request disable-l7-retry`` exists
  for this). So: ``conn-failure`` (the connection was never made, so the request never reached
  a replica: always safe) for everything, and ``empty-response`` (the replica died after
  reading the request) only for requests that change nothing: GET, HEAD and the POSTs of
  ``/models/:name/predict`` and ``/models/:name/gradients``. A train, create, reset, change or
  delete cut short by a dying replica gets one 502 and is not repeated behind the client's back.
* HAProxy's own answers (400, 408, 500, 502, 503, 504 …) carry the service's JSON error body
  ``{"error": {"status": …, "message": …}}`` (``errorfile``s generated beside the config), a 503
  with ``Retry-After`` as the service's own.
* Headers, ``Authorization`` included, pass through untouched; ``X-Forwarded-For`` is added.

Everything it writes is private to the user running it (file mode mask 077), but for the folder
that holds PostgreSQL's data folder, which the server's OS user must be able to pass through
when we are root (mode 0711: others may enter it, not list it).

Ctrl-C or SIGTERM stops the replicas (SIGTERM to each one's process group: gateway, kernels
and training worker), then HAProxy, then PostgreSQL, and exits 0. A replica that dies is
reported and started again (at most once per ``RESTART_SECONDS``); the others serve meanwhile,
and the balancer sends it requests again once its ``/readyz`` answers. The cluster's own
PostgreSQL is started again the same way (the replicas answer 503 until it is back).
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType

from gradbook_service.gateway.processes import stop_process
from gradbook_service.gateway.settings import SettingError

from gradbook.store import private_folder

STATE = Path(".gradbook")  # in the folder it is started from; GRADBOOK_CLUSTER_DIR, if set, instead
DEFAULT_PG_PORT = 55432
START_TIMEOUT = 300.0  # a replica's first start creates and trains the default models
CHECK_INTERVAL_MS = 500
RESTART_SECONDS = 5.0  # between two starts of one replica, or of PostgreSQL
# The cluster's own settings, beside every GRADBOOK_* setting of a replica (service.settings)
REPLICAS, PG_PORT, CLUSTER_DIR = "GRADBOOK_REPLICAS", "GRADBOOK_PG_PORT", "GRADBOOK_CLUSTER_DIR"
CLUSTER_VARIABLES = (REPLICAS, PG_PORT, CLUSTER_DIR)

# HAProxy's own answers, as the service words its errors
HAPROXY_ERRORS = {
    400: ("Bad Request", "the load balancer could not read the request"),
    403: ("Forbidden", "the load balancer refused the request"),
    408: ("Request Timeout", "the request was not sent in time"),
    500: ("Internal Server Error", "the load balancer failed"),
    502: ("Bad Gateway", "the replica answering the request stopped before it answered; "
          "the request may or may not have taken effect"),
    503: ("Service Unavailable", "no replica of the service is ready; retry after "
          "Retry-After seconds"),
    504: ("Gateway Timeout", "the replica did not answer in time"),
}


class ClusterError(RuntimeError):
    """Something the cluster needs is missing or would not start; the message says what."""


def find_haproxy() -> str:
    """The ``haproxy`` program, or a ClusterError naming the Debian package."""
    found = shutil.which("haproxy") or next(
        (str(p) for p in (Path("/usr/sbin/haproxy"), Path("/usr/local/sbin/haproxy"))
         if p.is_file()), None)
    if found is None:
        raise ClusterError("HAProxy is not installed: install Debian's package `haproxy` "
                           "(sudo apt-get install haproxy), or run tools/system-packages.sh "
                           "as root")
    return found


def http_status(host: str, port: int, path: str, timeout: float = 5.0) -> int | None:
    """The status of ``GET path``, or None if nothing answers."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def wait_for_port(host: str, port: int, timeout: float,
                  alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether ``host:port`` accepts TCP connections within ``timeout`` (while ``alive()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Balancer:
    """HAProxy in front of ``backends`` (``(host, port)`` pairs), listening on ``host:port``.

    ``workdir`` receives the generated ``haproxy.cfg``, the error files, the admin socket and
    ``haproxy.log``. ``make cluster``, the tests and the benchmarks all start it through this
    class, so they test the configuration that is run.
    """

    def __init__(self, port: int, backends: list[tuple[str, int]], workdir: Path | str,
                 host: str = "127.0.0.1", server_timeout: float = 75.0,
                 check_interval_ms: int = CHECK_INTERVAL_MS) -> None:
        self.host, self.port = host, port
        self.backends = list(backends)
        self.workdir = Path(workdir).resolve()
        self.server_timeout = server_timeout
        self.check_interval_ms = check_interval_ms
        self.config_path = self.workdir / "haproxy.cfg"
        self.socket_path = self.workdir / "haproxy.sock"
        self.log = self.workdir / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def server_name(index: int) -> str:
        """The name of the ``index``-th backend (0-based) in HAProxy: ``replica1`` …"""
        return f"replica{index + 1}"

    def config(self) -> str:
        """The HAProxy configuration (see the module's docstring for the choices)."""
        errors = self.workdir / "errors"
        inter = self.check_interval_ms
        lines = [
            "# generated by service/app/cluster.py (Balancer); rewritten on every start",
            "global",
            f"    stats socket {self.socket_path} mode 600 level admin",
            "    log stdout format raw local0 info",
            "    maxconn 4096",
            "",
            "defaults",
            "    mode http",
            "    log global",
            "    option httplog",
            "    option dontlog-normal  # errors and server state changes only",
            "    option dontlognull",
            "    timeout connect 300ms  # loopback; also the pause before a retry",
            f"    timeout client {self.server_timeout:.0f}s",
            f"    timeout server {self.server_timeout:.0f}s",
            "    timeout http-request 30s",
            "    timeout http-keep-alive 30s",
            "    timeout queue 10s",
            "    timeout check 2s",
            "    retries 3",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response",
            *(f"    errorfile {status} {errors / f'{status}.http'}" for status in HAPROXY_ERRORS),
            "",
            "frontend gradbook",
            f"    bind {self._bind_address()}:{self.port}",
            "    option forwardfor",
            "    option http-buffer-request  # a whole body in hand: a retry can resend it",
            "    acl reads method GET HEAD",
            "    acl posts method POST",
            "    acl pure path_reg ^/models/[^/]+/(predict|gradients)$",
            "    http-request disable-l7-retry unless reads || posts pure",
            "    default_backend replicas",
            "",
            "backend replicas",
            "    balance roundrobin",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
            f"    default-server check inter {inter}ms fastinter {max(inter // 2, 100)}ms "
            f"downinter {inter}ms fall 2 rise 1 observe layer4 error-limit 1 on-error mark-down"
        ]
        lines += [f"    server {self.server_name(i)} {host}:{port}"
                  for i, (host, port) in enumerate(self.backends)]
        return "\n".join(lines) + "\n"

    def _bind_address(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def write(self) -> None:
        """Write the configuration and the error files into ``workdir``."""
        errors = self.workdir / "errors"
        errors.mkdir(parents=True, exist_ok=True)
        for status, (reason, message) in HAPROXY_ERRORS.items():
            body = json.dumps({"error": {"status": status, "message": message}}).encode()
            head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
                    f"Content-Length: {len(body)}", "Cache-Control: no-cache",
                    "Connection: close"]
            if status == 503:
                head.append("Retry-After: 1")
            (errors / f"{status}.http").write_bytes("\r\n".join(head).encode() + b"\r\n\r\n"
                                                    + body)
        self.config_path.write_text(self.config())

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Check and start HAProxy; return once it accepts connections."""
        haproxy = find_haproxy()
        self.write()
        check = subprocess.run([haproxy, "-c", "-q", "-f", str(self.config_path)],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise ClusterError(f"HAProxy refuses {self.config_path}:\n{check.stdout}"
                               f"{check.stderr}")
        self.socket_path.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [haproxy, "-db", "-f", str(self.config_path)], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = "::1" if host == "::" else host
        if not wait_for_port(host, self.port, timeout, lambda: self.running):
            self.stop()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise ClusterError(f"HAProxy did not listen on {self.host}:{self.port}; the end of "
                               f"its log ({self.log}):\n{tail}")

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM: at once, open connections closed)."""
        if self.process is not None:
            stop_process(self.process)

    # -- what HAProxy thinks of its servers --------------------------------------------------
    def command(self, text: str, timeout: float = 5.0) -> str:
        """One command on HAProxy's admin socket (``show stat``, ``disable server …``)."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(timeout)
            admin.connect(str(self.socket_path))
            admin.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := admin.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it: ``UP``, ``DOWN``, ``UP 1/2`` (going down) …"""
        table = self.command("show stat").lstrip("# ")
        return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(table))
                if row.get("pxname") == "replicas" and row["svname"] not in ("BACKEND",
                                                                              "FRONTEND")}

    def wait_for_states(self, wanted: dict[str, str], timeout: float = 30.0) -> dict[str, str]:
        """Wait until each named server is in its wanted state (``"UP"``/``"DOWN"``)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if all(states.get(name) == state for name, state in wanted.items()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"HAProxy's servers are {states}, not {wanted}")
            time.sleep(0.05)

    def __enter__(self) -> Balancer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


class Replica:
    """One ``python -m gradbook_service.app.launch`` of the cluster, in a process group of its
    own."""

    def __init__(self, index: int, port: int, env: dict[str, str], log: Path) -> None:
        self.index, self.port, self.log = index, port, log
        env = {**env, "GRADBOOK_HOST": "127.0.0.1", "GRADBOOK_PORT": str(port),
               "PYTHONUNBUFFERED": "1"}
        self.env = env
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gradbook_service.app.launch"], env=self.env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()

    def restart_if_stopped(self) -> None:
        """Start it again if it stopped, and say so; not sooner than ``RESTART_SECONDS`` after
        its last start (a replica that cannot start must not spin)."""
        if self.process.poll() is None or time.monotonic() - self.started < RESTART_SECONDS:
            return
        print(f"replica {self.index} (port {self.port}) stopped with exit status "
              f"{self.process.returncode}; starting it again (log {self.log})",
              file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError):  # its kernels, if any outlived it
            os.killpg(self.process.pid, signal.SIGKILL)
        self.start()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if http_status("127.0.0.1", self.port, "/readyz") == 200:
                return
            time.sleep(0.25)
        tail = self.log.read_text(errors="replace")[-3000:]
        state = (f"stopped (exit status {self.process.returncode})"
                 if self.process.poll() is not None else f"was not ready in {timeout:.0f} s")
        raise ClusterError(f"replica {self.index} (port {self.port}) {state}; the end of its "
                           f"log ({self.log}):\n{tail}")

    def stop(self) -> None:
        """SIGTERM to its process group (gateway, kernels, training worker); SIGKILL after
        30 s."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()


def int_setting(name: str, default: int, low: int, high: int | None = None) -> int:
    """The integer of variable ``name`` (``default`` when unset), or a ``SettingError``."""
    value = os.environ.get(name, "")
    allowed = f"an integer from {low} to {high}" if high else f"an integer of at least {low}"
    try:
        number = int(value) if value.strip() else default
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        raise SettingError(name.removeprefix("GRADBOOK_").lower(), name, value, allowed)
    return number


def cluster_settings() -> tuple[int, int]:
    """The cluster's own settings: replicas and PostgreSQL's port."""
    return int_setting(REPLICAS, 2, 1), int_setting(PG_PORT, DEFAULT_PG_PORT, 1, 65535)


def main() -> int:
    from gradbook_service.app.postgres import PostgresError, PostgresServer, find_binaries
    from gradbook_service.app.settings import Settings
    from gradbook_service.gateway.launch import (  # a service's rules
        USAGE_ERROR,
        port_problem,
        refusal,
    )
    from gradbook_service.gateway.origins import is_loopback

    stopping: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:  # what would stop the cluster later is one line now
        settings = Settings()
        settings.check()
        host, port = settings.host, settings.port
        replicas_wanted, pg_port = cluster_settings()
        if port + replicas_wanted > 65535:
            raise ClusterError(f"GRADBOOK_PORT {port} + {replicas_wanted} replicas exceeds 65535")
        store = os.environ.get("GRADBOOK_STORE", "")
        own_postgres = not store.startswith(("postgresql://", "postgres://"))
        find_haproxy()
        if own_postgres:
            find_binaries()
        if (reason := refusal(settings)) is not None:
            raise ClusterError(reason)
        for i in range(1, replicas_wanted + 1):
            probe = Settings(host="127.0.0.1", port=port + i, token="x")
            if (reason := refusal(probe)) is not None:
                raise ClusterError(f"replica {i}: {reason}")
        if own_postgres and (reason := port_problem(
                "127.0.0.1", pg_port, f"--pg-port or {PG_PORT}")) is not None:
            raise ClusterError(f"PostgreSQL: {reason}")
    except (ClusterError, PostgresError, SettingError) as err:
        print(f"gradbook cluster: {err}", file=sys.stderr)
        return USAGE_ERROR

    os.umask(0o077)
    state = Path(os.environ.get(CLUSTER_DIR) or STATE)
    state.mkdir(parents=True, exist_ok=True)
    if own_postgres and os.geteuid() == 0:  # PostgreSQL runs as its own OS user, which must
        state.chmod(0o711)  # pass through to its data folder
    logs = private_folder(state / "cluster")  # made so even if an older run left it open
    postgres: PostgresServer | None = None
    replicas: list[Replica] = []
    balancer: Balancer | None = None
    status = 0
    try:
        if own_postgres:
            postgres = PostgresServer(state / "postgres", pg_port)
            postgres.start()
            store = postgres.create_database("gradbook")
            print(f"PostgreSQL on 127.0.0.1:{pg_port} (data {postgres.datadir}, "
                  f"log {postgres.log}), store {store}", flush=True)
        env = {**os.environ, "GRADBOOK_STORE": store}
        if not is_loopback(host) and not settings.allowed_hosts:
            # the balancer answers remote clients; the replicas see the hosts they name
            env["GRADBOOK_ALLOWED_HOSTS"] = "*"
        for i in range(1, replicas_wanted + 1):
            if stopping:
                break
            replicas.append(Replica(i, port + i, env, logs / f"replica{i}.log"))
            if i == 1:  # the first creates the schema and the default models alone
                replicas[0].wait_ready()
        for replica in replicas[1:]:
            replica.wait_ready()
        for replica in replicas:
            print(f"replica {replica.index} on http://127.0.0.1:{replica.port} "
                  f"(log {replica.log})", flush=True)
        if not stopping:
            balancer = Balancer(port, [("127.0.0.1", r.port) for r in replicas], logs,
                                host=host, server_timeout=settings.request_timeout + 15)
            balancer.start()
            count = f"{len(replicas)} replica{'s' if len(replicas) > 1 else ''}"
            print(f"gradbook cluster listening on http://{host}:{port}: HAProxy in front of "
                  f"{count} (config {balancer.config_path}, log "
                  f"{balancer.log}); Ctrl-C stops everything", flush=True)
        postgres_started = time.monotonic()
        while not stopping:
            for replica in replicas:
                replica.restart_if_stopped()
            if balancer is not None and not balancer.running:
                print(f"HAProxy stopped (exit status {balancer.process.returncode}); see "
                      f"{balancer.log}", file=sys.stderr, flush=True)
                status = 1
                break
            if postgres is not None and not postgres.running \
                    and time.monotonic() - postgres_started >= RESTART_SECONDS:
                print(f"PostgreSQL stopped; starting it again (the replicas answer 503 until "
                      f"it is back; log {postgres.log})", file=sys.stderr, flush=True)
                postgres_started = time.monotonic()
                try:
                    postgres.start()
                except PostgresError as err:  # tried again after RESTART_SECONDS
                    print(f"PostgreSQL did not start: {err}", file=sys.stderr, flush=True)
            time.sleep(0.5)
    except (ClusterError, PostgresError) as err:
        print(f"gradbook cluster: {err}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        print("stopping the cluster", flush=True)
        for replica in replicas:
            if replica.process.poll() is None:
                os.killpg(replica.process.pid, signal.SIGTERM)
        for replica in replicas:
            replica.stop()
        if balancer is not None:
            balancer.stop()
        if postgres is not None:
            postgres.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
