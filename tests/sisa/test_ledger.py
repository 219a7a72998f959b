"""Ledger: append-only, durable, tamper-evident, safe against a torn last line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sisa import Ledger
from sisa.errors import LedgerError

SECRET = b"k" * 32


def _ledger(tmp_path, secret: bytes = SECRET, run_id: str = "run-1") -> Ledger:
    ledger = Ledger(tmp_path / "ledger.jsonl", secret, run_id)
    if not ledger.exists():
        ledger.create("digest-0")
    return ledger


def test_ledger_tracks_pending_and_done_requests_and_what_each_destroyed(tmp_path):
    ledger = _ledger(tmp_path)
    first = ledger.record_request(np.array([3, 1]), "gdpr", "digest-1")
    second = ledger.record_request(np.array([7]), "", "digest-2", keys=["user-7"])
    ledger.record_destroyed(first, [{"kind": "checkpoint", "key": "abc"}])
    ledger.record_done(first, {0: [1, 2]}, 120, 0.5)
    ledger.record_version(first, "models:/m/2")
    assert [r.request_id for r in ledger.pending()] == [second] == ["r-0002"]
    assert ledger.deleted_ids().tolist() == [1, 3, 7]
    done = ledger.requests()[0]
    assert done.done["retrained"] == {"0": [1, 2]} and done.destroyed == [{"kind": "checkpoint", "key": "abc"}]
    assert done.versions == ["models:/m/2"] and ledger.requests()[1].keys == ["user-7"]
    assert ledger.data_digest() == "digest-2"


def test_ledger_ignores_a_torn_last_line_and_the_next_append_cuts_it_off(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.record_request(np.array([1]), "", "d1")
    with open(ledger.path, "a") as f:
        f.write('{"type": "requ')  # a crash in the middle of an append
    assert [r.request_id for r in ledger.requests()] == ["r-0001"]
    ledger.record_request(np.array([2]), "", "d2")
    assert [r.request_id for r in ledger.requests()] == ["r-0001", "r-0002"]
    assert all(json.loads(line) for line in ledger.path.read_text().splitlines())


@pytest.mark.parametrize("line", ["{}", "42", "not json", '{"type": "request", "request_id": "r-9"}'])
def test_ledger_refuses_a_malformed_record_with_its_line_number(tmp_path, line):
    ledger = _ledger(tmp_path)
    ledger.record_request(np.array([1]), "", "d1")
    with open(ledger.path, "a") as f:
        f.write(line + "\n")
    with pytest.raises(LedgerError, match="line 3"):
        ledger.requests()


def test_ledger_detects_an_edited_record(tmp_path):
    ledger = _ledger(tmp_path)
    ledger.record_request(np.array([1, 2]), "gdpr", "d1")
    ledger.record_request(np.array([5]), "", "d2")
    lines = ledger.path.read_text().splitlines()
    record = json.loads(lines[1])
    record["sample_ids"] = [1]  # someone quietly "undeletes" sample 2
    lines[1] = json.dumps(record, separators=(",", ":"))
    ledger.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LedgerError, match="line 2 fails its tamper check"):
        Ledger(ledger.path, SECRET, "run-1").requests()


def test_ledger_detects_a_removed_or_reordered_record_and_a_forgery_without_the_secret(tmp_path):
    ledger = _ledger(tmp_path)
    for n in range(3):
        ledger.record_request(np.array([n]), "", f"d{n}")
    lines = ledger.path.read_text().splitlines()
    for damaged in (lines[:2] + lines[3:], [lines[0], lines[2], lines[1], lines[3]]):
        ledger.path.write_text("\n".join(damaged) + "\n")
        with pytest.raises(LedgerError, match="tamper check"):
            Ledger(ledger.path, SECRET, "run-1").requests()
    ledger.path.write_text("\n".join(lines) + "\n")
    forger = Ledger(ledger.path, b"x" * 32, "run-1")  # a correct chain needs the run's secret
    with pytest.raises(LedgerError, match="line 1 fails its tamper check"):
        forger.requests()
    with pytest.raises(LedgerError, match="tamper check"):
        Ledger(ledger.path, SECRET, "another-run").requests()
