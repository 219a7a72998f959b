"""Deletion requests named by the data set's own ids -> sample_ids for `SisaRun.forget`.

A data set with integer ids takes integers (its sample_ids); one with string ids (user ids,
record keys, image paths) takes those strings, looked up in one vectorised pass. A Parquet file of
ids stays an Arrow array from the file to the lookup, so millions of ids never become Python lists.
Repeated and already deleted ids are refused here naming the user's ids, before anything is recorded.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sisa import InvalidRequestError, SampleTable
from sisa.data import key_sample_ids
from sisa.ledger import Request

_INT64 = np.iinfo(np.int64)


def parse_ids(text: str) -> list[int]:
    """'3,17, 42' -> [3, 17, 42]; anything that is not an integer is rejected by name."""
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    bad = [t for t in tokens if not re.fullmatch(r"[+-]?\d+", t)]
    if bad:
        raise InvalidRequestError(f"sample ids must be integers; got {bad[:5]}")
    ids = [int(t) for t in tokens]
    too_big = [v for v in ids if not _INT64.min <= v <= _INT64.max]
    if too_big:
        raise InvalidRequestError(f"sample ids must fit in 64-bit signed integers (at most {_INT64.max}); got {too_big[:5]}")
    return ids


def ids_from_text(text: str, table: SampleTable, separator: str = ",", history: list[Request] | None = None) -> np.ndarray:
    """The sample_ids named in `text`: integers, or the data set's string ids split on `separator`."""
    if table.keys is None:
        return np.asarray(parse_ids(text), np.int64)
    keys = [k.strip() for k in text.split(separator) if k.strip()]
    if not keys:
        raise InvalidRequestError("the request names no sample ids; give at least one")
    return lookup(table, keys, history or [])


def ids_from_list(values: list, table: SampleTable, history: list[Request]) -> list | np.ndarray:
    """The sample_ids of a request given as a JSON list (the service): integers for a data set with
    integer ids (left to `SisaRun.submit`'s validation, which names bad ones), the data set's own
    string ids otherwise, looked up, with repeated or already deleted ones refused by name."""
    if table.keys is None:
        return values
    if not values:
        raise InvalidRequestError("the request names no sample ids; give at least one")
    wrong = [v for v in values if not isinstance(v, str)]
    if wrong:
        raise InvalidRequestError(f"this data set's ids are strings (e.g. {table.keys_of(table.ids[:1]).to_pylist()[0]!r}); "
                                  f"got {wrong[:5]!r}")
    ids = lookup(table, values, history)
    check_new(table, ids, history)
    return ids


def lookup(table: SampleTable, keys: pa.Array | list[str], history: list[Request]) -> np.ndarray:
    """The sample_ids of string ids; ids a deletion already removed are named as such.

    Deleted rows may be gone from the data (a purged cache), so a key the table lacks is checked
    against the ledger: a key's sample_id depends on the key alone, so it can be matched there.
    """
    try:
        return table.lookup(keys)
    except InvalidRequestError:
        ids = key_sample_ids(keys)
        for request in history:
            again = np.isin(ids, request.sample_ids)
            if again.any():
                shown = pa.array(keys).filter(pa.array(again)).slice(0, 5).to_pylist()
                raise InvalidRequestError(f"ids {', '.join(map(str, shown))} were already deleted by request "
                                          f"{request.request_id}") from None
        raise


def ids_from_file(path: str, table: SampleTable, id_column: str, history: list[Request] | None = None) -> np.ndarray:
    """The sample_ids listed in a text file (one id per line, '#' comments) or a Parquet column.

    The Parquet column is `id_column` (data.id_column) if the file has it, else `sample_id`.
    """
    file = Path(path)
    if not file.exists():
        raise InvalidRequestError(f"ids file {path} does not exist")
    if not file.is_file():
        raise InvalidRequestError(f"ids file {path} is not a file; give a text file with one id per line "
                                  "or a Parquet file with an id column")
    if file.suffix not in (".parquet", ".parq", ".pq"):
        lines = [line.split("#", 1)[0] for line in file.read_text().splitlines()]
        return ids_from_text("\n".join(lines), table, separator="\n", history=history)
    names = pq.read_schema(file).names
    column = next((c for c in (id_column, "sample_id") if c in names), None)
    if column is None:
        raise InvalidRequestError(f"{path} has no {id_column!r} or 'sample_id' column (columns: {names})")
    ids = pq.read_table(file, columns=[column]).column(column).combine_chunks()
    if ids.null_count:
        raise InvalidRequestError(f"{path}: column {column!r} holds {ids.null_count} empty value(s)")
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return lookup(table, ids, history or [])
    if not pa.types.is_integer(ids.type):
        raise InvalidRequestError(f"{path}: column {column!r} holds {ids.type}; expected integer or string ids")
    if table.keys is not None:
        raise InvalidRequestError(f"{path}: column {column!r} holds integers, but this data set's ids are strings")
    return ids.to_numpy().astype(np.int64)


def check_new(table: SampleTable, sample_ids: np.ndarray, history: list[Request]) -> None:
    """Refuse ids named twice or deleted by an earlier request, naming them as the user does.

    Integer ids are left to `sisa.unlearning.validate_request`, whose messages already name them.
    """
    if table.keys is None:
        return
    unique, counts = np.unique(sample_ids, return_counts=True)
    if (counts > 1).any():
        raise InvalidRequestError(f"ids appear more than once in the request: {describe_ids(table, unique[counts > 1])}")
    for request in history:
        again = np.intersect1d(unique, request.sample_ids)
        if again.size:
            raise InvalidRequestError(f"ids {describe_ids(table, again)} were already deleted by request "
                                      f"{request.request_id}")


def describe_ids(table: SampleTable, sample_ids: np.ndarray, limit: int = 5) -> str:
    """The first `limit` of `sample_ids` as the user names them, e.g. 'user-42, user-77 and 3 more'."""
    return describe_names(table.keys_of(np.asarray(sample_ids)[:limit]).to_pylist(), len(sample_ids), limit)


def describe_request(request: Request, limit: int = 5) -> str:
    """A recorded request's ids as the user named them (the ledger keeps them: the rows may be gone)."""
    names = request.keys if request.keys is not None else request.sample_ids.tolist()
    return describe_names(names[:limit], len(names), limit)


def describe_names(shown: list, total: int, limit: int = 5) -> str:
    """'a, b, c and 3 more' from the first ids and how many there are."""
    return ", ".join(str(k) for k in shown[:limit]) + (f" and {total - limit} more" if total > limit else "")
