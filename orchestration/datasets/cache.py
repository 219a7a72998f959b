"""The decoded-data cache: every data set decoded from files is kept here as Parquet, and only here.

Decoding JPEGs or parsing CSV once per command would dominate small runs, so the decoded split is
kept as Parquet (SampleTables, metadata included) keyed by the source files' names, sizes and
modification times and the settings that shape decoding. Every cache file the project makes is
written by `cached`, so what holds a copy of the data is known in one place.

The cache is the project's copy, so a deletion purges the deleted rows from it (`purge_rows`; the
user's source files stay the user's business). Another run on the same data set that did not
delete those rows, a new run included, finds them missing: it decodes from the source files instead,
without writing the cache back (`bypassed`), so the purged rows never return to it.

The train split is a folder of parts, each a few MiB of consecutive sample_ids, because a purge must
rewrite what holds the deleted rows: as one file that is the whole data set (CIFAR-10's 147 MB took
3.5 s per deletion, most of a frozen-backbone deletion); as parts it is one part per deleted row at
most. The test split is never purged and stays one file.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.config import DataConfig
from orchestration.datasets.base import Split
from sisa import SampleTable
from sisa.ledger import ids_digest_hex

_BYPASS = contextvars.ContextVar("bypass_cache", default=False)
_PURGED_KEY = b"unlearn_purged_rows"
PART_BYTES = 4 << 20
"""Target size of a train cache part. A purge rewrites each part holding a deleted row, so smaller
parts make deletions cheaper; the read of the whole split opens one file per part, so 4 MiB keeps
that to a few dozen files for the image data sets (CIFAR-10: 37, MNIST: 12) at tens of ms a purge."""
_USED: dict[DataConfig, Path] = {}
"""The train cache each data config was last read from or written to in this process."""

log = logging.getLogger(__name__)


def cache_dir(config: DataConfig) -> Path:
    """Where decoded data sets are cached: data.cache_dir, $UNLEARN_CACHE, or ~/.cache/unlearn."""
    base = config.cache_dir or os.environ.get("UNLEARN_CACHE") or Path.home() / ".cache" / "unlearn"
    return Path(base)


def cache_paths(config: DataConfig, stamp: str, settings: dict[str, Any]) -> list[Path]:
    """The (train folder, test file) cache of a data set decoded from sources with this `stamp` and `settings`."""
    text = json.dumps([config.name, stamp, settings], sort_keys=True, default=str)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    return [cache_dir(config) / f"{config.name}-{key}-train", cache_dir(config) / f"{config.name}-{key}-test.parquet"]


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
    train, test = cache_paths(config, stamp, settings)
    _USED[config] = train
    _migrate_single_file(train)
    if train.is_dir() and test.exists():
        return _read_parts(train), SampleTable.read_parquet(test)
    split = decode()
    test.parent.mkdir(parents=True, exist_ok=True)
    if not train.is_dir():
        _write_parts(split[0], train)
    split[1].write_parquet(test)
    log.info("decoded %s, cached in %s", config.name, train.parent)
    return split


@contextmanager
def bypassed() -> Iterator[None]:
    """Decode from the source files in the block, neither reading nor writing the cache."""
    token = _BYPASS.set(True)
    try:
        yield
    finally:
        _BYPASS.reset(token)


def train_cache(config: DataConfig) -> Path | None:
    """The train cache folder the data of `config` came from in this process, if it came from one."""
    path = _USED.get(config)
    return path if path is not None and path.is_dir() else None


def purged_rows(folder: Path) -> int:
    """How many rows deletions have removed from a train cache."""
    return sum(_purged(part) for part in _parts(folder))


def purge_rows(folder: Path, sample_ids: np.ndarray) -> dict[str, Any] | None:
    """Rewrite the parts of a train cache that hold `sample_ids` without them; a record of what was
    removed, or None when it held none of them.

    Each part is replaced atomically, so a crash leaves every part either whole or purged; running
    the purge again (a resumed request) finishes the rest.
    """
    sample_ids = np.unique(np.asarray(sample_ids, np.int64))
    removed = []
    for part in _parts(folder):
        ids = _ids(part)
        present = np.intersect1d(ids, sample_ids)
        if not present.size:
            continue
        table = pq.read_table(part)
        kept = table.filter(pa.array(~np.isin(ids, present)))
        _write_part(kept, part, _purged(part) + len(present))
        removed.append(present)
    if not removed:
        return None
    present = np.concatenate(removed)
    return {"kind": "cached-rows", "path": str(folder), "rows": int(len(present)), "ids_sha256": ids_digest_hex(present)}


def cached_ids(folder: Path) -> np.ndarray:
    """The sample_ids a train cache holds."""
    parts = [_ids(part) for part in _parts(folder)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _parts(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("part-*.parquet"))


def _ids(part: Path) -> np.ndarray:
    return pq.read_table(part, columns=["sample_id"]).column("sample_id").to_numpy()


def _purged(part: Path) -> int:
    return int((pq.read_schema(part).metadata or {}).get(_PURGED_KEY, b"0"))


def _write_part(table: pa.Table, path: Path, purged: int) -> None:
    meta = dict(table.schema.metadata or {})
    meta[_PURGED_KEY] = str(purged).encode()
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table.replace_schema_metadata(meta), tmp)
    tmp.replace(path)


def _write_parts(table: SampleTable, folder: Path, purged: int = 0) -> None:
    """Write `table` as the parts of a new train cache `folder`: written aside, then renamed into
    place, so a cache folder is always complete. `purged` rows are counted on the first part."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    rows = max(1, PART_BYTES * max(1, len(table)) // max(1, table.table.nbytes))
    # An empty table still gets one part: it carries the schema and metadata.
    for i, start in enumerate(range(0, max(1, len(table)), rows)):
        _write_part(table.table.slice(start, rows), tmp / f"part-{i:05d}.parquet", purged if i == 0 else 0)
    try:
        tmp.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(tmp)  # another process cached the same split first


def _read_parts(folder: Path) -> SampleTable:
    tables = [pq.read_table(part) for part in _parts(folder)]
    meta = {k: v for k, v in (tables[0].schema.metadata or {}).items() if k != _PURGED_KEY}
    return SampleTable(pa.concat_tables([t.replace_schema_metadata(meta) for t in tables]))


def _migrate_single_file(folder: Path) -> None:
    """Turn a train cache kept as one file (how earlier versions kept it) into parts, keeping its
    purges: decoding afresh would bring back the rows deletions removed from it."""
    single = folder.with_name(folder.name + ".parquet")
    if folder.is_dir() or not single.exists():
        return
    purged = int((pq.read_schema(single).metadata or {}).get(_PURGED_KEY, b"0"))
    table = pq.read_table(single)
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != _PURGED_KEY}
    _write_parts(SampleTable(table.replace_schema_metadata(meta)), folder, purged)
    single.unlink()
