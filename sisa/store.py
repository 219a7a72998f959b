"""Slice checkpoint store: atomic, content-addressed, verified and purgeable.

Layout under the store root (a local path or any pyarrow.fs URI such as file://, s3://, gs://):

    RUN.json                        the run the store belongs to, and the run's ledger head
    shard-003/slice-01-<key>.pt     torch.save of {model, optimizer, counters}
    shard-003/slice-01-<key>.json   manifest: fingerprint, shard, slice, key, sha256, sample_ids

`key` is a content hash of what the checkpoint has seen (see `plan.slice_keys`), so a checkpoint
never needs overwriting. Both files are written under a temporary name and renamed into place,
the manifest last: a checkpoint without a manifest was never committed and is garbage.

The checksum covers the checkpoint's place as well as its bytes (fingerprint, shard, slice, key
and the digest of the ids it saw), so a valid checkpoint copied under another shard's or slice's
name, or a manifest whose id list was edited, fails verification.

A store belongs to one run: `RUN.json` names it, and a store holding another run's checkpoints
is refused (two runs on one store would purge each other's checkpoints).
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

from sisa.errors import CheckpointCorruptError, CheckpointMissingError, RunBindingError
from sisa.plan import ids_digest

log = logging.getLogger(__name__)
_NAME = re.compile(r"^slice-(\d+)-(\w+)\.json$")
_FORMAT = 2
_RUN_FILE = "RUN.json"


def checksum(data: bytes, fingerprint: str, shard: int, slice_: int, key: str, ids_sha256: str) -> str:
    """sha256 over a header naming the checkpoint's place and what it saw, then its bytes."""
    header = f"unlearn-checkpoint:v{_FORMAT}:{fingerprint}:{shard}:{slice_}:{key}:{ids_sha256}\n".encode()
    return hashlib.sha256(header + data).hexdigest()


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

    def __init__(self, uri: str, create: bool = True) -> None:
        """Open the store at a local path or pyarrow.fs URI, creating its root unless `create` is False."""
        self.uri = uri
        self.fs, self.root = _open_fs(uri)
        if create:
            self.fs.create_dir(self.root, recursive=True)

    def exists(self) -> bool:
        """Whether the store's root exists."""
        return self.fs.get_file_info(self.root).type != pafs.FileType.NotFound

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
        ids_sha256 = ids_digest(sample_ids)
        manifest = {
            "format": _FORMAT,
            "fingerprint": fingerprint,
            "shard": shard,
            "slice": slice_,
            "key": key,
            "sha256": checksum(data, fingerprint, shard, slice_, key, ids_sha256),
            "nbytes": len(data),
            "num_samples": int(len(sample_ids)),
            "ids_sha256": ids_sha256,
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
            CheckpointCorruptError: the bytes or the manifest fail verification, or the
                checkpoint is not the one of (shard, slice, key).
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
        self._verify(entry, manifest, data)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def _verify(self, entry: CheckpointEntry, manifest: dict[str, Any], data: bytes) -> None:
        if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
            raise CheckpointCorruptError(f"checkpoint manifest {entry.path[:-3]}.json is not a format-{_FORMAT} manifest")
        placed = (manifest.get("shard"), manifest.get("slice"), manifest.get("key"))
        if placed != (entry.shard, entry.slice, entry.key):
            raise CheckpointCorruptError(
                f"checkpoint {entry.path} holds shard {placed[0]} slice {placed[1]} key {placed[2]}, not its own "
                "(copied or renamed from another place)")
        try:
            ids_ok = ids_digest(np.asarray(manifest["sample_ids"], np.int64)) == manifest["ids_sha256"]
            expected = checksum(data, manifest["fingerprint"], entry.shard, entry.slice, entry.key,
                                manifest["ids_sha256"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointCorruptError(f"checkpoint manifest {entry.path[:-3]}.json lacks fields") from None
        if not ids_ok or expected != manifest.get("sha256"):
            raise CheckpointCorruptError(
                f"checkpoint {entry.path} fails its checksum (truncated, tampered, or its manifest edited: "
                f"{len(data)} bytes, manifest says {manifest.get('nbytes')})"
            )

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

    def purge(self, shard: int, keep: set[str]) -> list[dict[str, Any]]:
        """Delete every file of `shard` that is not a committed checkpoint with a key in `keep`.

        Also removes uncommitted leftovers (temporary files, checkpoints without a manifest).

        Returns:
            A record of each committed checkpoint deleted: shard, slice, key, checksum, size.
        """
        removed = []
        for entry in self.entries(shard):
            if entry.key in keep:
                continue
            try:
                manifest = self.read_manifest(entry)
            except (FileNotFoundError, ValueError):
                manifest = {}
            removed.append({"kind": "checkpoint", "shard": entry.shard, "slice": entry.slice, "key": entry.key,
                            "sha256": manifest.get("sha256"), "nbytes": manifest.get("nbytes")})
            self.delete(entry)
        kept = {f"slice-{e.slice:02d}-{e.key}" for e in self.entries(shard)}
        for info in self._files(shard):
            if info.base_name.rsplit(".", 1)[0] not in kept or ".tmp-" in info.base_name:
                log.info("removing uncommitted checkpoint file %s", info.path)
                self.fs.delete_file(info.path)
        return removed

    # -- binding to a run ----------------------------------------------------------------
    def owner(self) -> dict[str, Any] | None:
        """The contents of RUN.json (run_id, ledger head), or None for an unclaimed store."""
        try:
            with self.fs.open_input_stream(f"{self.root}/{_RUN_FILE}") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            raise RunBindingError(f"store {self.uri}: {_RUN_FILE} is not valid JSON") from None

    def claim(self, run_id: str) -> None:
        """Bind an unclaimed store to `run_id`; refuse a store of another run or with stray checkpoints."""
        owner = self.owner()
        if owner is not None:
            if owner.get("run_id") != run_id:
                raise RunBindingError(
                    f"store {self.uri} belongs to run {owner.get('run_id')}, not this one ({run_id}); "
                    "give each run its own store")
            return
        if self.entries():
            raise RunBindingError(f"store {self.uri} already holds checkpoints of an unknown run; "
                                  "give this run an empty store")
        self.set_anchor(run_id, "")

    def set_anchor(self, run_id: str, ledger_head: str) -> None:
        """Write RUN.json: the owning run and the head of its ledger (an anchor against truncation)."""
        self._write_atomic(f"{self.root}/{_RUN_FILE}", json.dumps({"run_id": run_id, "ledger_head": ledger_head}).encode())

    def nbytes(self, suffix: str = "") -> int:
        """Total bytes of the store's files (those whose names end with `suffix`, e.g. '.json')."""
        return sum(info.size for info in self._files(None) if info.path.endswith(suffix))
