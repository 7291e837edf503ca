"""The checks every client byte goes through, as units: body decoding in the gateway
(``gradbook_service.gateway.body``), numbers sent as strings (``gradbook_service.app.inputs``),
quoting input in messages (``brief``), the training cost model (``gradbook_service.app.limits``) and
the store's bounds.

The time bounds are generous: they guard against quadratic work on hostile input (a 40,000-digit
string took 44 s in a regular expression), not a speed target.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from gradbook_service.app import inputs, limits
from gradbook_service.app.settings import MAX_NUMBER_CHARS
from gradbook_service.gateway import body
from gradbook_service.gateway.errors import ServiceError
from gradbook_service.gateway.settings import MAX_JSON_DEPTH

from gradbook.network import MLP
from gradbook.store import ModelStore, StoreFullError
from gradbook.validation import brief, positive_float

JSON = "application/json"


def refused(status: int, content_type: str, raw: bytes) -> str:
    with pytest.raises(ServiceError) as caught:
        body.decode(content_type, raw, {})
    assert caught.value.status == status, caught.value.message
    return caught.value.message


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_a_json_body_is_decoded_once() -> None:
    assert body.decode(JSON, b'{"x": [1, 0, 1]}', {}) == {"x": [1, 0, 1]}
    assert body.decode("application/json; charset=UTF-8", b'{"x": 1}', {}) == {"x": 1}
    assert body.decode("application/merge-patch+json", b'{"x": 1}', {}) == {"x": 1}
    as_string = json.dumps(json.dumps({"x": [1]})).encode()
    assert body.decode(JSON, as_string, {}) == '{"x": [1]}'  # a string, not decoded again
    assert body.decode("text/plain", b"[[[", {}) == "[[["  # text stays text
    assert body.decode(JSON, b"", {}) == ""


def test_bad_json_bodies_are_the_clients_error() -> None:
    assert "not valid JSON" in refused(400, JSON, b'{"x": [1, 0')
    assert "UTF-8" in refused(400, JSON, b'{"x": "\xff"}')
    assert "UTF-8" in refused(415, "application/json; charset=latin-1", b'{"x": 1}')
    assert "too many digits" in refused(400, JSON, b'{"lr": ' + b"9" * 5000 + b"}")
    assert "set_int_max_str_digits" not in refused(400, JSON, b"[" + b"1" * 5000 + b"]")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 966, 967, 978, 979, 100_000])
def test_deep_json_is_refused_in_the_gateway(depth: int) -> None:
    assert f"more than {MAX_JSON_DEPTH} levels" in refused(400, JSON, nested(depth))
    objects = b'{"a": ' * depth + b"1" + b"}" * depth
    assert f"more than {MAX_JSON_DEPTH} levels" in refused(400, JSON, objects)


def test_json_as_deep_as_the_bound_is_accepted() -> None:
    value = body.decode(JSON, nested(MAX_JSON_DEPTH), {})
    for _ in range(MAX_JSON_DEPTH - 1):
        value = value[0]
    assert value == []


def test_form_fields_stay_a_dict_of_lists() -> None:
    fields = {"a": [b"1", b"2"]}
    assert body.decode("application/x-www-form-urlencoded", b"a=1&a=2", fields) == {"a": ["1", "2"]}


def test_numbers_as_strings() -> None:
    spelt = ["1", " -2.5 ", "1e3", ".5", "+7", "3."]
    assert inputs.numeric("x", spelt) == [1, -2.5, 1e3, 0.5, 7, 3.0]
    for text in ["inf", "nan", "1_000", "0x1f", "1e", "--1", ".", "e5", "1.2.3", "١"]:
        with pytest.raises(ValueError, match="must hold only numbers"):
            inputs.numeric("x", [text])
    assert inputs.numeric("lr", "fast") == "fast"  # a scalar is left for its own check


@pytest.mark.parametrize("text", ["1" * 40_000 + "x", "1" * (4 * 2**20), " " * 10_000 + "1"])
def test_long_numeric_strings_are_refused_before_they_are_read(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"at most {MAX_NUMBER_CHARS} characters"):
        inputs.numeric("x", [text, 0, 1])
    assert time.perf_counter() - start < 1.0


def test_reading_a_numeric_string_is_linear() -> None:
    """Every string up to the bound, including the regex's worst case (digits, then a bad
    character), is read in microseconds."""
    worst = ["1" * (MAX_NUMBER_CHARS - 1) + "x", "1." + "1" * (MAX_NUMBER_CHARS - 3) + "x"]
    start = time.perf_counter()
    for _ in range(10_000):
        for text in worst:
            assert inputs.numeric("x", text) == text
    assert time.perf_counter() - start < 2.0


def test_huge_integers_are_refused_not_crashed() -> None:
    with pytest.raises(ValueError, match="finite number"):  # not a TypeError from isfinite
        positive_float("lr", 10**400)
    assert positive_float("lr", 2**64) == float(2**64)  # a number, but no learning rate:
    with pytest.raises(ValueError, match="lr must be at most 1000"):
        inputs.rate("lr", 2**64)
    with pytest.raises(ValueError, match="from 0 to 2"):
        inputs.seed("seed", 2**64)
    assert inputs.seed("seed", "18446744073709551615") == 2**64 - 1


def test_messages_quote_input_briefly() -> None:
    assert len(brief("a" * 10_000)) <= 101
    assert brief(10**5000) == f"an integer of {(10**5000).bit_length()} bits"
    with pytest.raises(ValueError) as caught:
        inputs.numeric("x", [["a" * 10_000]])
    assert len(str(caught.value)) < 200
    assert len(ServiceError(400, "b" * 10_000).message) <= 500


def test_the_cost_model_counts_steps() -> None:
    """batch_size 1 costs far more than a full batch of the same work (the probe's hole: the
    old limit counted epochs × examples × parameters only)."""
    net = MLP([64, 10])
    one_at_a_time = limits.training_seconds(net, 1437, 10_000, 1)
    full_batch = limits.training_seconds(net, 1437, 10_000, None)
    assert one_at_a_time > 5 * full_batch
    assert one_at_a_time > 60 and full_batch < 60
    with pytest.raises(ValueError, match="estimated to take"):
        limits.check_training(net, 1437, 10_000, 1, 60.0)
    limits.check_training(net, 1437, 100, 32, 60.0)
    assert limits.training_seconds(net, 1437, 20, 1) == pytest.approx(one_at_a_time / 500)


def test_responses_are_bounded_before_the_work() -> None:
    with pytest.raises(ValueError, match="response would have about 2000 bytes"):
        limits.check_response(2000, 1999, "fewer rows")
    limits.check_response(1999, 1999, "fewer rows")


def test_the_model_cache_keeps_the_models_used_last(tmp_path: Path) -> None:
    writer = ModelStore(tmp_path)
    for name in "abc":
        writer.create(name, MLP([3, 1]))
    reader = ModelStore(tmp_path, cache_size=2)
    a = reader.get("a")
    reader.get("b")
    assert reader.get("a") is a  # a hit makes "a" the latest used
    reader.get("c")  # evicts "b", the least recently used
    assert reader.cached == 2 and reader.get("a") is a
    config, metadata = reader.header("b")  # a listing reads the header, not the weights
    assert config["sizes"] == [3, 1] and metadata["version"] == 1 and reader.cached == 2


def test_the_store_holds_at_most_max_models(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.create("a", MLP([3, 1]), max_models=2)
    store.create("b", MLP([3, 1]), max_models=2)
    with pytest.raises(StoreFullError, match="at most 2 models"):
        store.create("c", MLP([3, 1]), max_models=2)
    store.delete("a")
    store.create("c", MLP([3, 1]), max_models=2)
    assert store.names() == ["b", "c"]
