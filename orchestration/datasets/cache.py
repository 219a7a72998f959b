"""The decoded-data cache: every data set decoded from files is kept here as Parquet, and only here.

Decoding JPEGs or parsing CSV once per command would dominate small runs, so the decoded split is
written as two Parquet files (SampleTables, metadata included) keyed by the source files' names,
sizes and modification times and the settings that shape decoding. Every cache file the project
makes is written by `cached`, so what holds a copy of the data is known in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestration.config import DataConfig
from orchestration.datasets.base import Split
from sisa import SampleTable

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
    paths = cache_paths(config, stamp, settings)
    if all(p.exists() for p in paths):
        return SampleTable.read_parquet(paths[0]), SampleTable.read_parquet(paths[1])
    split = decode()
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for table, path in zip(split, paths):
        table.write_parquet(path)
    log.info("decoded %s, cached in %s", config.name, paths[0].parent)
    return split
