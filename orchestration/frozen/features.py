"""The feature store of a head-mode run: the frozen backbone's features of every retained training sample.

    run_dir/features/<backbone sha256, 16 hex>.parquet    sample_id, label, x (float32 features)[, key]

Heads train on features, so the backbone runs once per sample (sisa.encoding makes a sample's
features independent of the samples extracted with it) instead of once per epoch, slice and shard.
Only retained samples are extracted, and features are derived from training samples, so they are
purged like checkpoints: serving a request rewrites every feature file without the deleted ids and
records what it removed in the ledger, and `unlearn audit` looks for deleted ids in them.

The store lives in the run directory, not beside the decoded-data cache: each run's deletions must
remove rows from it, and a store shared by runs would let one run's extraction bring back rows
another run deleted. The schema metadata names the backbone (sha256), so features of another
backbone are never read.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.frozen.backbone import Backbone
from sisa import SampleTable, SisaRun, encode
from sisa.ledger import Request

log = logging.getLogger(__name__)

FOLDER = "features"
_META_BACKBONE = b"backbone_sha256"


def feature_files(run_dir: Path) -> list[Path]:
    """Every feature file of a run directory."""
    folder = Path(run_dir) / FOLDER
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def _write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FeatureStore:
    """The features of one backbone for one run's training data, extracted on demand and kept as Parquet."""

    def __init__(self, run_dir: str | Path, backbone: Backbone, table: SampleTable) -> None:
        """Args: the run directory, its frozen backbone, and its training data (deleted samples may be in it)."""
        self.backbone, self.table = backbone, table
        self.path = Path(run_dir) / FOLDER / f"{backbone.sha256[:16]}.parquet"

    def _read(self) -> SampleTable | None:
        if not self.path.exists():
            return None
        stored = pq.read_table(self.path)
        if (stored.schema.metadata or {}).get(_META_BACKBONE, b"").decode() != self.backbone.sha256:
            log.warning("feature file %s belongs to another backbone; extracting again", self.path)
            return None
        return SampleTable(stored)

    def inputs(self, sample_ids: np.ndarray) -> SampleTable:
        """The features of `sample_ids` (sorted retained ids), extracting and storing those not stored yet.

        This is the SisaRun's `inputs`: it is asked once the run is open, under its lock, for the
        retained ids only, so a deleted sample is never extracted again.
        """
        stored = self._read()
        missing = sample_ids if stored is None else np.setdiff1d(sample_ids, stored.ids, assume_unique=True)
        if missing.size:
            log.info("extracting backbone features of %d sample(s) into %s", missing.size, self.path)
            fresh = encode(self.backbone.module, self.table, missing).table
            meta = {**(fresh.schema.metadata or {}), _META_BACKBONE: self.backbone.sha256.encode()}
            parts = [fresh.replace_schema_metadata(meta)]
            if stored is not None:
                parts.insert(0, stored.table.replace_schema_metadata(meta))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write(SampleTable(pa.concat_tables(parts)).table, self.path)
            stored = self._read()
        assert stored is not None
        return stored.take(sample_ids)

    def stats(self) -> dict[str, Any]:
        """Path, rows and bytes of the store (rows 0 before the first extraction)."""
        if not self.path.exists():
            return {"path": str(self.path), "rows": 0, "bytes": 0}
        return {"path": str(self.path), "rows": pq.read_metadata(self.path).num_rows, "bytes": self.path.stat().st_size}


def destroy_feature_rows(run: SisaRun, requests: list[Request]) -> list[dict[str, Any]]:
    """Purger: rewrite every feature file of the run without the requests' ids; one record per file.

    Idempotent: a file served again (after a crash) has no such row left and is recorded with 0 removed.
    """
    ids = np.unique(np.concatenate([r.sample_ids for r in requests]))
    records = []
    for path in feature_files(run.run_dir):
        table = pq.read_table(path)
        found = np.isin(table.column("sample_id").to_numpy(), ids)
        if found.any():
            _write(table.filter(pa.array(~found)), path)
        records.append({"kind": "feature-rows", "path": str(path.relative_to(run.run_dir)),
                        "rows_removed": int(found.sum()), "rows_left": int(len(table) - found.sum()),
                        "sha256": _sha256(path)})
    return records


def feature_findings(run_dir: Path, deleted: np.ndarray) -> list[str]:
    """Audit: a line for every feature file that holds a row of a deleted sample."""
    findings = []
    for path in feature_files(run_dir):
        stored = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_numpy()
        found = int(np.isin(stored, deleted).sum())
        if found:
            findings.append(f"features: {path.relative_to(run_dir)} holds {found} row(s) of deleted samples")
    return findings
