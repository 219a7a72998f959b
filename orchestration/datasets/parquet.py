"""`data.name = "parquet"`: a Parquet file, a directory of them, or a URI, with id, label and feature columns.

The features are numeric columns, one list column of numbers, or one column of PNG/JPEG bytes;
the test split is `data.test_path` (same layout) or a seeded `data.test_fraction` of the ids.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.config import DataConfig
from orchestration.datasets.base import DatasetError, Split
from orchestration.datasets.files import Listing
from orchestration.datasets.tables import Columns, Decoded, concat, decode, load_files

SUFFIXES = (".parquet", ".parq", ".pq")


def load(config: DataConfig) -> Split:
    """The (train, test) split of the configured Parquet files."""
    columns = Columns.of(config)
    return load_files(config, SUFFIXES, lambda listing: read(listing, columns))


def read(listing: Listing, columns: Columns) -> Decoded:
    """Read and check every listed Parquet file."""
    parts = []
    for info in listing.files:
        try:
            parts.append((info.path, pq.read_table(info.path, filesystem=listing.fs)))
        except (pa.ArrowException, OSError) as err:
            raise DatasetError(f"{info.path} is not a readable Parquet file: {err}") from None
    table, rows, features = concat(parts, columns)
    return decode(table, rows, columns, features)
