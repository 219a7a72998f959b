"""Arrow tables read from a user's files -> checked arrays -> (train, test) SampleTables.

Every source (Parquet, CSV, image folders) ends here. A file is refused, with the file, the row or
column, and what was expected, when a column is missing, an id or label is null, ids repeat, a
feature is not numeric, rows differ in shape or an image does not decode. Nothing is written
before every check has passed.

Ids: an integer column is the sample_id itself (>= 0); a string column is kept as the table's
keys, each key's sample_id being a fixed hash of it (see sisa.data.key_sample_ids). Labels:
integers >= 0, or strings (the classes are the sorted labels of both splits). Features: numeric
columns, one list column of numbers (same length on every row), or one column of encoded images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orchestration.config import DataConfig
from orchestration.datasets.base import DatasetError, Split
from orchestration.datasets.cache import cached
from orchestration.datasets.files import Listing, find_files
from orchestration.datasets.images import decode_images, is_image_column
from orchestration.datasets.split import holdout
from sisa import SampleTable
from sisa.data import key_sample_ids


@dataclass(frozen=True)
class Rows:
    """Where each row came from, to name it in errors."""

    files: list[str]
    file_index: np.ndarray
    row: np.ndarray | None
    """Row within its file; None when each row is a file of its own (image folders)."""

    def where(self, i: int) -> str:
        """'file, row n' (0-based, header excluded), or the file alone."""
        name = self.files[int(self.file_index[i])]
        return name if self.row is None else f"{name}, row {int(self.row[i])}"

    def subset(self, positions: np.ndarray) -> Rows:
        """Where the rows at `positions` came from."""
        return Rows(self.files, self.file_index[positions], None if self.row is None else self.row[positions])

    def files_named(self) -> str:
        """The files, for errors about a whole column."""
        return self.files[0] if len(self.files) == 1 else f"{self.files[0]} (and {len(self.files) - 1} more file(s))"


@dataclass(frozen=True)
class Columns:
    """Which columns hold what."""

    id: str
    label: str
    features: tuple[str, ...] = ()
    """Empty: every column but the id and the label."""
    shape: tuple[int, ...] = ()
    """Shape of one sample's features (e.g. 1,28,28); empty: as stored."""

    @classmethod
    def of(cls, config: DataConfig) -> Columns:
        """The columns the data settings name."""
        return cls(config.id_column, config.label_column, config.feature_columns, config.shape)


@dataclass(frozen=True)
class Decoded:
    """One split read from files, checked, before its labels are encoded."""

    x: np.ndarray
    labels: pa.Array
    """Integers or strings, one per row."""
    sample_ids: np.ndarray | None
    keys: pa.Array | None
    scale: float
    rows: Rows

    def take(self, mask: np.ndarray) -> Decoded:
        """The rows where `mask` holds."""
        positions = np.flatnonzero(mask)
        index = pa.array(positions)
        return Decoded(self.x[positions], self.labels.take(index),
                       None if self.sample_ids is None else self.sample_ids[positions],
                       None if self.keys is None else self.keys.take(index), self.scale, self.rows.subset(positions))


def concat(parts: list[tuple[str, pa.Table]], columns: Columns) -> tuple[pa.Table, Rows, tuple[str, ...]]:
    """One table of the needed columns of every file, with where each row came from.

    Raises:
        DatasetError: a file lacks a column, or files disagree on a column's kind of values.
    """
    first_name, first = parts[0]
    features = columns.features or tuple(c for c in first.column_names if c not in (columns.id, columns.label))
    if not features:
        raise DatasetError(f"{first_name}: no feature columns besides the id column {columns.id!r} and the label "
                           f"column {columns.label!r}; columns: {first.column_names}")
    needed = (columns.id, columns.label, *features)
    roles = {columns.id: "the id column (data.id_column)", columns.label: "the label column (data.label_column)"}
    selected = []
    for name, table in parts:
        for column in needed:
            if column not in table.column_names:
                raise DatasetError(f"{name}: no column {column!r} ({roles.get(column, 'a feature column')}); "
                                   f"columns: {table.column_names}")
            if _kind(table.schema.field(column).type) != _kind(first.schema.field(column).type):
                raise DatasetError(f"{name}: column {column!r} holds {table.schema.field(column).type}, but "
                                   f"{first_name} holds {first.schema.field(column).type}; every file needs the same "
                                   "kind of values in a column")
        selected.append(table.select(list(needed)))
    try:
        table = pa.concat_tables(selected, promote_options="permissive").combine_chunks()
    except pa.ArrowException as err:  # e.g. list columns of different value types
        raise DatasetError(f"{first_name} and the other files disagree on column types: {err}") from None
    if len(table) == 0:
        where = f"{first_name} and the other files hold" if len(parts) > 1 else f"{first_name} holds"
        raise DatasetError(f"{where} no rows")
    sizes = [len(t) for t in selected]
    rows = Rows([n for n, _ in parts], np.repeat(np.arange(len(parts)), sizes),
                np.concatenate([np.arange(s) for s in sizes]) if sizes else np.zeros(0, np.int64))
    return table, rows, features


