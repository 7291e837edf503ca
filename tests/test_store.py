"""The model store shared by the service's kernels: versions, atomic commits, locks, freshness.

Several processes are real processes (multiprocessing, spawn), as the pooled kernels are.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

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


def _count_up(root: str, times: int) -> None:
    store = ModelStore(root, lock_timeout=30)
    for _ in range(times):
        store.update("m", lambda net: net.metadata.update(count=net.metadata["count"] + 1))


def test_concurrent_writers_are_serialized(tmp_path: Path) -> None:
    """Two processes updating one model lose no update: each change sees the previous one."""
    ModelStore(tmp_path).create("m", new_net())
    workers = [spawn.Process(target=_count_up, args=(str(tmp_path), 15)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    net = ModelStore(tmp_path).get("m")
    assert net.metadata["count"] == 30
    assert net.metadata["version"] == 31


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
