"""The decoded-data cache: every data set decoded from files is kept here as Parquet, and only here.

Decoding JPEGs or parsing CSV once per command would dominate small runs, so the decoded split is
written as two Parquet files (SampleTables, metadata included) keyed by the source files' names,
sizes and modification times and the settings that shape decoding. Every cache file the project
makes is written by `cached`, so what holds a copy of the data is known in one place.

The cache is the project's copy, so a deletion purges the deleted rows from it (`purge_rows`; the
user's source files stay the user's business). Another run on the same data set that did not
delete those rows, a new run included, finds them missing: it decodes from the source files instead, without writing
the cache back (`bypassed`), so the purged rows never return to it.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from orchestration.config import DataConfig
from orchestration.datasets.base import Split
from sisa import SampleTable
from sisa.ledger import ids_digest_hex

_BYPASS = contextvars.ContextVar("bypass_cache", default=False)
_PURGED_KEY = b"unlearn_purged_rows"
_USED: dict[DataConfig, Path] = {}
"""The train cache file each data config was last read from or written to in this process."""

log = logging.getLogger(__name__)


def cache_dir(config: DataConfig) -> Path:
    """Where decoded data sets are cached: data.cache_dir, $UNLEARN_CACHE, or ~/.cache/unlearn."""
    base = config.cache_dir or os.environ.get("UNLEARN_CACHE") or Path.home() / ".cache" / "unlearn"
    return Path(base)


def cache_paths(config: DataConfig, stamp: str, settings: dict[str, Any]) -> list[Path]:
    """The (train, test) cache files of a data set decoded from sources with this `stamp` and `settings`."""
    text = json.dumps([config.name, stamp, settings], sort_keys=True, default=str)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    return [cache_dir(config) / f"{config.name}-{key}-{part}.parquet" for part in ("train", "test")]


def cached(config: DataConfig, stamp: str, settings: dict[str, Any], decode: Callable[[], Split]) -> Split:
    """The decoded split from the cache, or from `decode()`, cached afterwards.

    Args:
        config: the data settings (name and cache location).
        stamp: identifies the source files' contents (paths, sizes, modification times).
        settings: the data settings that change what decoding produces.
        decode: reads and checks the sources; raises before anything is written.
    """
    if _BYPASS.get():
        return decode()
    paths = cache_paths(config, stamp, settings)
    _USED[config] = paths[0]
    if all(p.exists() for p in paths):
        return SampleTable.read_parquet(paths[0]), SampleTable.read_parquet(paths[1])
    split = decode()
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for table, path in zip(split, paths):
        table.write_parquet(path)
    log.info("decoded %s, cached in %s", config.name, paths[0].parent)
    return split


@contextmanager
def bypassed() -> Iterator[None]:
    """Decode from the source files in the block, neither reading nor writing the cache."""
    token = _BYPASS.set(True)
    try:
        yield
    finally:
        _BYPASS.reset(token)


def train_cache_file(config: DataConfig) -> Path | None:
    """The train cache file the data of `config` came from in this process, if it came from one."""
    path = _USED.get(config)
    return path if path is not None and path.exists() else None


def purged_rows(path: Path) -> int:
    """How many rows deletions have removed from a cache file."""
    meta = pq.read_schema(path).metadata or {}
    return int(meta.get(_PURGED_KEY, b"0"))


def purge_rows(path: Path, sample_ids: np.ndarray) -> dict[str, Any] | None:
    """Rewrite a train cache file without `sample_ids`; a record of what was removed, or None."""
    table = SampleTable.read_parquet(path)
    present = np.intersect1d(table.ids, sample_ids)
    if present.size == 0:
        return None
    kept = table.without(present).table
    meta = dict(kept.schema.metadata or {})
    meta[_PURGED_KEY] = str(purged_rows(path) + len(present)).encode()
    SampleTable(kept.replace_schema_metadata(meta)).write_parquet(path)
    return {"kind": "cached-rows", "path": str(path), "rows": int(len(present)), "ids_sha256": ids_digest_hex(present)}


def cached_ids(path: Path) -> np.ndarray:
    """The sample_ids a cache file holds."""
    return pq.read_table(path, columns=["sample_id"]).column("sample_id").to_numpy()
