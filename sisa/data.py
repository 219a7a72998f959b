"""SampleTable: a dataset as an Arrow table keyed by a stable int64 `sample_id`.

Columns: `sample_id` (int64, unique), `label` (int64) and `x` (fixed-size list of uint8 or
float32: one flattened sample). The schema metadata records the sample shape and the scale
that turns stored values into model inputs (1/255 for images kept as uint8).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sisa.errors import InvalidRequestError

_META_SHAPE = b"sample_shape"
_META_SCALE = b"scale"


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
        table = table.combine_chunks()
        ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
        if ids.size and np.any(np.diff(ids) < 0):
            table = table.take(pa.array(np.argsort(ids, kind="stable")))
            ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
        self.table = table
        self.ids = ids
        if self.ids.size and np.any(np.diff(self.ids) == 0):
            raise ValueError("sample table has duplicate sample_id values")
        self.labels = table.column("label").to_numpy().astype(np.int64, copy=False)
        values = table.column("x").chunk(0).values.to_numpy(zero_copy_only=False) if len(table) else np.zeros(0)
        self._x = values.reshape(len(table), *self.sample_shape)

    @classmethod
    def from_numpy(
        cls,
        x: np.ndarray,
        labels: np.ndarray,
        sample_ids: np.ndarray | None = None,
        scale: float = 1.0,
    ) -> SampleTable:
        """Build a table from an array of samples (N, *shape), uint8 or float32, and labels (N,)."""
        if len(x) != len(labels):
            raise ValueError(f"{len(x)} samples but {len(labels)} labels")
        if x.dtype not in (np.uint8, np.float32):
            x = x.astype(np.float32)
        shape = x.shape[1:]
        flat = pa.array(np.ascontiguousarray(x).reshape(-1))
        ids = np.arange(len(x), dtype=np.int64) if sample_ids is None else np.asarray(sample_ids, np.int64)
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.int64()),
                "label": pa.array(np.asarray(labels, np.int64), pa.int64()),
                "x": pa.FixedSizeListArray.from_arrays(flat, int(np.prod(shape))),
            }
        )
        meta = {_META_SHAPE: json.dumps(list(shape)).encode(), _META_SCALE: json.dumps(scale).encode()}
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
        """Number of classes, taken as 1 + the largest label."""
        return int(self.labels.max()) + 1 if len(self) else 0

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
