"""`data.name = "imagefolder"`: `data.path/<class>/<file>` images; the relative path is the sample's id.

The id of `data.path/cat/0001.png` is "cat/0001.png" and its label the class "cat" (classes are
the sorted folder names of both splits). Files whose names do not end in an image suffix are
skipped; an image file that does not decode is refused naming it. The test split is
`data.test_path` (same layout) or a seeded `data.test_fraction` of the ids.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from orchestration.config import DataConfig
from orchestration.datasets.base import DatasetError, Split
from orchestration.datasets.files import Listing
from orchestration.datasets.tables import Columns, Decoded, Rows, decode, load_files

log = logging.getLogger(__name__)
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_COLUMNS = Columns(id="id", label="label", features=("image",))


def load(config: DataConfig) -> Split:
    """The (train, test) split of the configured image folders."""
    return load_files(config, SUFFIXES, read)


def read(listing: Listing) -> Decoded:
    """Read every listed image with its id and class, and decode them."""
    ids, classes = [], []
    for info in listing.files:
        relative = info.path[len(listing.root):].lstrip("/")
        if "/" not in relative:
            raise DatasetError(f"{info.path} is not inside a class folder; data.path must hold <class>/<file> images")
        ids.append(relative)
        classes.append(relative.split("/", 1)[0])
    table = pa.table({"id": pa.array(ids, pa.string()), "label": pa.array(classes, pa.string()),
                      "image": pa.array([listing.read_bytes(info) for info in listing.files], pa.large_binary())})
    rows = Rows([info.path for info in listing.files], np.arange(len(ids)), None)
    return decode(table, rows, _COLUMNS, _COLUMNS.features)
