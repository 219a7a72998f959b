"""A run is bound to its ledger, store, data and secret, and refuses anything else."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sisa import ShardPlan
from sisa.errors import LedgerError, RunBindingError
from tests.conftest import SMALL, assert_bit_identical, make_table, open_run


@pytest.fixture
def trained(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    run.train()
    return run


def test_a_run_whose_ledger_is_missing_refuses_to_open_so_it_cannot_relearn_deleted_samples(trained, table):
    trained.forget([4, 8])
    (trained.run_dir / "ledger.jsonl").unlink()
    with pytest.raises(LedgerError, match="ledger.jsonl is missing"):
        open_run(trained.run_dir, table)


def test_a_ledger_cut_back_to_an_earlier_valid_chain_is_detected_by_the_store_anchor(trained, table):
    lines = trained.ledger.path.read_text().splitlines(keepends=True)
    trained.forget([4, 8])
    trained.ledger.path.write_text("".join(lines))  # the request and its records removed: a valid chain
    with pytest.raises(LedgerError, match="truncated or replaced"):
        open_run(trained.run_dir, table)


def test_a_torn_ledger_line_does_not_stop_the_next_deletion(trained, table):
    with open(trained.ledger.path, "a") as f:
        f.write('{"type":"request","request_id":"r-0001","sample_ids":[5')
    run = open_run(trained.run_dir, table)
    report = run.forget([5, 6])
    assert report.request_id == "r-0001" and run.ledger.pending() == []
    assert [r.request_id for r in open_run(trained.run_dir, table).ledger.requests()] == ["r-0001"]


def test_a_run_refuses_other_data_but_accepts_its_data_without_the_deleted_rows(trained, table):
    trained.forget([4, 8])
    assert open_run(trained.run_dir, table.without(np.array([4, 8]))).plan() == trained.plan()
    changed = make_table(seed=1)  # same ids, other values
    with pytest.raises(RunBindingError, match="differs from the data the run was made with"):
        open_run(trained.run_dir, changed)
    with pytest.raises(RunBindingError, match="differs"):
        open_run(trained.run_dir, table.without(np.array([9])))


def test_two_runs_cannot_share_a_store(trained, tmp_path, table):
    with pytest.raises(RunBindingError, match="already belongs to run"):
        open_run(tmp_path / "second", table, store_uri=str(trained.store.root))
    assert not (tmp_path / "second").exists(), "a run that could not be made leaves nothing behind"


def test_a_relative_store_is_resolved_against_the_run_dir(tmp_path, table, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = open_run(tmp_path / "run", table, store_uri="ckpt")
    run.train()
    assert (tmp_path / "run" / "ckpt" / "RUN.json").exists() and not (tmp_path / "ckpt").exists()


def test_changing_the_store_is_refused_while_the_old_one_holds_checkpoints(trained, tmp_path, table):
    with pytest.raises(RunBindingError, match="would leave the old checkpoints behind"):
        open_run(trained.run_dir, table, store_uri=str(tmp_path / "elsewhere"))
    for path in sorted((trained.run_dir / "checkpoints").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    moved = open_run(trained.run_dir, table, store_uri=str(tmp_path / "elsewhere"))
    assert moved.store.root.endswith("elsewhere") and json.loads((trained.run_dir / "run.json").read_text())["store"]


def test_a_run_refuses_another_secret_and_a_lost_secret_file(trained, table):
    with pytest.raises(RunBindingError, match="another secret"):
        open_run(trained.run_dir, table, secret=b"x" * 32)
    os.remove(trained.run_dir / "secret")
    with pytest.raises(RunBindingError, match="secret is missing"):
        open_run(trained.run_dir, table)


def test_the_shard_assignment_comes_from_the_secret_not_the_seed(tmp_path, table):
    a, b = open_run(tmp_path / "a", table), open_run(tmp_path / "b", table)
    assert a.seed == b.seed and a.plan() != b.plan()
    assert a.plan() == ShardPlan.build(table.ids, SMALL.num_shards, SMALL.num_slices, a.secret)
    assert oct(os.stat(a.run_dir / "secret").st_mode & 0o777) == "0o600"


def test_run_dir_that_is_a_file_or_cannot_be_created_is_refused(tmp_path, table):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunBindingError, match="is a file"):
        open_run(tmp_path / "file", table)
    with pytest.raises(RunBindingError, match="cannot create run directory"):
        open_run(tmp_path / "file" / "run", table)  # its parent is a file: as unwritable as it gets, even for root


def test_from_scratch_retrains_the_retained_data_bit_identically(trained, tmp_path):
    trained.forget([3, 17, 42])
    scratch = trained.from_scratch(tmp_path / "scratch")
    scratch.train()
    assert scratch.secret == trained.secret and len(scratch.table) == len(trained.table) - 3
    for (_, a), (_, b) in zip(trained.constituents(), scratch.constituents()):
        assert_bit_identical(a, b)
