"""Ledger: the append-only, tamper-evident record of a run and of every deletion request.

One JSON object per line, in this order for each request:

    created    once, first: the run id and the digest of the training data
    request    before any work starts: ids, reason, digest of the data that remains
    destroyed  while the request is served: what was deleted because it saw the ids
    done       when every model that saw the ids is retrained and everything derived is destroyed
    version    optional: the model version published in place of the destroyed ones

A request without a `done` record is pending: the next command finishes it.

Tamper evidence: every record carries `prev`, the `mac` of the record before it (the first
record's `prev` is derived from the run id), and `mac` = HMAC-SHA256(run secret, prev + body).
Editing, inserting, reordering or removing a record breaks the chain at the next record, and a
record cannot be forged without the run's secret. Removing the *last* records leaves a valid
chain; `head` is therefore also written elsewhere (the checkpoint store), see ensemble.py.

Torn writes: a record is one `write` + fsync of a line ending in a newline, so a crash mid-append
leaves a last line without its newline. Such a line was never committed (no work started after
it), so readers ignore it and the next append cuts it off before writing.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sisa.errors import LedgerError

log = logging.getLogger(__name__)

TYPES = ("created", "request", "destroyed", "done", "version")
_REQUIRED = {
    "created": ("run_id", "data_digest"),
    "request": ("request_id", "sample_ids", "reason", "data_digest"),
    "destroyed": ("request_id", "items"),
    "done": ("request_id", "retrained", "samples_epochs", "seconds"),
    "version": ("request_id", "uri"),
}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def genesis(run_id: str) -> str:
    """The `prev` of a ledger's first record: binds the chain to its run."""
    return hashlib.sha256(f"unlearn-ledger:{run_id}".encode()).hexdigest()


def ids_digest_hex(sample_ids: np.ndarray) -> str:
    """sha256 of the sorted int64 ids (how certificates name an id set without listing it)."""
    return hashlib.sha256(np.sort(np.asarray(sample_ids, np.int64)).tobytes()).hexdigest()


@dataclass(frozen=True)
class Request:
    """A deletion request as recorded in the ledger, with what serving it did so far."""

    request_id: str
    sample_ids: np.ndarray
    time: str
    reason: str
    data_digest: str
    """Digest of the training data that remains once this request's ids are removed."""
    keys: list[str] | None = None
    """The data set's own ids of the deleted samples, when they are not the sample_ids."""
    done: dict[str, Any] | None = field(default=None)
    """The `done` record (what was retrained, cost), or None while pending."""
    destroyed: list[dict[str, Any]] = field(default_factory=list)
    """Everything destroyed because it saw the ids (checkpoints, derived models, model versions)."""
    versions: list[str] = field(default_factory=list)
    """Model versions published after the request, which never saw its ids."""


