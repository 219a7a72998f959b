"""Request bodies of the service: what is accepted, and the one line that says what is wrong."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest

from orchestration.serve.inputs import ARROW, MAX_WAIT_S, NPY, InputError, deletion_request, prediction_inputs, wait_seconds

SHAPE = (1, 2, 2)


def _json(value) -> bytes:
    return json.dumps(value).encode()


def test_prediction_inputs_take_json_rows_npy_and_arrow_alike():
    rows = [[0.0, 0.5, 1.0, 0.25], [1.0, 0.0, 0.0, 1.0]]
    npy = io.BytesIO()
    np.save(npy, np.asarray(rows, np.float64).reshape(2, *SHAPE))  # unflattened is accepted too
    sink = pa.BufferOutputStream()
    table = pa.table({"inputs": pa.array(rows, pa.list_(pa.float32()))})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for body, kind in ((_json({"inputs": rows}), "application/json"), (npy.getvalue(), NPY),
                       (sink.getvalue().to_pybytes(), f"{ARROW}; charset=binary")):
        x = prediction_inputs(body, kind, SHAPE, max_inputs=10)
        assert x.dtype == np.float32 and np.array_equal(x, np.asarray(rows, np.float32))


@pytest.mark.parametrize(("body", "message"), [
    (b"{not json", "not valid JSON"),
    (_json([[0, 0, 0, 0]]), "must be a JSON object"),
    (_json({"rows": []}), "lacks 'inputs'"),
    (_json({"inputs": [[0, 0, 0, 0]], "extra": 1}), "unknown field(s) ['extra']"),
    (_json({"inputs": "abc"}), "must be a list of rows"),
    (_json({"inputs": []}), "no inputs"),
    (_json({"inputs": [[0, 0, 0]]}), "4 values (1 x 2 x 2); got an array of shape (1, 3)"),
    (_json({"inputs": [[0, 0, 0, 0], [0, 0]]}), "rows of numbers, all of the same length"),
    (_json({"inputs": [["a", "b", "c", "d"]]}), "rows of numbers"),
    (_json({"inputs": [[0, 0, 0, 0]] * 11}), "11 inputs in one request; at most 10"),
    (b'{"inputs": [[0, 0, 0, NaN]]}', "finite numbers"),
])
def test_prediction_inputs_refuse_bad_bodies_saying_what_is_wrong(body, message):
    with pytest.raises(InputError) as err:
        prediction_inputs(body, "application/json", SHAPE, max_inputs=10)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_prediction_inputs_refuse_npy_that_is_not_numbers_or_not_npy():
    objects = io.BytesIO()
    np.save(objects, np.array(["a", "b"]))
    with pytest.raises(InputError, match="must hold numbers"):
        prediction_inputs(objects.getvalue(), NPY, SHAPE, 10)
    with pytest.raises(InputError, match="not a .npy array"):
        prediction_inputs(b"garbage", NPY, SHAPE, 10)


@pytest.mark.parametrize(("body", "message"), [
    (_json({"reason": "x"}), "lacks 'ids'"),
    (_json({"ids": 3}), "'ids' must be a list"),
    (_json({"ids": [3], "reason": 5}), "'reason' must be a string"),
    (_json({"ids": [3], "reason": "x" * 1001}), "at most 1000"),
    (_json({"ids": [3], "user": "bob"}), "unknown field(s) ['user']"),
])
def test_deletion_requests_refuse_bad_bodies_saying_what_is_wrong(body, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        deletion_request(body)


def test_deletion_request_passes_ids_on_for_the_run_to_check():
    assert deletion_request(_json({"ids": [3, 17.5, "x"], "reason": "gdpr"})) == ([3, 17.5, "x"], "gdpr")
    assert deletion_request(_json({"ids": []})) == ([], "")


def test_a_long_poll_waits_from_zero_to_the_cap_and_anything_else_is_refused():
    assert wait_seconds(None) == 0.0 and wait_seconds("2.5") == 2.5 and wait_seconds(str(MAX_WAIT_S)) == MAX_WAIT_S
    for bad in ("soon", "", "-0.5", "nan", "inf", str(MAX_WAIT_S + 1)):
        with pytest.raises(InputError, match="'wait' must be a number of seconds from 0 to 60"):
            wait_seconds(bad)
