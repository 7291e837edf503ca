"""The gateway's half of the engine: a pool of kernels that serves queued requests in batches,
one kernel execution per batch.

Stock notebook-http lends a kernel to one request at a time and runs two or three executions on
it (assign ``REQUEST``, run the cell, run the ``ResponseInfo`` cell), each a full kernel round
trip. Here every request joins one FIFO queue. Whenever a kernel is free and requests wait, the
kernel takes all of them (up to ``max_batch``) and runs them in a single execution through
``service.runner``, which publishes each request's result as soon as it is known. So:

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
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_core.utils import ensure_async
from kernel_gateway.services.kernels.pool import ManagedKernelPool
from tornado.log import app_log

from service import runner
from service.errors import ServiceError

KERNEL_CHECK_SECONDS = 1.0  # how often a running batch checks that its kernel is still alive
SUBSCRIBE_PROBE_SECONDS = 0.2  # how long to wait for a probe's status before sending another
SUBSCRIBE_TIMEOUT_SECONDS = 60.0  # then use the kernel anyway: a dead one answers 503
RUNNER_MODULE = "gradbook_runner"  # the name service.runner has in each kernel's sys.modules
INSTALL = """\
def _install_gradbook_runner(source, endpoints):
    import sys, types
    module = types.ModuleType({name!r})
    exec(compile(source, {filename!r}, "exec"), module.__dict__)
    sys.modules[{name!r}] = module
    module.install(endpoints)
_install_gradbook_runner({source!r}, {endpoints!r})
del _install_gradbook_runner
"""
RUN = "__import__('sys').modules[{name!r}].runner.run({batch!r})"


@dataclass
class Result:
    """What the kernel sent back for one request: the endpoint cell's output and the
    ``ResponseInfo`` cell's output, or the error one of them raised."""

    kernel_id: str
    body: str = ""
    info: str | None = None
    error: dict[str, str] | None = None


@dataclass
class Job:
    """A request waiting for, or running on, a kernel."""

    endpoint: str  # "METHOD /annotated/path"
    request: str  # the REQUEST the cell sees: JSON text
    future: asyncio.Future[Result] = field(default_factory=lambda: asyncio.get_running_loop()
                                           .create_future())