class Ledger:
    """Append-only JSON-lines file of a run's requests; never rewritten, only appended to."""

    def __init__(self, path: str | Path, secret: bytes, run_id: str) -> None:
        """Open the ledger at `path` of run `run_id`, whose records are MACed with `secret`."""
        self.path = Path(path)
        self._secret, self.run_id = secret, run_id
        self._cache: tuple[tuple[int, int], list[dict[str, Any]]] | None = None
        self._thread_lock = threading.RLock()
        self._depth = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the ledger for a block (reentrant in a thread), across threads and processes.

        Every append holds it, since a record chains to the one before it; a caller that checks the
        ledger and then appends (a new request) holds it across both.
        """
        with self._thread_lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    # -- writing ---------------------------------------------------------------------------
    def _mac(self, prev: str, body: dict[str, Any]) -> str:
        text = prev + json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()

    def _append(self, body: dict[str, Any]) -> str:
        with self.locked():
            return self._append_locked(body)

    def _append_locked(self, body: dict[str, Any]) -> str:
        records = self._records()
        prev = records[-1]["mac"] if records else genesis(self.run_id)
        mac = self._mac(prev, body)
        line = (json.dumps({**body, "prev": prev, "mac": mac}, separators=(",", ":")) + "\n").encode()
        with open(self.path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    self._cut_torn_tail(f, end)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._cache = None
        return mac

    def _cut_torn_tail(self, f: Any, end: int) -> None:
        f.seek(0)
        keep = f.read().rfind(b"\n") + 1
        log.warning("ledger %s: dropping %d bytes of a record torn by a crash (never committed)", self.path, end - keep)
        f.truncate(keep)
        f.seek(keep)

    def create(self, data_digest: str) -> None:
        """Write the first record of a new run's ledger."""
        if self.path.exists() and self._records():
            raise LedgerError(f"ledger {self.path} already has records; it belongs to an existing run")
        self._append({"type": "created", "run_id": self.run_id, "data_digest": data_digest, "time": _now()})

    def record_request(self, sample_ids: np.ndarray, reason: str, data_digest: str,
                       keys: list[str] | None = None) -> str:
        """Durably record a request before any work starts; returns its id (r-0001, r-0002, ...)."""
        with self.locked():
            request_id = f"r-{len(self.requests()) + 1:04d}"
            body: dict[str, Any] = {"type": "request", "request_id": request_id,
                                    "sample_ids": np.asarray(sample_ids, np.int64).tolist(), "reason": reason,
                                    "data_digest": data_digest, "time": _now()}
            if keys is not None:
                body["keys"] = list(keys)
            self._append(body)
        return request_id

    def record_destroyed(self, request_id: str, items: list[dict[str, Any]]) -> None:
        """Record what was destroyed while serving `request_id` (nothing is written for no items)."""
        if items:
            self._append({"type": "destroyed", "request_id": request_id, "items": items, "time": _now()})

    def record_done(self, request_id: str, retrained: dict[int, list[int]], samples_epochs: int,
                    seconds: float, batch: list[str] | None = None) -> None:
        """Record that a request is finished and what it retrained (shard -> slices).

        With `batch`, the requests served together by one retraining: the cost is theirs together.
        """
        body: dict[str, Any] = {"type": "done", "request_id": request_id, "time": _now(),
                                "retrained": {str(k): v for k, v in retrained.items()},
                                "samples_epochs": int(samples_epochs), "seconds": round(seconds, 3)}
        if batch and len(batch) > 1:
            body["batch"] = list(batch)
        self._append(body)

    def record_version(self, request_id: str, uri: str) -> None:
        """Record the model version published after `request_id` (it never saw the request's ids)."""
        self._append({"type": "version", "request_id": request_id, "uri": uri, "time": _now()})

    # -- reading ---------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the ledger file exists."""
        return self.path.exists()

    def _records(self) -> list[dict[str, Any]]:
        """Every committed record, verified; cached while the file is unchanged."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        signature = (stat.st_size, stat.st_mtime_ns)
        if self._cache is not None and self._cache[0] == signature:
            return self._cache[1]
        # Every committed record ends with a newline; what follows the last one (if anything) is
        # a record torn by a crash, never committed.
        complete = self.path.read_bytes().split(b"\n")[:-1]
        records: list[dict[str, Any]] = []
        prev = genesis(self.run_id)
        for number, raw in enumerate(complete, 1):
            record = self._parse(raw, number)
            body = {k: v for k, v in record.items() if k not in ("prev", "mac")}
            if record["prev"] != prev or not hmac.compare_digest(record["mac"], self._mac(prev, body)):
                raise LedgerError(f"ledger {self.path} line {number} fails its tamper check: the record was "
                                  "edited, inserted, reordered or removed, or belongs to another run")
            records.append(record)
            prev = record["mac"]
        if records and records[0]["type"] != "created":
            raise LedgerError(f"ledger {self.path} does not start with the run's 'created' record")
        self._cache = (signature, records)
        return records

    def _parse(self, raw: bytes, number: int) -> dict[str, Any]:
        where = f"ledger {self.path} line {number}"
        try:
            record = json.loads(raw)
        except ValueError:
            raise LedgerError(f"{where} is not valid JSON; the ledger is corrupt") from None
        if not isinstance(record, dict) or record.get("type") not in TYPES:
            raise LedgerError(f"{where} is not a ledger record (expected an object whose type is one of {TYPES})")
        missing = [k for k in (*_REQUIRED[record["type"]], "prev", "mac") if k not in record]
        if missing:
            raise LedgerError(f"{where} ({record['type']}) lacks {missing}; the ledger is corrupt")
        return record

    def verify(self) -> int:
        """Check the whole chain; returns the number of records. Raises LedgerError when broken."""
        return len(self._records())

    @property
    def head(self) -> str:
        """The mac of the last record (the genesis value for an empty ledger)."""
        records = self._records()
        return records[-1]["mac"] if records else genesis(self.run_id)

    def macs(self) -> list[str]:
        """Every record's mac, in order (to check an anchor kept elsewhere)."""
        return [r["mac"] for r in self._records()]

    def created(self) -> dict[str, Any] | None:
        """The run's 'created' record, or None for an empty ledger."""
        records = self._records()
        return records[0] if records else None

    def requests(self) -> list[Request]:
        """Every request in order, with its destroyed items, `done` record and versions attached."""
        records = self._records()
        by_id: dict[str, dict[str, Any]] = {}
        for r in records:
            if r["type"] == "request":
                by_id[r["request_id"]] = {"record": r, "done": None, "destroyed": [], "versions": []}
            elif r["type"] != "created":
                entry = by_id.get(r["request_id"])
                if entry is None:
                    raise LedgerError(f"ledger {self.path}: a {r['type']} record names unknown request {r['request_id']}")
                if r["type"] == "done":
                    entry["done"] = r
                elif r["type"] == "destroyed":
                    entry["destroyed"].extend(r["items"])
                else:
                    entry["versions"].append(r["uri"])
        return [
            Request(e["record"]["request_id"], np.asarray(e["record"]["sample_ids"], np.int64), e["record"]["time"],
                    e["record"]["reason"], e["record"]["data_digest"], e["record"].get("keys"), e["done"],
                    e["destroyed"], e["versions"])
            for e in by_id.values()
        ]

    def pending(self) -> list[Request]:
        """Requests recorded but not finished."""
        return [r for r in self.requests() if r.done is None]

    def deleted_ids(self) -> np.ndarray:
        """Sorted ids of every request, pending ones included (they must not be trained on)."""
        parts = [r.sample_ids for r in self.requests()]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def data_digest(self) -> str | None:
        """Digest of the data the run trains on now: the last request's, or the run's at creation."""
        records = [r for r in self._records() if r["type"] in ("created", "request")]
        return records[-1]["data_digest"] if records else None
