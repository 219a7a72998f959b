"""Ledger: the append-only, durable record of deletion requests and what each retrained.

One JSON object per line. A request line is written (and fsynced) before any work starts; a
`done` line follows when every model that saw its ids has been retrained and every checkpoint
that saw them purged. A request without a `done` line is pending: the next command finishes it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Request:
    """A deletion request as recorded in the ledger."""

    request_id: str
    sample_ids: np.ndarray
    time: str
    reason: str
    done: dict[str, Any] | None = field(default=None)
    """The `done` record (what was retrained, cost), or None while pending."""


class Ledger:
    """Append-only JSON-lines file of requests; never rewritten, only appended to."""

    def __init__(self, path: str | Path) -> None:
        """Open the ledger at `path` (created on the first append)."""
        self.path = Path(path)

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                # Only a crash during the last append can leave a partial line; the request it
                # held never started work, so it is dropped rather than fatal.
                if number != len(lines):
                    raise ValueError(f"ledger {self.path} line {number} is corrupt") from None
        return records

    def requests(self) -> list[Request]:
        """Every request in order, with its `done` record attached when finished."""
        records = self._records()
        done = {r["request_id"]: r for r in records if r["type"] == "done"}
        return [
            Request(
                r["request_id"],
                np.asarray(r["sample_ids"], np.int64),
                r["time"],
                r["reason"],
                done.get(r["request_id"]),
            )
            for r in records
            if r["type"] == "request"
        ]

    def pending(self) -> list[Request]:
        """Requests recorded but not finished."""
        return [r for r in self.requests() if r.done is None]

    def deleted_ids(self) -> np.ndarray:
        """Sorted ids of every request, pending ones included (they must not be trained on)."""
        parts = [r.sample_ids for r in self.requests()]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def record_request(self, sample_ids: np.ndarray, reason: str = "") -> str:
        """Durably record a request before any work starts; returns its id (r-0001, r-0002, ...)."""
        request_id = f"r-{len(self.requests()) + 1:04d}"
        self._append(
            {
                "type": "request",
                "request_id": request_id,
                "sample_ids": np.asarray(sample_ids, np.int64).tolist(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "reason": reason,
            }
        )
        return request_id

    def record_done(self, request_id: str, retrained: dict[int, list[int]], samples_epochs: int,
                    seconds: float) -> None:
        """Record that a request is finished and what it retrained (shard -> slices)."""
        self._append(
            {
                "type": "done",
                "request_id": request_id,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "retrained": {str(k): v for k, v in retrained.items()},
                "samples_epochs": samples_epochs,
                "seconds": round(seconds, 3),
            }
        )
