"""The model store in a PostgreSQL database, for several machines serving the same models.

``GRADBOOK_STORE=postgresql://…`` selects it (``gradbook.store.open_store``); it keeps the
interface and the guarantees of the folder store (``gradbook.store.ModelStore``), with the
database doing what the folder did with files:

* **Atomic commits.** A change is one transaction: it locks the model's row, writes the next
  version's weights and bumps ``version``; a crash rolls it back and leaves the previous version
  whole.
* **One writer per model.** The row lock (``SELECT … FOR UPDATE``) serializes changes of one
  model; a writer that waits longer than ``lock_timeout`` gets ``ModelBusyError`` (PostgreSQL's
  ``lock_timeout``). Creates also take a store-wide advisory lock, so that ``max_models`` holds.
  A deleted model's row goes; the highest version a deleted model had is kept (one number, in
  ``deleted_version``), and a new model starts above it, so a re-created one counts on.
* **Named versions.** Each commit also writes its version to ``model_versions`` and drops, in
  the same transaction, those past the last ``keep_versions``; a kept version never changes, so
  a process caches it without asking again.
* **A cache that does not ask the database on every read.** Each process keeps the models it
  used last (``cache_size``) and a listener thread ``LISTEN``s on ``gradbook_models``; every
  commit ``NOTIFY``s "name:version" in its transaction, so PostgreSQL delivers it when the commit
  is visible, to every replica at once. ``get`` answers from the cache unless a notification said
  a newer version exists, or the listener is not connected (then every read asks the database,
  and fails with ``StoreUnavailableError`` while the database is down).
* **Read your writes, on every replica.** A notification alone would leave a window: the
  writer's client could reach another replica before that replica's listener has read it. So
  each listener, once it has recorded a notification, acknowledges it to the writer
  (``NOTIFY`` on the writer's own channel), and a writer returns only when every listening
  session of the database (``pg_stat_activity``, by ``application_name``) has acknowledged its
  commit, or after ``FRESHNESS_SECONDS``. A client that got a commit's answer from one replica
  then gets that version or a later one from every replica, and never an older one after it.

The schema is created and migrated by ``migrate`` (the launcher calls it on start), under an
advisory lock so that replicas starting together apply each migration once.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from gradbook.network import MLP
from gradbook.store import (
    KEEP_VERSIONS,
    ModelBusyError,
    ModelCache,
    ModelExistsError,
    ModelNotFoundError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    VersionNotKeptError,
    check_name,
    timestamp,
    version_summary,
)

CHANNEL = "gradbook_models"
CONNECT_SECONDS = 2.0  # to open a connection
POOL_WAIT_SECONDS = 1.0  # to get one from the pool (a free one, or a new one opened)
RETRY_SECONDS = 1.0  # after the database failed, requests fail at once for this long
FRESHNESS_SECONDS = 0.1  # a writer waits this long at most for the listeners' acknowledgements
LISTENER = "gradbook-listener"  # the application_name of every listening session
MAX_PENDING = 64  # acknowledgements kept for commits of this process not yet waited for
RECONNECT_SECONDS = 0.25  # between a lost listener connection and the next attempt
HEARTBEAT_SECONDS = 1.0  # a listener that heard nothing for this long asks ``SELECT 1``
QUIET_SECONDS = 5.0  # a listener silent for longer is not trusted: reads ask the database
# so that a connection that died without a word (a network partition) fails within seconds
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
             "keepalives_count": 2, "tcp_user_timeout": 5000}
MAX_NAMES = 10_000  # model names a listener remembers; past it, forgets all and reloads
MIGRATION_LOCK = 0x67726164  # advisory lock keys ("grad", "book"): any two constants do
CREATE_LOCK = 0x626F6F6B

# Each migration takes the schema from its index to its index + 1; append, never edit.
MIGRATIONS = [
    """
    CREATE TABLE models (
        name text PRIMARY KEY,
        version bigint NOT NULL,  -- the last committed version; kept when the model is deleted
        model bytea,              -- MLP.write's .npz; NULL once deleted
        header text,              -- its {"config", "metadata"} as JSON, read without the weights
        updated timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE jobs (
        id text PRIMARY KEY,      -- time-ordered: the order jobs run in
        state text NOT NULL,
        record text NOT NULL,     -- the job as JSON (service.jobs)
        data text NOT NULL,       -- the training data it was sent, as JSON
        lease_until timestamptz   -- a running job whose worker stops renewing this is stranded
    );
    CREATE INDEX jobs_waiting ON jobs (id) WHERE state IN ('queued', 'running');
    """,
    # deleted models leave nothing behind but the highest version one had
    """
    CREATE TABLE deleted_version (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        version bigint NOT NULL
    );
    INSERT INTO deleted_version (version)
        SELECT coalesce(max(version), 0) FROM models WHERE model IS NULL;
    DELETE FROM models WHERE model IS NULL;
    """,
    # the versions kept of each model, the latest among them (each model's own, to start with)
    """
    CREATE TABLE model_versions (
        name text NOT NULL,
        version bigint NOT NULL,
        model bytea NOT NULL,
        header text NOT NULL,
        PRIMARY KEY (name, version)
    );
    INSERT INTO model_versions (name, version, model, header)
        SELECT name, version, model, header FROM models WHERE model IS NOT NULL;
    """,
]


class PostgresStore:
    """Models in the database at ``url``, shared by every process and replica that uses it.

    Parameters as ``ModelStore``'s: ``lock_timeout`` seconds a writer waits for another writer of
    the same model, ``cache_size`` models kept loaded in this process, ``keep_versions`` versions
    of each model kept readable.
    """

    def __init__(self, url: str, lock_timeout: float = 2.0, cache_size: int = 16,
                 keep_versions: int = KEEP_VERSIONS) -> None:
        self.url = url
        self.lock_timeout = lock_timeout
        self.cache_size = cache_size
        self.keep_versions = max(1, keep_versions)
        self._cache = ModelCache(cache_size)
        self.pool = ConnectionPool(
            url, min_size=1, max_size=4, open=False, timeout=POOL_WAIT_SECONDS,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_SECONDS},
            check=ConnectionPool.check_connection, name="gradbook-store")
        self.pool.open(wait=False)
        # Written by the listener thread, read by ``get``: the lowest version not yet stale of
        # each model named in a notification, and whether notifications are arriving now.
        self._fresh_from: dict[str, int] = {}
        self._failed_at, self._failure = -RETRY_SECONDS, ""  # the last failure to connect
        self._listening = threading.Event()
        self._heard_at = 0.0  # when the listener last had an answer from the database
        self._ack_channel = ""  # where the listeners acknowledge this process's commits
        # the token of a commit of ours → backend pids of the listeners that heard it
        self._acks: dict[str, set[int]] = {}
        self._closed = threading.Event()
        self._generation = 0  # bumped on every (re)connection: notifications may have been lost
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()

    @property
    def location(self) -> str:
        """The database URL, any password shown as ``***``."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def cached(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._closed.set()  # the listener stops within HEARTBEAT_SECONDS
        self.pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Bring the schema to the latest version; returns the version found (0: a new store)."""
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS gradbook_schema (version integer NOT NULL)")
            row = conn.execute("SELECT version FROM gradbook_schema").fetchone()
            found = 0 if row is None else row[0]
            if found > len(MIGRATIONS):
                raise StoreError(f"the database's schema is version {found}, newer than this "
                                 f"service knows ({len(MIGRATIONS)}); upgrade the service")
            for migration in MIGRATIONS[found:]:
                conn.execute(migration)
            if row is None:
                conn.execute("INSERT INTO gradbook_schema VALUES (%s)", (len(MIGRATIONS),))
            else:
                conn.execute("UPDATE gradbook_schema SET version = %s", (len(MIGRATIONS),))
        return found

    # -- reading -----------------------------------------------------------------------------
    def readable(self) -> bool:
        """Whether the database answers now."""
        try:
            with self.connection() as conn:
                conn.execute("SELECT 1 FROM models LIMIT 1")
            return True
        except (StoreError, psycopg.Error):  # down, or no schema yet
            return False

    def names(self) -> list[str]:
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT name FROM models WHERE model IS NOT NULL ORDER BY name").fetchall()
        return [name for (name,) in rows]

    def get(self, name: str) -> MLP:
        """The latest committed version of ``name``; shared with later calls: do not modify it.

        Answered from this process's cache, without the database, while the listener is
        connected and has heard of no newer version.
        """
        check_name(name)
        self._ensure_listener()
        generation = self._generation
        cached = self._cache.get(name)
        if cached is not None and self._listener_trusted():
            (cached_generation, version), net = cached
            if cached_generation == generation and version >= self._fresh_from.get(name, 0):
                return net
        with self.connection() as conn:
            row = conn.execute("SELECT model FROM models WHERE name = %s AND model IS NOT NULL",
                               (name,)).fetchone()
        if row is None:
            self._cache.drop(name)
            raise ModelNotFoundError(name, self.names)
        net = _read(name, row[0])
        self._cache.put(name, (generation, net.metadata["version"]), net)
        return net

    def version(self, name: str, version: int) -> MLP:
        """Version ``version`` of ``name``, if the store keeps it (``VersionNotKeptError``
        naming those it keeps, if not). Shared with later calls: do not modify it."""
        latest = self.get(name)
        if version == latest.metadata["version"]:
            return latest
        key = f"{name}@{version}"  # a kept version never changes, nor is its number reused
        if (cached := self._cache.get(key)) is not None and cached[0] == self._generation:
            return cached[1]
        with self.connection() as conn:
            row = conn.execute("SELECT model FROM model_versions WHERE name = %s AND version = %s",
                               (name, version)).fetchone()
            if row is None:
                kept = conn.execute("SELECT version FROM model_versions WHERE name = %s "
                                    "ORDER BY version", (name,)).fetchall()
                raise VersionNotKeptError(name, version, [number for (number,) in kept])
        net = _read(name, row[0])
        self._cache.put(key, self._generation, net)
        return net

    def versions(self, name: str) -> list[dict]:
        """Each version kept of ``name``, newest first (``version_summary``)."""
        check_name(name)
        with self.connection() as conn:
            rows = conn.execute("SELECT header FROM model_versions WHERE name = %s "
                                "ORDER BY version DESC", (name,)).fetchall()
        if not rows:
            raise ModelNotFoundError(name, self.names)
        return [version_summary(json.loads(header)["metadata"]) for (header,) in rows]

    def header(self, name: str) -> tuple[dict, dict]:
        check_name(name)
        with self.connection() as conn:
            row = conn.execute("SELECT header FROM models WHERE name = %s AND model IS NOT NULL",
                               (name,)).fetchone()
        if row is None:
            raise ModelNotFoundError(name, self.names)
        header = json.loads(row[0])
        return header["config"], header["metadata"]

    # -- writing -----------------------------------------------------------------------------
    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the writer lock of ``name`` (its row); ``ModelBusyError`` after ``lock_timeout``
        seconds, ``ModelNotFoundError`` if there is no such model."""
        with self._writing(name):
            yield

    def create(self, name: str, net: MLP, max_models: int | None = None,
               change: str = "created") -> MLP:
        """Commit ``net`` as a new model (one more than the highest version a deleted model
        had, 1 if none was deleted); ``ModelExistsError`` if the name is taken,
        ``StoreFullError`` at ``max_models``.
        """
        check_name(name)
        self._ensure_listener()  # before any lock: it may take a moment to connect
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
            try:  # the row may be locked by a change, or a delete, of the model
                row = conn.execute("SELECT 1 FROM models WHERE name = %s FOR UPDATE",
                                   (name,)).fetchone()
            except errors.LockNotAvailable:
                raise busy(name) from None
            if row is not None:
                raise ModelExistsError(f"a model named {name!r} already exists")
            if max_models is not None:
                (count,) = conn.execute(
                    "SELECT count(*) FROM models WHERE model IS NOT NULL").fetchone()
                if count >= max_models:
                    raise StoreFullError(
                        f"the store holds at most {max_models} models; delete one first")
            net.metadata["created"] = timestamp()
            net.metadata["change"] = change
            (deleted,) = conn.execute("SELECT version FROM deleted_version").fetchone()
            conn.execute("INSERT INTO models (name, version) VALUES (%s, 0)", (name,))
            commit = self._commit(conn, name, net, version=deleted + 1)
        self._await_acks(*commit)
        return net

    def update(self, name: str, change: Callable[[MLP], object], what: str = "changed") -> MLP:
        """Apply ``change(net)`` to a private copy of the latest version and commit it as the
        next, saying ``what`` made it, holding the model's row lock from reading to committing;
        if ``change`` raises, nothing is committed."""
        with self._writing(name) as (conn, model):
            net = _read(name, model)
            change(net)
            net.metadata["change"] = what
            commit = self._commit(conn, name, net, version=net.metadata["version"] + 1)
        self._await_acks(*commit)
        return net

    def delete(self, name: str) -> int:
        """Remove ``name``, its row too; returns the version it had."""
        with self._writing(name) as (conn, _):
            (version,) = conn.execute("DELETE FROM models WHERE name = %s RETURNING version",
                                      (name,)).fetchone()
            conn.execute("DELETE FROM model_versions WHERE name = %s", (name,))
            conn.execute("UPDATE deleted_version SET version = greatest(version, %s)",
                         (version,))
            # versions up to this one are stale now; a re-created model starts above it
            commit = self._announce(conn, name, version + 1)
        self._cache.drop(name)
        self._await_acks(*commit)
        return version

    def _commit(self, conn: psycopg.Connection, name: str, net: MLP,
                version: int) -> tuple[str, set[int]]:
        net.metadata["version"] = version
        net.metadata["updated"] = timestamp()
        buffer = io.BytesIO()
        net.write(buffer)
        header = json.dumps({"config": net.config, "metadata": net.metadata})
        conn.execute("UPDATE models SET version = %s, model = %s, header = %s, updated = now() "
                     "WHERE name = %s", (version, buffer.getvalue(), header, name))
        conn.execute("INSERT INTO model_versions (name, version, model, header) "
                     "VALUES (%s, %s, %s, %s) ON CONFLICT (name, version) DO UPDATE SET "
                     "model = excluded.model, header = excluded.header",
                     (name, version, buffer.getvalue(), header))
        conn.execute("DELETE FROM model_versions WHERE name = %s AND version <= %s",
                     (name, version - self.keep_versions))
        return self._announce(conn, name, version)

    def _announce(self, conn: psycopg.Connection, name: str,
                  fresh_from: int) -> tuple[str, set[int]]:
        """Tell every listener, when the transaction commits, that versions of ``name`` below
        ``fresh_from`` are stale; the commit's token and the listening sessions whose
        acknowledgement to wait for."""
        token = uuid.uuid4().hex[:16]
        ack_to = self._ack_channel  # none while our listener is not connected: nothing to wait
        conn.execute("SELECT pg_notify(%s, %s)",
                     (CHANNEL, f"{name}:{fresh_from}:{ack_to}:{token}"))
        if not ack_to:
            return token, set()
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                            "AND datname = current_database()", (LISTENER,)).fetchall()
        return token, {pid for (pid,) in rows}

    @contextmanager
    def _writing(self, name: str) -> Iterator[tuple[psycopg.Connection, bytes]]:
        """A transaction holding the row lock of model ``name``, and its committed weights."""
        check_name(name)
        self._ensure_listener()  # before any lock: it may take a moment to connect
        with self._transaction() as conn:
            try:
                row = conn.execute("SELECT model FROM models WHERE name = %s "
                                   "AND model IS NOT NULL FOR UPDATE", (name,)).fetchone()
            except errors.LockNotAvailable:
                raise busy(name) from None
            if row is None:
                raise ModelNotFoundError(name, self.names)
            yield conn, row[0]

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        with self.connection() as conn, conn.transaction():
            # PostgreSQL's 0 means "wait for ever"; ours means "do not wait". A change may train
            # for a minute inside its transaction: a server-wide idle-in-transaction timeout
            # (common on managed databases) must not end it.
            milliseconds = max(1, round(self.lock_timeout * 1000))
            conn.execute("SELECT set_config('lock_timeout', %s, true), "
                         "set_config('idle_in_transaction_session_timeout', '0', true)",
                         (f"{milliseconds}ms",))
            yield conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection of the pool; ``StoreUnavailableError`` when the database is out of
        reach, so that requests fail at once (503) rather than hang.

        Once it failed, every call fails at once for ``RETRY_SECONDS`` before one tries again:
        a kernel answers its queued requests one after another, and waiting for the pool on each
        would turn an outage of the database into minutes of queue. The listener's failures to
        reach the server (every ``RECONNECT_SECONDS``) count too, and its success ends the wait.
        Other database errors are ``StoreError`` (500): retrying would not help."""
        if time.monotonic() - self._failed_at < RETRY_SECONDS:
            raise StoreUnavailableError(self._failure)
        try:
            with self.pool.connection() as conn:
                yield conn
        except errors.LockNotAvailable:
            raise ModelBusyError("a model is being changed by another request; retry later") \
                from None
        except (PoolTimeout, psycopg.Error) as err:
            if not unreachable(err):
                raise StoreError(f"the model store's database refused the operation "
                                 f"({type(err).__name__})") from err
            self._failed(err)
            raise StoreUnavailableError(self._failure) from err

    def _failed(self, err: Exception) -> None:
        self._failure = (f"the model store's database is unavailable ({type(err).__name__}); "
                         "retry later")
        self._failed_at = time.monotonic()

    # -- notifications -----------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        if self._listener is None:
            with self._listener_lock:
                if self._listener is None:
                    self._listener = threading.Thread(target=self._listen, daemon=True,
                                                      name="gradbook-store-listener")
                    self._listener.start()
                    # so that the first models loaded are cached under a listening connection
                    self._listening.wait(CONNECT_SECONDS)

    def _listener_trusted(self) -> bool:
        """Whether the listener is connected and had an answer from the database lately, so
        that a cached model no notification called stale is the latest."""
        return self._listening.is_set() and time.monotonic() - self._heard_at < QUIET_SECONDS

    def _listen(self) -> None:
        """Keep a connection listening on ``CHANNEL``, reconnecting when it is lost, until the
        store is closed."""
        while not self._closed.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, application_name=LISTENER,
                                     connect_timeout=CONNECT_SECONDS, **KEEPALIVE) as conn:
                    self._serve_notifications(conn)
            except Exception as err:  # never hang nor die: reads ask the database meanwhile
                if unreachable(err):
                    self._failed(err)
            finally:
                self._listening.clear()
                self._ack_channel = ""
            self._closed.wait(RECONNECT_SECONDS)

    def _serve_notifications(self, conn: psycopg.Connection) -> None:
        own_pid = conn.info.backend_pid
        ack_channel = f"gradbook_ack_{own_pid}"
        conn.execute(f"LISTEN {CHANNEL}")
        conn.execute(f"LISTEN {ack_channel}")
        self._generation += 1  # what was cached before may have missed changes
        self._ack_channel = ack_channel
        self._failed_at = -RETRY_SECONDS  # the database is back
        self._heard_at = time.monotonic()
        self._listening.set()
        while not self._closed.is_set():
            # Taken out of ``notifies`` before they are handled: the generator holds the
            # connection until it ends, and the acknowledgements need it (notifications that
            # came in one packet arrive together).
            heard = list(conn.notifies(timeout=HEARTBEAT_SECONDS, stop_after=1))
            if not heard:  # a connection that died quietly fails here
                conn.execute("SELECT 1")
            self._heard_at = time.monotonic()
            for notify in heard:
                if (ack := self._heard(notify, own_pid)) is not None:
                    conn.execute("SELECT pg_notify(%s, %s)", ack)

    def _heard(self, notify: psycopg.Notify, own_pid: int) -> tuple[str, str] | None:
        """Record a notification; the acknowledgement to send for it (channel, payload), if it
        is a commit. ``own_pid``: the listening session's backend, which names it in acks.
        A payload that is not ours (anyone may ``NOTIFY``) is ignored."""
        try:
            if notify.channel != CHANNEL:  # on our ack channel: a listener heard our commit
                token, pid = notify.payload.split(":")
                self._acks.setdefault(token, set()).add(int(pid))
                while len(self._acks) > MAX_PENDING:  # acknowledgements that came too late
                    self._acks.pop(next(iter(self._acks)), None)
                return None
            name, fresh_from, ack_to, token = notify.payload.split(":")
            if int(fresh_from) > self._fresh_from.get(name, 0):
                if len(self._fresh_from) >= MAX_NAMES:  # forget all: every cached model reloads
                    self._generation += 1
                    self._fresh_from.clear()
                self._fresh_from[name] = int(fresh_from)
        except ValueError:
            return None
        return (ack_to, f"{token}:{own_pid}") if ack_to else None

    def _await_acks(self, token: str, listeners: set[int]) -> None:
        """Wait until every one of ``listeners`` acknowledged the commit ``token``, at most
        ``FRESHNESS_SECONDS`` (a listener may have gone meanwhile)."""
        deadline = time.monotonic() + FRESHNESS_SECONDS
        while not listeners <= self._acks.get(token, set()) and time.monotonic() < deadline:
            time.sleep(0.0005)
        self._acks.pop(token, None)


def busy(name: str) -> ModelBusyError:
    return ModelBusyError(f"model {name!r} is being changed by another request; retry later")


def unreachable(err: BaseException) -> bool:
    """Whether ``err`` says the database cannot be reached (retrying later may work): no
    connection from the pool, a connection lost or refused, the server shutting down."""
    if isinstance(err, PoolTimeout):
        return True
    if not isinstance(err, psycopg.OperationalError):
        return False
    state = err.sqlstate or ""
    return state == "" or state.startswith(("08", "57P"))


def _read(name: str, model: bytes) -> MLP:
    try:
        return MLP.read(io.BytesIO(model))
    except Exception as err:  # a damaged row must not pass for a client mistake
        raise StoreError(f"model {name!r} could not be read ({type(err).__name__})") from err

