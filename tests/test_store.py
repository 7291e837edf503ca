"""The model store shared by the service's kernels: versions, atomic commits, locks, freshness.

Several processes are real processes (multiprocessing, spawn), as the pooled kernels are.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gradbook.store as store_module
from gradbook.network import MLP
from gradbook.store import (
    ModelBusyError,
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    StoreError,
)

spawn = multiprocessing.get_context("spawn")


def new_net(seed: int = 0) -> MLP:
    net = MLP([3, 4, 1], seed=seed)
    net.metadata["count"] = 0
    return net


def test_every_change_makes_a_new_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert store.create("m", new_net()).metadata["version"] == 1
    assert store.names() == ["m"]

    def change(net: MLP) -> None:
        net.reset(seed=1)

    assert store.update("m", change).metadata["version"] == 2
    net = store.get("m")
    assert net.metadata["version"] == 2
    np.testing.assert_array_equal(net.weights[0], new_net(seed=1).weights[0])
    assert store.delete("m") == 2
    assert store.names() == []
    with pytest.raises(ModelNotFoundError):
        store.get("m")
    with pytest.raises(ModelNotFoundError):
        store.update("m", change)
    # A re-created model counts on from the deleted one: versions never go backwards.
    assert store.create("m", new_net()).metadata["version"] == 3
    assert ModelStore(tmp_path).get("m").metadata["version"] == 3


def test_names_are_unique_and_safe(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.create("a-1_B", new_net())
    with pytest.raises(ModelExistsError):
        store.create("a-1_B", new_net())
    for bad in ["", "../x", "a b", "a.npz", "-a", "a" * 65, 3]:
        with pytest.raises(ValueError, match="name must be"):
            store.get(bad)


def test_a_failed_change_commits_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.create("m", new_net())

    def change(net: MLP) -> None:
        net.weights[0][:] = 7.0
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        store.update("m", change)
    net = store.get("m")
    assert net.metadata["version"] == 1
    np.testing.assert_array_equal(net.weights[0], new_net().weights[0])


def test_another_store_sees_each_commit_at_once(tmp_path: Path) -> None:
    """Two stores on one folder, as in two kernels (here in one process, so that every commit is
    read back at once). Files of successive versions have the same size and may share an inode
    number and a clock tick; the reader must still never answer with a stale version."""
    writer, reader = ModelStore(tmp_path), ModelStore(tmp_path)
    writer.create("m", new_net())
    for version in range(2, 42):
        seed = version % 3
        writer.update("m", lambda net, seed=seed: net.reset(seed))
        net = reader.get("m")
        assert net.metadata["version"] == version
        np.testing.assert_array_equal(net.weights[0], new_net(seed).weights[0])


class OneInode:
    """The store's ``os``, but ``stat`` reports one inode number for every file: as a file system
    does that gives the next file the inode number the last rename freed."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    @staticmethod
    def stat(path: os.PathLike[str]) -> SimpleNamespace:
        return OneInode._one(os.stat(path))

    @staticmethod
    def fstat(fd: int) -> SimpleNamespace:
        return OneInode._one(os.fstat(fd))

    @staticmethod
    def _one(st: os.stat_result) -> SimpleNamespace:
        return SimpleNamespace(st_dev=st.st_dev, st_ino=1, st_mtime_ns=st.st_mtime_ns,
                               st_size=st.st_size, st_uid=st.st_uid, st_mode=st.st_mode)


