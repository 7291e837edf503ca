"""The gateway's half of the engine: a pool of kernels that serves queued requests in batches,
one kernel execution per batch.

Stock notebook-http lends a kernel to one request at a time and runs two or three executions on it
(assign ``REQUEST``, run the cell, run the ``ResponseInfo`` cell), each a full kernel round trip.
Here every request joins one FIFO queue. Whenever a kernel is free and requests wait, the kernel
takes all of them (up to ``max_batch``) and runs them in a single execution through
``gradbook_service.gateway.runner``, which publishes each request's result as soon as it is
known. So:

* a lone request runs at once, in one round trip: there is no batching window to wait for;
* under load, a batch holds whatever queued while the kernel was busy: its size follows the
  load by itself, and one round trip is shared by many requests;
* results reach their requests as each finishes; if the kernel dies in mid-batch, the requests
  it finished keep their answers and only the others get 503;
* a request whose client goes away while it is queued leaves the queue without running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from gradbook_service.gateway import runner
from gradbook_service.gateway.errors import ServiceError
from gradbook_service.gateway.notebooks import Notebook
from jupyter_client.session import Session
from jupyter_core.utils import ensure_async
from tornado.log import app_log

KERNEL_CHECK_SECONDS = 1.0  # how often a kernel's loop checks that its kernel is still alive
INTERRUPT_GRACE_SECONDS = 5.0  # a kernel interrupted for a deadline that runs on is replaced
SUBSCRIBE_PROBE_SECONDS = 0.2  # how long to wait for a probe's status before sending another
SUBSCRIBE_TIMEOUT_SECONDS = 60.0  # then use the kernel anyway: a dead one answers 503
EXCHANGE_PREFIX = "gradbook-results-"  # + the gateway's pid: the folder of its batches, journals
# A Unix socket's path holds at most 107 bytes; a kernel's is the exchange folder's, then
# "/kernel-<36-character id>-ipc-<n>", and the folder's name takes about 35 after its parent.
MAX_PARENT_CHARS = 20
RUNNER_MODULE = "gradbook_runner"  # the name service.runner has in each kernel's sys.modules
INSTALL = """\
def _install_gradbook_runner(source, endpoints, inbox, journal):
    import sys, types
    module = types.ModuleType({name!r})
    exec(compile(source, {filename!r}, "exec"), module.__dict__)
    sys.modules[{name!r}] = module
    module.install(endpoints, inbox, journal)
