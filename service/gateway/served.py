"""The notebooks a gateway serves, each version with its own kernel pool, and the reload that
swaps one version for the next without losing a request.

A request is bound to one version of its notebook when its headers arrive (``Served.resolve``,
``Version.enter``) and keeps it to the end, whatever is reloaded meanwhile: so no request sees
half of each version. A reload (``ServedNotebook.reload``) reads the file, starts the new
version's kernels and seeds them beside the old ones, which keep serving; once every new kernel
is seeded, new requests go to the new version in one step (one assignment); the old version's
queued and running requests finish on its kernels, which are shut down when its last request
has left. A version that cannot be served (the file is not a notebook, mid-save or for good; a
seed cell raises; two cells claim one endpoint) is not swapped in: the old one keeps serving,
and the notebook's reload status says what went wrong until a later save is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradbook_service.gateway.engine import BatchingKernelPool, SeedError
from gradbook_service.gateway.notebooks import (
    Notebook,
    NotebookError,
    Route,
    prefix_of,
    read_notebook,
)
from tornado.log import app_log

PoolFactory = Callable[[Notebook], BatchingKernelPool]


class Version:
    """One version of a notebook, its pool, and the requests bound to it."""

    def __init__(self, notebook: Notebook, pool: BatchingKernelPool) -> None:
        self.notebook, self.pool = notebook, pool
        self.requests = 0  # bound to this version and not finished
        self.left = asyncio.Event()  # set whenever no request is bound
        self.left.set()

    def enter(self) -> None:
        self.requests += 1
        self.left.clear()

    def leave(self) -> None:
        self.requests -= 1
        if self.requests == 0:
            self.left.set()

    async def retire(self) -> None:
        """Once its last request has left, shut its kernels down."""
        await self.left.wait()
        await self.pool.shutdown()


@dataclass
class ReloadStatus:
    """What the last reload of a notebook did: ``ok`` or ``failed`` (and why), and when."""

    result: str = "none"  # none (never reloaded), ok, failed
    error: str = ""
    at: float = 0.0  # time.time() of the reload

    def as_json(self) -> dict[str, Any]:
        status: dict[str, Any] = {"result": self.result}
        if self.at:
            status["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))
        if self.error:
            status["error"] = self.error
        return status


class ServedNotebook:
    """A notebook file the gateway serves: its current version and its reloads."""

    def __init__(self, file: Path, prefix: str, make_pool: PoolFactory,
                 on_reload: Callable[[str, str], None],
                 read: Callable[[Path, str], Notebook] = read_notebook) -> None:
        self.file, self.prefix = file, prefix
        self.read = read  # read_notebook, and whatever the gateway adds (its kernel)
        self.name = file.stem
        self.make_pool = make_pool
        self.on_reload = on_reload  # told (notebook, "ok" or "failed") after each reload
        self.current: Version | None = None
        self.status = ReloadStatus()
        self.reloading: asyncio.Task[None] | None = None
        self.retiring: dict[Version, asyncio.Task[None]] = {}  # old versions, until they end

    def first(self, notebook: Notebook) -> None:
        """Make ``notebook`` the first version: requests are bound to it from now on, and
        wait for its kernels (``start``)."""
        self.current = Version(notebook, self.make_pool(notebook))

    async def start(self) -> None:
        """Start the first version's kernels; a ``SeedError`` if it cannot be served."""
        assert self.current is not None, "first() names the first version"
        await self.current.pool.start()

    async def _started(self, notebook: Notebook) -> Version:
        pool = self.make_pool(notebook)
        await pool.start()
        return Version(notebook, pool)

    def reload(self) -> None:
        """Serve the file as it is now, beside the current version until it is ready; a
        reload still starting is given up for this one."""
        if self.reloading is not None and not self.reloading.done():
            self.reloading.cancel()
        self.reloading = asyncio.ensure_future(self._reload())

    async def _reload(self) -> None:
        try:
            notebook = self.read(self.file, self.prefix)
        except NotebookError as err:
            return self._failed(str(err))
        if self.current is not None and notebook.version == self.current.notebook.version:
            return None  # saved unchanged (or only its outputs or Markdown changed)
        app_log.info("reloading %s: version %s starts", self.file, notebook.version)
        try:
            version = await self._started(notebook)
        except SeedError as err:
            return self._failed(str(err))
        except Exception as err:  # a kernel that cannot start: the old version serves on
            app_log.error("reloading %s failed", self.file, exc_info=err)
            return self._failed(f"{self.file}: {type(err).__name__}: {err}")
        old, self.current = self.current, version  # from here on, new requests get it
        self.status = ReloadStatus("ok", "", time.time())
        self.on_reload(self.name, "ok")
        app_log.info("reloaded %s: version %s serves%s", self.file, notebook.version,
                     f" (version {old.notebook.version} ends with its last request)"
                     if old is not None else "")
        if old is not None:
            self._retire(old)

    def _failed(self, error: str) -> None:
        # told to whoever asks /healthz: the file's name, not where it is on this machine
        self.status = ReloadStatus("failed", error.replace(str(self.file), self.file.name),
                                   time.time())
        self.on_reload(self.name, "failed")
        serving = self.current.notebook.version if self.current is not None else None
        app_log.error("cannot reload %s; version %s still serves", error, serving)

    def _retire(self, version: Version) -> None:
        task = self.retiring[version] = asyncio.ensure_future(version.retire())
        task.add_done_callback(lambda _: self.retiring.pop(version, None))

    def stale(self) -> bool:
        """Whether the file now holds another version than the one served, with no reload
        under way to serve it (a change made before the watch began)."""
        if self.reloading is not None and not self.reloading.done():
            return False
        try:
            notebook = self.read(self.file, self.prefix)
        except NotebookError:
            return self.status.result != "failed"
        return self.current is None or notebook.version != self.current.notebook.version

    def remove(self) -> None:
        """No longer served (its file left a served folder): a reload under way is given up;
        the requests bound to the current version finish, then its kernels shut down."""
        if self.reloading is not None:
            self.reloading.cancel()
        if self.current is not None:
            self._retire(self.current)
            self.current = None

    async def stop(self) -> None:
        """Shut down every version's kernels, and any reload's."""
        if self.reloading is not None:
            self.reloading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reloading
        for version, task in list(self.retiring.items()):  # their requests are cut short
            task.cancel()
            await version.pool.shutdown()
        if self.current is not None:
            await self.current.pool.shutdown()