def _kind(t: pa.DataType) -> str:
    for kind, test in (("integer", pa.types.is_integer), ("float", pa.types.is_floating),
                       ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
                       ("list", lambda t: pa.types.is_list(t) or pa.types.is_large_list(t)
                        or pa.types.is_fixed_size_list(t))):
        if test(t):
            return kind
    return str(t)


def decode(table: pa.Table, rows: Rows, columns: Columns, features: tuple[str, ...]) -> Decoded:
    """Check and convert a table of the id, label and feature columns."""
    sample_ids, keys = _ids(table.column(columns.id).combine_chunks(), columns.id, rows)
    labels = _labels(table.column(columns.label).combine_chunks(), columns.label, rows)
    x, scale = _features(table, features, rows, columns.shape)
    return Decoded(x, labels, sample_ids, keys, scale, rows)


def _first(mask: pa.Array | np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def _ids(column: pa.Array, name: str, rows: Rows) -> tuple[np.ndarray | None, pa.Array | None]:
    if column.null_count:
        raise DatasetError(f"{rows.where(_first(column.is_null()))}: the id column {name!r} is empty; every row needs an id")
    if pa.types.is_integer(column.type):
        ids = column.to_numpy().astype(np.int64)
        if (ids < 0).any():
            i = _first(ids < 0)
            raise DatasetError(f"{rows.where(i)}: id {ids[i]} is negative; integer ids must be >= 0")
        order = np.argsort(ids, kind="stable")
        repeated = np.flatnonzero(np.diff(ids[order]) == 0)
        if repeated.size:
            a, b = order[repeated[0]], order[repeated[0] + 1]
            raise DatasetError(f"id {ids[a]} appears twice ({rows.where(a)} and {rows.where(b)}); ids must be unique")
        return ids, None
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        keys = column.cast(pa.string())
        order = pc.array_sort_indices(keys).to_numpy()
        ordered = keys.take(pa.array(order))
        same = pc.equal(ordered[:-1], ordered[1:]).to_numpy(zero_copy_only=False) if len(keys) > 1 else np.zeros(0, bool)
        if same.any():
            j = _first(same)
            a, b = order[j], order[j + 1]
            raise DatasetError(f"id {keys[int(a)].as_py()!r} appears twice ({rows.where(a)} and {rows.where(b)}); "
                               "ids must be unique")
        return None, keys
    raise DatasetError(f"{rows.files_named()}: the id column {name!r} holds {column.type}; expected integers or strings")


def _labels(column: pa.Array, name: str, rows: Rows) -> pa.Array:
    if column.null_count:
        raise DatasetError(f"{rows.where(_first(column.is_null()))}: the label column {name!r} is empty; "
                           "every row needs a label")
    if pa.types.is_integer(column.type):
        labels = column.to_numpy()
        if (labels < 0).any():
            i = _first(labels < 0)
            raise DatasetError(f"{rows.where(i)}: label {labels[i]} is negative; integer labels are classes 0, 1, ...")
        return column.cast(pa.int64())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    raise DatasetError(f"{rows.files_named()}: the label column {name!r} holds {column.type}; expected integers "
                       "(classes 0, 1, ...) or strings (class names)")


def _features(table: pa.Table, features: tuple[str, ...], rows: Rows, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    n = len(table)
    if len(features) == 1 and is_image_column(table.column(features[0]).type):
        if shape:
            raise DatasetError(f"data.shape reshapes feature vectors; the images in column {features[0]!r} keep their "
                               "own shape: leave data.shape empty")
        return decode_images(table.column(features[0]).combine_chunks(), features[0], rows), 1 / 255
    if len(features) == 1 and _kind(table.column(features[0]).type) == "list":
        x = _list_values(table.column(features[0]).combine_chunks(), features[0], rows)
    else:
        x = np.empty((n, len(features)), np.float32)
        for j, name in enumerate(features):
            x[:, j] = _numbers(table.column(name).combine_chunks(), name, rows)
    if shape:
        if int(np.prod(shape)) != x.shape[1]:
            raise DatasetError(f"data.shape {list(shape)} holds {int(np.prod(shape))} values, but each sample has "
                               f"{x.shape[1]} features ({', '.join(features[:5])}{', ...' if len(features) > 5 else ''})")
        x = x.reshape(n, *shape)
    return x, 1.0


def _numbers(column: pa.Array, name: str, rows: Rows) -> np.ndarray:
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type)):
        expected = "numbers (or one list column of numbers, or one column of PNG/JPEG bytes)"
        raise DatasetError(f"{rows.files_named()}: feature column {name!r} holds {column.type}; expected {expected}")
    if column.null_count:
        raise DatasetError(f"{rows.where(_first(column.is_null()))}: feature column {name!r} is empty; every feature "
                           "needs a value")
    values = column.to_numpy(zero_copy_only=False).astype(np.float32)
    if not np.isfinite(values).all():
        i = _first(~np.isfinite(values))
        raise DatasetError(f"{rows.where(i)}: feature column {name!r} holds {values[i]}; expected a finite number")
    return values