class BatchingKernelPool(ManagedKernelPool):
    """The kernel pool of the engine (see the module docstring).

    Before it serves, each kernel is subscribed (``_await_subscription``) and given the runner
    with the notebook's endpoints (``endpoints``, set by the personality before the pool starts).
    """

    def __init__(self, max_queue: int, max_batch: int) -> None:
        super().__init__()
        self.ready = asyncio.Event()
        self.max_queue, self.max_batch = max_queue, max_batch
        self.queue: deque[Job] = deque()
        self.endpoints: dict[str, list[str | None]] = {}
        self.batches: set[asyncio.Task[None]] = set()  # running, kept from the collector
        self.finishing = 0  # kernels whose batch has answered every request, not yet idle
        self.on_batch = lambda size: None  # told each batch's size (metrics)
        self.on_replace = lambda: None  # told each replaced kernel (metrics)

    async def initialize(self, prespawn_count: int, kernel_manager: Any, **kwargs: Any) -> None:
        await super().initialize(prespawn_count, kernel_manager, **kwargs)
        await asyncio.gather(*(self._prepare(kid) for kid in self.kernel_clients))
        self.ready.set()
        self._dispatch()

    async def submit(self, endpoint: str, request: str) -> Result:
        """Run ``endpoint`` on ``request`` on the first kernel free, with the requests queued
        before it. Cancelling (the client went away) while it waits removes it unrun."""
        await self.ready.wait()
        # A kernel that has answered its whole batch is as good as free: the client that just
        # got the last answer of a batch must not find every kernel busy.
        if len(self.queue) >= len(self.kernel_pool) + self.finishing + self.max_queue:
            raise ServiceError(503, f"all kernels are busy and {self.max_queue} requests wait; "
                               "retry later")
        job = Job(endpoint, request)
        self.queue.append(job)
        self._dispatch()
        return await job.future  # cancelling this cancels job.future: _dispatch skips it

    def _dispatch(self) -> None:
        """Give every free kernel the queued requests, up to ``max_batch`` each."""
        while self.ready.is_set() and self.kernel_pool and self.queue:
            jobs: list[Job] = []
            while self.queue and len(jobs) < self.max_batch:
                job = self.queue.popleft()
                if not job.future.done():  # not cancelled
                    jobs.append(job)
            if jobs:
                task = asyncio.ensure_future(self._run_batch(self.kernel_pool.pop(0), jobs))
                self.batches.add(task)
                task.add_done_callback(self.batches.discard)

    async def _run_batch(self, kernel_id: str, jobs: list[Job]) -> None:
        self.on_batch(len(jobs))
        when = "before running"
        try:
            if not await self.is_running(kernel_id):
                kernel_id = await self.replace(kernel_id)
            when = "while running"
            await self._execute(kernel_id, jobs)
            if not await self.is_running(kernel_id):  # it died under the batch
                kernel_id = await self.replace(kernel_id)
        except Exception as err:
            app_log.error("a batch on kernel %s failed", kernel_id, exc_info=err)
        finally:
            for job in jobs:  # not answered: the kernel stopped, or could not be replaced
                _fail(job, ServiceError(503, f"the kernel stopped {when} the request; retry"))
            self.kernel_pool.append(kernel_id)
            self._dispatch()

    async def _execute(self, kernel_id: str, jobs: list[Job]) -> None:
        """Run ``jobs`` in one execution; hand each its result as it arrives."""
        waiting = dict(enumerate(jobs))

        def on_result(content: dict[str, Any]) -> None:
            if (job := waiting.pop(content["index"], None)) is None:
                return
            if not job.future.done():  # not cancelled
                fields = {key: content.get(key) for key in ("body", "info", "error")}
                job.future.set_result(Result(kernel_id, **fields))
            if not waiting:
                self.finishing += 1

        batch = json.dumps([[job.endpoint, job.request] for job in jobs])
        try:
            failure = await self._run_code(kernel_id, RUN.format(name=RUNNER_MODULE,
                                                                 batch=batch), on_result)
        finally:
            self.finishing -= not waiting
        if waiting and failure:
            app_log.error("kernel %s failed a batch: %s: %s", kernel_id,
                          failure.get("ename"), failure.get("evalue"))

    async def _run_code(self, kernel_id: str, code: str,
                        on_result: Callable[[dict[str, Any]], None] | None = None,
                        ) -> dict[str, Any] | None:
        """Execute ``code`` on the kernel until it is idle again, or has stopped; the error it
        raised, if any. ``on_result`` is given each runner result as it arrives.

        The execution stays outside IPython's history: each batch's REQUESTs would otherwise
        stay in the kernel's input history for good, growing the kernel until it dies.
        """
        failure: dict[str, Any] = {}
        done = asyncio.get_running_loop().create_future()

        def on_message(msg: dict[str, Any]) -> None:
            if msg["parent_header"].get("msg_id") != msg_id:
                return
            kind, content = msg["header"]["msg_type"], msg["content"]
            if kind == runner.RESULT and on_result is not None:
                on_result(content)
            elif kind == "error":
                failure.update(content)
            elif kind == "status" and content["execution_state"] == "idle" and not done.done():
                done.set_result(None)

        msg_id = self.kernel_clients[kernel_id].execute(code, store_history=False)
        self.on_recv(kernel_id, on_message)
        while not done.done():
            await asyncio.wait([done], timeout=KERNEL_CHECK_SECONDS)
            if not done.done() and not await self.is_running(kernel_id):
                return {"ename": "KernelStopped", "evalue": "the kernel stopped"}
        return failure or None

    async def is_running(self, kernel_id: str) -> bool:
        return await ensure_async(self.kernel_manager.get_kernel(kernel_id).is_alive())

    async def replace(self, kernel_id: str) -> str:
        """Swap the kernel ``kernel_id``, which stopped, for a new kernel seeded like the
        others; the new kernel's id.

        Kernels are never restarted in place (see ``service.launch``): a restarted kernel would
        come back without the notebook's seed cells. The old kernel is let go only once the new
        one serves, so a failed start leaves things as they were, to try again next batch.
        """
        # start_seeded_kernel, as the pool's start uses, does not return the new kernel's id
        new_id = await self.kernel_manager.start_kernel(
            kernel_name=self.kernel_manager.seed_kernelspec
        )
        self.kernel_clients[new_id] = self.kernel_manager.get_kernel(new_id).client()
        self.kernel_manager.connect_iopub(new_id).on_recv(self.create_on_reply(new_id))
        await self._prepare(new_id)
        self.kernel_clients.pop(kernel_id).stop_channels()
        self.on_recv_funcs.pop(kernel_id, None)
        await self.kernel_manager.shutdown_kernel(kernel_id, now=True)
        self.on_replace()
        app_log.warning("kernel %s had stopped; kernel %s replaces it", kernel_id, new_id)
        return new_id

    async def _prepare(self, kernel_id: str) -> None:
        await self._await_subscription(kernel_id)
        await self._install_runner(kernel_id)

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.wait(), SUBSCRIBE_PROBE_SECONDS)
        if not heard.is_set():
            app_log.error("no IOPub message from kernel %s; using it anyway", kernel_id)

    async def _install_runner(self, kernel_id: str) -> None:
        """Send ``service.runner`` and the notebook's endpoints to the kernel."""
        source = Path(runner.__file__).read_text(encoding="utf-8")
        code = INSTALL.format(name=RUNNER_MODULE, filename=runner.__file__, source=source,
                              endpoints=self.endpoints)
        if failure := await self._run_code(kernel_id, code):
            app_log.error("kernel %s could not install the runner: %s: %s", kernel_id,
                          failure.get("ename"), failure.get("evalue"))


def _fail(job: Job, error: ServiceError) -> None:
    if not job.future.done():
        job.future.set_exception(error)
