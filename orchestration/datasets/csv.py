"""`data.name = "csv"`: CSV files (a file, a directory, or a URI; .csv.gz too) with id, label and numeric columns.

Types are inferred by pyarrow: an id column of digits only is read as integers (used as the
sample_ids), anything else as strings (keys). The test split is `data.test_path` or a seeded
`data.test_fraction` of the ids.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pcsv

from orchestration.config import DataConfig
from orchestration.datasets.base import DatasetError, Split
from orchestration.datasets.files import Listing
from orchestration.datasets.tables import Columns, Decoded, concat, decode, load_files

SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".tsv")


def load(config: DataConfig) -> Split:
    """The (train, test) split of the configured CSV files."""
    columns = Columns.of(config)
    return load_files(config, SUFFIXES, lambda listing: read(listing, columns))


def read(listing: Listing, columns: Columns) -> Decoded:
    """Parse and check every listed CSV file."""
    parts = []
    for info in listing.files:
        delimiter = "\t" if info.path.lower().endswith(".tsv") else ","
        try:
            with listing.fs.open_input_stream(info.path) as stream:  # decompresses .gz/.bz2 by extension
                parts.append((info.path, pcsv.read_csv(stream, parse_options=pcsv.ParseOptions(delimiter=delimiter))))
        except (pa.ArrowException, OSError) as err:
            raise DatasetError(f"{info.path} is not a readable CSV file: {str(err).splitlines()[0]}") from None
    table, rows, features = concat(parts, columns)
    return decode(table, rows, columns, features)
