"""Published model versions of a run: where each went, and their destruction when they saw deleted samples.

Every model version a command registers in MLflow is recorded in `run_dir/published.jsonl`
(tracking URI, registered name, version, logged model id, artifact location, and how many
deletion requests the run had finished then: a request still pending may have ids the version saw,
and makes it stale once it is done). When a deletion request is served, every version published
before it is an ensemble that saw the deleted samples: its artifacts (the weights) are destroyed,
its logged model is marked deleted, and the registry entry is kept as an audit trail, tagged
`unlearn.destroyed_by = <request id>` with a description saying why. Loading it fails from then
on. The record file, not the current command's settings, says where to look, so a deletion
finds every version whichever tracking URI the command itself uses (or none).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from sisa import SisaError, SisaRun
from sisa.ledger import Request

RECORD = "published.jsonl"
DESTROYED_TAG = "unlearn.destroyed_by"
RUN_TAG = "unlearn.run_id"


class RegistryError(SisaError):
    """A published model version could not be destroyed or registered; the request stays pending."""


def model_name(run: SisaRun, configured: str = "") -> str:
    """The registered model name of a run's ensemble: `configured`, else unlearn-<run dir>-<run id prefix>.

    The run id makes it unique per run (two runs in folders named `digits` get two models);
    characters MLflow does not allow in names become '-'.
    """
    if configured:
        return configured
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.run_dir.resolve().name).strip("-") or "run"
    return f"unlearn-{base}-{run.run_id[:8]}"


def published(run_dir: Path) -> list[dict[str, Any]]:
    """Every version the run published, in order."""
    path = run_dir / RECORD
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_published(run: SisaRun, entry: dict[str, Any]) -> None:
    """Append a published version (under the run's lock) before anything else refers to it."""
    entry = {**entry, "requests": finished_requests(run), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(run.run_dir / RECORD, "a") as f:
        f.write(json.dumps(entry) + "\n")


def finished_requests(run: SisaRun) -> int:
    """Requests of the run that are done (they are served in the order recorded)."""
    return sum(1 for request in run.ledger.requests() if request.done is not None)


def _client(tracking_uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _delete_artifacts(location: str) -> None:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(location).delete_artifacts()


def destroy_published_versions(run: SisaRun, requests: list[Request]) -> list[dict[str, Any]]:
    """Purger: destroy every published version that predates `requests`; one record each.

    Idempotent: a version already destroyed for these requests is recorded again (a crash may
    have come between its destruction and the ledger record), one destroyed for an earlier
    request is skipped.
    """
    records = []
    served = ",".join(r.request_id for r in requests)
    for entry in published(run.run_dir):
        try:
            client = _client(entry["tracking_uri"])
            version = client.get_model_version(entry["name"], entry["version"])
            destroyed_by = version.tags.get(DESTROYED_TAG)
            if destroyed_by and destroyed_by != served:
                continue
            _delete_artifacts(entry["artifact_uri"])
            if entry.get("model_id"):
                client.delete_logged_model(entry["model_id"])
            client.set_model_version_tag(entry["name"], entry["version"], DESTROYED_TAG, served)
            client.update_model_version(entry["name"], entry["version"], description=(
                f"Artifacts destroyed by deletion request(s) {served}: this version saw samples they deleted."))
        except Exception as err:  # noqa: BLE001 - any MLflow or storage failure keeps the request pending
            raise RegistryError(
                f"could not destroy model version {entry['name']}/{entry['version']} at {entry['tracking_uri']} "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); request(s) "
                f"{served} stay pending: rerun `unlearn forget --resume` once MLflow is reachable"
            ) from err
        records.append({"kind": "mlflow-model-version", "model": entry["name"], "version": entry["version"],
                        "model_id": entry.get("model_id"), "artifact_uri": entry["artifact_uri"]})
    return records


def live_versions(run: SisaRun) -> list[dict[str, Any]]:
    """Published versions not destroyed (per the registry), with whether they predate a request."""
    live = []
    requests = finished_requests(run)
    for entry in published(run.run_dir):
        version = _client(entry["tracking_uri"]).get_model_version(entry["name"], entry["version"])
        if not version.tags.get(DESTROYED_TAG):
            live.append({**entry, "stale": entry["requests"] < requests})
    return live


def readable_artifacts(entry: dict[str, Any]) -> list[str]:
    """Artifact files still stored for a published version (empty once destroyed)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        return [f.path for f in get_artifact_repository(entry["artifact_uri"]).list_artifacts()]
    except Exception:  # noqa: BLE001 - a location that no longer exists holds nothing
        return []
