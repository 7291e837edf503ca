"""``gradbook.pgstore``: the PostgreSQL model store keeps the folder store's guarantees, against
a real PostgreSQL server (``gradbook_service.app.postgres``) that this module starts on a free port.

Each test gets a database of its own; two ``PostgresStore`` objects on one database stand for
two replicas (each has its own pool, cache and listener, as separate processes would).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import ROOT, free_port
from gradbook_service.app.jobs import PostgresJobStore, open_jobs
from gradbook_service.app.postgres import PostgresServer

from gradbook import MLP
from gradbook.pgstore import MIGRATIONS, PostgresStore
from gradbook.store import (
    ModelBusyError,
    ModelExistsError,
    ModelNotFoundError,
    StoreError,
    StoreFullError,
    StoreUnavailableError,
    open_store,
)

pytestmark = pytest.mark.xdist_group("postgres")
_databases = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    # not under pytest's tmp folder: as root, the server runs as the user postgres, which
    # must be able to enter every folder above its data
    with tempfile.TemporaryDirectory(prefix="gradbook-pg-") as folder:
        os.chmod(folder, 0o711)
        with PostgresServer(Path(folder) / "data", free_port(), durable=False) as running:
            yield running


@pytest.fixture
def url(server: PostgresServer) -> str:
    """A new, empty database with gradbook's schema."""
    url = server.create_database(f"store_{next(_databases)}")
    with PostgresStore(url) as store:
        assert store.migrate() == 0
    return url


