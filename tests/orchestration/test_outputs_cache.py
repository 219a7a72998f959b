"""Cached test-set outputs: a deletion re-evaluates only retrained constituents, and the cache is purged and audited."""

from __future__ import annotations

import itertools
import math
import shutil

import pytest
import torch

from orchestration import commands
from orchestration.audit import certificate
from orchestration.outputs_cache import EvaluationInterrupted, ensemble_logits, entries
from orchestration.runs import open_session
from orchestration.status import accuracies
from orchestration.tracking import MemoryTracker
from sisa import PREDICT_BATCH

SETTINGS = ["sisa.num_shards=3", "sisa.num_slices=2", "sisa.epochs=4", "ray.engine=local", "tracking.enabled=false"]


@pytest.fixture
def session(tmp_path):
    session = open_session(tmp_path / "run", overrides=SETTINGS, create=True)
    commands.train(session, MemoryTracker())  # evaluates every constituent, so caches them all
    return session


def _stamps(session) -> dict[int, tuple[str, int]]:
    return {shard: (key, path.stat().st_mtime_ns) for shard, key, path in entries(session.run)}


def test_a_deletion_evaluates_only_the_retrained_constituent_and_reads_the_others_back(session, monkeypatch):
    before = _stamps(session)
    assert sorted(before) == [0, 1, 2] and {s: k for s, (k, _) in before.items()} == session.run.final_keys()
    target = session.run.plan().slice_ids(1)[0][0]
    loaded = []
    original = session.run.constituents
    monkeypatch.setattr(session.run, "constituents", lambda keys=None: loaded.append(dict(keys or {})) or original(keys))

    reports, metrics = commands.forget(session, MemoryTracker(), [int(target)])

    assert reports[0].retrained and set(reports[0].retrained) == {1}
    # Evaluation named the one model it ran; the other load (no keys) is the export of the ensemble.
    assert [keys for keys in loaded if keys] == [{1: session.run.final_keys()[1]}]
    after = _stamps(session)
    assert after[1][0] != before[1][0] and {0: after[0], 2: after[2]} == {0: before[0], 2: before[2]}
    x, labels = session.test.tensors()
    fresh = torch.stack([m(x) for _, m in original()]).argmax(-1)  # every constituent run anew
    cached = ensemble_logits(session.run, x, session.test.digest()).argmax(-1)
    assert torch.equal(fresh, cached)
    assert metrics["test/acc"] == pytest.approx(accuracies(session)["vote"])


def test_outputs_of_purged_checkpoints_are_destroyed_recorded_and_audited(session, tmp_path):
    old = {shard: (key, path) for shard, key, path in entries(session.run)}
    keep = tmp_path / "kept-copy.pt"
    shutil.copy(old[1][1], keep)
    target = session.run.plan().slice_ids(1)[1][0]
    session.run.forget([int(target)])

    destroyed = session.run.ledger.requests()[0].destroyed
    recorded = [d for d in destroyed if d["kind"] == "cached-outputs"]
    assert [d["path"] for d in recorded] == [str(old[1][1].relative_to(session.run.run_dir))]
    assert not old[1][1].exists() and certificate(session)["clean"]

    shutil.copy(keep, old[1][1])  # an entry computed by a model that saw the deleted sample comes back
    report = certificate(session)
    assert not report["clean"] and "outputs cache" in report["checked"]
    assert any(f.startswith("outputs cache: ") and old[1][1].name in f for f in report["findings"])


def test_an_entry_for_another_test_set_or_checkpoint_is_computed_again(session):
    x, _ = session.test.tensors()
    digest = session.test.digest()
    reference = ensemble_logits(session.run, x, digest)
    changed = ensemble_logits(session.run, x[:10], "another test set")
    assert changed.shape[1] == 10 and torch.allclose(changed, reference[:, :10], atol=1e-5)
    assert torch.equal(ensemble_logits(session.run, x, digest), reference)


def test_an_interrupted_evaluation_keeps_the_finished_constituents_and_the_next_one_resumes(session, monkeypatch):
    x, _ = session.test.tensors()
    digest = session.test.digest()
    reference = ensemble_logits(session.run, x, digest)
    for _, _, path in entries(session.run):
        path.unlink()
    asked = itertools.count()
    per_model = math.ceil(len(x) / PREDICT_BATCH)  # `interrupt` is asked once per batch

    with pytest.raises(EvaluationInterrupted):  # stops at the second constituent's first batch
        ensemble_logits(session.run, x, digest, interrupt=lambda: next(asked) >= per_model)

    assert [shard for shard, _, _ in entries(session.run)] == [0]
    loaded = []
    original = session.run.constituents
    monkeypatch.setattr(session.run, "constituents", lambda keys=None: loaded.append(sorted(keys)) or original(keys))
    assert torch.equal(ensemble_logits(session.run, x, digest, interrupt=lambda: False), reference)
    assert loaded == [[1, 2]] and sorted(shard for shard, _, _ in entries(session.run)) == [0, 1, 2]
