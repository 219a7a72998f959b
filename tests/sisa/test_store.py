"""Checkpoint store: atomic, verified, content-addressed and purgeable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sisa import CheckpointCorruptError, CheckpointStore
from sisa.errors import CheckpointMissingError

STATE = {"model": {"w": torch.arange(4.0)}, "counters": {"slice": 0}}


def test_store_round_trips_a_checkpoint_with_its_manifest(tmp_path):
    store = CheckpointStore(str(tmp_path))
    entry = store.save(2, 1, "abc", STATE, np.array([5, 1, 3]), "fp")
    assert torch.equal(store.load(2, 1, "abc")["model"]["w"], STATE["model"]["w"])
    manifest = store.read_manifest(entry)
    assert (manifest["shard"], manifest["slice"], manifest["sample_ids"]) == (2, 1, [1, 3, 5])
    assert manifest["fingerprint"] == "fp" and manifest["nbytes"] > 0


def test_store_accepts_a_file_uri(tmp_path):
    store = CheckpointStore(tmp_path.as_uri())
    store.save(0, 0, "k", STATE, np.array([1]), "fp")
    assert [e.key for e in store.entries()] == ["k"]
    assert (tmp_path / "shard-000" / "slice-00-k.pt").exists()


def test_store_load_of_missing_key_raises_missing(tmp_path):
    with pytest.raises(CheckpointMissingError):
        CheckpointStore(str(tmp_path)).load(0, 0, "nope")


def test_store_detects_a_tampered_checkpoint(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save(0, 0, "k", STATE, np.array([1]), "fp")
    path = tmp_path / "shard-000" / "slice-00-k.pt"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointCorruptError, match="checksum"):
        store.load(0, 0, "k")


def test_store_refuses_pickled_objects_when_loading(tmp_path):
    """weights_only=True: a checkpoint holding arbitrary objects is not unpickled."""
    store = CheckpointStore(str(tmp_path))
    store.save(0, 0, "k", {"evil": np.dtype("float32").__class__}, np.array([1]), "fp")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported"):
        store.load(0, 0, "k")


def test_store_purge_removes_other_keys_and_uncommitted_files(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save(0, 0, "keep", STATE, np.array([1]), "fp")
    store.save(0, 1, "stale", STATE, np.array([1, 2]), "fp")
    (tmp_path / "shard-000" / "slice-02-orphan.pt").write_bytes(b"no manifest")
    (tmp_path / "shard-000" / "slice-02-x.pt.tmp-1").write_bytes(b"half written")
    removed = store.purge(0, keep={"keep"})
    assert [(r["kind"], r["slice"], r["key"]) for r in removed] == [("checkpoint", 1, "stale")]
    assert removed[0]["sha256"] and removed[0]["nbytes"] > 0
    assert sorted(p.name for p in (tmp_path / "shard-000").iterdir()) == ["slice-00-keep.json", "slice-00-keep.pt"]


def test_store_refuses_a_valid_checkpoint_copied_under_another_shard_slice_or_key(tmp_path):
    store = CheckpointStore(str(tmp_path))
    store.save(0, 1, "aaa", STATE, np.array([1]), "fp")
    source = tmp_path / "shard-000" / "slice-01-aaa"
    for shard, slice_, key in ((3, 1, "aaa"), (0, 2, "aaa"), (0, 1, "bbb")):
        target = tmp_path / f"shard-{shard:03d}" / f"slice-{slice_:02d}-{key}"
        target.parent.mkdir(exist_ok=True)
        for suffix in (".pt", ".json"):
            target.with_suffix(suffix).write_bytes(source.with_suffix(suffix).read_bytes())
        with pytest.raises(CheckpointCorruptError, match="not its own"):
            store.load(shard, slice_, key)


def test_store_refuses_a_manifest_whose_identity_or_ids_were_edited_to_match(tmp_path):
    import json

    store = CheckpointStore(str(tmp_path))
    store.save(0, 1, "aaa", STATE, np.array([1, 2]), "fp")
    path = tmp_path / "shard-000" / "slice-01-aaa.json"
    original = json.loads(path.read_text())
    for field, value in (("sample_ids", [1]), ("fingerprint", "other")):
        path.write_text(json.dumps({**original, field: value}))
        with pytest.raises(CheckpointCorruptError, match="fails its checksum"):
            store.load(0, 1, "aaa")


def test_store_belongs_to_the_run_that_claimed_it(tmp_path):
    from sisa.errors import RunBindingError

    store = CheckpointStore(str(tmp_path))
    store.claim("run-a")
    store.claim("run-a")  # the owner again: fine
    with pytest.raises(RunBindingError, match="belongs to run run-a"):
        store.claim("run-b")
    other = CheckpointStore(str(tmp_path / "other"))
    other.save(0, 0, "k", STATE, np.array([1]), "fp")
    with pytest.raises(RunBindingError, match="unknown run"):
        other.claim("run-c")