@pytest.fixture
def replicas(url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    a, b = PostgresStore(url, lock_timeout=0.2), PostgresStore(url, lock_timeout=0.2)
    yield a, b
    a.close()
    b.close()


def version(net: MLP) -> int:
    return net.metadata["version"]


def seen(store: PostgresStore) -> int:
    """The version ``store`` answers with now (0: no such model)."""
    try:
        return version(store.get("m"))
    except ModelNotFoundError:
        return 0


def test_open_store_picks_the_backend_from_the_location(url: str, tmp_path: Path) -> None:
    with open_store(url) as store:
        assert isinstance(store, PostgresStore) and store.location == url
    assert type(open_store(tmp_path)).__name__ == "ModelStore"
    with PostgresStore("postgresql://u:secret@127.0.0.1:1/db") as hidden:
        assert hidden.location == "postgresql://u:***@127.0.0.1:1/db"


def test_every_change_commits_the_next_version_and_a_recreated_model_counts_on(
    replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    a, b = replicas
    net = MLP([2, 3, 1], seed=1)
    assert version(a.create("m", net)) == 1
    got = b.get("m")
    assert version(got) == 1
    assert all(np.array_equal(p, q) for p, q in zip(got.parameters, net.parameters, strict=True))
    assert version(a.update("m", lambda n: n.weights[0].fill(0.5))) == 2
    assert seen(b) == 2 and b.get("m").weights[0][0, 0] == 0.5
    with pytest.raises(ModelExistsError):
        b.create("m", MLP([2, 1]))
    assert a.delete("m") == 2
    assert b.names() == [] and seen(b) == 0
    assert version(b.create("m", MLP([2, 1]))) == 3  # never back to 1
    assert version(a.get("m")) == 3 and a.header("m")[1]["version"] == 3


def test_a_reader_sees_each_commit_as_soon_as_the_writer_returns(
    replicas: tuple[PostgresStore, PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader answers from its cache and learns of each commit by notification; the writer
    returns only once the reader's listener has acknowledged it, so no sleep is needed here.
    Without the wait for acknowledgements the reader lags: the test must see that too."""
    a, b = replicas
    a.create("m", MLP([2, 1]))
    assert seen(b) == 1
    for expected in range(2, 42):
        a.update("m", lambda n: None)
        assert seen(b) == expected
    a.delete("m")
    assert seen(b) == 0
    a.create("m", MLP([2, 1]))
    monkeypatch.setattr(a, "_await_acks", lambda *args: None)
    lagged = 0
    for expected in range(43, 83):
        a.update("m", lambda n: None)
        lagged += seen(b) != expected
        while seen(b) != expected:  # let it catch up before the next commit
            time.sleep(0.001)
    assert lagged > 0


def test_a_cached_model_is_read_without_the_database(
    replicas: tuple[PostgresStore, PostgresStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    a.create("m", MLP([2, 1]))
    cached = b.get("m")

    def no_database() -> None:
        raise AssertionError("get asked the database for a model it holds")

    monkeypatch.setattr(b, "connection", no_database)
    assert all(b.get("m") is cached for _ in range(100))
    monkeypatch.undo()
    a.update("m", lambda n: None)  # now the cache is stale: the next get must load
    monkeypatch.setattr(b, "connection", no_database)
    with pytest.raises(AssertionError, match="asked the database"):
        b.get("m")


def test_concurrent_updates_of_one_model_lose_nothing(url: str) -> None:
    stores = [PostgresStore(url, lock_timeout=30) for _ in range(4)]
    stores[0].create("m", MLP([1, 1]))
    stores[0].update("m", lambda n: n.metadata.update(count=0))

    def bump(store: PostgresStore) -> None:
        for _ in range(10):
            store.update("m", lambda n: n.metadata.update(count=n.metadata["count"] + 1))

    threads = [threading.Thread(target=bump, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    net = stores[1].get("m")
    assert (net.metadata["count"], version(net)) == (40, 42)
    for store in stores:
        store.close()


def test_a_second_writer_waits_then_gets_busy(
    replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    a, b = replicas
    a.create("m", MLP([2, 1]))
    with b.lock("m"):
        start = time.monotonic()
        with pytest.raises(ModelBusyError, match="being changed"):
            a.update("m", lambda n: None)
        assert time.monotonic() - start >= 0.2  # it waited lock_timeout first
    assert version(a.update("m", lambda n: None)) == 2  # free again


def test_a_failed_change_commits_nothing(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    a.create("m", MLP([2, 1]))

    def broken(net: MLP) -> None:
        net.weights[0][:] = 7.0
        raise RuntimeError("training blew up")

    with pytest.raises(RuntimeError):
        a.update("m", broken)
    assert version(b.get("m")) == 1 and b.get("m").weights[0][0, 0] != 7.0


KILLED_WRITER = """
import os, sys
from gradbook.pgstore import PostgresStore
store = PostgresStore(sys.argv[1])
def die(net):
    net.weights[0][:] = 7.0
    os._exit(9)  # a crash in the middle of the transaction
store.update("m", die)
"""


def test_a_writer_killed_mid_change_leaves_the_previous_version_whole(
    replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    a, b = replicas
    a.create("m", MLP([2, 1]))
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, b.url], cwd=ROOT, timeout=60)
    assert result.returncode == 9
    net = b.get("m")
    assert version(net) == 1 and net.weights[0][0, 0] != 7.0
    assert version(a.update("m", lambda n: None)) == 2  # the dead writer's lock went with it


def test_concurrent_creates_never_overshoot_the_most_models(url: str) -> None:
    stores = [PostgresStore(url, lock_timeout=30) for _ in range(6)]
    outcomes: list[str] = []

    def create(i: int) -> None:
        try:
            stores[i].create(f"m{i}", MLP([1, 1]), max_models=3)
            outcomes.append("created")
        except StoreFullError:
            outcomes.append("full")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] * 3 + ["full"] * 3
    assert len(stores[0].names()) == 3
    for store in stores:
        store.close()


def test_migrate_is_idempotent_and_refuses_a_newer_schema(url: str) -> None:
    with PostgresStore(url) as store:
        assert store.migrate() == len(MIGRATIONS)  # already there: nothing applied
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE gradbook_schema SET version = version + 1")
        with pytest.raises(StoreError, match="newer than this service knows"):
            store.migrate()


def test_a_database_out_of_reach_fails_fast_and_is_not_a_client_error() -> None:
    port = free_port()  # nothing listens there
    with PostgresStore(f"postgresql://nobody@127.0.0.1:{port}/none") as store:
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            store.get("m")
        assert time.monotonic() - start < 10  # not a hang: the pool's wait is bounded
        assert store.readable() is False


def test_jobs_are_claimed_once_and_a_lapsed_lease_strands_the_job(url: str) -> None:
    with PostgresStore(url) as one, PostgresStore(url) as other:
        first, second = open_jobs(one, lease=0.5), open_jobs(other, lease=0.5)
        assert isinstance(first, PostgresJobStore) and first.shared
        made = [first.create("m", {"epochs": 1}, "xor") for _ in range(6)]
        claimed: list[str] = []

        def claim(jobs: PostgresJobStore) -> None:
            while (job := jobs.claim()) is not None:
                claimed.append(job["id"])

        threads = [threading.Thread(target=claim, args=(jobs,)) for jobs in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(claimed) == [job["id"] for job in made]  # each exactly once
        assert second.get(made[0]["id"])["state"] == "running"
        assert second.data(made[0]["id"]) == "xor"
        time.sleep(0.3)
        first.renew(made[0]["id"])  # its worker is alive: renewed
        time.sleep(0.4)
        stranded = {job["id"] for job in second.stranded()}
        assert made[0]["id"] not in stranded and made[1]["id"] in stranded
        assert second.cancel(made[2]["id"])["cancel_requested"] is True
        assert first.get(made[2]["id"])["cancel_requested"] is True  # seen from the other


def test_a_foreign_notification_does_not_stop_the_listener(
    replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    """Anyone who can connect may NOTIFY on the store's channel; a payload that is not ours
    is ignored, and the listener goes on hearing commits."""
    a, b = replicas
    a.create("m", MLP([2, 1]))
    assert seen(b) == 1
    with psycopg.connect(a.url, autocommit=True) as conn:
        for payload in ("hello", "m:x:y:z", "m:99", ":::", "a:b:c:d:e"):
            conn.execute("SELECT pg_notify('gradbook_models', %s)", (payload,))
    a.update("m", lambda n: None)
    assert seen(b) == 2
    assert b._listener_trusted()


def test_create_waiting_for_a_locked_row_gets_busy_not_an_error(
    replicas: tuple[PostgresStore, PostgresStore]
) -> None:
    a, b = replicas
    a.create("m", MLP([2, 1]))
    with b.lock("m"), pytest.raises(ModelBusyError, match="being changed"):
        a.create("m", MLP([2, 1]))


def test_a_long_change_outlives_an_idle_in_transaction_timeout(url: str) -> None:
    """Training runs inside the change's transaction; a server-side idle-in-transaction
    timeout (common on managed databases) must not end it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER ROLE CURRENT_USER SET idle_in_transaction_session_timeout = '200ms'")
    try:
        with PostgresStore(url) as store:
            store.create("m", MLP([2, 1]))
            assert version(store.update("m", lambda n: time.sleep(0.6))) == 2
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER ROLE CURRENT_USER RESET idle_in_transaction_session_timeout")


def test_close_stops_the_listener(url: str) -> None:
    store = PostgresStore(url)
    store.create("m", MLP([2, 1]))
    listener = store._listener
    assert listener is not None and listener.is_alive()
    store.close()
    listener.join(timeout=5)
    assert not listener.is_alive()


def test_recovery_ends_only_lapsed_jobs_and_an_ended_job_stays_ended(url: str) -> None:
    """A worker whose lease lapsed (its database connection blipped, say) finds its job ended
    by another worker: its own late "succeeded" does not overwrite that. A job whose lease was
    renewed between the look for stranded jobs and their recovery is left running."""
    from gradbook_service.app.trainer import recover

    with PostgresStore(url) as store, PostgresStore(url) as other:
        mine, theirs = open_jobs(store, lease=0.3), open_jobs(other, lease=0.3)
        lapsed, renewed = (mine.create("m", {"epochs": 1}, "xor") for _ in range(2))
        assert [mine.claim()["id"], mine.claim()["id"]] == [lapsed["id"], renewed["id"]]
        time.sleep(0.5)
        stranded = theirs.stranded()
        assert {job["id"] for job in stranded} == {lapsed["id"], renewed["id"]}
        mine.renew(renewed["id"])  # its worker is back in time
        assert recover(other, theirs, stranded, "lost while {state}") == 2
        assert theirs.get(renewed["id"])["state"] == "running"
        ended = theirs.get(lapsed["id"])
        assert (ended["state"], ended["error"]["message"]) == ("failed", "lost while running")
        mine.finish(lapsed["id"], "succeeded", version=7)  # the first worker, too late
        assert mine.get(lapsed["id"]) == ended


def test_a_missing_model_is_named_with_the_closest_ones(url: str) -> None:
    with PostgresStore(url) as store:
        store.create("digits", MLP([3, 1], seed=0))
        with pytest.raises(ModelNotFoundError, match=r"did you mean 'digits'\?$"):
            store.get("Digts")
        with pytest.raises(ModelNotFoundError, match=r"^no model named 'zzz'$"):
            store.update("zzz", lambda net: None)
