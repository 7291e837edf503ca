"""``gradbook serve NOTEBOOK.ipynb [MORE.ipynb …] [FOLDER …]``: serve notebooks' annotated
cells with the gateway, and nothing of gradbook's API.

The gateway is Jupyter Kernel Gateway in notebook-http mode with this project's personality
(``gradbook_service.gateway.personality``): each notebook gets a pool of
``GRADBOOK_KERNELS`` kernels seeded with its other cells. A lone notebook's endpoints are at the
paths its cells annotate, as stock notebook-http serves them; several, or a folder, each under
``/<stem>``. ``gradbook_service.app.launch`` serves gradbook's own API notebook with ``run``.

Before anything starts it refuses what would go wrong later or quietly: a port that is taken,
and an address reachable from other machines with no token (unless ``GRADBOOK_ALLOW_OPEN=1``).
SIGTERM or Ctrl-C (SIGINT) stops the gateway and its kernels and removes its folder of kernel
files. Everything it writes is private to the user running it (file mode mask 077).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

from gradbook_service.gateway import logs
from gradbook_service.gateway.notebooks import NotebookError, notebook_files, read_notebook
from gradbook_service.gateway.origins import is_loopback
from gradbook_service.gateway.personality import log_request
from gradbook_service.gateway.settings import TOKEN_REQUIRED, GatewaySettings, SettingError
from kernel_gateway.gatewayapp import KernelGatewayApp
from traitlets.config import Config

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
USAGE_ERROR = 2  # a setting or notebook the service cannot start with, as a bad command line
PRIVATE_UMASK = 0o077  # files and folders the service makes: its user's alone


class Companion(Protocol):
    """A process an application runs beside the gateway (gradbook's training worker)."""

    stopping: bool  # set by the stop signal, before the gateway stops

    def start(self) -> None: ...

    def stop(self) -> None: ...


def gateway_config(settings: GatewaySettings, notebooks: Sequence[Path], page: str = "",
                   check: str = "", inference_health: bool = False) -> Config:
    config = Config()
    app = config.KernelGatewayApp
    app.api = "gradbook_service.gateway.personality"
    app.ip, app.port, app.port_retries = settings.host, settings.port, 0  # a busy port is an error
    app.auth_token = settings.token
    app.answer_yes = True  # Ctrl-C stops at once instead of asking
    app.logging_config = logs.app_logging(KernelGatewayApp.__name__)  # one handler, one format
    personality = config.NotebookPersonality
    personality.notebooks = [str(path) for path in notebooks]
    personality.page, personality.check = page, check
    personality.inference_health = inference_health
    # A kernel restarted in place would come back without the notebook's seed cells and fail
    # every request; instead the engine replaces a stopped kernel with a newly seeded one.
    config.KernelManager.autorestart = False
    return config


def refusal(settings: GatewaySettings) -> str | None:
    """Why the service must not start with ``settings``, or ``None``."""
    if not (settings.token or settings.allow_open or is_loopback(settings.host)):
        return (
            f"refusing to listen on {settings.host} without a token: anyone who reaches it could "
            f"run its endpoints. Set a token (--token-file, or {settings.env('token')}), or "
            f"--allow-open ({settings.env('allow_open')}=1) to serve without one."
        )
    return port_problem(settings.host, settings.port, f"--port or {settings.env('port')}")


def port_problem(host: str, port: int, setting: str) -> str | None:
    """Why nothing can listen on ``host:port`` (``setting`` chooses it), or ``None``."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tornado binds
            probe.bind((host, port))
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            return (f"port {port} on {host} is already in use (another gradbook service?); "
                    f"stop that program or choose another port with {setting}")
        return f"cannot listen on {host}:{port}: {err.strerror}"
    return None


def checked(settings: GatewaySettings) -> None:
    """Exit with a usage error, in one line, if ``settings`` cannot be served with."""
    try:
        settings.check()
    except SettingError as err:
        usage_error(str(err))
    if (reason := refusal(settings)) is not None:
        usage_error(reason)


def usage_error(message: str) -> None:
    print(f"gradbook: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run(settings: GatewaySettings, notebooks: Sequence[Path], *, page: str = "",
        check: str = "", inference_health: bool = False, companion: Companion | None = None,
        listening: str = "gradbook gateway") -> int:
    """Serve ``notebooks`` until a stop signal; the exit status (1 if a notebook could not be
    served: its first seed failed). ``companion`` starts once the gateway listens and stops
    with it; the other arguments are ``NotebookPersonality``'s traits."""
    log = logs.log
    config = gateway_config(settings, notebooks, page, check, inference_health)
    # Kernels inherit this environment: they never see the token, only whether one is needed.
    os.environ.pop(settings.env("token"), None)
    os.environ[TOKEN_REQUIRED] = "1" if settings.token else "0"
    app = KernelGatewayApp(config=config)
    try:
        app.initialize(argv=[])
    except NotebookError as err:  # a conflict only the routes show (e.g. the page's path)
        log.critical("cannot serve %s", err)
        return 1
    # The personality installs its access log once the loop runs; a probe sent sooner (the
    # server listens already) would be logged by tornado's own, in another form.
    app.web_app.settings["log_function"] = log_request

    # Ctrl-C stops as SIGTERM does: kernels shut down, the gateway's folder removed. (The
    # gateway asks first at a terminal, and elsewhere lets KeyboardInterrupt end its loop
    # before anything is shut down.)
    def stop_once(signum: int, frame: FrameType | None) -> None:
        for each in STOP_SIGNALS:  # a second signal (Ctrl-C twice, or a supervisor's and the
            signal.signal(each, signal.SIG_IGN)  # terminal's) must not stop everything again
        if companion is not None:  # a signal to the whole group ends it too: not restarted
            companion.stopping = True
        app._signal_stop(signum, frame)

    def take_signals() -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, stop_once)

    take_signals()
    # The gateway's start() sets its own SIGTERM handler just before its loop runs: ours is
    # set again once the loop runs, so that SIGTERM too stops once and marks the companion.
    app.io_loop.add_callback(take_signals)
    log.info("%s listening on http://%s:%s (%d kernels per notebook, token %s%s)", listening,
             app.ip, app.port, settings.kernels, "required" if app.auth_token else "off",
             ", reload on" if settings.reload else "")
    if companion is not None:
        companion.start()
    try:
        app.start()
    finally:
        if companion is not None:
            companion.stop()
    if app.personality.failure is not None:
        return 1
    log.info("%s stopped", listening)
    return 0


def main(paths: Sequence[Path]) -> None:
    """``gradbook serve`` with notebooks: check everything, then serve them."""
    os.umask(PRIVATE_UMASK)
    settings = GatewaySettings()
    checked(settings)
    try:
        files = notebook_files(paths)
        for file, prefix in files:
            read_notebook(file, prefix)  # every problem the file has, before anything starts
    except NotebookError as err:
        usage_error(str(err))
    if not files and not settings.reload:
        usage_error(f"no notebook in {', '.join(map(str, paths))} (a folder's *.ipynb files are "
                    "served; with --reload, those saved into it later)")
    logs.configure(settings.log_format)
    sys.exit(run(settings, [Path(path) for path in paths]))
