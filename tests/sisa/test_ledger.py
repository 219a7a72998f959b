"""Ledger: append-only, durable, tolerant of a torn last line only."""

from __future__ import annotations

import numpy as np
import pytest

from sisa import Ledger


def test_ledger_tracks_pending_and_done_requests(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    first = ledger.record_request(np.array([3, 1]), "gdpr")
    second = ledger.record_request(np.array([7]))
    ledger.record_done(first, {0: [1, 2]}, 120, 0.5)
    assert [r.request_id for r in ledger.pending()] == [second] == ["r-0002"]
    assert ledger.deleted_ids().tolist() == [1, 3, 7]
    assert ledger.requests()[0].done["retrained"] == {"0": [1, 2]}


def test_ledger_ignores_a_torn_last_line_but_not_a_corrupt_middle_one(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record_request(np.array([1]))
    with open(path, "a") as f:
        f.write('{"type": "requ')
    assert [r.request_id for r in ledger.requests()] == ["r-0001"]
    with open(path, "a") as f:
        f.write("\n")
    ledger.record_request(np.array([2]))
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        ledger.requests()
