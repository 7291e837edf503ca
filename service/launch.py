"""``gradbook serve`` (``make serve``, ``gradbook_service.cli``): serve ``notebooks/api.ipynb``
with the gateway.

On the first start (no store folder yet, or a database without gradbook's tables) the default
models are created and trained. Then the gateway starts in notebook-http mode through
``gradbook_service.personality`` with a pool of kernels, each seeded with the notebook's
non-endpoint cells. All settings come from ``GRADBOOK_*`` environment variables
(``gradbook_service.settings``), which the command's flags set. SIGTERM or Ctrl-C (SIGINT)
stops the gateway, its kernels and the training worker, and removes the gateway's folder of
kernel files.

Before anything starts it refuses what would go wrong later or quietly: a port that is taken,
and an address reachable from other machines with no token (unless ``GRADBOOK_ALLOW_OPEN=1``).

Everything the service writes (the store, job records, kernels' files, logs it opens) is
private to the user running it: the launcher sets the file mode mask to 077 for itself and
every process it starts.

Once the settings are known to be usable, everything the launcher, the gateway and tornado log
goes to standard error in one format, ``GRADBOOK_LOG_FORMAT`` (``gradbook_service.logs``); a
setting it cannot start with is still one plain line, as the ``gradbook`` command's own errors.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import FrameType

from gradbook_service import logs, trainer
from gradbook_service.jobs import open_jobs
from gradbook_service.origins import is_loopback
from gradbook_service.personality import log_request
from gradbook_service.processes import stop_process
from gradbook_service.settings import TOKEN_REQUIRED, SettingError, Settings
from gradbook_service.training import create_default_models
from kernel_gateway.gatewayapp import KernelGatewayApp
from tornado.ioloop import PeriodicCallback
from tornado.log import app_log
from traitlets.config import Config

from gradbook.store import ModelStore, StoreError, open_store

# notebooks/api.ipynb, shipped inside the package (a link to it in a clone)
NOTEBOOK = (Path(__file__).parent / "notebooks" / "api.ipynb").resolve()
PAGE = "gradbook_service.playground:page"  # the page the gateway serves at GET /
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
USAGE_ERROR = 2  # a setting the service cannot start with, as a bad command line
PRIVATE_UMASK = 0o077  # files and folders the service makes: its user's alone


def gateway_config(settings: Settings) -> Config:
    config = Config()
    app = config.KernelGatewayApp
    app.api = "gradbook_service.personality"
    app.seed_uri = str(NOTEBOOK)
    app.ip, app.port, app.port_retries = settings.host, settings.port, 0  # a busy port is an error
    app.prespawn_count = settings.kernels
    app.auth_token = settings.token
    app.answer_yes = True  # Ctrl-C stops at once instead of asking
    app.logging_config = logs.app_logging(KernelGatewayApp.__name__)  # one handler, one format
    config.GradbookPersonality.page = PAGE
    # A kernel restarted in place would come back without the notebook's seed cells and fail
    # every request; instead the personality replaces a stopped kernel with a newly seeded one.
    config.KernelManager.autorestart = False
    return config


def refusal(settings: Settings) -> str | None:
    """Why the service must not start with ``settings``, or ``None``."""
    if not (settings.token or settings.allow_open or is_loopback(settings.host)):
        return (
            f"refusing to listen on {settings.host} without a token: anyone who reaches it could "
            f"change and delete models. Set a token (--token-file, or {settings.env('token')}), or "
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


class TrainingWorker:
    """The training worker (``gradbook_service.trainer``) as the launcher runs it: started beside
    the
    gateway, started again if it stops, stopped with the service."""

    def __init__(self) -> None:
        self.process = self._start()
        self.watch = PeriodicCallback(self._check, 1000)
        # Set by the stop signal: a signal sent to the whole process group (Ctrl-C at a
        # terminal, a supervisor's killpg) ends the worker too, and it must not be replaced.
        self.stopping = False

    @staticmethod
    def _start() -> subprocess.Popen:
        # one BLAS thread: a training run must not take every core from the serving kernels
        env = {**os.environ, **{variable: "1" for variable in THREAD_VARIABLES}}
        return subprocess.Popen([sys.executable, "-m", "gradbook_service.trainer"], env=env,
                                preexec_fn=_as_worker)

    def _check(self) -> None:
        if not self.stopping and (status := self.process.poll()) is not None:
            app_log.error("the training worker stopped (exit status %s); starting another",
                          status)
            self.process = self._start()

    def stop(self) -> None:
        self.stopping = True
        self.watch.stop()
        stop_process(self.process)


THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _as_worker() -> None:
    """In the worker's process before it runs: on Linux, a SIGTERM when the launcher dies,
    however it dies (SIGKILL too).

    The worker keeps the ordinary scheduling priority. A lower one looked right but measured
    worse (``bench/bench_jobs.py``, 2 cores, predict p99 during a job over idle): plain
    1.1-1.3x, ``nice`` 10 3-6x, ``SCHED_IDLE`` on one CPU 2-7x. A low-priority process that is
    always runnable still holds its CPU when a serving process wakes, and the requests wait."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> None:
    os.umask(PRIVATE_UMASK)
    settings = Settings()
    try:
        settings.check()
    except SettingError as err:
        print(f"gradbook: {err}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    if (reason := refusal(settings)) is not None:
        print(f"gradbook: {reason}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    logs.configure(settings.log_format)
    log = logs.log
    new_folder = not Path(settings.store).exists()
    store = open_store(settings.store)
    try:  # replicas starting together migrate a database's schema once; the first seeds it
        first_start = new_folder if isinstance(store, ModelStore) else store.migrate() == 0
    except StoreError as err:
        log.critical("cannot start: %s", err)
        sys.exit(1)
    if first_start:
        log.info("first start: training %s in %s", ", ".join(create_default_models(store)),
                 store.location)
    jobs = open_jobs(store, settings.job_lease, settings.max_queued_jobs, settings.max_job_bytes)
    if not jobs.shared:  # shared jobs belong to every replica; stranded ones end by lease
        stranded = trainer.recover(
            store, jobs, [job for job in jobs.all() if job["state"] in ("queued", "running")],
            "the service stopped while the job was {state}; nothing was saved")
        if stranded:
            log.warning("%d training job(s) the last run left unfinished are ended", stranded)
        jobs.rebuild_index()
    config = gateway_config(settings)
    # Kernels inherit this environment: they must use the same store, and never see the token.
    os.environ[settings.env("store")] = (
        str(store.root.resolve()) if isinstance(store, ModelStore) else store.url)
    os.environ.pop(settings.env("token"), None)
    os.environ[TOKEN_REQUIRED] = "1" if settings.token else "0"
    app = KernelGatewayApp(config=config)
    app.initialize(argv=[])
    # The personality installs its access log once the loop runs; a probe sent sooner (the
    # server listens already) would be logged by tornado's own, in another form.
    app.web_app.settings["log_function"] = log_request
    log.info("gradbook service listening on http://%s:%s (%d kernels, store %s, token %s)",
             app.ip, app.port, settings.kernels, store.location,
             "required" if app.auth_token else "off")
    worker: TrainingWorker | None = None
    # Ctrl-C stops as SIGTERM does: kernels shut down, the gateway's folder removed. (The
    # gateway asks first at a terminal, and elsewhere lets KeyboardInterrupt end its loop
    # before anything is shut down.)
    def stop_once(signum: int, frame: FrameType | None) -> None:
        for each in STOP_SIGNALS:  # a second signal (Ctrl-C twice, or a supervisor's and the
            signal.signal(each, signal.SIG_IGN)  # terminal's) must not stop everything again
        if worker is not None:
            worker.stopping = True
        app._signal_stop(signum, frame)

    for each in STOP_SIGNALS:
        signal.signal(each, stop_once)
    worker = TrainingWorker() if settings.training_worker else None
    if worker is not None:
        worker.watch.start()
    try:
        app.start()
    finally:
        if worker is not None:
            worker.stop()
    log.info("gradbook service stopped")


if __name__ == "__main__":
    main()