@dataclass(slots=True)
class Match:
    """What serves a request's path: the notebook, its version, the route and path
    parameters."""

    served: ServedNotebook
    version: Version
    route: Route
    path_kwargs: dict[str, str]


class Served:
    """Every notebook the gateway serves, by prefix; a request's path finds its version."""

    def __init__(self) -> None:
        self.notebooks: dict[str, ServedNotebook] = {}  # prefix → notebook

    def add(self, served: ServedNotebook) -> None:
        self.notebooks[served.prefix] = served

    def resolve(self, path: str) -> Match | None:
        """The notebook version and route that serve ``path``, or ``None``."""
        served = self.notebooks.get("")  # one notebook at the root, or one per prefix
        if served is None:
            first = path.split("/", 2)[1] if path.startswith("/") else ""
            served = self.notebooks.get(f"/{first}")
        if served is None or (version := served.current) is None:
            return None
        if (found := version.notebook.match(path)) is None:
            return None
        return Match(served, version, *found)

    def versions(self) -> list[tuple[ServedNotebook, Version]]:
        return [(served, served.current) for served in self.notebooks.values()
                if served.current is not None]

    def prefix_for(self, file: Path) -> str | None:
        """The prefix a new notebook of a served folder would take, or ``None`` (logged) if it
        cannot have one."""
        try:
            prefix = prefix_of(file)
        except NotebookError as err:
            app_log.error("not serving %s", err)
            return None
        if (other := self.notebooks.get(prefix)) is not None and other.file != file:
            app_log.error("not serving %s: %s is served under %s/ already", file, other.file,
                          prefix)
            return None
        return prefix
