"""``gradbook serve`` (``make serve``, ``gradbook_service.cli``): gradbook's API, the notebook
``notebooks/api.ipynb`` served by the gateway (``gradbook_service.gateway.launch``), plus what
the API needs beside it: its model store, the training worker, the playground page at ``/``
and the store's part in ``/healthz`` and ``/readyz`` (``gradbook_service.app.health``).

On the first start (no store folder yet, or a database without gradbook's tables) the default
models are created and trained. Settings come from ``GRADBOOK_*`` environment variables
(``gradbook_service.app.settings``), which the command's flags set. SIGTERM or Ctrl-C stops the
gateway, its kernels and the training worker.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from gradbook_service.app import trainer
from gradbook_service.app.jobs import open_jobs
from gradbook_service.app.settings import Settings
from gradbook_service.app.training import create_default_models
from gradbook_service.gateway import logs
from gradbook_service.gateway.launch import PRIVATE_UMASK, checked, run, usage_error
from gradbook_service.gateway.notebooks import NotebookError, read_notebook
from gradbook_service.gateway.processes import stop_process
from tornado.ioloop import PeriodicCallback
from tornado.log import app_log

from gradbook.store import ModelStore, StoreError, open_store

# notebooks/api.ipynb, shipped inside the package (a link to it in a clone)
NOTEBOOK = (Path(__file__).parent / "notebooks" / "api.ipynb").resolve()
PAGE = "gradbook_service.app.playground:page"  # the page the gateway serves at GET /
CHECK = "gradbook_service.app.health:check"  # the store's part in /healthz and /readyz


class TrainingWorker:
    """The training worker (``gradbook_service.app.trainer``) as the launcher runs it: started
    beside the gateway, started again if it stops, stopped with the service."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.watch = PeriodicCallback(self._check, 1000)
        # Set by the stop signal: a signal sent to the whole process group (Ctrl-C at a
        # terminal, a supervisor's killpg) ends the worker too, and it must not be replaced.
        self.stopping = False

    def start(self) -> None:
        self.process = self._start()
        self.watch.start()

    @staticmethod
    def _start() -> subprocess.Popen:
        # one BLAS thread: a training run must not take every core from the serving kernels
        env = {**os.environ, **{variable: "1" for variable in THREAD_VARIABLES}}
        return subprocess.Popen([sys.executable, "-m", "gradbook_service.app.trainer"], env=env,
                                preexec_fn=_as_worker)

    def _check(self) -> None:
        if self.process is None or self.stopping:
            return
        if (status := self.process.poll()) is not None:
            app_log.error("the training worker stopped (exit status %s); starting another",
                          status)
            self.process = self._start()

    def stop(self) -> None:
        self.stopping = True
        self.watch.stop()
        if self.process is not None:
            stop_process(self.process)


THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _as_worker() -> None:
    """In the worker's process before it runs: Ctrl-C ignored, and on Linux, a SIGTERM when
    the launcher dies, however it dies (SIGKILL too).

    The worker keeps the ordinary scheduling priority. A lower one looked right but measured
    worse (``bench/bench_jobs.py``, 2 cores, predict p99 during a job over idle): plain
    1.1-1.3x, ``nice`` 10 3-6x, ``SCHED_IDLE`` on one CPU 2-7x. A low-priority process that is
    always runnable still holds its CPU when a serving process wakes, and the requests wait."""
    # Ctrl-C at a terminal reaches the whole group; the launcher stops the worker itself (with
    # SIGTERM). Ignored from the start, not once the worker's imports are done: a Ctrl-C during
    # them would print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main() -> None:
    os.umask(PRIVATE_UMASK)
    settings = Settings()
    checked(settings)
    notebook = Path(settings.api_notebook).resolve() if settings.api_notebook else NOTEBOOK
    try:
        read_notebook(notebook)
    except NotebookError as err:
        usage_error(f"{settings.env('api_notebook')}: {err}")
    logs.configure(settings.log_format)
    log = logs.log
    new_folder = not Path(settings.store).exists()
    store = open_store(settings.store, keep_versions=settings.keep_versions)
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
    # Kernels (and the worker) inherit this environment: they must use the same store.
    os.environ[settings.env("store")] = (
        str(store.root.resolve()) if isinstance(store, ModelStore) else store.url)
    log.info("gradbook's API: store %s", store.location)
    worker = TrainingWorker() if settings.training_worker else None
    sys.exit(run(settings, [notebook], page=PAGE, check=CHECK, inference_health=True,
                 companion=worker, listening="gradbook service"))


if __name__ == "__main__":
    main()
