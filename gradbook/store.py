"""A folder of saved networks that several processes share, each model with a version number.

Layout under ``root``::

    <name>.npz            the committed model (``MLP.save``: architecture, parameters, metadata)
    .versions/<name>/<v>.npz  the versions kept (``keep_versions``, the latest among them): each
                          a hard link to the file as it was committed, so keeping one costs no
                          copy; removed with the model
    .locks/<name>.lock    a writer holds an ``flock`` on it while it changes <name>; removed with
                          the model, so deleted models leave nothing behind
    .deleted-version      the highest version any deleted model had: new models start above it

The version lives in ``net.metadata["version"]``, inside the same file as the weights, so a
version number can never be paired with another version's weights. Three rules make the store
safe to share between the service's pooled kernels (separate processes, each with its own cache):

* **Atomic commits.** A new version is written to a staging file and renamed over ``<name>.npz``;
  a reader, or a crash, sees the previous version or the new one, never part of either.
* **One writer per model.** ``create``, ``update`` and ``delete`` hold the model's lock, so two
  changes are serialized (each sees the other's result) or, after ``lock_timeout`` seconds of
  waiting, the second raises ``ModelBusyError``.
* **Read-through cache.** ``get`` costs one ``stat``: the model is reloaded only when the file's
  (inode, mtime_ns, size) changed. Each commit stamps its file with an mtime strictly later than
  the previous version's, so two versions never share that key, even within one clock tick.
  The cache keeps the ``cache_size`` models used last, so a process's memory stays bounded
  however many models the store holds.

A store may be given a most number of models (``create(..., max_models=…)``): creates take a
store-wide lock to count and commit, so concurrent creates never overshoot it.

**Named versions.** The last ``keep_versions`` versions of each model stay readable
(``version``, ``versions``), oldest dropped first: a version can be predicted with, compared
against, or rolled back to (a rollback is a change like any other: it commits a new version).

**Versions never go back.** A new model's first version is one more than the highest version
any deleted model had (1 in a store where none was deleted): a model deleted and created again
counts on, and the store keeps one number for that however many models come and go.

**Private.** The folder is made readable by its owner only (mode 0700): weights, training data
and lock files are no business of other local users, and a lock another user could open, they
could hold.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from gradbook.network import MLP
from gradbook.validation import brief

if TYPE_CHECKING:
    from gradbook.pgstore import PostgresStore

DELETED_VERSION = ".deleted-version"
DEFAULT_ROOT = Path(".gradbook") / "models"  # in the folder the service is started from
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
PRIVATE = 0o700  # a folder of the store: its owner alone may enter it
LOCK_POLL_SECONDS = 0.01
VERSIONS = ".versions"
KEEP_VERSIONS = 10  # versions of each model a store keeps, unless told otherwise


class StoreError(Exception):
    """A model could not be read or changed; the message says which and why."""


class ModelNotFoundError(StoreError, LookupError):
    """No model of that name. Given the store's ``names`` (a function: it is called only when
    the message is read, after the store has let go of its connection or folder), the message
    names the closest ones, for a typo such as ``digts`` or ``XOR``."""

    def __init__(self, name: str, names: Callable[[], list[str]] | None = None) -> None:
        super().__init__(name)
        self.name, self._names, self._message = name, names, ""

    def __str__(self) -> str:
        if not self._message:
            try:
                known = self._names() if self._names is not None else []
            except StoreError:  # the store went away: no suggestion
                known = []
            close = closest(self.name, [other for other in known if other != self.name])
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            self._message = f"no model named {self.name!r}{hint}"
        return self._message


def closest(name: str, names: list[str], most: int = 3) -> list[str]:
    """The names most like ``name``, letter case aside, best first (``difflib``'s ratio of at
    least 0.6)."""
    lowered = {known.lower(): known for known in names}
    return [lowered[match] for match in
            difflib.get_close_matches(name.lower(), list(lowered), n=most, cutoff=0.6)]


class ModelExistsError(StoreError):
    pass


class VersionNotKeptError(StoreError, LookupError):
    """A version of a model the store does not keep (never made, or dropped as too old)."""

    def __init__(self, name: str, version: int, kept: list[int]) -> None:
        listed = ", ".join(map(str, kept)) or "none"
        super().__init__(f"model {name!r} has no version {version} kept; it keeps {listed}")


class ModelBusyError(StoreError):
    pass


class StoreFullError(StoreError):
    pass


class StoreUnavailableError(StoreError):
    """The store cannot be reached now (its database is down); retrying later may succeed."""


Store: TypeAlias = "ModelStore | PostgresStore"  # what ``open_store`` gives


def private_folder(path: Path) -> Path:
    """``path`` as a folder only its owner may enter: created so, or, if it exists and is ours,
    made so (a folder of another user's is left as it is: its owner chose)."""
    path.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        path.chmod(PRIVATE)
    return path


@contextmanager
def flocked(path: Path, timeout: float, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created, mode 0600, if missing);
    ``busy()`` is raised after ``timeout`` seconds of waiting: no wait is unbounded.

    A holder may remove the file before letting go (``ModelStore`` removes a deleted model's
    lock). Whoever then gets the lock holds a file that is no longer at ``path``: it lets go
    and locks the file now there instead, so two holders never hold two different files.
    """
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise busy() from None
                    time.sleep(LOCK_POLL_SECONDS)
            held = os.fstat(fd)
            try:
                current = os.stat(path)
                same = (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
        finally:
            os.close(fd)


def open_store(location: str | os.PathLike[str], lock_timeout: float = 2.0,
               cache_size: int = 16, keep_versions: int = KEEP_VERSIONS) -> Store:
    """The store at ``location``: a ``postgresql://`` URL (``gradbook.pgstore``, which needs
    psycopg) or a folder."""
    if str(location).startswith(("postgresql://", "postgres://")):
        from gradbook.pgstore import PostgresStore

        return PostgresStore(str(location), lock_timeout, cache_size, keep_versions)
    return ModelStore(location, lock_timeout, cache_size, keep_versions)


def version_summary(metadata: dict) -> dict:
    """What a listing of versions says of one: its number, when and by what it was made, its
    metrics."""
    return {"version": metadata["version"], "updated": metadata.get("updated"),
            "change": metadata.get("change"), "metrics": metadata.get("metrics", {})}


class ModelCache:
    """The ``size`` models used last, each with the key that tells its version apart."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[Any, MLP]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> tuple[Any, MLP] | None:
        """``(key, net)`` of ``name``, now the most recently used; None if not cached."""
        entry = self._entries.get(name)
        if entry is not None:
            self._entries.move_to_end(name)
        return entry

    def put(self, name: str, key: Any, net: MLP) -> None:
        self._entries[name] = (key, net)
        self._entries.move_to_end(name)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, name: str) -> None:
        self._entries.pop(name, None)


