"""The real gradbook service for tests: ``python -m gradbook_service.app.launch`` (what
``make serve`` runs) on a
free loopback port, with a temporary store and 2 kernels.

Starting a gateway takes seconds, so the gateway tests share one per session (``service``) and
carry ``@pytest.mark.xdist_group("gateway")``: under ``pytest -n 2 --dist loadgroup`` one worker
runs them all. Every HTTP call has a timeout, and every reply is checked against the OpenAPI
description the service serves: its status must be documented for the operation and a JSON
body must match the documented schema.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import nbformat
import pytest
from openapi_schema_validator import OAS30Validator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # procs, soak: shared with the benchmarks
from loopback import Reply, http_request  # noqa: E402
from procs import alive, child_pids, kernel_pids  # noqa: E402

START_TIMEOUT = 120.0


def raises(message: str) -> Any:
    """``pytest.raises(ValueError)`` whose message must be exactly ``message``."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def free_port() -> int:
    """A loopback port free now (another process may still take it before the gateway does)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_run(width: int) -> int:
    """A port p such that p, p + 1, …, p + width - 1 are free now."""
    for _ in range(100):
        base = free_port()
        if base + width > 65535:
            continue
        try:
            with ExitStack() as stack:
                for port in range(base, base + width):
                    probe = stack.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def await_gateway(process: subprocess.Popen, port: int, probe: str,
                  headers: dict[str, str], log: Path) -> None:
    """Wait until ``GET probe`` on ``port`` answers 200; fail with the log's end if the
    gateway exits first or takes more than ``START_TIMEOUT``."""
    deadline = time.monotonic() + START_TIMEOUT
    while not answers(port, probe, headers):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the gateway did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def answers(port: int, path: str, headers: dict[str, str]) -> bool:
    """Whether ``GET path`` answers 200 (not: not listening yet, or another program)."""
    try:
        return http_request(port, "GET", path, None, headers, 10).status == 200
    except (OSError, http.client.HTTPException):
        return False


def write_notebook(path: Path, cells: list[str | tuple[str, str]],
                   kernel: str = "python3") -> Path:
    """A notebook of ``cells``: code, or ("markdown", text), for the kernel named ``kernel``."""
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell(cell[1]) if isinstance(cell, tuple)
        else nbformat.v4.new_code_cell(cell) for cell in cells])
    notebook.metadata["kernelspec"] = {"name": kernel, "language": "python",
                                       "display_name": "Python 3"}
    nbformat.write(notebook, path)
    return path


@contextlib.contextmanager
def running_gateway(command: list[str], cwd: Path, env: dict[str, str] | None = None,
                    probe: str = "/readyz", headers: dict[str, str] | None = None,
                    ) -> Iterator[tuple[int, subprocess.Popen, Path]]:
    """``command`` (a gateway's, without ``--port``) run in ``cwd`` on a free port, in a process
    group of its own, its output in ``cwd``/gateway-<port>.log; yields (port, process, log) once
    ``probe`` answers 200, and stops the group after (``stop_group``). ``env``: by default this
    environment without the service's settings (``gateway_env``)."""
    port = free_port()
    log = cwd / f"gateway-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([*command, "--port", str(port)], cwd=cwd,
                                   env=gateway_env(cwd) if env is None else env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await_gateway(process, port, probe, headers or {}, log)
        yield port, process, log
    finally:
        stop_group(process, log)


def await_queue(port: int, notebook: str, depth: int, seconds: float = 30) -> None:
    """Wait until ``depth`` requests wait for a kernel of ``notebook`` (its ``/metrics``)."""
    line = f'gradbook_queue_depth{{notebook="{notebook}"}} {float(depth)}'
    deadline = time.monotonic() + seconds
    while line not in http_request(port, "GET", "/metrics", None, {}, 10).body.decode():
        assert time.monotonic() < deadline, f"{depth} requests did not queue for {notebook}"
        time.sleep(0.05)


def stop_group(process: subprocess.Popen, log: Path) -> None:
    """SIGTERM to the process group; one that does not stop in 30 s is killed, and fails."""
    with contextlib.suppress(ProcessLookupError):  # a test may have stopped it
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        pytest.fail(f"SIGTERM did not stop the gateway:\n{log.read_text()[-3000:]}")


def gateway_env(workdir: Path) -> dict[str, str]:
    """This environment without the service's and the gateway's settings, runtime files in
    ``workdir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADBOOK_", "KG_"))}
    env.update(PYTHONUNBUFFERED="1", JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
    return env


class Service:
    """A running service (one gateway process and its kernels) and an HTTP client for it."""

    def __init__(
        self, workdir: Path, token: str | None = None, env: dict[str, str] | None = None,
        store: str | None = None,
    ) -> None:
        self.workdir = workdir
        # a folder, absent until the first start trains defaults; or ``store``, e.g. a
        # postgresql:// URL (without a password: diagnostics must show it as it is)
        self.store = (workdir / "store").resolve() if store is None else store
        self.token = token
        self.env = dict(env or {})  # more GRADBOOK_* settings
        self.spec: dict[str, Any] | None = None
        self.start()

    # -- process -----------------------------------------------------------------------------
    def start(self, while_starting: Callable[[], None] | None = None) -> None:
        for _ in range(3):  # another process may bind the free port before the gateway does
            if self._launch(while_starting):
                break
        else:
            raise RuntimeError(f"the service did not start:\n{self.log.read_text()[-3000:]}")
        self.kernel_pids = kernel_pids(self.process.pid)
        self.spec = self.request("GET", "/openapi.json", check=False).json()

    def _launch(self, while_starting: Callable[[], None] | None) -> bool:
        """Start the launcher on a free port; True once its /readyz answers for our store.

        ``while_starting`` is called once the process is started, before it answers.
        """
        self.port = free_port()
        env = gateway_env(self.workdir)
        env.update(GRADBOOK_HOST="127.0.0.1", GRADBOOK_PORT=str(self.port), GRADBOOK_KERNELS="2",
                   GRADBOOK_STORE=str(self.store))
        if self.token:
            env["GRADBOOK_TOKEN"] = self.token
        env.update(self.env)
        self.log = self.workdir / f"service-{self.port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gradbook_service.app.launch"], cwd=ROOT, env=env,
                stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        if while_starting is not None:
            while_starting()
        deadline = time.monotonic() + START_TIMEOUT
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                reply = self.request("GET", "/readyz", timeout=5, check=False)
            except (OSError, http.client.HTTPException):  # not up yet, or not ours: a program
                time.sleep(0.2)  # that took the free port first (a notebook's kernel) speaks
                continue  # no HTTP, and the launcher stops on the busy port: a retry follows
            if reply.status == 200:
                self._check_health(reply)
                return True
            time.sleep(0.2)
        if self.process.poll() is None:
            self.stop()
        return False

    def _check_health(self, reply: Reply) -> None:
        """The first 200 from /readyz must be a whole health document, and the service behind
        it ours: its diagnostics name our store."""
        try:
            healthy = reply.json()["status"] == "ok"
            diagnostics = self.request("GET", "/diagnostics", timeout=30, check=False).json()
            healthy = healthy and diagnostics["store"]["path"] == str(self.store)
        except (ValueError, KeyError, TypeError):
            healthy = False
        if not healthy:
            self.stop()
            raise RuntimeError(
                f"GET /readyz answered 200 with {reply.body[:500]!r} and headers "
                f"{dict(reply.headers)}\nservice log:\n{self.log.read_text()[-5000:]}"
            )

    def stop(self) -> None:
        """SIGTERM the process group (the gateway stops its kernels); fail on leaked kernels."""
        pids = child_pids(self.process.pid)
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while (living := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in living:
            os.kill(pid, signal.SIGKILL)
        assert not living, f"kernels {living} outlived the service"

    def restart(self, while_starting: Callable[[], None] | None = None) -> None:
        self.stop()
        self.start(while_starting)

    # -- client ------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> Reply:
        """One HTTP request. ``body`` is sent as JSON, ``raw`` as is; the service's token is sent
        unless ``token`` is ``""`` (none) or another value."""
        headers = dict(headers or {})
        if body is not None:
            raw = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        token = self.token if token is None else token
        if token:
            headers["Authorization"] = f"token {token}"
        reply = http_request(self.port, method, path, raw, headers, timeout)
        if check:
            check_against_spec(self.spec, method, path, reply,
                               request=(raw, headers.get("Content-Type")))
        return reply

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("PUT", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.request("DELETE", path, **kwargs)


METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")  # OpenAPI's


def check_against_spec(
    spec: dict[str, Any], method: str, path: str, reply: Reply,
    request: tuple[bytes | None, str | None] | None = None,
) -> None:
    """Fail unless ``reply`` is what the OpenAPI description promises for ``method path``.

    The status must be documented where the description says the service answers (see
    ``documented_responses``); ``default`` stands for 500 and no other status. Headers the
    response marks required must be there and match their schemas, a JSON body must match its
    schema (formats such as date-time checked), and a response without content has no body.
    ``request`` is what was sent, ``(body bytes or None, its Content-Type or None)``: given, a
    2xx reply also needs the request to be one the description calls valid.
    """
    assert isinstance(spec, dict) and "paths" in spec, f"not an OpenAPI document: {spec!r:.200}"
    assert b"Traceback" not in reply.body, reply.body
    where, operation, responses = documented_responses(spec, method, path)
    status = str(reply.status)
    if status == "500" and status not in responses:
        status = "default"
    assert status in responses, f"{method} {path}: {reply.status} is undocumented for {where}"
    response = _inline(responses[status], spec)
    for name, header in response.get("headers", {}).items():
        value = reply.headers.get(name)
        assert value is not None or not header.get("required"), f"{where} {status}: no {name}"
        if value is not None:
            _validate(_header_value(value, header["schema"]), header["schema"])
    content = response.get("content")
    media_type = _media_type(reply.headers.get("Content-Type"))
    if content is None or method.upper() == "HEAD":
        assert reply.body == b"", f"{where} {status} has no body; got {reply.body[:200]!r}"
    if content is not None:
        assert media_type in content, f"{where} {status}: Content-Type {media_type!r}"
    if content is not None and media_type == "application/json" and reply.body:
        _validate(reply.json(), content[media_type]["schema"])
        error = reply.json().get("error") if reply.status >= 400 else None
        if isinstance(error, dict):  # gradbook's errors say their status (the protocol's do not)
            assert error["status"] == reply.status, f"{where}: {reply.body!r:.200}"
    if request is not None and 200 <= reply.status < 300:
        _check_request(where, operation and _inline(operation, spec), *request)


def documented_responses(
    spec: dict[str, Any], method: str, path: str
) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """Where ``spec`` documents the answers to ``method path``: a label, the operation (or
    None) and its responses. The label is ``"POST /models/{name}/train"`` for an operation,
    ``"OTHER /models/{name}"`` for a method the path item lacks (its ``x-other-methods``), and
    ``"UNKNOWN"`` for a path that matches no template (the document's ``x-unknown-paths``)."""
    path = path.split("?")[0]
    for template, item in spec["paths"].items():
        parts = re.split(r"(\{\w+\})", template)
        pattern = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        if re.fullmatch(pattern, path):
            if method.lower() in METHODS and method.lower() in item:
                operation = item[method.lower()]
                return f"{method.upper()} {template}", operation, operation["responses"]
            if method.upper() == "OPTIONS" and "x-options" in item:  # the CORS preflight
                return f"OPTIONS {template}", None, item["x-options"]["responses"]
            return f"OTHER {template}", None, item.get("x-other-methods", {})
    return "UNKNOWN", None, spec.get("x-unknown-paths", {})


def _check_request(
    where: str, operation: dict[str, Any] | None, body: bytes | None, content_type: str | None
) -> None:
    """A request answered with 2xx must be one the (inlined) operation calls valid."""
    described = (operation or {}).get("requestBody")
    if not body:
        assert not (described or {}).get("required"), f"{where} succeeded without its body"
        return
    assert described is not None, f"{where} succeeded with a body, and it takes none"
    media_type = _media_type(content_type)
    assert media_type in described["content"], f"{where} succeeded with a {media_type!r} body"
    if media_type == "application/json":
        try:
            sent = json.loads(body)
        except ValueError:
            raise AssertionError(f"{where} succeeded with a body that is not JSON") from None
        _validate(sent, described["content"][media_type]["schema"])


def _validate(instance: Any, schema: dict[str, Any]) -> None:
    """Validate ``instance`` against an inlined OpenAPI 3.0 ``schema``, formats included."""
    OAS30Validator(schema, format_checker=OAS30Validator.FORMAT_CHECKER).validate(instance)


def _header_value(value: str, schema: dict[str, Any]) -> Any:
    """A header's text as the type its schema names (integers are digits)."""
    if schema.get("type") == "integer":
        assert re.fullmatch(r"\d+", value.strip()), f"not an integer: {value!r}"
        return int(value)
    return value


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _inline(node: Any, spec: dict[str, Any]) -> Any:
    """``node`` with every local ``$ref`` (``#/components/…``) replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for key in node["$ref"].removeprefix("#/").split("/"):
                target = target[key]
            return _inline(target, spec)
        return {key: _inline(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, spec) for item in node]
    return node


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The service shared by the gateway tests of a session (no token)."""
    running = Service(tmp_path_factory.mktemp("service"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def start_service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``start_service(token=…)`` starts another service; each is stopped after the module."""
    started: list[Service] = []

    def start(token: str | None = None, **settings: str) -> Service:
        """``settings`` are more environment variables, e.g. ``GRADBOOK_MAX_MODELS="3"``."""
        started.append(Service(tmp_path_factory.mktemp("service"), token=token, env=settings))
        return started[-1]

    yield start
    for running in started:
        running.stop()
