"""Edges of the service's request checks and error mapping, found by mutation testing.

``gradbook_service.app.inputs`` and ``gradbook_service.gateway.errors`` called directly, without a
gateway:
each message
names the field and quotes the value, each bound is inclusive where the docs say so, and every
exception reaches the client with the documented status.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import raises
from gradbook_service.app import inputs
from gradbook_service.app.errors import to_http
from gradbook_service.app.http import Request
from gradbook_service.app.settings import MAX_NUMBER_CHARS
from gradbook_service.gateway.errors import MAX_MESSAGE_CHARS, ServiceError, error_body

from gradbook.store import (
    ModelBusyError,
    ModelExistsError,
    ModelNotFoundError,
    StoreError,
    StoreFullError,
)


# -- service.errors ----------------------------------------------------------------------------
def test_a_service_error_without_a_message_says_its_status():
    err = ServiceError(404)
    assert (err.status, err.message, str(err)) == (404, "Not Found", "Not Found")
    assert ServiceError(400, "").message == "Bad Request"


def test_messages_are_cut_at_max_message_chars():
    whole = "m" * MAX_MESSAGE_CHARS
    assert ServiceError(400, whole).message == whole
    cut = ServiceError(400, whole + "m").message
    assert cut == "m" * (MAX_MESSAGE_CHARS - 1) + "…" and len(cut) == MAX_MESSAGE_CHARS
    assert str(ServiceError(400, whole + "m")) == cut


@pytest.mark.parametrize(
    ("err", "status", "message"),
    [
        (ModelNotFoundError("m"), 404, "no model named 'm'"),
        (ModelExistsError("a model named 'm' already exists"), 409,
         "a model named 'm' already exists"),
        (ModelBusyError("model 'm' is busy"), 409, "model 'm' is busy"),
        (StoreFullError("the store is full"), 409, "the store is full"),
        (MemoryError(), 413, "the request needs more memory than the service has; send less"),
        (StoreError("model 'm' could not be read (ValueError)"), 500,
         "model 'm' could not be read (ValueError)"),
        (ValueError("X must be finite"), 400, "X must be finite"),
        (KeyError("secret internals"), 500, "internal error; the service log has the details"),
        (RuntimeError("secret internals"), 500, "internal error; the service log has the details"),
    ],
)
def test_every_exception_maps_to_its_status(err, status, message):
    mapped = to_http(err)
    assert (mapped.status, mapped.message) == (status, message)
    assert error_body(mapped) == {"error": {"status": status, "message": message}}


def test_a_service_error_passes_through_unchanged():
    err = ServiceError(429, "slow down")
    assert to_http(err) is err


# -- service.inputs ----------------------------------------------------------------------------
def test_rows_of_numbers_may_be_spelt_as_strings():
    assert inputs.numeric("X", [["1", 2.5], [" -3 ", "4e1"]]) == [[1, 2.5], [-3, 40.0]]
    assert inputs.numeric("X", "7") == 7


def test_lists_nest_at_most_two_deep():
    with raises("X may nest lists at most 2 deep (rows of numbers)"):
        inputs.numeric("X", [[[1.0]]])
    with raises("X may nest lists at most 2 deep (rows of numbers)"):
        inputs.numeric("X", [[1.0, [2.0]]])


def test_entries_messages_name_the_field_and_quote_the_entry():
    with raises("X must hold only numbers (or strings spelling them); got 'a'"):
        inputs.numeric("X", ["a"])
    with raises("X must hold only numbers (or strings spelling them); got None"):
        inputs.numeric("X", [[1.0, None]])
    too_long = "1" * (MAX_NUMBER_CHARS + 1)
    message = (f"X: a number sent as a string may have at most {MAX_NUMBER_CHARS} characters; "
               f"got {MAX_NUMBER_CHARS + 1}")
    with raises(message):
        inputs.numeric("X", too_long)
    with raises(message):
        inputs.numeric("X", [[too_long]])


def test_fields_checks_the_body_is_an_object_with_the_right_names():
    assert inputs.fields(None) == {}
    assert inputs.fields({"X": 1}, required=["X"], optional=["Y"]) == {"X": 1}
    with raises("the request body must be a JSON object; got list"):
        inputs.fields([1], required=["X"])
    with raises("missing field(s) ['Y']; required: ['X', 'Y']"):
        inputs.fields({"X": 1}, required=("X", "Y"))
    with raises("unknown field(s) ['Z', 'z']; allowed: ['X', 'epochs']"):
        inputs.fields({"X": 1, "z": 2, "Z": 3}, required=iter(["X"]), optional=iter(["epochs"]))


def test_matrix_reads_numbers_spelt_as_strings():
    X = inputs.matrix("X", [["1", 2], ["3.5", "-4"]], cols=2)
    assert X.dtype == np.float64
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.5, -4.0]])
    with raises("X must have shape (n, 3); got shape (2, 2)"):
        inputs.matrix("X", [["1", 2], [3, 4]], cols=3)
    with raises("X must hold only numbers (or strings spelling them); got 'one'"):
        inputs.matrix("X", [["one", 2]])


def test_count_reads_a_positive_int_up_to_its_maximum():
    assert inputs.count("epochs", "10", maximum=10) == 10
    with raises("epochs must be at least 1 and at most 10; got 11"):
        inputs.count("epochs", "11", maximum=10)
    with raises("epochs must be a positive integer; got 'ten'"):
        inputs.count("epochs", "ten")
    with raises("epochs must hold only numbers (or strings spelling them); got 'x'"):
        inputs.count("epochs", ["x"])


def test_rate_is_at_most_max_rate_inclusive():
    assert inputs.rate("lr", "1000") == inputs.MAX_RATE == 1000.0
    with raises("lr must be at most 1000; got 1000.5"):
        inputs.rate("lr", 1000.5)
    with raises("lr must be a positive number; got 'fast'"):
        inputs.rate("lr", "fast")
    with raises("lr must hold only numbers (or strings spelling them); got 'x'"):
        inputs.rate("lr", ["x"])


@pytest.mark.parametrize("good", [0, "0", 1, inputs.MAX_SEED])
def test_seeds_run_from_zero(good):
    assert inputs.seed("seed", good) == int(good)


@pytest.mark.parametrize(
    ("bad", "quoted"),
    [(-1, "-1"), (True, "True"), ("abc", "'abc'"), (1.0, "1.0"), (inputs.MAX_SEED + 1,
                                                                    str(2**64))],
)
def test_seeds_refused(bad, quoted):
    with raises(f"seed must be an integer from 0 to 2**64 - 1; got {quoted}"):
        inputs.seed("seed", bad)


def test_seed_messages_name_the_field():
    with raises("seed must hold only numbers (or strings spelling them); got 'x'"):
        inputs.seed("seed", ["x"])


# -- gradbook_service.app.http ---------------------------------------------------------------------
@pytest.mark.parametrize(("body", "headers", "read"), [
    ("", {}, None),  # no body
    ("", {"Content-Type": "application/json", "Content-Length": "0"}, None),  # an empty one
    ("", {"Content-Type": "application/json", "Content-Length": "2"}, ""),  # the JSON ""
    ({"seed": 1}, {"Content-Type": "application/json", "Content-Length": "11"}, {"seed": 1}),
])
def test_a_body_that_is_the_json_string_empty_is_not_no_body(body, headers, read):
    """``""`` sent as JSON decodes to the empty string, as no body does: only its length tells
    them apart, and an endpoint whose body is optional must refuse the string, not take it for
    no body (Schemathesis found reset accepting it)."""
    assert Request(body=body, headers=headers).json() == read
    if read == "":
        with raises("the request body must be a JSON object; got str"):
            inputs.fields(Request(body=body, headers=headers).json(), optional=["seed"])
