"""SampleTable: a dataset as an Arrow table keyed by a stable int64 `sample_id`.

Columns: `sample_id` (int64, unique), `label` (int64) and `x` (fixed-size list of uint8 or
float32: one flattened sample), and for data sets whose own ids are strings (user ids, record
keys) a `key` column (string) holding them. The schema metadata records the sample shape, the
scale that turns stored values into model inputs (1/255 for images kept as uint8) and, for
labels that were strings, the class names (label i is class_names[i]).

A key's sample_id is a fixed public hash of the key alone (`key_sample_ids`), never its position:
a data set without some keys gives every other key the same sample_id, which is what lets a model
retrained from scratch on D \\ X be compared, id for id, with one that forgot X.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from sisa.errors import InvalidRequestError

_META_SHAPE = b"sample_shape"
_META_SCALE = b"scale"
_META_CLASSES = b"class_names"
Keys = Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray
"""String ids: a list, a NumPy array of str, or an Arrow (large_)string array."""


def _string_array(keys: Keys) -> pa.Array:
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if not isinstance(keys, pa.Array):
        keys = pa.array(np.asarray(keys, dtype=object) if isinstance(keys, np.ndarray) else list(keys), pa.string())
    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        raise InvalidRequestError(f"keys must be strings, got {keys.type}")
    return keys.cast(pa.string())


def key_sample_ids(keys: Keys) -> np.ndarray:
    """The sample_id of each key: the first 8 bytes of blake2b(UTF-8 key), little-endian, >> 1.

    A fixed, public function of the key alone (63 bits, so non-negative as int64): the same key
    has the same sample_id in every run, on every machine, whatever else the data set holds.

    Args:
        keys: non-null strings.

    Returns:
        int64 array, one sample_id per key.
    """
    keys = _string_array(keys)
    if keys.null_count:
        raise ValueError("keys must not be null")
    # Walk the Arrow buffers (offsets, UTF-8 bytes) directly: no Python list of the keys is built.
    offsets = np.frombuffer(keys.buffers()[1], np.int32, count=len(keys) + 1, offset=keys.offset * 4)
    data = memoryview(keys.buffers()[2] or b"")
    digests = b"".join(hashlib.blake2b(data[a:b], digest_size=8).digest() for a, b in zip(offsets[:-1], offsets[1:]))
    return (np.frombuffer(digests, "<u8") >> np.uint64(1)).astype(np.int64)


class SampleTable:
    """An immutable set of labelled samples, sorted by `sample_id`."""

    def __init__(self, table: pa.Table) -> None:
        """Wrap an Arrow table; see the module docstring for the required columns and metadata."""
        missing = {"sample_id", "label", "x"} - set(table.column_names)
        if missing:
            raise ValueError(f"sample table lacks columns {sorted(missing)}; needs sample_id, label, x")
        meta = table.schema.metadata or {}
        if _META_SHAPE not in meta:
            raise ValueError("sample table metadata lacks 'sample_shape'")
        self.sample_shape: tuple[int, ...] = tuple(json.loads(meta[_META_SHAPE]))
        self.scale = float(json.loads(meta.get(_META_SCALE, b"1.0")))
        names = json.loads(meta[_META_CLASSES]) if _META_CLASSES in meta else None
        self.class_names: tuple[str, ...] | None = tuple(names) if names is not None else None
        """Class names when labels were strings (label i is class_names[i]); None for integer labels."""
        table = table.combine_chunks()
        ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
        if ids.size and np.any(np.diff(ids) < 0):
            table = table.take(pa.array(np.argsort(ids, kind="stable")))
            ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
        self.table = table
        self.ids = ids
        self.keys: pa.Array | None = None
        """The data set's own string ids, row for row with `ids`; None when its ids are integers."""
        if "key" in table.column_names:
            self.keys = table.column("key").combine_chunks() if len(table) else pa.array([], pa.string())
            if not pa.types.is_string(self.keys.type) or self.keys.null_count:
                raise ValueError(f"sample table column 'key' must be non-null strings, got {self.keys.type}")
        if self.ids.size and np.any(np.diff(self.ids) == 0):
            raise ValueError(self._duplicate_message())
        self.labels = table.column("label").to_numpy().astype(np.int64, copy=False)
        values = table.column("x").chunk(0).values.to_numpy(zero_copy_only=False) if len(table) else np.zeros(0)
        self._x = values.reshape(len(table), *self.sample_shape)

    def _duplicate_message(self) -> str:
        repeated = np.flatnonzero(np.diff(self.ids) == 0)[0]
        if self.keys is None:
            return f"sample table has duplicate sample_id values (e.g. {self.ids[repeated]})"
        a, b = self.keys[int(repeated)].as_py(), self.keys[int(repeated) + 1].as_py()
        if a == b:
            return f"sample table has the key {a!r} twice"
        return (f"keys {a!r} and {b!r} hash to the same sample_id {self.ids[repeated]} (a 63-bit hash "
                "collision); rename one of them")

    @classmethod
    def from_numpy(
        cls,
        x: np.ndarray,
        labels: np.ndarray,
        sample_ids: np.ndarray | None = None,
        scale: float = 1.0,
        keys: Keys | None = None,
        class_names: Sequence[str] | None = None,
    ) -> SampleTable:
        """Build a table from an array of samples (N, *shape), uint8 or float32, and labels (N,).

        Args:
            x: the samples, (N, *shape); other dtypes are stored as float32.
            labels: integer class of each sample, (N,).
            sample_ids: integer ids (default 0..N-1); not with `keys`.
            scale: factor turning stored values into model inputs (1/255 for uint8 pixels).
            keys: the data set's own string ids; each sample_id is then `key_sample_ids(keys)`.
            class_names: name of each class, when the labels stand for strings.
        """
        if len(x) != len(labels):
            raise ValueError(f"{len(x)} samples but {len(labels)} labels")
        if keys is not None and sample_ids is not None:
            raise ValueError("give sample_ids or keys, not both: a key's sample_id is derived from it")
        if x.dtype not in (np.uint8, np.float32):
            x = x.astype(np.float32)
        shape = x.shape[1:]
        flat = pa.array(np.ascontiguousarray(x).reshape(-1))
        columns: dict[str, pa.Array] = {}
        if keys is not None:
            columns["key"] = _string_array(keys)
            if len(columns["key"]) != len(x):
                raise ValueError(f"{len(x)} samples but {len(columns['key'])} keys")
            sample_ids = key_sample_ids(columns["key"])
        ids = np.arange(len(x), dtype=np.int64) if sample_ids is None else np.asarray(sample_ids, np.int64)
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.int64()),
                "label": pa.array(np.asarray(labels, np.int64), pa.int64()),
                "x": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape))),
                **columns,
            }
        )
        meta = {_META_SHAPE: json.dumps(list(shape)).encode(), _META_SCALE: json.dumps(scale).encode()}
        if class_names is not None:
            meta[_META_CLASSES] = json.dumps(list(class_names)).encode()
        return cls(table.replace_schema_metadata(meta))

    @classmethod
    def read_parquet(cls, path: str | Path) -> SampleTable:
        """Read a table written by `write_parquet`."""
        return cls(pq.read_table(path))

    def write_parquet(self, path: str | Path) -> None:
        """Write the table (with its metadata) as Parquet, via a temporary file renamed into place."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(self.table, tmp)
        tmp.replace(path)

    def __reduce__(self) -> tuple:
        # Pickle the Arrow table alone: its buffers travel zero-copy (e.g. through Ray's object
        # store) and the NumPy views are rebuilt on arrival.
        return SampleTable, (self.table,)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        """Number of classes: len(class_names) when labels were strings, else 1 + the largest label."""
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self) else 0

    def lookup(self, keys: Keys) -> np.ndarray:
        """The sample_ids of the data set's own string ids, in the order given (vectorised).

        Raises:
            InvalidRequestError: the data set's ids are integers, or some keys are not in it
                (the message names up to ten of them).
        """
        if self.keys is None:
            raise InvalidRequestError("this data set's ids are integers (sample_id); give them as integers")
        keys = _string_array(keys)
        if keys.null_count:
            raise InvalidRequestError("the request holds a null id")
        pos = pc.index_in(keys, value_set=self.keys)
        if pos.null_count:
            unknown = keys.filter(pc.is_null(pos))
            shown = unknown.slice(0, 10).to_pylist()
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise InvalidRequestError(f"id(s) {shown}{more} are not in the data set ({len(self)} samples)")
        return self.ids[pos.to_numpy(zero_copy_only=False)]

    def keys_of(self, sample_ids: np.ndarray) -> pa.Array:
        """The data set's own ids of `sample_ids`: string keys, or the sample_ids themselves for integer ids."""
        sample_ids = np.asarray(sample_ids, np.int64)
        if self.keys is None:
            return pa.array(sample_ids, pa.int64())
        return self.keys.take(pa.array(self.positions(sample_ids)))

    def positions(self, sample_ids: np.ndarray) -> np.ndarray:
        """Row positions of `sample_ids`; raises InvalidRequestError naming ids not in the table."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, sample_ids)
        pos = np.clip(pos, 0, max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == sample_ids) if len(self.ids) else np.zeros(len(sample_ids), bool)
        if not found.all():
            unknown = sample_ids[~found][:10].tolist()
            raise InvalidRequestError(
                f"sample_id(s) {unknown} are not in the data set "
                f"(valid ids: {len(self.ids)} values from {self.ids.min() if len(self) else '-'} "
                f"to {self.ids.max() if len(self) else '-'})"
            )
        return pos

    def tensors(self, sample_ids: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs (n, *sample_shape) float32 and labels (n,) int64, in the order of `sample_ids`."""
        if sample_ids is None:
            x, labels = self._x.copy(), self.labels.copy()
        else:
            pos = self.positions(sample_ids)
            x, labels = self._x[pos], self.labels[pos]  # fancy indexing copies
        inputs = torch.from_numpy(x.astype(np.float32, copy=False))
        if self.scale != 1.0:
            inputs.mul_(self.scale)
        return inputs, torch.from_numpy(labels)

    def take(self, sample_ids: np.ndarray) -> SampleTable:
        """A new table holding only `sample_ids` (all must exist)."""
        return SampleTable(self.table.take(pa.array(self.positions(sample_ids))))

    def without(self, sample_ids: np.ndarray) -> SampleTable:
        """A new table without `sample_ids` (ids not present are ignored)."""
        return SampleTable(self.table.filter(~np.isin(self.ids, sample_ids)))

    def digest(self) -> str:
        """sha256 of the table's content: ids, labels, stored sample values, shape and scale, in id order.

        A run records it so that a command given other data (another file, an edited row) is
        refused instead of silently retraining a shard on it.
        """
        h = hashlib.sha256(json.dumps([list(self.sample_shape), self.scale, str(self._x.dtype)]).encode())
        h.update(np.ascontiguousarray(self.ids, "<i8").tobytes())
        h.update(np.ascontiguousarray(self.labels, "<i8").tobytes())
        h.update(np.ascontiguousarray(self._x).tobytes())
        return h.hexdigest()
