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
    assert [e.key for e in removed] == ["stale"]
    assert sorted(p.name for p in (tmp_path / "shard-000").iterdir()) == ["slice-00-keep.json", "slice-00-keep.pt"]