def check_name(name: str) -> str:
    """Return ``name`` if it is 1-64 letters, digits, ``-`` or ``_`` (starting with a letter or
    digit), so that it is safe as a file name and in a URL; raise ``ValueError`` otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            "name must be 1-64 letters, digits, '-' or '_', starting with a letter or digit; "
            f"got {brief(name)}"
        )
    return name


class ModelStore:
    """Models saved under ``root`` (created on first use), shared safely between processes.

    Parameters
    ----------
    root : the store's folder.
    lock_timeout : seconds a writer waits for another writer of the same model before
        ``ModelBusyError``.
    cache_size : models kept loaded (least recently used dropped first).
    keep_versions : versions of each model kept readable, the latest among them.
    """

    def __init__(
        self, root: str | os.PathLike[str], lock_timeout: float = 2.0, cache_size: int = 16,
        keep_versions: int = KEEP_VERSIONS,
    ) -> None:
        self.root = Path(root)
        self.lock_timeout = lock_timeout
        self.cache_size = cache_size
        self.keep_versions = max(1, keep_versions)
        private_folder(self.root)
        private_folder(self.root / ".locks")
        private_folder(self.root / VERSIONS)
        self._cache = ModelCache(cache_size)
        if (self.root / ".deleted").is_dir():
            self._fold_tombstones()

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def cached(self) -> int:
        """How many models this process holds loaded now (at most ``cache_size``)."""
        return len(self._cache)

    def path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.npz"

    def readable(self) -> bool:
        """Whether this process can list and read the store's folder (a glob of an unreadable
        folder finds nothing rather than failing)."""
        return self.root.is_dir() and os.access(self.root, os.R_OK | os.X_OK)

    def names(self) -> list[str]:
        """Names of the committed models, sorted."""
        return sorted(p.stem for p in self.root.glob("*.npz") if NAME.fullmatch(p.stem))

    # -- reading -----------------------------------------------------------------------------
    def get(self, name: str) -> MLP:
        """The latest committed version of ``name``. Shared with later calls: do not modify it."""
        path = self.path(name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.drop(name)
            raise ModelNotFoundError(name, self.names) from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        net = self._load(name, path)
        self._cache.put(name, key, net)
        return net

    def version(self, name: str, version: int) -> MLP:
        """Version ``version`` of ``name``, if the store keeps it (``VersionNotKeptError``
        naming those it keeps, if not). Shared with later calls: do not modify it."""
        latest = self.get(name)
        if version == latest.metadata["version"]:
            return latest
        path = self.root / VERSIONS / name / f"{version}.npz"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise VersionNotKeptError(name, version, self._kept(name)) from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if (cached := self._cache.get(f"{name}@{version}")) is not None and cached[0] == key:
            return cached[1]
        net = self._load(name, path)
        self._cache.put(f"{name}@{version}", key, net)
        return net

    def versions(self, name: str) -> list[dict]:
        """Each version kept of ``name``, newest first (``version_summary``)."""
        latest = self.header(name)[1]
        kept = {latest["version"]: version_summary(latest)}
        for number in self._kept(name):
            if number not in kept:
                with contextlib.suppress(ModelNotFoundError):  # dropped meanwhile
                    kept[number] = version_summary(
                        self._header(name, self.root / VERSIONS / name / f"{number}.npz")[1])
        return [kept[number] for number in sorted(kept, reverse=True)]

    def _kept(self, name: str) -> list[int]:
        """The numbers of the kept versions' files of ``name``, oldest first."""
        folder = self.root / VERSIONS / check_name(name)
        return sorted(int(path.stem) for path in folder.glob("*.npz") if path.stem.isdigit())

    def header(self, name: str) -> tuple[dict, dict]:
        """The ``config`` and ``metadata`` of the latest version of ``name``, read without its
        weights and without touching the cache (for listings)."""
        return self._header(name, self.path(name))

    def _header(self, name: str, path: Path) -> tuple[dict, dict]:
        try:
            # an .npz reads members lazily; opened here so that a damaged one is closed too
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
        except FileNotFoundError:
            raise ModelNotFoundError(name, self.names) from None
        except Exception as err:
            raise StoreError(f"model {name!r} could not be read ({type(err).__name__})") from err
        return header["config"], header["metadata"]

    def _load(self, name: str, path: Path) -> MLP:
        try:
            return MLP.load(path)
        except FileNotFoundError:
            raise ModelNotFoundError(name, self.names) from None
        except Exception as err:  # a damaged file must not pass for a client mistake
            raise StoreError(f"model {name!r} could not be read ({type(err).__name__})") from err

    # -- writing -----------------------------------------------------------------------------
    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the writer lock of ``name``; ``ModelBusyError`` after ``lock_timeout`` seconds.

        Its lock file goes when the model does: a lock let go while there is no model of the
        name (deleted, never created, or a create that failed) is removed by its holder."""
        lock = self.root / ".locks" / f"{check_name(name)}.lock"
        with self._flock(lock, f"model {name!r}"):
            try:
                yield
            finally:
                if not self.path(name).exists():
                    lock.unlink(missing_ok=True)

    @contextmanager
    def _flock(self, lock_path: Path, what: str) -> Iterator[None]:
        def busy() -> ModelBusyError:
            return ModelBusyError(f"{what} is being changed by another request; retry later")

        with flocked(lock_path, self.lock_timeout, busy):
            yield

    def _store_lock(self) -> Any:
        """The store-wide lock: creates count and commit under it, deletes record their last
        version under it. Taken before a model's lock, never after (no two writers wait on each
        other). Its name cannot clash with a model's: names start with a letter or digit."""
        return self._flock(self.root / ".locks" / ".store.lock", "the store")

    def create(self, name: str, net: MLP, max_models: int | None = None,
               change: str = "created") -> MLP:
        """Commit ``net`` as a new model; ``ModelExistsError`` if ``name`` is taken,
        ``StoreFullError`` if the store holds ``max_models`` already.

        Its version is one more than the highest version a deleted model had (1 if none was
        deleted), so a client that remembers versions never sees one go backwards.
        """
        check_name(name)
        with self._store_lock():
            if self.path(name).exists():
                raise ModelExistsError(f"a model named {name!r} already exists")
            if max_models is not None and len(self.names()) >= max_models:
                raise StoreFullError(
                    f"the store holds at most {max_models} models; delete one first"
                )
            with self.lock(name):  # after the checks: a refused create leaves no lock file
                net.metadata["created"] = timestamp()
                net.metadata["change"] = change
                shutil.rmtree(self.root / VERSIONS / name, ignore_errors=True)  # a crashed delete's
                self._commit(name, net, version=self._deleted_version() + 1)
        return net

    def update(self, name: str, change: Callable[[MLP], object], what: str = "changed") -> MLP:
        """Apply ``change(net)`` to a private copy of the latest version and commit it as the next,
        saying ``what`` made it (``version_summary``).

        The lock is held from reading to committing, so concurrent updates never lose each
        other's changes. If ``change`` raises, nothing is committed.
        """
        path = self.path(name)
        if not path.exists():  # before taking a lock: no lock file for unknown names
            raise ModelNotFoundError(name, self.names)
        with self.lock(name):
            if not path.exists():
                raise ModelNotFoundError(name, self.names)
            net = self._load(name, path)
            change(net)
            net.metadata["change"] = what
            self._commit(name, net, version=net.metadata["version"] + 1)
        return net

    def delete(self, name: str) -> int:
        """Remove ``name`` and its lock file; returns the version it had (0 if its file was
        damaged)."""
        if not self.path(name).exists():  # before taking a lock: no lock file for unknown names
            raise ModelNotFoundError(name, self.names)
        with self._store_lock(), self.lock(name):
            try:
                version = self.get(name).metadata["version"]
            except ModelNotFoundError:
                raise
            except StoreError:  # a damaged model can still be deleted
                version = 0
            if version > self._deleted_version():
                self._write_deleted_version(version)
            self.path(name).unlink()
            shutil.rmtree(self.root / VERSIONS / name, ignore_errors=True)
        self._cache.drop(name)
        return version

    def _deleted_version(self) -> int:
        """The highest version a deleted model had (0: none); read under the store's lock."""
        try:
            return int((self.root / DELETED_VERSION).read_text())
        except FileNotFoundError:
            return 0
        except ValueError:
            raise StoreError("the store's record of deleted versions is damaged") from None

    def _write_deleted_version(self, version: int) -> None:
        record = self.root / DELETED_VERSION
        staging = record.with_name(f"{DELETED_VERSION}.staging")
        staging.write_text(str(version))
        os.replace(staging, record)  # atomic, like a commit

    def _fold_tombstones(self) -> None:
        """Stores made before ``DELETED_VERSION`` kept one file per deleted name in
        ``.deleted/``: fold them into the one number, then remove them."""
        folder = self.root / ".deleted"
        with self._store_lock():
            versions = [self._deleted_version()]
            for tombstone in folder.glob("*"):
                with contextlib.suppress(OSError, ValueError):
                    versions.append(int(tombstone.read_text()))
            self._write_deleted_version(max(versions))
            shutil.rmtree(folder, ignore_errors=True)

    def _commit(self, name: str, net: MLP, version: int) -> None:
        path = self.path(name)
        net.metadata["version"] = version
        net.metadata["updated"] = timestamp()
        stamp = time.time_ns()
        if path.exists():
            stamp = max(stamp, path.stat().st_mtime_ns + 1)
        staging = self.root / f".{name}.staging"
        net.save(staging)
        os.utime(staging, ns=(stamp, stamp))
        kept = private_folder(self.root / VERSIONS / name)
        with contextlib.suppress(FileNotFoundError):  # a version file of a crashed commit
            (kept / f"{version}.npz").unlink()
        os.link(staging, kept / f"{version}.npz")  # the same file: no copy
        os.replace(staging, path)
        for old in self._kept(name)[:-self.keep_versions]:  # oldest first
            (kept / f"{old}.npz").unlink(missing_ok=True)


def timestamp() -> str:
    """Now in UTC, ISO 8601 to the millisecond: how records are stamped."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
