"""Request bodies of the service -> validated arrays and ids, or one line saying what is wrong.

Prediction inputs come as JSON (`{"inputs": [[...], ...]}`), as NumPy `.npy` bytes
(`Content-Type: application/x-npy`) or as an Arrow IPC stream (`application/vnd.apache.arrow.stream`)
with one column of lists; each row is one sample, flattened. Deletion requests are JSON
`{"ids": [...], "reason": "..."}` in the data set's own ids (integers, or its string ids); the ids
themselves are checked against the run (unknown, duplicate, already deleted, ...) by the worker.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

NPY = "application/x-npy"
ARROW = "application/vnd.apache.arrow.stream"
MAX_REASON = 1000
"""Characters a deletion reason may have (it is kept in the ledger forever)."""
MAX_WAIT_S = 60.0
"""Longest long poll of a request's state (`?wait=`): under the idle timeout of common HTTP
clients and proxies (often 60 s or more), so a waiting client is answered, not cut off."""


class InputError(ValueError):
    """A request body the service refuses (answered with 400 and this message)."""


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(f"the body is not valid JSON ({err})") from None


def _object(body: bytes, required: str, allowed: set[str]) -> dict[str, Any]:
    data = _json(body)
    if not isinstance(data, dict):
        raise InputError(f"the body must be a JSON object with {required!r}; got {type(data).__name__}")
    if required not in data:
        raise InputError(f"the body lacks {required!r}; fields: {sorted(allowed)}")
    unknown = set(data) - allowed
    if unknown:
        raise InputError(f"unknown field(s) {sorted(unknown)}; fields: {sorted(allowed)}")
    return data


def _rows_from_json(body: bytes) -> np.ndarray:
    rows = _object(body, "inputs", {"inputs"})["inputs"]
    if not isinstance(rows, list):
        raise InputError(f"'inputs' must be a list of rows (one flattened sample each); got {type(rows).__name__}")
    message = "'inputs' must be rows of numbers, all of the same length"
    try:
        array = np.asarray(rows)  # numbers give an int or float array; strings, booleans or ragged rows do not
    except (TypeError, ValueError):
        raise InputError(message) from None
    if array.dtype.kind not in "iuf" and array.size:
        raise InputError(message)
    return array.astype(np.float32)


def _rows_from_npy(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"the body is not a .npy array ({err})") from None
    if array.dtype.kind not in "iuf":
        raise InputError(f"the .npy array must hold numbers; got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


def _rows_from_arrow(body: bytes) -> np.ndarray:
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(body).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"the body is not an Arrow IPC stream ({err})") from None
    if table.num_columns != 1:
        raise InputError(f"the Arrow table must have one column of lists (one sample per row); got {table.column_names}")
    column = table.column(0).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)) or column.null_count:
        raise InputError(f"the Arrow column must hold lists of numbers without nulls; got {column.type}")
    try:
        return np.asarray(column.to_pylist(), dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError("the Arrow lists must hold numbers, all of the same length") from None


def prediction_inputs(body: bytes, content_type: str, sample_shape: tuple[int, ...], max_inputs: int) -> np.ndarray:
    """Model inputs (n, features) float32 from a prediction request's body.

    Raises:
        InputError: malformed body, wrong shape, no rows, too many rows, or values that are not finite.
    """
    kind = content_type.split(";")[0].strip().lower()
    parse = {NPY: _rows_from_npy, ARROW: _rows_from_arrow}.get(kind, _rows_from_json)
    x = parse(body)
    features = int(np.prod(sample_shape))
    shape = " x ".join(map(str, sample_shape))
    if x.ndim >= 1 and len(x) == 0:
        raise InputError("no inputs: give at least one row")
    if x.ndim == 1 + len(sample_shape) and x.shape[1:] == tuple(sample_shape):
        x = x.reshape(len(x), features)
    if x.ndim != 2 or x.shape[1] != features:
        raise InputError(f"each input must be one flattened sample of {features} values ({shape}); "
                         f"got an array of shape {x.shape}")
    if len(x) > max_inputs:
        raise InputError(f"{len(x)} inputs in one request; at most {max_inputs} (serve.max_inputs)")
    if not np.isfinite(x).all():
        raise InputError("inputs must be finite numbers (no NaN or infinity)")
    return np.ascontiguousarray(x)


def deletion_request(body: bytes) -> tuple[list[Any], str]:
    """(ids, reason) of a deletion request's body; the ids are checked by the run.

    Raises:
        InputError: malformed body, ids not a list, reason not a string or too long, unknown fields.
    """
    data = _object(body, "ids", {"ids", "reason"})
    ids, reason = data["ids"], data.get("reason", "")
    if not isinstance(ids, list):
        raise InputError(f"'ids' must be a list of sample ids; got {type(ids).__name__}")
    if not isinstance(reason, str):
        raise InputError(f"'reason' must be a string; got {type(reason).__name__}")
    if len(reason) > MAX_REASON:
        raise InputError(f"'reason' has {len(reason)} characters; at most {MAX_REASON}")
    return ids, reason


def wait_seconds(text: str | None) -> float:
    """The `wait` query parameter of GET /requests/{id}: seconds to wait for the request to end.

    Raises:
        InputError: not a number, or outside [0, MAX_WAIT_S].
    """
    if text is None:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        raise InputError(f"'wait' must be a number of seconds from 0 to {MAX_WAIT_S:g}; got {text!r}") from None
    if not 0 <= seconds <= MAX_WAIT_S:  # NaN fails this too
        raise InputError(f"'wait' must be a number of seconds from 0 to {MAX_WAIT_S:g}; got {text!r}")
    return seconds
