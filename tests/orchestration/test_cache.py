"""The project's decoded data cache: a deletion purges its rows; other runs on the same data still open."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from orchestration.audit import certificate
from orchestration.cli import main
from orchestration.config import DataConfig
from orchestration.datasets import cache as cache_module
from orchestration.datasets.cache import cached, cached_ids, purge_rows, purged_rows, train_cache
from orchestration.runs import open_session
from sisa import SampleTable
from sisa.ledger import ids_digest_hex
from tests.conftest import LOCAL

SETTINGS = ["--engine", "local", "--no-track", "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=2",
            "--set", "sisa.epochs=2", "--set", "model.hidden=8"]


def _data(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    x = rng.normal(size=(200, 4)) + labels[:, None]
    pq.write_table(pa.table({"sample_id": np.arange(200), "label": labels, **{f"f{j}": x[:, j] for j in range(4)}}),
                   tmp_path / "data.parquet")
    return ["--set", "data.name=parquet", "--set", f"data.path={tmp_path / 'data.parquet'}"]


def test_a_deletion_purges_its_rows_from_the_cache_and_another_run_on_the_data_still_opens(tmp_path):
    data = _data(tmp_path)
    for name in ("a", "b"):
        assert main(["train", "--run-dir", str(tmp_path / name), *SETTINGS, *data]) == 0
    a = open_session(tmp_path / "a", flags=LOCAL)
    cache = train_cache(a.config.data)
    first, second, third = a.run.table.ids[:2], a.run.table.ids[2:3], a.run.table.ids[3:4]
    assert cache is not None and np.isin(a.run.table.ids, cached_ids(cache)).all()

    report = a.run.forget(first)

    assert {"kind": "cached-rows", "path": str(cache), "rows": 2} == {k: v for k, v in report.destroyed[-1].items()
                                                                      if k != "ids_sha256"}
    assert not np.isin(first, cached_ids(cache)).any() and purged_rows(cache) == 2
    assert certificate(open_session(tmp_path / "a", flags=LOCAL))["clean"]
    b = open_session(tmp_path / "b", flags=LOCAL)  # its data still holds them: it reads the source files
    assert np.isin(first, b.run.retained_ids()).all()
    assert not np.isin(first, cached_ids(cache)).any(), "the purged rows do not come back to the cache"
    b.run.forget(second)
    assert not np.isin(second, cached_ids(cache)).any() and certificate(open_session(tmp_path / "b", flags=LOCAL))["clean"]
    assert np.isin(third, cached_ids(cache)).all()


def test_a_new_run_on_data_another_run_deleted_from_trains_on_every_row_of_the_sources(tmp_path):
    data = _data(tmp_path)
    assert main(["train", "--run-dir", str(tmp_path / "a"), *SETTINGS, *data]) == 0
    a = open_session(tmp_path / "a", flags=LOCAL)
    rows, deleted = len(a.run.table), a.run.table.ids[:3]
    a.run.forget(deleted)
    cache = train_cache(a.config.data)
    assert purged_rows(cache) == 3

    assert main(["train", "--run-dir", str(tmp_path / "b"), *SETTINGS, *data]) == 0
    b = open_session(tmp_path / "b", flags=LOCAL)
    assert len(b.run.table) == rows and np.isin(deleted, b.run.retained_ids()).all(), "not the cache's rows less 3"
    assert purged_rows(cache) == 3 and not np.isin(deleted, cached_ids(cache)).any(), "nothing is written back"


def test_the_audit_finds_deleted_rows_left_in_the_cache(tmp_path):
    data = _data(tmp_path)
    assert main(["train", "--run-dir", str(tmp_path / "a"), *SETTINGS, *data]) == 0
    session = open_session(tmp_path / "a", flags=LOCAL)
    session.run.purgers = session.run.purgers[:-1]  # a deletion served without the cache purger
    session.run.forget(session.run.table.ids[:1])
    report = certificate(open_session(tmp_path / "a", flags=LOCAL))
    assert not report["clean"] and any(f.startswith("cache:") and "1 deleted sample" in f for f in report["findings"])


def test_a_frozen_backbone_run_reads_the_sources_when_another_run_purged_one_of_its_public_rows(tmp_path):
    """Run a declares nothing public and deletes a sample run b declares public: b's public ids (bound
    into its fingerprint and named by its pretrained backbone) must still be computed over every sample."""
    source = _data(tmp_path)
    data = [*source, "--set", "data.public_fraction=0.3"]
    backbone = tmp_path / "backbone.pt"
    assert main(["pretrain", "--out", str(backbone), "--set", "pretrain.epochs=2", *SETTINGS[2:], *data]) == 0
    frozen = [*SETTINGS, *data, "--set", f"model.backbone={backbone}", "--set", "sisa.trainable=head"]
    assert main(["train", "--run-dir", str(tmp_path / "b"), *frozen]) == 0
    assert main(["train", "--run-dir", str(tmp_path / "a"), *SETTINGS, *source]) == 0
    b = open_session(tmp_path / "b", flags=LOCAL)
    public = b.run.non_deletable[:2]
    a = open_session(tmp_path / "a", flags=LOCAL)
    a.run.forget(public)  # public in b only
    cache = train_cache(a.config.data)
    assert cache is not None and not np.isin(public, cached_ids(cache)).any()

    b = open_session(tmp_path / "b", flags=LOCAL)

    assert np.isin(public, b.run.non_deletable).all() and np.isin(public, b.run.retained_ids()).all()
    assert certificate(b)["clean"]
    again = tmp_path / "again.pt"  # pretraining again also learns from every public sample
    assert main(["pretrain", "--out", str(again), "--set", "pretrain.epochs=2", *SETTINGS[2:], *data]) == 0
    assert torch.load(again, weights_only=True)["public"]["sha256"] == ids_digest_hex(b.run.non_deletable)


def _split(rows: int) -> tuple[SampleTable, SampleTable]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (rows, 8, 8), dtype=np.uint8)
    train = SampleTable.from_numpy(images, rng.integers(0, 10, rows), sample_ids=np.arange(rows) * 3, scale=1 / 255)
    return train, train.take(train.ids[:5])


def test_the_train_cache_is_kept_in_parts_and_a_purge_rewrites_only_the_parts_holding_the_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "PART_BYTES", 64 * 100)  # 100 rows of 64 pixels (+ ids, labels) a part
    config = DataConfig(name="digits", cache_dir=str(tmp_path))
    decoded = _split(1000)
    train, test = cached(config, "stamp", {}, lambda: decoded)
    folder = train_cache(config)
    parts = sorted(folder.glob("part-*.parquet"))
    assert 5 < len(parts) < 20 and np.array_equal(cached_ids(folder), decoded[0].ids)
    again, _ = cached(config, "stamp", {}, lambda: pytest.fail("decoded again"))
    assert again.table.equals(decoded[0].table) and again.sample_shape == (8, 8) and again.scale == 1 / 255
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts}

    deleted = decoded[0].ids[[3, 4, 7]]  # all in the first part
    record = purge_rows(folder, deleted)

    assert record["rows"] == 3 and record["ids_sha256"] == ids_digest_hex(deleted) and record["path"] == str(folder)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("part-*.parquet"))}
    assert [n for n in after if after[n] != before[n]] == [parts[0].name], "only the part holding the ids is rewritten"
    assert purged_rows(folder) == 3 and not np.isin(deleted, cached_ids(folder)).any()
    assert np.array_equal(cached_ids(folder), np.setdiff1d(decoded[0].ids, deleted))
    assert purge_rows(folder, deleted) is None, "purging again finds nothing"
    spread = decoded[0].ids[[0, 500, 999]]
    assert purge_rows(folder, spread)["rows"] == 3 and purged_rows(folder) == 6
    assert np.array_equal(cached(config, "stamp", {}, lambda: decoded)[0].ids,
                          np.setdiff1d(decoded[0].ids, np.concatenate([deleted, spread])))
    assert not list(tmp_path.glob("*.tmp")) and not list(folder.glob("*.tmp")), "no temporary file is left"


def test_a_train_cache_kept_as_one_file_becomes_parts_without_its_purged_rows_coming_back(tmp_path):
    config = DataConfig(name="digits", cache_dir=str(tmp_path))
    decoded = _split(300)
    folder, test = cache_module.cache_paths(config, "stamp", {})
    deleted = decoded[0].ids[:4]
    kept = decoded[0].without(deleted).table
    single = folder.with_name(folder.name + ".parquet")
    pq.write_table(kept.replace_schema_metadata({**kept.schema.metadata, b"unlearn_purged_rows": b"4"}), single)
    decoded[1].write_parquet(test)

    train, _ = cached(config, "stamp", {}, lambda: pytest.fail("decoded again: the purged rows would come back"))

    assert not single.exists() and folder.is_dir() and purged_rows(folder) == 4
    assert np.array_equal(train.ids, np.setdiff1d(decoded[0].ids, deleted))
    assert train.table.schema.metadata.get(b"unlearn_purged_rows") is None
