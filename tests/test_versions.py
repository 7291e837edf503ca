"""Named versions in both model stores, the folder and PostgreSQL (a real server this module
starts): the last ``keep_versions`` of each model stay readable, oldest dropped first; a version
not kept names those that are; deleting a model drops its versions; concurrent changes never
lose a version number or tear a version's weights."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from gradbook_service.app.postgres import PostgresServer

from gradbook import MLP
from gradbook.pgstore import PostgresStore
from gradbook.store import ModelNotFoundError, ModelStore, Store, VersionNotKeptError

pytestmark = pytest.mark.xdist_group("postgres")

KEEP = 3
_databases = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with tempfile.TemporaryDirectory(prefix="gradbook-pg-") as folder:
        os.chmod(folder, 0o711)  # the server's user must enter every folder above its data
        with PostgresServer(Path(folder) / "data", free_port(), durable=False) as running:
            yield running


@pytest.fixture(params=["folder", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two stores over the same models (two processes' views), keeping ``KEEP`` versions."""
    if request.param == "folder":
        yield (ModelStore(tmp_path, lock_timeout=30, keep_versions=KEEP),
               ModelStore(tmp_path, lock_timeout=30, keep_versions=KEEP))
        return
    url = request.getfixturevalue("server").create_database(f"versions_{next(_databases)}")
    with PostgresStore(url) as store:
        store.migrate()
    a = PostgresStore(url, lock_timeout=30, keep_versions=KEEP)
    b = PostgresStore(url, lock_timeout=30, keep_versions=KEEP)
    yield a, b
    a.close()
    b.close()


def constant(value: float) -> Callable[[MLP], None]:
    """A change for ``Store.update``: every weight set to ``value``."""

    def change(net: MLP) -> None:
        net.weights = [np.full_like(W, value) for W in net.weights]
    return change


def test_the_last_versions_are_kept_and_older_ones_dropped_oldest_first(
        stores: tuple[Store, Store]) -> None:
    store, other = stores
    first = store.create("m", MLP([3, 2, 1], seed=1)).metadata["version"]
    for value in range(1, 6):
        store.update("m", constant(value), f"set to {value}")
    latest = first + 5
    listed = other.versions("m")
    assert [each["version"] for each in listed] == [latest, latest - 1, latest - 2]
    assert [each["change"] for each in listed] == ["set to 5", "set to 4", "set to 3"]
    assert all(each["updated"] for each in listed)
    for version, value in ((latest - 1, 4), (latest - 2, 3)):  # read by another process too
        net = other.version("m", version)
        assert net.metadata["version"] == version
        assert all(np.all(W == value) for W in net.weights)
    assert other.version("m", latest) is other.get("m")
    with pytest.raises(VersionNotKeptError) as dropped:
        other.version("m", first)
    kept = ", ".join(str(v) for v in (latest - 2, latest - 1, latest))
    assert str(dropped.value) == f"model 'm' has no version {first} kept; it keeps {kept}"


def test_a_deleted_model_leaves_no_version_and_a_new_one_counts_on(
        stores: tuple[Store, Store]) -> None:
    store, other = stores
    store.create("gone", MLP([2, 1]))
    store.update("gone", constant(1.0))
    last = store.delete("gone")
    with pytest.raises(ModelNotFoundError):
        other.versions("gone")
    again = store.create("gone", MLP([2, 1]))
    assert again.metadata["version"] == last + 1
    assert [each["version"] for each in other.versions("gone")] == [last + 1]
    with pytest.raises(VersionNotKeptError):
        other.version("gone", last)  # the deleted model's, never this one's


def test_concurrent_changes_lose_no_version_and_tear_no_weights(
        stores: tuple[Store, Store]) -> None:
    """Eight writers in two processes' stores, each setting every weight to its own value: the
    versions are consecutive, and each kept version's weights are one writer's, whole."""
    store, other = stores
    first = store.create("busy", MLP([4, 8, 2], seed=3)).metadata["version"]
    writers = [threading.Thread(target=(store, other)[i % 2].update,
                                args=("busy", constant(float(i + 1)), f"writer {i + 1}"))
               for i in range(8)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert other.get("busy").metadata["version"] == first + 8
    listed = store.versions("busy")
    assert [each["version"] for each in listed] == [first + 8, first + 7, first + 6]
    for each in listed:
        net = other.version("busy", each["version"])
        values = {float(value) for W in net.weights for value in np.unique(W)}
        assert values == {float(each["change"].split()[1])}, each
