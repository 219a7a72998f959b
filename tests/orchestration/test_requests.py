"""Deletion requests in the data set's own ids: text, comma lists and Parquet columns, in bulk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestration.requests import describe_ids, ids_from_file, ids_from_list, ids_from_text
from sisa import InvalidRequestError, SampleTable
from sisa.ledger import Request


@pytest.fixture(scope="module")
def keyed() -> SampleTable:
    n = 200_000
    return SampleTable.from_numpy(np.zeros((n, 1), np.uint8), np.zeros(n), keys=pa.array([f"user-{i}" for i in range(n)]))


def test_a_parquet_file_of_many_string_ids_is_looked_up_as_arrays(keyed, tmp_path):
    wanted = pa.array([f"user-{i}" for i in range(0, 200_000, 2)])
    pq.write_table(pa.table({"user_id": wanted, "other": pa.array(np.zeros(len(wanted)))}), tmp_path / "ids.parquet")
    ids = ids_from_file(str(tmp_path / "ids.parquet"), keyed, id_column="user_id")
    assert ids.dtype == np.int64 and len(ids) == 100_000
    assert keyed.keys_of(ids).equals(wanted)


def test_text_ids_are_split_on_commas_or_lines_and_keep_inner_spaces(tmp_path):
    table = SampleTable.from_numpy(np.zeros((3, 1), np.float32), np.zeros(3), keys=["a b", "c,d", "e"])
    assert table.keys_of(ids_from_text(" a b , e", table)).to_pylist() == ["a b", "e"]
    (tmp_path / "ids.txt").write_text("c,d  # a key with a comma\n\ne\n")
    assert table.keys_of(ids_from_file(str(tmp_path / "ids.txt"), table, "id")).to_pylist() == ["c,d", "e"]


def test_integer_data_sets_take_integers_from_text_and_parquet(tmp_path):
    table = SampleTable.from_numpy(np.zeros((10, 1), np.float32), np.zeros(10))
    assert ids_from_text("3, 7", table).tolist() == [3, 7]
    pq.write_table(pa.table({"sample_id": pa.array([1, 2], pa.int32())}), tmp_path / "ids.parquet")
    assert ids_from_file(str(tmp_path / "ids.parquet"), table, "sample_id").tolist() == [1, 2]
    with pytest.raises(InvalidRequestError, match="must be integers"):
        ids_from_text("user-1", table)


def test_bad_id_files_are_refused_saying_why(keyed, tmp_path):
    pq.write_table(pa.table({"who": ["user-1"]}), tmp_path / "a.parquet")
    with pytest.raises(InvalidRequestError, match=r"has no 'user_id' or 'sample_id' column \(columns: \['who'\]\)"):
        ids_from_file(str(tmp_path / "a.parquet"), keyed, "user_id")
    pq.write_table(pa.table({"sample_id": [1, 2]}), tmp_path / "b.parquet")
    with pytest.raises(InvalidRequestError, match="holds integers, but this data set's ids are strings"):
        ids_from_file(str(tmp_path / "b.parquet"), keyed, "user_id")
    with pytest.raises(InvalidRequestError, match="does not exist"):
        ids_from_file(str(tmp_path / "none.txt"), keyed, "user_id")


def test_describe_ids_names_the_first_few_and_counts_the_rest(keyed):
    ids = keyed.lookup([f"user-{i}" for i in range(7)])
    assert describe_ids(keyed, ids, limit=2) == "user-0, user-1 and 5 more"


def test_ids_from_list_looks_up_string_ids_and_refuses_by_name_what_cannot_be_deleted():
    table = SampleTable.from_numpy(np.zeros((4, 1), np.float32), np.zeros(4), keys=["ann", "bob", "cy", "di"])
    assert table.keys_of(ids_from_list(["cy", "ann"], table, [])).to_pylist() == ["cy", "ann"]
    earlier = Request("r-0001", table.lookup(["bob"]), "t", "", "digest", keys=["bob"])
    with pytest.raises(InvalidRequestError, match="ids bob were already deleted by request r-0001"):
        ids_from_list(["bob"], table, [earlier])
    with pytest.raises(InvalidRequestError, match="ids appear more than once in the request: di"):
        ids_from_list(["di", "di"], table, [])
    with pytest.raises(InvalidRequestError, match=r"ids are strings \(e.g. '\w+'\); got \[3\]"):
        ids_from_list(["ann", 3], table, [])
    with pytest.raises(InvalidRequestError, match="names no sample ids"):
        ids_from_list([], table, [])


def test_ids_from_list_leaves_integer_ids_to_the_run_s_validation():
    table = SampleTable.from_numpy(np.zeros((4, 1), np.float32), np.zeros(4))
    assert ids_from_list([3, "x"], table, []) == [3, "x"]  # SisaRun.submit refuses "x" by name
