"""Slice checkpoint store: atomic, content-addressed, verified and purgeable.

Layout under the store root (a local path or any pyarrow.fs URI such as file://, s3://, gs://):

    shard-003/slice-01-<key>.pt     torch.save of {model, optimizer, counters}
    shard-003/slice-01-<key>.json   manifest: fingerprint, shard, slice, key, sha256, sample_ids

`key` is a content hash of what the checkpoint has seen (see `plan.slice_keys`), so a checkpoint
never needs overwriting. Both files are written under a temporary name and renamed into place,
the manifest last: a checkpoint without a manifest was never committed and is garbage.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch

from sisa.errors import CheckpointCorruptError, CheckpointMissingError
from sisa.plan import ids_digest

log = logging.getLogger(__name__)
_NAME = re.compile(r"^slice-(\d+)-(\w+)\.json$")


@dataclass(frozen=True)
class CheckpointEntry:
    """One committed checkpoint in the store."""

    shard: int
    slice: int
    key: str
    path: str
    """Path of the .pt file inside the store's filesystem."""


def _open_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    import os

    return pafs.LocalFileSystem(), os.path.abspath(uri)


class CheckpointStore:
    """Reads and writes slice checkpoints of every shard under one root."""

    def __init__(self, uri: str) -> None:
        """Open (creating if needed) the store at a local path or pyarrow.fs URI."""
        self.uri = uri
        self.fs, self.root = _open_fs(uri)
        self.fs.create_dir(self.root, recursive=True)

    def _base(self, shard: int, slice_: int, key: str) -> str:
        return f"{self.root}/shard-{shard:03d}/slice-{slice_:02d}-{key}"

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{time.time_ns()}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def save(
        self,
        shard: int,
        slice_: int,
        key: str,
        state: dict[str, Any],
        sample_ids: np.ndarray,
        fingerprint: str,
    ) -> CheckpointEntry:
        """Write a checkpoint and its manifest; `sample_ids` are all the ids the state has seen."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        base = self._base(shard, slice_, key)
        self.fs.create_dir(base.rsplit("/", 1)[0], recursive=True)
        manifest = {
            "format": 1,
            "fingerprint": fingerprint,
            "shard": shard,
            "slice": slice_,
            "key": key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "nbytes": len(data),
            "num_samples": int(len(sample_ids)),
            "ids_sha256": ids_digest(sample_ids),
            "sample_ids": np.sort(np.asarray(sample_ids, np.int64)).tolist(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._write_atomic(base + ".pt", data)
        self._write_atomic(base + ".json", json.dumps(manifest).encode())
        return CheckpointEntry(shard, slice_, key, base + ".pt")

    def read_manifest(self, entry: CheckpointEntry) -> dict[str, Any]:
        """The JSON manifest of a committed checkpoint."""
        with self.fs.open_input_stream(entry.path[:-3] + ".json") as f:
            return json.loads(f.read())

    def entry(self, shard: int, slice_: int, key: str) -> CheckpointEntry:
        """The entry a checkpoint of (shard, slice, key) has or would have."""
        return CheckpointEntry(shard, slice_, key, self._base(shard, slice_, key) + ".pt")

    def load(self, shard: int, slice_: int, key: str) -> dict[str, Any]:
        """Load a verified checkpoint (weights_only=True).

        Raises:
            CheckpointMissingError: no committed checkpoint has this key.
            CheckpointCorruptError: the bytes fail the manifest's checksum or cannot be read.
        """
        entry = self.entry(shard, slice_, key)
        base = entry.path[:-3]
        try:
            manifest = self.read_manifest(entry)
        except FileNotFoundError as err:
            raise CheckpointMissingError(f"no checkpoint {base}") from err
        except ValueError as err:
            raise CheckpointCorruptError(f"checkpoint manifest {base}.json is not valid JSON") from err
        try:
            with self.fs.open_input_stream(entry.path) as f:
                data = f.read()
        except FileNotFoundError as err:
            raise CheckpointCorruptError(f"checkpoint {entry.path} is missing but its manifest exists") from err
        if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
            raise CheckpointCorruptError(
                f"checkpoint {entry.path} fails its checksum (truncated or tampered: "
                f"{len(data)} bytes, manifest says {manifest.get('nbytes')})"
            )
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def entries(self, shard: int | None = None) -> list[CheckpointEntry]:
        """Committed checkpoints (those with a manifest), sorted by shard then slice."""
        found = []
        for info in self._files(shard):
            name = info.base_name
            match = _NAME.match(name)
            if match and info.path.startswith(self.root):
                shard_no = int(info.path.rsplit("/", 2)[-2].removeprefix("shard-"))
                base = info.path[: -len(".json")]
                found.append(CheckpointEntry(shard_no, int(match[1]), match[2], base + ".pt"))
        return sorted(found, key=lambda e: (e.shard, e.slice, e.key))

    def _files(self, shard: int | None) -> list[pafs.FileInfo]:
        path = self.root if shard is None else f"{self.root}/shard-{shard:03d}"
        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        return [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

    def delete(self, entry: CheckpointEntry) -> None:
        """Remove a checkpoint: manifest first, so a crash leaves garbage, never a dangling manifest."""
        for path in (entry.path[:-3] + ".json", entry.path):
            try:
                self.fs.delete_file(path)
            except FileNotFoundError:
                pass

    def purge(self, shard: int, keep: set[str]) -> list[CheckpointEntry]:
        """Delete every file of `shard` that is not a committed checkpoint with a key in `keep`.

        Also removes uncommitted leftovers (temporary files, checkpoints without a manifest).

        Returns:
            The committed checkpoints that were deleted.
        """
        removed = [e for e in self.entries(shard) if e.key not in keep]
        for entry in removed:
            self.delete(entry)
        kept = {f"slice-{e.slice:02d}-{e.key}" for e in self.entries(shard)}
        for info in self._files(shard):
            if info.base_name.rsplit(".", 1)[0] not in kept or ".tmp-" in info.base_name:
                log.info("removing uncommitted checkpoint file %s", info.path)
                self.fs.delete_file(info.path)
        return removed

    def nbytes(self, suffix: str = "") -> int:
        """Total bytes of the store's files (those whose names end with `suffix`, e.g. '.json')."""
        return sum(info.size for info in self._files(None) if info.path.endswith(suffix))