_install_gradbook_runner({source!r}, {endpoints!r}, {inbox!r}, {journal!r})
del _install_gradbook_runner
"""
# The code of every batch: short, and the same each time. The batch itself goes through a file
# (``_post``): as code, each batch's requests would be hashed by ipykernel in pure Python to name
# the cell, transformed and parsed by IPython, and echoed back on IOPub, signed both ways.
RUN = f"__import__('sys').modules[{RUNNER_MODULE!r}].runner.run()"
# the messages whose content the engine reads
CONTENT_READ = {runner.RESULT, runner.OUTPUT, "error", "status"}


@dataclass
class Result:
    """What the kernel sent back for one request: the endpoint cell's output and the
    ``ResponseInfo`` cell's output, or the error one of them raised; and how many requests the
    execution that ran it held (for the access log). A body that is an output the cell
    displayed has its ``type`` (base64 text if ``base64``); ``offers`` are the types a cell
    displayed of which the request allowed none."""

    kernel_id: str
    body: str = ""
    info: str | None = None
    error: dict[str, str] | None = None
    batch: int = 1
    type: str | None = None
    base64: bool = False
    offers: list[str] | None = None
    # for traces: when it was queued, its batch started, its result came (ns, the gateway's
    # clock), and how long its cells ran (s, as the kernel measured)
    timing: tuple[int, int, int, float | None] | None = None


RESULT_FIELDS = ("body", "info", "error", "type", "base64", "offers")


@dataclass
class Job:
    """A request waiting for, or running on, a kernel. ``options`` tell the runner what the
    request asks for (``gradbook_service.gateway.runner``): ``accept``, the types it allows,
    and ``stream``, whether its printed lines go to ``on_output`` as they come."""

    endpoint: str  # "METHOD /annotated/path"
    request: str  # the REQUEST the cell sees: JSON text
    options: dict[str, Any] | None = None
    on_output: Any = None  # on_output(lines) for a streamed request
    future: asyncio.Future[Result] = field(default_factory=lambda: asyncio.get_running_loop()
                                           .create_future())
    execution: Execution | None = None  # the one running it, once it runs
    abandoned: bool = False  # its client left: interrupted when it starts
    queued: int = field(default_factory=time.time_ns)  # for traces (Result.timing)
    started: int = 0


class Execution:
    """One ``execute_request`` as the gateway follows it: the requests it runs (none for the
    runner's installation), each answered as its result arrives."""

    def __init__(self, kernel_id: str, jobs: list[Job]) -> None:
        self.kernel_id = kernel_id
        self.waiting = dict(enumerate(jobs))
        self.batch = bool(jobs)
        self.size = len(jobs)
        self.failure: dict[str, Any] = {}  # an error raised outside any request
        # every request answered, or the kernel idle again: the kernel may take more work
        self.answered = asyncio.get_running_loop().create_future()
        self.idle = False
        self.since = asyncio.get_running_loop().time()  # when the running request started
        self.interrupted: float | None = None  # when a request's deadline interrupted the kernel
        self.interrupt = lambda: None  # interrupts the kernel (BatchingKernelPool._start)
        for job in jobs:
            job.execution = self

    def on_message(self, msg: dict[str, Any]) -> None:
        kind, content = msg["header"]["msg_type"], msg["content"]
        if kind == runner.OUTPUT:
            job = self.waiting.get(content["index"])
            if job is not None and job.on_output is not None and not job.future.done():
                job.on_output(content["lines"])
        elif kind == runner.RESULT and (job := self.waiting.pop(content["index"], None)):
            self.since = asyncio.get_running_loop().time()  # the next request starts now
            if job.future.done():  # cancelled
                pass
            elif (content.get("error") or {}).get("ename") == "KeyboardInterrupt":
                # the interrupt meant for an earlier request, which ended just before it came
                job.future.set_exception(ServiceError(503, "the request was interrupted with "
                                                           "another that ran out of time; retry"))
            else:
                fields = {key: content[key] for key in RESULT_FIELDS if key in content}
                timing = (job.queued, job.started, time.time_ns(), content.get("seconds"))
                job.future.set_result(Result(self.kernel_id, **fields, batch=self.size,
                                             timing=timing))
            if self.waiting and self.interrupted is None:
                running = self.waiting[min(self.waiting)]
                if running.abandoned:  # its client left while it waited in the batch
                    self.stop(running)
        elif kind == "error":
            self.failure.update(content)
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle = True
        # once interrupted, the kernel takes nothing more until the interrupt has taken
        done = self.idle or (self.batch and not self.waiting and self.interrupted is None)
        if done and not self.answered.done():
            self.answered.set_result(None)

    def time_out(self, seconds: float) -> None:
        """Answer 504 to the running request, which started ``seconds`` ago or more."""
        self.interrupted = asyncio.get_running_loop().time()
        job = self.waiting.pop(min(self.waiting))
        if not job.future.done():
            job.future.set_exception(ServiceError(
                504, f"the request ran longer than {seconds:g} s (GRADBOOK_REQUEST_TIMEOUT) and "
                     "was stopped; a change it was making is saved only if it was done "
                     "before the stop: check the model's version before trying again"))

    def abandon(self, job: Job) -> None:
        """``job``'s client went away (a stream closed): interrupt its cell if it runs now,
        else when it starts; its answer is dropped."""
        job.abandoned = True
        if not job.future.done():
            job.future.cancel()
        running = self.waiting[min(self.waiting)] if self.waiting else None
        if running is job and self.interrupted is None:
            self.stop(job)

    def stop(self, job: Job) -> None:
        """Interrupt the kernel for ``job``, the request running now, which nobody awaits."""
        self.interrupted = asyncio.get_running_loop().time()
        self.waiting.pop(min(self.waiting))
        if not job.future.done():
            job.future.cancel()
        self.interrupt()


class SeedError(Exception):
    """A seed cell of the notebook raised on a new kernel: the pool cannot serve it."""


class BatchingKernelPool:
    """The kernel pool of the engine for one version of one notebook (see the module
    docstring).

    Each kernel has its own loop (``_serve``): take the queued requests, run them as one
    execution, and as soon as every one is answered take the next ones, while the kernel still
    finishes the last execution (its reply and idle status): the next batch is already waiting
    in the kernel's queue then, so the kernel never idles for a gateway round trip under load.

    Before it serves, each kernel is subscribed (``_await_subscription``), seeded with the
    notebook's other code cells, each in its own execution as stock notebook-http seeds, and
    given the runner with the notebook's endpoints (``_prepare``). Its working folder is the
    notebook's, as when the notebook runs in Jupyter. The pool starts and stops its own kernels
    only, so that pools of several notebooks, or of two versions of one, share a gateway.
    """

    def __init__(self, notebook: Notebook, kernel_manager: Any, exchange: Path, kernels: int,
                 max_queue: int, max_batch: int, request_timeout: float,
                 spares: SpareKernels | None = None) -> None:
        self.notebook = notebook
        self.spares = spares  # kernels started ahead of need, if the gateway keeps some
        self.kernel_manager = kernel_manager
        self.exchange = exchange  # kernel_channels: the gateway's private folder
        self.count = kernels
        self.endpoints = notebook.endpoints
        self.request_timeout = request_timeout
        self.ready = asyncio.Event()
        self.max_queue, self.max_batch = max_queue, max_batch
        self.queue: deque[Job] = deque()
        self.has_work = asyncio.Event()
        self.free = 0  # kernel loops waiting for requests
        self.kernel_clients: dict[str, Any] = {}
        self.on_recv_funcs: dict[str, Any] = {}  # kernel → what hears its other IOPub messages
        self.listeners: dict[str, dict[str, Execution]] = {}  # kernel → msg_id → execution
        self.iopub: dict[str, Any] = {}  # kernel → its IOPub stream
        self.loops: set[asyncio.Task[None]] = set()
        self.interrupting: set[asyncio.Task[Any]] = set()  # kept until done (asyncio's advice)
        self.on_batch = lambda size: None  # told each batch's size (metrics)
        self.on_replace = lambda: None  # told each replaced kernel (metrics)

    async def start(self) -> None:
        """Start and seed the pool's kernels, then serve; a ``SeedError`` (every kernel this
        started stopped again) if a seed cell raises."""
        started = await asyncio.gather(*(self._start_kernel() for _ in range(self.count)),
                                       return_exceptions=True)
        failures = [result for result in started if isinstance(result, BaseException)]
        if failures:
            for kernel_id in [result for result in started if isinstance(result, str)]:
                await self._let_go(kernel_id)
            raise failures[0]
        self.loops = {asyncio.ensure_future(self._serve(kid)) for kid in self.kernel_clients}
        self.ready.set()

    async def shutdown(self) -> None:
        """Stop serving and shut down the pool's kernels. A request still queued or running
        gets 503 rather than waiting for ever."""
        for loop in self.loops:
            loop.cancel()
        for executions in self.listeners.values():
            for execution in executions.values():
                _fail_all(list(execution.waiting.values()), "while running")
        _fail_all(list(self.queue), "before running")
        self.queue.clear()
        for kernel_id in list(self.kernel_clients):
            await self._let_go(kernel_id)

    async def _start_kernel(self) -> str:
        """A new kernel of the notebook, seeded and serving; its id. A spare kernel, if there
        is one, saves the wait for a new process to start."""
        folder = str(self.notebook.file.parent)
        spare = None
        if self.spares is not None:
            spare = await self.spares.take(self.notebook.kernel_name)
        kernel_id = spare or await self.kernel_manager.start_kernel(
            kernel_name=self.notebook.kernel_name, cwd=folder)
        try:
            self._connect(kernel_id)
            # a spare started in the gateway's folder: moved to the notebook's
            await self._prepare(kernel_id, folder if spare is not None else None)
        except BaseException:
            await self._let_go(kernel_id)
            raise
        return kernel_id

    async def _let_go(self, kernel_id: str) -> None:
        """Forget the kernel and shut it down."""
        if (client := self.kernel_clients.pop(kernel_id, None)) is not None:
            client.stop_channels()
        if (stream := self.iopub.pop(kernel_id, None)) is not None:
            stream.close()
        self.on_recv_funcs.pop(kernel_id, None)
        self.listeners.pop(kernel_id, None)
        self.journal(kernel_id).unlink(missing_ok=True)
        self.inbox(kernel_id).unlink(missing_ok=True)
        with contextlib.suppress(Exception):  # already gone (jupyter_server says 404)
            await self.kernel_manager.shutdown_kernel(kernel_id, now=True)

    def on_recv(self, kernel_id: str, listener: Any) -> None:
        self.on_recv_funcs[kernel_id] = listener

    def inbox(self, kernel_id: str) -> Path:
        return self.exchange / f"{kernel_id}.batch.json"

    def journal(self, kernel_id: str) -> Path:
        return self.exchange / f"{kernel_id}.jsonl"

    async def submit(self, endpoint: str, request: str,
                     options: dict[str, Any] | None = None) -> Result:
        """Run ``endpoint`` on ``request`` on the first kernel free, after the requests queued
        before it. Cancelling (the client went away) while it waits removes it unrun."""
        job = Job(endpoint, request, options)
        await self.enqueue(job)
        return await job.future  # cancelling this cancels job.future: _take skips it

    async def enqueue(self, job: Job) -> None:
        """Queue ``job`` after the requests queued before it (``submit``, when the caller
        follows the job itself: a streamed request); a 503 if the queue is full."""
        await self.ready.wait()
        if self.full():
            raise ServiceError(503, f"all kernels are busy and {self.max_queue} requests wait; "
                               "retry later")
        self.queue.append(job)
        self.has_work.set()

    def abandon(self, job: Job) -> None:
        """``job``'s client went away: a queued job leaves the queue unrun, a running one is
        interrupted (``Execution.abandon``)."""
        if job.execution is None:
            job.future.cancel()  # _take skips it
        else:
            job.execution.abandon(job)

    def full(self) -> bool:
        """Whether a request submitted now would get 503: no kernel free to take it, and
        ``max_queue`` requests waiting already."""
        return len(self.queue) >= self.free + self.max_queue

    async def _take(self) -> list[Job]:
        """The queued requests, oldest first, up to ``max_batch``; waits for one if need be,
        for ``KERNEL_CHECK_SECONDS`` at most (then none). Kernels free at the same time share
        the queue (two requests on two free kernels run side by side, not one after the
        other)."""
        while True:
            jobs: list[Job] = []
            share = min(self.max_batch, -(-len(self.queue) // len(self.kernel_clients)))
            while self.queue and len(jobs) < share:
                job = self.queue.popleft()
                if not job.future.done():  # not cancelled
                    jobs.append(job)
            if jobs:
                return jobs
            self.has_work.clear()
            self.free += 1
            try:
                await asyncio.wait_for(self.has_work.wait(), KERNEL_CHECK_SECONDS)
            except asyncio.TimeoutError:  # not the built-in TimeoutError before Python 3.11
                return []
            finally:
                self.free -= 1

    async def _serve(self, kernel_id: str) -> None:
        """One kernel's loop (see the class docstring); it replaces its kernel if it stops."""
        while True:
            if not (jobs := await self._take()):  # idle: check on the kernel meanwhile
                try:
                    if not await self.is_running(kernel_id):
                        kernel_id = await self.replace(kernel_id)
                except Exception as err:  # tried again at the next check
                    app_log.error("kernel %s could not be replaced", kernel_id, exc_info=err)
                continue
            self.on_batch(len(jobs))
            when = "before running"
            try:
                if not await self.is_running(kernel_id):
                    kernel_id = await self.replace(kernel_id)
                when = "while running"
                started = time.time_ns()
                for job in jobs:
                    job.started = started
                batch_id = self._post(kernel_id, jobs)
                execution = self._start(kernel_id, jobs, RUN)
                if await self._follow(execution):
                    if execution.interrupted is not None:  # the rest of the batch never ran
                        self._requeue(execution)
                        jobs = []  # each answered or queued again
                    elif execution.waiting and execution.failure:
                        app_log.error("kernel %s failed a batch: %s: %s", kernel_id,
                                      execution.failure.get("ename"),
                                      execution.failure.get("evalue"))
                else:  # the unanswered requests learn it now, not after the replacement
                    self._recover(execution, batch_id)
                    _fail_all(jobs, when)
                    kernel_id = await self.replace(kernel_id)
            except Exception as err:
                app_log.error("a batch on kernel %s failed", kernel_id, exc_info=err)
            _fail_all(jobs, when)  # not answered: the kernel stopped, or could not be replaced

    def _requeue(self, execution: Execution) -> None:
        """Put the requests of ``execution`` it did not run back at the head of the queue."""
        unrun = [job for _, job in sorted(execution.waiting.items()) if not job.future.done()]
        execution.waiting.clear()
        self.queue.extendleft(reversed(unrun))
        if unrun:
            self.has_work.set()

    def _post(self, kernel_id: str, jobs: list[Job]) -> str:
        """Put ``jobs`` in the kernel's inbox for its runner to read; the batch's new id.

        The file is replaced whole, so a reader sees the old batch or the new one. The runner
        has read the old one before it sent its first result, and a new batch is posted only
        once all of those arrived (or the kernel is gone)."""
        batch_id = uuid.uuid4().hex
        requests = [[job.endpoint, job.request, job.options] for job in jobs]
        posting = self.inbox(kernel_id).with_suffix(".tmp")
        posting.write_text(json.dumps({"batch": batch_id, "requests": requests}),
                           encoding="utf-8")
        os.replace(posting, self.inbox(kernel_id))
        return batch_id

    def _start(self, kernel_id: str, jobs: list[Job], code: str,
               store_history: bool = False) -> Execution:
        """Send ``code`` to the kernel, by default outside IPython's history (which would keep
        every batch's REQUESTs in the kernel for good)."""
        execution = Execution(kernel_id, jobs)
        execution.interrupt = partial(self._interrupt, execution)
        msg_id = self.kernel_clients[kernel_id].execute(code, store_history=store_history)
        self.listeners.setdefault(kernel_id, {})[msg_id] = execution
        return execution

    def _recover(self, execution: Execution, batch_id: str) -> None:
        """Answer the requests of ``execution``, whose kernel died, that the kernel finished but
        whose results did not arrive, from the kernel's journal: only if the journal is this
        batch's (the kernel may have died before it began), and a line cut short by the death
        is no result."""
        try:
            lines = self.journal(execution.kernel_id).read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        if not lines or lines[0] != json.dumps({"batch": batch_id}):
            return
        for line in lines[1:]:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                execution.on_message({"header": {"msg_type": runner.RESULT},
                                      "content": json.loads(line)})

    async def _follow(self, execution: Execution) -> bool:
        """Wait until ``execution`` is answered; False if its kernel stopped first, or ran on
        for ``INTERRUPT_GRACE_SECONDS`` after it was interrupted for a request's deadline.

        A request running ``request_timeout`` seconds gets 504 and the kernel an interrupt: a
        ``KeyboardInterrupt`` in the cell, which ends the batch
        (``gradbook_service.gateway.runner``) and leaves
        the kernel's namespace as it was."""
        loop = asyncio.get_running_loop()
        while not execution.answered.done():
            wait = KERNEL_CHECK_SECONDS
            if execution.batch and execution.interrupted is None:
                wait = min(wait, max(execution.since + self.request_timeout - loop.time(), 0))
            await asyncio.wait([execution.answered], timeout=wait)
            if execution.answered.done():
                break
            now = loop.time()
            if (execution.batch and execution.interrupted is None and execution.waiting
                    and now >= execution.since + self.request_timeout):
                execution.time_out(self.request_timeout)
                app_log.warning("a request on kernel %s ran out of time; interrupting it",
                                execution.kernel_id)
                await ensure_async(self.kernel_manager.interrupt_kernel(execution.kernel_id))
            elif (execution.interrupted is not None
                  and now - execution.interrupted > INTERRUPT_GRACE_SECONDS):
                app_log.error("kernel %s ran on after an interrupt; replacing it",
                              execution.kernel_id)
                return False
            if not await self.is_running(execution.kernel_id):
                return False
        return True

    def _interrupt(self, execution: Execution) -> None:
        """Interrupt the kernel of ``execution`` for a request whose client left; ``_follow``
        replaces the kernel if the interrupt does not take."""
        app_log.info("the client of a request on kernel %s left; interrupting it",
                     execution.kernel_id)
        task = asyncio.ensure_future(ensure_async(
            self.kernel_manager.interrupt_kernel(execution.kernel_id)))
        self.interrupting.add(task)
        task.add_done_callback(self.interrupting.discard)

    async def is_running(self, kernel_id: str) -> bool:
        return await ensure_async(self.kernel_manager.get_kernel(kernel_id).is_alive())

    async def replace(self, kernel_id: str) -> str:
        """Swap the kernel ``kernel_id``, which stopped, for a new kernel seeded like the
        others; the new kernel's id.

        Kernels are never restarted in place (``_prepare``): a restarted kernel would come back
        without the notebook's seed cells. The old kernel is let go only once the new one
        serves, so a failed start leaves things as they were, to try again next batch.
        """
        new_id = await self._start_kernel()
        await self._let_go(kernel_id)
        self.on_replace()
        app_log.warning("kernel %s of %s had stopped; kernel %s replaces it", kernel_id,
                        self.notebook.name, new_id)
        return new_id

    def _connect(self, kernel_id: str) -> None:
        """A client for the kernel, and its IOPub stream (kept, to be closed with the kernel)."""
        self.kernel_clients[kernel_id] = client = self.kernel_manager.get_kernel(kernel_id).client()
        stream = self.iopub[kernel_id] = self.kernel_manager.connect_iopub(kernel_id)

        stream.on_recv(partial(self._on_iopub, kernel_id, client.session))

    def _on_iopub(self, kernel_id: str, session: Session, frames: list[bytes]) -> None:
        """Give a message to the execution it answers, else to the function ``on_recv`` set
        (the subscription probes)."""
        if (message := read_message(session, frames)) is None:
            return
        executions = self.listeners.get(kernel_id, {})
        parent = message["parent_header"].get("msg_id")
        if (execution := executions.get(parent)) is not None:
            execution.on_message(message)
            if execution.idle:
                del executions[parent]
        elif listener := self.on_recv_funcs.get(kernel_id):
            listener(message)

    async def _prepare(self, kernel_id: str, folder: str | None = None) -> None:
        # jupyter_server decodes every IOPub message of every kernel a second time to record
        # its activity, which only its idle-kernel culler reads; the pool's kernels are never
        # culled, and that decoding cost as much gateway time as the engine's own.
        self.kernel_manager.stop_watching_activity(kernel_id)
        # A kernel restarted in place would come back without the notebook's seed cells and the
        # runner, and race with the replacement (``replace``): the engine alone brings kernels
        # back, however the gateway was started.
        kernel = self.kernel_manager.get_kernel(kernel_id)
        kernel.stop_restarter()
        kernel.autorestart = False
        await self._await_subscription(kernel_id)
        if folder is not None:
            await self._run_quietly(kernel_id, f"__import__('os').chdir({folder!r})")
        await self._seed(kernel_id)
        await self._install_runner(kernel_id)

    async def _run_quietly(self, kernel_id: str, code: str) -> None:
        execution = self._start(kernel_id, [], code)
        if await self._follow(execution) and execution.failure:
            raise SeedError(f"kernel {kernel_id} could not run {code!r}: "
                            f"{execution.failure.get('ename')}: {execution.failure.get('evalue')}")

    async def _seed(self, kernel_id: str) -> None:
        """Run the notebook's seed cells on the kernel, in order, each as the notebook runs
        it (in IPython's history); a ``SeedError`` naming the cell if one raises."""
        for number, source in self.notebook.seeds:
            execution = self._start(kernel_id, [], source, store_history=True)
            if not await self._follow(execution):
                raise SeedError(f"{self.notebook.file}: the kernel stopped while cell {number} "
                                "seeded it")
            if execution.failure:
                ename, evalue = execution.failure.get("ename"), execution.failure.get("evalue")
                raise SeedError(f"{self.notebook.file}: cell {number} ({_first_line(source)}) "
                                f"raised {ename}: {evalue}")

    async def _await_subscription(self, kernel_id: str) -> None:
        """Wait until the kernel's IOPub messages reach the gateway.

        ZeroMQ drops what a publisher sends before a new subscription has reached it (the "slow
        joiner"): a request run before that would lose its results and hang. So the kernel is
        sent ``kernel_info`` requests until the status messages of one arrive on IOPub.
        """
        heard = asyncio.Event()
        probes: set[str] = set()

        def on_message(msg: dict[str, Any]) -> None:
            if msg["parent_header"].get("msg_id") in probes:
                heard.set()

        self.on_recv(kernel_id, on_message)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_TIMEOUT_SECONDS
        while not heard.is_set() and loop.time() < deadline:
            probes.add(self.kernel_clients[kernel_id].kernel_info())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(heard.wait(), SUBSCRIBE_PROBE_SECONDS)
        if not heard.is_set():
            app_log.error("no IOPub message from kernel %s; using it anyway", kernel_id)

    async def _install_runner(self, kernel_id: str) -> None:
        """Send ``gradbook_service.gateway.runner`` and the notebook's endpoints to the
        kernel."""
        source = Path(runner.__file__).read_text(encoding="utf-8")
        code = INSTALL.format(name=RUNNER_MODULE, filename=runner.__file__, source=source,
                              endpoints=self.endpoints, inbox=str(self.inbox(kernel_id)),
                              journal=str(self.journal(kernel_id)))
        execution = self._start(kernel_id, [], code)
        if await self._follow(execution) and execution.failure:
            raise SeedError(f"kernel {kernel_id} could not install the runner: "
                            f"{execution.failure.get('ename')}: {execution.failure.get('evalue')}")


def read_message(session: Session, frames: list[bytes]) -> dict[str, Any] | None:
    """A kernel's IOPub message with its signature checked, or ``None`` (logged) if the
    signature is wrong; the content is decoded only for the kinds the engine reads.

    ``Session.deserialize`` decodes every part of every message and turns each date string of
    its headers into a ``datetime`` with dateutil, which took a fifth of the gateway's time
    under load; the engine reads none of those dates, and most messages (the echo of each
    batch's code, streams) only for their parent's id.
    """
    _, frames = session.feed_identities(frames)
    if session.auth is not None and not hmac.compare_digest(frames[0], session.sign(frames[1:5])):
        app_log.error("an IOPub message with a wrong signature was dropped")
        return None
    header = session.unpack(frames[1])
    wanted = header["msg_type"] in CONTENT_READ
    return {"header": header, "parent_header": session.unpack(frames[2]),
            "content": session.unpack(frames[4]) if wanted else None}


class SpareKernels:
    """Kernels started ahead of need, unseeded, so that a reload (``GRADBOOK_RELOAD``) or a
    dead kernel's replacement need not wait for a new kernel process to start: on a busy
    2-core machine that start is most of a reload's time. ``count`` of each kernel name asked
    for are kept; one taken is replaced in the background."""

    def __init__(self, kernel_manager: Any, count: int) -> None:
        self.kernel_manager, self.count = kernel_manager, count
        self.kernels: dict[str, list[str]] = {}  # kernel name → spare kernels' ids
        self.starting: set[asyncio.Task[None]] = set()

    def keep(self, kernel_name: str) -> None:
        """Start spares of ``kernel_name`` until there are ``count`` (or as many starting)."""
        spares = self.kernels.setdefault(kernel_name, [])
        starting = sum(1 for task in self.starting if task.get_name() == kernel_name)
        for _ in range(self.count - len(spares) - starting):
            task = asyncio.ensure_future(self._start(kernel_name))
            task.set_name(kernel_name)
            self.starting.add(task)
            task.add_done_callback(self.starting.discard)

    async def _start(self, kernel_name: str) -> None:
        try:
            kernel_id = await self.kernel_manager.start_kernel(kernel_name=kernel_name)
        except Exception as err:  # a pool starts its own kernel instead
            app_log.error("a spare kernel of %s could not start", kernel_name, exc_info=err)
            return
        self.kernels.setdefault(kernel_name, []).append(kernel_id)

    async def take(self, kernel_name: str) -> str | None:
        """A spare kernel of ``kernel_name`` that is alive, or ``None``; another starts. With
        none ready but one starting, that one: it is ready sooner than a kernel started now."""
        spares = self.kernels.setdefault(kernel_name, [])
        while True:
            if not spares:
                starting = [task for task in self.starting if task.get_name() == kernel_name]
                if not starting:
                    return None
                await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
                continue
            kernel_id = spares.pop(0)
            self.keep(kernel_name)
            if await ensure_async(self.kernel_manager.get_kernel(kernel_id).is_alive()):
                return kernel_id
            with contextlib.suppress(Exception):  # already gone
                await self.kernel_manager.shutdown_kernel(kernel_id, now=True)

    async def shutdown(self) -> None:
        for task in list(self.starting):
            task.cancel()
        for spares in self.kernels.values():
            for kernel_id in spares:
                with contextlib.suppress(Exception):  # already gone
                    await self.kernel_manager.shutdown_kernel(kernel_id, now=True)
        self.kernels.clear()


def make_exchange() -> Path:
    """The gateway's private folder (mode 0700) for its kernels' connection files and sockets
    (``kernel_channels``) and for each kernel's batches and journal (``gradbook_service.gateway
    .runner``): memory-backed where there is /dev/shm. Folders of gateways that are gone are
    removed first."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() else Path(tempfile.gettempdir())
    if len(str(parent)) > MAX_PARENT_CHARS:  # the sockets' paths would not fit
        parent = Path("/tmp")
    remove_orphans(parent)
    return Path(tempfile.mkdtemp(prefix=f"{EXCHANGE_PREFIX}{os.getpid()}-", dir=parent))


def kernel_channels(kernel_manager: Any, exchange: Path) -> None:
    """Have the kernels of ``kernel_manager`` talk to the gateway over Unix sockets in the
    private ``exchange`` folder, not over TCP on 127.0.0.1 (jupyter_client's default), where
    every local user can connect: a subscriber to a kernel's IOPub needs no key, and would read
    every answer the kernel sends. Call before the first kernel starts."""
    kernel_manager.config.KernelManager.transport = "ipc"
    kernel_manager.connection_dir = str(exchange)


def _first_line(source: str) -> str:
    line = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return line if len(line) <= 60 else line[:59] + "…"


def remove_orphans(parent: Path) -> None:
    """Remove the exchange folders of gateways that are gone: one killed (SIGKILL, a crash)
    never removed its own. A folder's name holds its gateway's process id."""
    for folder in parent.glob(f"{EXCHANGE_PREFIX}*-*"):
        pid = folder.name.removeprefix(EXCHANGE_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _fail_all(jobs: list[Job], when: str) -> None:
    """Answer 503 to each of ``jobs`` not answered yet."""
    for job in jobs:
        if not job.future.done():
            message = f"the kernel stopped {when} the request; retry"
            if when == "while running":  # the change may have committed just before
                message += ", after checking the model's version if it was a change"
            job.future.set_exception(ServiceError(503, message))
