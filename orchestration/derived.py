"""Models derived from a run's data and kept in its directory: the single model and approximate results.

    run_dir/single/           the monolithic model `approx --target single` unlearns from
    run_dir/approx/<name>/    models written by `unlearn approx`

Each folder carries `derived.json`: what it is and how many deletion requests the run had
when it was built. A derived model saw every sample the run held when it was built, so a later
request makes it non-compliant: every deletion destroys them all (recording each file's path and
checksum in the ledger), and they are rebuilt from the retained data when next needed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from sisa import SisaRun
from sisa.errors import PendingRequestError
from sisa.ledger import Request

FOLDERS = ("single", "approx")
MARKER = "derived.json"


def mark_derived(folder: Path, run: SisaRun, kind: str) -> None:
    """Write the marker of a derived model folder built from `run`'s retained data now."""
    if run.ledger.pending():
        raise PendingRequestError(f"deletion request {run.ledger.pending()[0].request_id} is not finished; "
                                  "finish it before deriving models from the run")
    folder.mkdir(parents=True, exist_ok=True)
    marker = {"kind": kind, "requests": len(run.ledger.requests()), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
    (folder / MARKER).write_text(json.dumps(marker))


def derived_folders(run_dir: Path) -> list[Path]:
    """Every derived model folder of a run directory."""
    folders = [run_dir / "single"] if (run_dir / "single").is_dir() else []
    if (run_dir / "approx").is_dir():
        folders += sorted(p for p in (run_dir / "approx").iterdir() if p.is_dir())
    return folders


def _file_records(run_dir: Path, folder: Path) -> list[dict[str, Any]]:
    return [{"kind": "derived-model", "path": str(path.relative_to(run_dir)),
             "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "nbytes": path.stat().st_size}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "lock"]


def destroy_derived_models(run: SisaRun, requests: list[Request]) -> list[dict[str, Any]]:
    """Purger: delete every derived model folder of the run; one record per file destroyed."""
    records: list[dict[str, Any]] = []
    for folder in derived_folders(run.run_dir):
        records += _file_records(run.run_dir, folder)
        shutil.rmtree(folder)
    return records


def stale_derived(run: SisaRun) -> list[str]:
    """Derived folders built before the run's latest request (so trained on a deleted sample)."""
    requests = len(run.ledger.requests())
    stale = []
    for folder in derived_folders(run.run_dir):
        try:
            built_at = json.loads((folder / MARKER).read_text())["requests"]
        except (FileNotFoundError, ValueError, KeyError):
            built_at = -1  # unmarked: nothing says it was built after the deletions
        if built_at < requests:
            stale.append(str(folder.relative_to(run.run_dir)))
    return stale
