"""Bad deletion requests and faults: clear errors, nothing lost or half-written."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from sisa import CheckpointCorruptError, ConfigMismatchError, InvalidRequestError, PendingRequestError, SisaError
from sisa.errors import RunLockedError
from sisa.lock import run_lock
from sisa.unlearning import audit
from tests.conftest import SMALL, assert_bit_identical, open_run, scratch_of, tiny_model


@pytest.fixture
def trained(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    run.train()
    return run


def _snapshot(run):
    files = {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != "lock"}
    return files


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ([], "names no sample ids"),
        ([5, 999], "not in the training data"),
        ([5, -1], ">= 0"),
        ([5, 2.5], "must be integers"),
        (["7"], "must be integers"),
        ([True], "must be integers"),
        ([5, 9, 5], "more than once"),
    ],
)
def test_forget_rejects_bad_ids_and_changes_nothing(trained, ids, message):
    before = _snapshot(trained)
    with pytest.raises(InvalidRequestError, match=message):
        trained.forget(ids)
    assert _snapshot(trained) == before


def test_forget_rejects_already_deleted_ids_naming_the_request(trained):
    trained.forget([4, 8])
    before = _snapshot(trained)
    with pytest.raises(InvalidRequestError, match="already deleted by request r-0001"):
        trained.forget([8, 9])
    assert _snapshot(trained) == before


def test_forget_of_a_whole_shard_drops_it_from_the_ensemble(trained, table):
    whole = np.concatenate(trained.plan().slice_ids(1))
    report = trained.forget(whole)
    assert report.retrained == {}
    assert [s for s, _ in trained.constituents()] == [0, 2]
    assert trained.store.entries(1) == []
    assert trained.predict(table.tensors()[0]).shape == (len(table),)


def test_forget_of_every_sample_leaves_no_model_and_says_so(trained, table):
    trained.forget(table.ids)
    assert trained.store.entries() == []
    with pytest.raises(SisaError, match="every training sample was deleted"):
        trained.constituents()


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_checkpoint_is_refused_for_prediction_and_retrained_by_train(trained, damage):
    entry = [e for e in trained.store.entries(0) if e.slice == 2][0]
    path = trained.store.root + "/" + entry.path.split(trained.store.root + "/")[1]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointCorruptError, match="fails its checksum"):
        trained.constituents()
    reports = trained.train()
    assert [r.retrained_slices for r in reports] == [[2], [], []]
    assert len(trained.constituents()) == 3


def test_crash_between_ledger_entry_and_retraining_is_finished_by_the_next_command(tmp_path, table, trained):
    inner = trained.executor

    def crash_after_first_job(jobs, on_slice):
        inner(jobs[:1], on_slice)
        raise KeyboardInterrupt("killed mid-request")

    plan = trained.plan()
    forget = np.array([plan.slice_ids(0)[1][0], plan.slice_ids(2)[1][0]])
    trained.executor = crash_after_first_job
    with pytest.raises(KeyboardInterrupt):
        trained.forget(forget)
    assert [r.request_id for r in trained.ledger.pending()] == ["r-0001"]
    with pytest.raises(PendingRequestError, match="r-0001"):
        trained.constituents()

    trained.executor = inner
    finished = trained.serve_pending()

    assert finished.request_ids == ["r-0001"] and trained.ledger.pending() == []
    assert finished.retrained == {2: [1, 2]}, "shard 0 was already done before the crash"
    assert audit(trained.store, forget) == []
    scratch = scratch_of(trained, tmp_path / "scratch", table.without(forget))
    for (_, a), (_, b) in zip(trained.constituents(), scratch.constituents()):
        assert_bit_identical(a, b)


def test_forget_waits_for_another_command_holding_the_run_lock(trained):
    done = []
    with run_lock(trained.run_dir / "lock"):
        worker = threading.Thread(target=lambda: done.append(trained.forget([3])))
        worker.start()
        time.sleep(0.5)
        assert not done, "the second command must wait for the lock"
    worker.join(timeout=30)
    assert done and done[0].request_id == "r-0001"


def test_forget_gives_up_after_the_lock_timeout_without_recording(trained):
    trained.lock_timeout = 0.2
    with run_lock(trained.run_dir / "lock"), pytest.raises(RunLockedError, match="another command"):
        trained.forget([3])
    assert trained.ledger.requests() == []


def test_opening_a_run_dir_with_another_config_is_refused(trained, table):
    from sisa import SisaRun

    with pytest.raises(ConfigMismatchError, match="another configuration"):
        SisaRun(trained.run_dir, table, tiny_model, SMALL, seed=7, fingerprint="other")


def test_submitted_requests_are_served_together_by_one_retraining_and_stay_exact(trained, tmp_path, table):
    plan = trained.plan()
    first, second = plan.slice_ids(0)[2][:2], plan.slice_ids(1)[1][:1]
    ids = [trained.submit(first, "a"), trained.submit(second, "b")]
    assert ids == ["r-0001", "r-0002"] and len(trained.ledger.pending()) == 2
    with pytest.raises(PendingRequestError):
        trained.constituents()

    report = trained.serve_pending()

    assert report.request_ids == ids and report.retrained == {0: [2], 1: [1, 2]}
    done = [r.done for r in trained.ledger.requests()]
    assert all(d["batch"] == ids and d["samples_epochs"] == report.samples_epochs for d in done)
    assert trained.serve_pending() is None
    gone = np.concatenate([first, second])
    scratch = scratch_of(trained, tmp_path / "scratch", table.without(gone))
    for (_, a), (_, b) in zip(trained.constituents(), scratch.constituents()):
        assert_bit_identical(a, b)


def test_a_request_can_be_submitted_while_another_is_being_served(trained):
    inner, started, release = trained.executor, threading.Event(), threading.Event()

    def slow(jobs, on_slice):
        started.set()
        assert release.wait(30)
        return inner(jobs, on_slice)

    trained.executor = slow
    trained.submit([3], "first")
    server = threading.Thread(target=trained.serve_pending)
    server.start()
    assert started.wait(30)
    assert trained.submit([4], "arrived during the retraining") == "r-0002"  # does not wait for the run lock
    release.set()
    server.join(30)
    trained.executor = inner
    assert [r.request_id for r in trained.ledger.pending()] == ["r-0002"]
    assert trained.serve_pending().request_ids == ["r-0002"]


def test_serve_pending_serves_the_oldest_requests_first_up_to_a_limit(trained, tmp_path, table):
    plan = trained.plan()
    first, second = plan.slice_ids(0)[1][:1], plan.slice_ids(2)[1][:1]
    before = trained.final_keys()
    trained.submit(first, "a")
    trained.submit(second, "b")

    report = trained.serve_pending(max_requests=1)

    assert report.request_ids == ["r-0001"] and [r.request_id for r in trained.ledger.pending()] == ["r-0002"]
    assert set(report.final_keys) == {0} and report.final_keys[0] != before[0]
    with pytest.raises(PendingRequestError, match="r-0002"):
        trained.constituents()
    # The version after r-0001 alone: loadable by its keys while r-0002 waits, and exactly the
    # ensemble trained from scratch without r-0001's ids (r-0002's shard was not touched).
    version = {**before, **report.final_keys}
    scratch = scratch_of(trained, tmp_path / "scratch", table.without(first))
    for (shard, a), (other, b) in zip(trained.constituents(version), scratch.constituents()):
        assert shard == other
        assert_bit_identical(a, b)
    assert trained.serve_pending().request_ids == ["r-0002"]