def test_a_new_version_in_the_same_inode_size_and_clock_tick_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst case for the read-through cache, built on purpose: the new version's file has
    the old one's inode number and size, and is committed in the same tick of a coarse clock
    (the store's clock stands still). The commit's stamp, one nanosecond after the previous
    version's mtime, alone tells the versions apart; a reader with the old one cached must see
    the new one."""
    tick = 1_600_000_000 * 10**9  # far from now: an mtime the stamp did not set cannot be it
    monkeypatch.setattr(store_module, "os", OneInode())
    monkeypatch.setattr(
        store_module, "time", SimpleNamespace(time_ns=lambda: tick, monotonic=time.monotonic,
                                              sleep=time.sleep),
    )
    writer, reader = ModelStore(tmp_path), ModelStore(tmp_path)
    path = writer.path("m")
    writer.create("m", new_net(seed=0))
    assert reader.get("m").metadata["version"] == 1  # cached now
    first = os.stat(path)
    writer.update("m", lambda net: net.reset(seed=1))
    second = os.stat(path)
    assert second.st_size == first.st_size  # the case: only the stamp can differ
    net = reader.get("m")
    assert net.metadata["version"] == 2
    np.testing.assert_array_equal(net.weights[0], new_net(seed=1).weights[0])
    # The stamps themselves: the stopped clock's tick, then one nanosecond after it.
    assert [first.st_mtime_ns, second.st_mtime_ns] == [tick, tick + 1]


def _meet_the_other(arrived: Event, other: Event) -> None:
    """In a spawned worker: make its first commit wait until the other worker has arrived, that
    is found a store lock held (and polls it) or is about to commit too.

    Each worker is thus inside a locked section (from reading to committing) while the other is
    on its way in: with the store's locks the other waits for the lock, without them both are
    inside at once, every run. A worker that never meets the other fails after 30 s.
    """
    commit = ModelStore._commit

    def commit_once_the_other_arrived(self: ModelStore, *args: object, **kwargs: object) -> None:
        arrived.set()
        if not other.wait(timeout=30):
            raise AssertionError("the other worker never arrived")
        commit(self, *args, **kwargs)

    class Clock:  # the store's ``time``, but waiting for a held lock says "arrived"
        monotonic = staticmethod(time.monotonic)
        time_ns = staticmethod(time.time_ns)

        @staticmethod
        def sleep(seconds: float) -> None:
            arrived.set()
            time.sleep(seconds)

    ModelStore._commit = commit_once_the_other_arrived
    store_module.time = Clock


def two_workers(target: Callable[..., None], *args_of_each: tuple) -> list[object]:
    """Run ``target(*args, arrived, other, results)`` in two spawned processes that meet inside
    the store (``_meet_the_other``); what they put in ``results`` (a worker that failed puts
    its exception's name)."""
    arrived = [spawn.Event(), spawn.Event()]
    results = spawn.Queue()
    workers = [
        spawn.Process(target=_report, args=(target, *args, arrived[i], arrived[1 - i], results))
        for i, args in enumerate(args_of_each)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    return [results.get(timeout=10) for _ in workers]


def _report(target: Callable[..., None], *args: object) -> None:
    results = args[-1]
    try:
        target(*args)
    except Exception as err:  # e.g. two unlocked commits renaming one staging file
        traceback.print_exc()
        results.put(type(err).__name__)


def _count_up(root: str, times: int, arrived: Event, other: Event, results: Queue) -> None:
    _meet_the_other(arrived, other)
    store = ModelStore(root, lock_timeout=30)
    for _ in range(times):
        store.update("m", lambda net: net.metadata.update(count=net.metadata["count"] + 1))
    results.put(times)


def test_concurrent_writers_are_serialized(tmp_path: Path) -> None:
    """Two processes updating one model lose no update: each change sees the previous one.

    The first commit of each waits until the other is on its way in, so without the lock both
    would read the same count and one increment would be lost, every run."""
    ModelStore(tmp_path).create("m", new_net())
    outcomes = two_workers(_count_up, (str(tmp_path), 15), (str(tmp_path), 15))
    net = ModelStore(tmp_path).get("m")
    assert (net.metadata["count"], net.metadata["version"]) == (30, 31)
    assert outcomes == [15, 15]


def sized_net(seed: int) -> MLP:
    """A net whose architecture and weights both tell its seed."""
    return MLP([3, 4 + seed, 1], seed=seed)


def _create(
    root: str, name: str, seed: int, max_models: int | None,
    arrived: Event, other: Event, results: Queue,
) -> None:
    _meet_the_other(arrived, other)
    try:
        ModelStore(root, lock_timeout=30).create(name, sized_net(seed), max_models=max_models)
        results.put((seed, "created"))
    except StoreError as err:
        results.put((seed, type(err).__name__))


def test_concurrent_creates_of_one_name_make_one_whole_model(tmp_path: Path) -> None:
    """Two processes create one name at once: one succeeds, the other gets ModelExistsError, and
    the store holds the winner's model whole (its architecture and all its weights)."""
    root = str(tmp_path)
    outcomes = dict(two_workers(_create, (root, "m", 1, None), (root, "m", 2, None)))
    assert sorted(outcomes.values()) == ["ModelExistsError", "created"]
    [winner] = [seed for seed, outcome in outcomes.items() if outcome == "created"]
    net, expected = ModelStore(tmp_path).get("m"), sized_net(winner)
    assert net.config == expected.config and net.metadata["version"] == 1
    for got, want in zip(net.parameters, expected.parameters, strict=True):
        np.testing.assert_array_equal(got, want)


def test_concurrent_creates_never_overshoot_max_models(tmp_path: Path) -> None:
    """One place left, two processes create a model each at once: one gets it, the other
    StoreFullError."""
    store = ModelStore(tmp_path)
    store.create("first", new_net())
    root = str(tmp_path)
    outcomes = dict(two_workers(_create, (root, "a", 1, 2), (root, "b", 2, 2)))
    assert sorted(outcomes.values()) == ["StoreFullError", "created"]
    assert len(store.names()) == 2


def test_a_busy_model_refuses_a_second_writer(tmp_path: Path) -> None:
    holder = ModelStore(tmp_path)
    holder.create("m", new_net())
    waiter = ModelStore(tmp_path, lock_timeout=0.2)
    with holder.lock("m"):
        start = time.monotonic()
        with pytest.raises(ModelBusyError, match="retry"):
            waiter.update("m", lambda net: None)
        assert time.monotonic() - start >= 0.2
    assert waiter.update("m", lambda net: None).metadata["version"] == 2


def _commit_forever(root: str) -> None:
    """Commit large versions whose weights all equal their version number, until killed."""
    store = ModelStore(root)

    def change(net: MLP) -> None:
        for W in net.weights:
            W[:] = net.metadata["version"] + 1

    while True:
        store.update("big", change)


def test_a_crash_mid_write_leaves_a_whole_version(tmp_path: Path) -> None:
    """SIGKILL a writer at arbitrary moments: the store always holds one whole version."""
    store = ModelStore(tmp_path)
    net = MLP([600, 600, 10])
    for W in net.weights:
        W[:] = 1.0
    store.create("big", net)
    for delay in (0.7, 0.9, 1.3):
        writer = spawn.Process(target=_commit_forever, args=(str(tmp_path),))
        writer.start()
        time.sleep(delay)
        writer.kill()
        writer.join()
        net = ModelStore(tmp_path).get("big")
        version = net.metadata["version"]
        assert all(np.all(W == version) for W in net.weights)
    assert version > 1  # the writer did commit between the kills
    assert store.names() == ["big"]  # a half-written staging file is not a model


def test_a_damaged_file_is_a_store_error_not_a_missing_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"not a model")
    with pytest.raises(StoreError, match="could not be read") as caught:
        store.get("broken")
    assert not isinstance(caught.value, ModelNotFoundError)


def test_a_damaged_model_can_still_be_deleted_and_created_again(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / "broken.npz").write_bytes(b"not a model")
    assert store.delete("broken") == 0  # its version could not be read
    assert store.names() == []
    assert store.create("broken", new_net()).metadata["version"] == 1


def test_unknown_models_leave_no_lock_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for call in (lambda: store.update("ghost", lambda net: None), lambda: store.delete("ghost")):
        with pytest.raises(ModelNotFoundError):
            call()
    assert list((tmp_path / ".locks").iterdir()) == []


def test_a_damaged_zip_is_a_store_error_and_leaves_no_file_open(tmp_path: Path) -> None:
    """A truncated .npz (a zip's first bytes) made ``np.load`` leave its file open: a
    ResourceWarning, which the test settings turn into a failure."""
    store = ModelStore(tmp_path)
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(StoreError, match="could not be read"):
        store.get("cut")
    with pytest.raises(StoreError, match="could not be read"):
        store.header("cut")


def test_a_missing_model_is_named_with_the_closest_ones(tmp_path: Path) -> None:
    """A typo gets the names it was probably meant to be (letter case aside); a name like none
    gets none, and so does an empty store."""
    store = ModelStore(tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"^no model named 'xor'$"):
        store.get("xor")
    for name in ("xor", "digits", "digits-2"):
        store.create(name, new_net())
    with pytest.raises(ModelNotFoundError, match=r"^no model named 'digts'; did you mean "
                                                 r"'digits' or 'digits-2'\?$"):
        store.get("digts")
    with pytest.raises(ModelNotFoundError, match=r"did you mean 'xor'\?$"):
        store.update("XOR", lambda net: None)
    with pytest.raises(ModelNotFoundError, match=r"^no model named 'mnist'$"):
        store.header("mnist")
