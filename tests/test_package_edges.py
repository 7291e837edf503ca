"""Edges of gradbook's core the other tests leave open, found by mutation testing (`make mutation`).

Each test pins one behaviour a mutant changed without any test failing: exact error wording
(the argument named, the value quoted), boundaries (``<`` against ``<=``), defaults, data, and the
arithmetic of the finite differences and of the training loop.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import raises

import gradbook.network as network_module
import gradbook.store as store_module
from gradbook import MLP
from gradbook.datasets import digits, load, xor
from gradbook.gradcheck import gradcheck, numerical_gradient, relative_error
from gradbook.store import (
    ModelBusyError,
    ModelExistsError,
    ModelNotFoundError,
    ModelStore,
    StoreError,
    check_name,
)
from gradbook.validation import (
    BRIEF_CHARS,
    as_labels,
    as_matrix,
    brief,
    positive_float,
    positive_int,
)


# -- data sets ---------------------------------------------------------------------------------
def test_xor_is_the_derivations_table_in_float64():
    data = xor()
    X = [[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]]
    for array, expected in [(data.X_train, X), (data.X_test, X),
                            (data.Y_train, [[0], [1], [1], [0]]),
                            (data.Y_test, [[0], [1], [1], [0]])]:
        assert array.dtype == np.float64
        np.testing.assert_array_equal(array, expected)


def test_digits_are_scaled_split_80_20_stratified_and_seeded():
    data = digits()
    assert (data.X_train.shape, data.X_test.shape) == ((1437, 64), (360, 64))
    assert data.X_train.dtype == np.float64
    assert max(data.X_train.max(), data.X_test.max()) == 1.0  # pixels 0..16 scaled by 16
    assert min(data.X_train.min(), data.X_test.min()) == 0.0
    # stratified: each digit's share of the test set is its share of the whole, to one image
    whole = np.bincount(np.concatenate([data.Y_train, data.Y_test]))
    assert np.all(np.abs(np.bincount(data.Y_test) - 0.2 * whole) <= 1)
    # seeded: the default is seed 0, the same seed gives the same split, another seed another
    again, other = load("digits", 0), load("digits", seed=1)
    np.testing.assert_array_equal(data.X_test, again.X_test)
    np.testing.assert_array_equal(load("digits").Y_test, again.Y_test)
    assert not np.array_equal(data.X_test, other.X_test)
    np.testing.assert_array_equal(other.X_test, digits(1).X_test)


# -- finite differences ------------------------------------------------------------------------
def test_numerical_gradient_steps_by_a_small_eps_and_answers_in_float64():
    A = np.array([0.5, -1.0, 2.0])
    cube = numerical_gradient(lambda: float(np.sum(A**3)), A)
    np.testing.assert_allclose(cube, 3 * A**2, atol=1e-6)  # the central difference's error: eps²
    A32 = np.array([0.5, 2.0], dtype=np.float32)
    assert numerical_gradient(lambda: float(np.sum(A32)), A32, eps=1e-2).dtype == np.float64


def test_relative_error_is_the_difference_over_the_sum_of_norms_in_float64():
    assert relative_error(np.array([3.0, 0.0]), np.array([0.0, 4.0])) == pytest.approx(5 / 7)
    assert relative_error([1.0], [0.0]) == 1.0
    assert relative_error([0.0], [0.0]) == 0.0
    # float16 holds 6e4 but not its square: the norms must be taken in float64
    big, half = np.full(2, 6e4, np.float16), np.full(2, 3e4, np.float16)
    assert relative_error(big, half) == pytest.approx(1 / 3)
    assert relative_error(half, big) == pytest.approx(1 / 3)


def test_gradcheck_uses_the_given_eps_and_is_zero_without_parameters():
    A = np.array([1.0, 2.0])
    f = lambda: float(np.sum(A**3))  # noqa: E731
    exact = 3 * A**2
    # a central difference of a cubic is off by exactly eps²: the error shows which eps was used
    assert gradcheck(f, [A], [exact], eps=0.5) == pytest.approx(
        relative_error(exact, exact + 0.25), rel=1e-6
    )
    assert gradcheck(lambda: 0.0, [], []) == 0.0


# -- input checks ------------------------------------------------------------------------------
def test_brief_quotes_up_to_its_bounds_exactly():
    assert brief(2**255) == repr(2**255)  # 256 bits: still written out
    assert brief(2**256) == "an integer of 257 bits"
    exact = "x" * (BRIEF_CHARS - 2)  # its repr, with quotes, is BRIEF_CHARS long
    assert brief(exact) == repr(exact)
    assert brief(exact + "y") == repr(exact + "y")[:BRIEF_CHARS] + "…"


def test_as_matrix_takes_integers_and_float32_and_names_a_free_width_d():
    np.testing.assert_array_equal(as_matrix("X", [[1, 2]]), [[1.0, 2.0]])
    assert as_matrix("X", [[1, 2]]).dtype == np.float64
    assert as_matrix("X", np.ones((1, 2), np.float32)).dtype == np.float64
    with raises("X must have shape (n, d); got shape (3,)"):
        as_matrix("X", [1, 2, 3])


def test_as_labels_refuses_a_column_of_labels():
    with raises("Y labels must have shape (n,); got shape (2, 1)"):
        as_labels("Y", [[1], [2]], 3)


def test_positive_int_accepts_its_maximum_and_names_the_bound():
    assert positive_int("epochs", 5, maximum=5) == 5
    with raises("epochs must be at least 1 and at most 5; got 6"):
        positive_int("epochs", 6, maximum=5)


def test_positive_float_refuses_zero():
    with raises("lr must be a finite number > 0; got 0"):
        positive_float("lr", 0)
    with raises("lr must be a finite number > 0; got 0.0"):
        positive_float("lr", 0.0)


# -- the network -------------------------------------------------------------------------------
def test_constructor_messages_quote_the_refused_value():
    with raises("sizes must be a list [d_in, …, d_out] of at least 2 ints; got 'ab'"):
        MLP("ab")
    with raises("activation must be one of ['relu', 'sigmoid', 'tanh']; got 'swish'"):
        MLP([2, 1], activation="swish")
    with raises("loss must be one of ['cross_entropy', 'half_sse']; got 'hinge'"):
        MLP([2, 1], loss="hinge")


def test_check_messages_name_x_and_y():
    net = MLP([2, 3], "tanh", "cross_entropy")
    with raises("X must have shape (n, 2); got shape (1, 3)"):
        net.forward([[1.0, 2.0, 3.0]])
    with raises("Y rows must be class probabilities (>= 0, sum 1), e.g. one-hot"):
        net.loss([[1.0, 2.0]], [[0.5, 0.0, 0.0]])


def test_the_default_seed_is_zero():
    for net, same in [(MLP([3, 4, 2]), MLP([3, 4, 2], seed=0))]:
        np.testing.assert_array_equal(net.weights[0], same.weights[0])
    net = MLP([3, 4, 2], seed=5)
    net.reset()
    np.testing.assert_array_equal(net.weights[1], MLP([3, 4, 2], seed=0).weights[1])


def test_relu_layers_start_with_twice_the_variance():
    """He initialisation for relu, N(0, 2/d_in); N(0, 1/d_in) otherwise: same draws, scaled."""
    relu, tanh, sigmoid = (MLP([3, 4, 2], act, seed=7) for act in ("relu", "tanh", "sigmoid"))
    for k in range(2):
        np.testing.assert_allclose(relu.weights[k], np.sqrt(2.0) * tanh.weights[k], rtol=1e-15)
        np.testing.assert_array_equal(sigmoid.weights[k], tanh.weights[k])


def test_predict_of_a_regression_net_is_its_output():
    net = MLP([2, 3, 2], seed=1)
    X = [[0.1, 0.2], [0.3, -0.4]]
    np.testing.assert_array_equal(net.predict(X), net.forward(X))


def test_the_backward_pass_never_differentiates_the_input_layer():
    """f' is taken at hidden outputs only: inputs far outside any activation's range
    (whose f' overflows) train without a warning."""
    for activation in ("sigmoid", "tanh"):
        net = MLP([2, 3, 1], activation, seed=0)
        X, Y = np.array([[1e200, -1e200]]), np.array([[0.5]])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            grads = net.gradients(X, Y)
        assert all(np.all(np.isfinite(g)) for g in grads)


def by_hand(net: MLP, X: np.ndarray, Y: np.ndarray, epochs: int, lr: float,
            batches: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Gradient descent written out: one step per batch of rows, in the order given.

    Returns two records per epoch: the running loss (each batch's loss before its step, summed
    over the epoch) and the loss on all of ``X`` at the parameters the epoch ends with.
    """
    running, after = [], []
    for _ in range(epochs):
        total = 0.0
        for rows in batches:
            total += net.loss(X[rows], Y[rows])
            for p, g in zip(net.parameters, net.gradients(X[rows], Y[rows]), strict=True):
                p -= lr * g
        running.append(total)
        after.append(net.loss(X, Y))
    return running, after


def problem(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)), rng.uniform(size=(n, 2))


def test_full_batch_training_takes_one_step_per_epoch_over_the_rows_in_order():
    """Bit for bit: summed in another order, the same gradient rounds differently."""
    X, Y = problem(64)
    for shuffle in (True, False):
        net, twin = MLP([3, 4, 2], bias=True, seed=1), MLP([3, 4, 2], bias=True, seed=1)
        history = net.fit(X, Y, epochs=3, lr=0.01, shuffle=shuffle)
        assert history == by_hand(twin, X, Y, 3, 0.01, [np.arange(64)])[1]  # after each step
        for p, q in zip(net.parameters, twin.parameters, strict=True):
            np.testing.assert_array_equal(p, q)


def test_unshuffled_mini_batches_are_consecutive_rows():
    """Mini-batches record the running loss: each batch's loss before its step, summed."""
    X, Y = problem()
    net, twin = MLP([3, 4, 2], seed=1), MLP([3, 4, 2], seed=1)
    history = net.fit(X, Y, epochs=2, lr=0.1, batch_size=4, shuffle=False)
    running, after = by_hand(twin, X, Y, 2, 0.1, [np.arange(4), np.arange(4, 6)])
    assert history == running and history != after
    for p, q in zip(net.parameters, twin.parameters, strict=True):
        np.testing.assert_array_equal(p, q)


def test_mini_batches_are_shuffled_by_default_with_seed_zero():
    X, Y = problem()
    histories = {
        name: MLP([3, 4, 2], seed=1).fit(X, Y, epochs=2, lr=0.1, batch_size=2, **kwargs)
        for name, kwargs in [("default", {}), ("shuffled", {"shuffle": True, "seed": 0}),
                             ("in order", {"shuffle": False}), ("seed 1", {"seed": 1})]
    }
    assert histories["default"] == histories["shuffled"]
    assert histories["default"] != histories["in order"]
    assert histories["default"] != histories["seed 1"]


def test_progress_shows_an_epochs_bar_only_when_asked(capsys):
    X, Y = problem()
    MLP([3, 4, 2]).fit(X, Y, epochs=2, lr=0.1)
    assert capsys.readouterr().err == ""
    assert len(MLP([3, 4, 2]).fit(X, Y, epochs=2, lr=0.1, progress=True)) == 2
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)epochs: 100%.*\| 2/2 ", err), err


def test_save_writes_a_world_readable_file_through_a_hidden_temporary_beside_it(
    tmp_path, monkeypatch
):
    renamed = []
    replace = os.replace

    def recording_replace(src, dst):
        renamed.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(network_module.os, "replace", recording_replace)
    path = tmp_path / "net.npz"
    MLP([2, 1]).save(path)
    [(src, dst)] = renamed
    assert dst == path and src.parent == tmp_path
    assert src.name.startswith(".net.npz.") and src.name.endswith(".tmp")
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_save_raises_its_own_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(network_module.np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        MLP([2, 1]).save(tmp_path / "net.npz")
    assert list(tmp_path.iterdir()) == []


def pickled_model(path: Path) -> None:
    """A model file whose header is a pickled object: loading it would run a pickle."""
    net = MLP([2, 1])
    header = np.array(json.dumps({"config": net.config, "metadata": {}}), dtype=object)
    np.savez(path, header=header, W0=net.weights[0])


def test_load_refuses_pickles(tmp_path):
    pickled_model(tmp_path / "net.npz")
    with pytest.raises(ValueError, match="allow_pickle=False"):
        MLP.load(tmp_path / "net.npz")


# -- the store ---------------------------------------------------------------------------------
def test_store_defaults(tmp_path):
    store = ModelStore(tmp_path)
    assert (store.lock_timeout, store.cache_size) == (2.0, 16)


def test_store_messages_name_the_model(tmp_path):
    store = ModelStore(tmp_path)
    for call in (store.get, store.header, store.delete, lambda name: store.update(name, id)):
        with pytest.raises(ModelNotFoundError, match=r"^no model named 'm'$"):
            call("m")
    store.create("m", MLP([2, 1]))
    with pytest.raises(ModelExistsError, match=r"^a model named 'm' already exists$"):
        store.create("m", MLP([2, 1]))


def test_damaged_models_are_named_with_the_error_type(tmp_path):
    store = ModelStore(tmp_path)
    store.create("m", MLP([2, 1]))
    (tmp_path / "m.npz").write_bytes(b"not a model")
    message = r"^model 'm' could not be read \(ValueError\)$"
    for call in (store.get, store.header, lambda name: store.update(name, id)):
        with pytest.raises(StoreError, match=message):
            call("m")
    assert store.delete("m") == 0
    (tmp_path / ".deleted-version").write_text("not a number")
    with pytest.raises(StoreError, match=r"^the store's record of deleted versions is damaged$"):
        store.create("m", MLP([2, 1]))


def test_header_refuses_pickles(tmp_path):
    store = ModelStore(tmp_path)
    pickled_model(tmp_path / "m.npz")
    with pytest.raises(StoreError, match=r"^model 'm' could not be read \(ValueError\)$"):
        store.header("m")


def test_a_created_model_records_when_in_utc(tmp_path):
    net = ModelStore(tmp_path).create("m", MLP([2, 1]))
    assert sorted(net.metadata) == ["change", "created", "updated", "version"]
    assert net.metadata["change"] == "created"  # what made the version
    for key in ("created", "updated"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", net.metadata[key])
    assert net.metadata["created"] <= net.metadata["updated"]


def test_a_bad_name_is_quoted():
    message = ("name must be 1-64 letters, digits, '-' or '_', starting with a letter or digit; "
               "got 'a b'")
    with raises(message):
        check_name("a b")


def test_a_store_creates_its_folder_and_parents(tmp_path):
    ModelStore(tmp_path / "a" / "b").create("m", MLP([2, 1]))
    assert (tmp_path / "a" / "b" / "m.npz").is_file()


def test_the_cache_drops_the_model_used_least_recently(tmp_path):
    writer = ModelStore(tmp_path)
    for name in "abc":
        writer.create(name, MLP([2, 1]))
    reader = ModelStore(tmp_path, cache_size=2)
    a, b = reader.get("a"), reader.get("b")
    c = reader.get("c")  # drops "a"
    assert reader.cached == 2
    assert reader.get("c") is c and reader.get("b") is b
    assert reader.get("a") is not a  # read again


def test_a_model_deleted_while_it_is_read_is_not_found(tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    store.create("m", MLP([2, 1]))

    def deleted_meanwhile(path):
        raise FileNotFoundError(path)

    monkeypatch.setattr(store_module.MLP, "load", deleted_meanwhile)
    with pytest.raises(ModelNotFoundError, match=r"^no model named 'm'$"):
        ModelStore(tmp_path).get("m")


def test_a_model_gone_from_disk_leaves_the_cache(tmp_path):
    store, other = ModelStore(tmp_path), ModelStore(tmp_path)
    store.create("m", MLP([2, 1]))
    store.get("m")
    assert store.cached == 1
    other.delete("m")
    with pytest.raises(ModelNotFoundError):
        store.get("m")
    assert store.cached == 0
    store.create("n", MLP([2, 1]))
    store.get("n")
    store.delete("n")
    assert store.cached == 0


def test_a_busy_store_names_itself(tmp_path):
    store = ModelStore(tmp_path, lock_timeout=0.05)
    with open(tmp_path / ".locks" / ".store.lock", "a") as held:  # another creator counting
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(
            ModelBusyError, match=r"^the store is being changed by another request; retry later$"
        ):
            store.create("m", MLP([2, 1]))


def test_an_update_that_waited_for_a_deleted_model_says_so(tmp_path):
    store = ModelStore(tmp_path, lock_timeout=10)
    store.create("m", MLP([2, 1]))
    outcome: list[BaseException] = []

    def update() -> None:
        try:
            store.update("m", id)
        except BaseException as err:  # handed to the test thread
            outcome.append(err)

    with store.lock("m"):  # a writer that is deleting "m"
        worker = threading.Thread(target=update)
        worker.start()
        time.sleep(0.3)  # the update saw the file and waits for the lock
        (tmp_path / "m.npz").unlink()
    worker.join(timeout=10)
    [err] = outcome
    assert isinstance(err, ModelNotFoundError) and str(err) == "no model named 'm'"