def _list_values(column: pa.Array, name: str, rows: Rows) -> np.ndarray:
    if column.null_count:
        raise DatasetError(f"{rows.where(_first(column.is_null()))}: feature column {name!r} is empty")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        i = _first(lengths != lengths[0])
        raise DatasetError(f"{rows.where(i)}: feature column {name!r} has {lengths[i]} values, but {rows.where(0)} has "
                           f"{lengths[0]}; every sample needs the same shape")
    flat = pc.list_flatten(column)
    if pa.types.is_uint8(flat.type):
        return flat.to_numpy(zero_copy_only=False).reshape(len(column), -1)  # kept as bytes: a quarter of float32
    parent = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    values = _numbers(flat, name, rows.subset(parent))
    return values.reshape(len(column), -1)


def to_split(train: Decoded, test: Decoded | None, config: DataConfig) -> Split:
    """The (train, test) SampleTables; without a test file, a seeded `test_fraction` of the ids is held out."""
    if test is None:
        ids = train.sample_ids if train.keys is None else key_sample_ids(train.keys)
        held = holdout(ids, config.test_fraction, config.subset_seed)
        if held.all() or not held.any():
            raise DatasetError(f"data.test_fraction {config.test_fraction} of {len(held)} samples leaves "
                               f"{'no training' if held.all() else 'no test'} samples; change it or give data.test_path")
        train, test = train.take(~held), train.take(held)
    if (train.keys is None) != (test.keys is None):
        raise DatasetError("the train and test files must both have integer ids or both string ids")
    (train_labels, test_labels), class_names = _encode_labels(train.labels, test.labels)
    return (SampleTable.from_numpy(train.x, train_labels, train.sample_ids, train.scale, train.keys, class_names),
            SampleTable.from_numpy(test.x, test_labels, test.sample_ids, test.scale, test.keys, class_names))


def _encode_labels(train: pa.Array, test: pa.Array) -> tuple[tuple[np.ndarray, np.ndarray], list[str] | None]:
    if pa.types.is_string(train.type) != pa.types.is_string(test.type):
        raise DatasetError(f"the train labels are {train.type} but the test labels are {test.type}; use one kind")
    if not pa.types.is_string(train.type):
        return (train.to_numpy(), test.to_numpy()), None
    classes = pc.unique(pa.concat_arrays([train, test])).sort()
    encoded = [pc.index_in(part, value_set=classes).to_numpy(zero_copy_only=False).astype(np.int64)
               for part in (train, test)]
    return (encoded[0], encoded[1]), classes.to_pylist()


def load_files(config: DataConfig, suffixes: tuple[str, ...], read: Callable[[Listing], Decoded]) -> Split:
    """The flow of every file source: list data.path (and data.test_path), then decode, split and cache.

    Listing is cheap and keys the cache; `read` (parsing, image decoding) runs on a cache miss only,
    and checks everything before the cache is written.
    """
    train = find_files(config.path, "data.path", suffixes)
    test = find_files(config.test_path, "data.test_path", suffixes) if config.test_path else None
    settings = {k: getattr(config, k) for k in ("id_column", "label_column", "feature_columns", "shape")}
    if test is None:
        settings.update(test_fraction=config.test_fraction, subset_seed=config.subset_seed)
    stamp = f"{train.stamp()}||{test.stamp() if test else ''}"
    return cached(config, stamp, settings, lambda: to_split(read(train), read(test) if test else None, config))
