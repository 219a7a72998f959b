"""SampleTable with the data set's own string ids: hashed sample_ids, lookup, keys_of, collisions, class names."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from sisa import InvalidRequestError, SampleTable
from sisa.data import key_sample_ids


def _table(keys: list[str]) -> SampleTable:
    return SampleTable.from_numpy(np.zeros((len(keys), 2), np.float32), np.arange(len(keys)) % 2, keys=keys)


def test_key_sample_id_is_the_first_8_bytes_of_blake2b_shifted_to_63_bits():
    """sample_id('user-42') = int.from_bytes(blake2b(b'user-42', digest_size=8), 'little') >> 1, non-negative."""
    expected = int.from_bytes(hashlib.blake2b(b"user-42", digest_size=8).digest(), "little") >> 1
    assert key_sample_ids(["user-42"]).tolist() == [expected]
    assert key_sample_ids(pa.array(["", "é", "user-42"], pa.large_string()))[2] == expected
    assert (key_sample_ids([f"k{i}" for i in range(1000)]) >= 0).all()


def test_a_keys_sample_id_does_not_depend_on_the_other_keys():
    full, fewer = _table(["a", "b", "c", "d"]), _table(["d", "b"])
    assert np.array_equal(fewer.lookup(["b", "d"]), full.lookup(["b", "d"]))


def test_lookup_is_vectorised_and_names_unknown_keys():
    table = _table([f"user-{i}" for i in range(100)])
    ids = table.lookup(pa.chunked_array([["user-7", "user-3"], ["user-99"]]))
    assert table.keys_of(ids).to_pylist() == ["user-7", "user-3", "user-99"]
    with pytest.raises(InvalidRequestError, match=r"id\(s\) \['nobody', 'user-100'\] are not in the data set"):
        table.lookup(["user-1", "nobody", "user-100"])


def test_integer_tables_have_no_keys_and_keys_of_gives_their_ids():
    table = SampleTable.from_numpy(np.zeros((3, 2), np.float32), np.zeros(3))
    assert table.keys is None and table.keys_of(np.array([2, 0])).to_pylist() == [2, 0]
    with pytest.raises(InvalidRequestError, match="ids are integers"):
        table.lookup(["0"])


def test_keys_survive_take_without_and_a_parquet_round_trip(tmp_path):
    table = _table(["a", "b", "c"])
    kept = table.without(table.lookup(["b"]))
    assert sorted(kept.keys.to_pylist()) == ["a", "c"] and np.array_equal(kept.lookup(["a"]), table.lookup(["a"]))
    table.write_parquet(tmp_path / "t.parquet")
    again = SampleTable.read_parquet(tmp_path / "t.parquet")
    assert again.keys.to_pylist() == table.keys.to_pylist() and np.array_equal(again.ids, table.ids)


def test_two_keys_with_one_sample_id_are_refused_naming_both():
    # A real 63-bit collision cannot be found for a test; the table is built with one forced.
    table = pa.table({"sample_id": pa.array([5, 5], pa.int64()), "label": pa.array([0, 1], pa.int64()),
                      "x": pa.FixedSizeListArray.from_arrays(pa.array([0.0, 0.0], pa.float32()), 1),
                      "key": pa.array(["alice", "bob"])}).replace_schema_metadata({b"sample_shape": b"[1]"})
    with pytest.raises(ValueError, match="keys 'alice' and 'bob' hash to the same sample_id 5"):
        SampleTable(table)


def test_class_names_set_the_number_of_classes():
    table = SampleTable.from_numpy(np.zeros((2, 1), np.float32), np.array([0, 0]), class_names=["cat", "dog", "eel"])
    assert table.num_classes == 3 and table.class_names == ("cat", "dog", "eel")
    assert table.take(table.ids[:1]).class_names == ("cat", "dog", "eel")
