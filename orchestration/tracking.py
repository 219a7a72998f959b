"""Experiment tracking: a Tracker protocol, its MLflow implementation (driver only) and test doubles.

One parent run per command, a child run per shard (or method); params are the flattened resolved
config; metrics are namespaced (`slice/loss`, `test/acc`, `time/train_s`, `cost/samples_epochs`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from orchestration.config import TrackingConfig
from orchestration.timings import phase
from sisa import ShardReport


class Tracker(Protocol):
    """Where a command's params, metrics, artifacts and models go."""

    def run(self, name: str, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None) -> Any:
        """Context manager of a run; nested inside an open run it is a child run."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Metrics of the innermost open run."""

    def log_dict(self, data: Any, artifact_file: str) -> None:
        """A JSON artifact of the innermost open run."""

    def log_artifact(self, path: str | Path) -> None:
        """A file artifact of the innermost open run."""

    def log_model(self, folder: Path, model_name: str, tags: Mapping[str, str]) -> dict[str, Any] | None:
        """Log the ensemble exported in `folder` as a new registered version of `model_name`.

        Returns where it went (tracking_uri, name, version, model_id, artifact_uri, uri), or None
        when nothing was published.
        """

    def has_live_version(self, entries: list[dict[str, Any]]) -> bool:
        """Whether one of the published `entries` is at this tracker's URI and not destroyed."""


@dataclass
class RecordedRun:
    """A run as kept by MemoryTracker."""

    name: str
    parent: str | None
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int | None, float]]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)


class MemoryTracker:
    """Keeps everything in memory; for tests and for `tracking.enabled = false`."""

    def __init__(self) -> None:
        self.runs: list[RecordedRun] = []
        self._open: list[RecordedRun] = []

    @contextmanager
    def run(self, name: str, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None) -> Iterator[RecordedRun]:
        record = RecordedRun(name, self._open[-1].name if self._open else None, dict(params or {}), dict(tags or {}))
        self.runs.append(record)
        self._open.append(record)
        try:
            yield record
        finally:
            self._open.pop()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self._open[-1].metrics.setdefault(key, []).append((step, float(value)))

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self._open[-1].artifacts[artifact_file] = data

    def log_artifact(self, path: str | Path) -> None:
        self._open[-1].artifacts[Path(path).name] = Path(path).read_bytes()

    def log_model(self, folder: Path, model_name: str, tags: Mapping[str, str]) -> dict[str, Any] | None:
        self._open[-1].artifacts["model"] = sorted(p.name for p in folder.iterdir())
        return None

    def has_live_version(self, entries: list[dict[str, Any]]) -> bool:
        return True  # nothing is published, so nothing is missing


def artifacts_beside(uri: str) -> str | None:
    """Where a new experiment of a local SQLite store keeps its artifacts: `mlruns` beside the
    database file, whichever directory a command runs in (MLflow's own default is `./mlruns` of the
    working directory, which would scatter a store's artifacts over every directory it was used
    from). None for any other store: its server decides."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.endswith(":memory:"):
        return None
    return (Path(uri[len(prefix):]).resolve().parent / "mlruns").as_uri()


class MlflowTracker:
    """Logs to MLflow; imported lazily so commands without tracking never load mlflow."""

    def __init__(self, config: TrackingConfig) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's warnings, not its progress chatter
        import mlflow

        self.mlflow = mlflow
        self.uri = config.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        mlflow.set_tracking_uri(self.uri)
        location = artifacts_beside(self.uri)
        if location is not None and mlflow.get_experiment_by_name(config.experiment) is None:
            try:
                mlflow.create_experiment(config.experiment, artifact_location=location)
            except mlflow.exceptions.MlflowException:
                pass  # another command created it meanwhile
        mlflow.set_experiment(config.experiment)

    @contextmanager
    def run(self, name: str, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, str] | None = None) -> Iterator[Any]:
        nested = self.mlflow.active_run() is not None
        with self.mlflow.start_run(run_name=name, nested=nested, tags=dict(tags or {})) as active:
            if params:
                self.mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
            yield active

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.mlflow.log_dict(data, artifact_file)

    def log_artifact(self, path: str | Path) -> None:
        self.mlflow.log_artifact(str(path))

    def log_model(self, folder: Path, model_name: str, tags: Mapping[str, str]) -> dict[str, Any] | None:
        from orchestration.pyfunc import log_ensemble
        from orchestration.registry import RUN_TAG, RegistryError

        client = self.mlflow.MlflowClient()
        run_id = tags.get(RUN_TAG, "")
        try:
            owner = client.get_registered_model(model_name).tags.get(RUN_TAG)
        except self.mlflow.exceptions.MlflowException:
            owner = None
        if owner is not None and owner != run_id:
            raise RegistryError(f"registered model {model_name!r} belongs to another run ({owner}); "
                                "set tracking.model_name to a name of this run's own")
        from mlflow.utils.logging_utils import disable_logging, enable_logging

        disable_logging()  # "Successfully registered model ...": the command says what it registered
        try:
            info = log_ensemble(self.mlflow, folder, model_name, tags)
        finally:
            enable_logging()
        client.set_registered_model_tag(model_name, RUN_TAG, run_id)
        location = client.get_logged_model(info.model_id).artifact_location
        return {"tracking_uri": self.uri, "name": model_name, "version": str(info.registered_model_version),
                "model_id": info.model_id, "artifact_uri": location,
                "uri": f"models:/{model_name}/{info.registered_model_version}"}

    def has_live_version(self, entries: list[dict[str, Any]]) -> bool:
        from orchestration.registry import DESTROYED_TAG

        client = self.mlflow.MlflowClient()
        return any(not client.get_model_version(e["name"], e["version"]).tags.get(DESTROYED_TAG)
                   for e in entries if e["tracking_uri"] == self.uri)


def make_tracker(config: TrackingConfig) -> Tracker:
    """MLflow when tracking is enabled, else an in-memory tracker that nothing reads."""
    if not config.enabled:
        return MemoryTracker()
    with phase("mlflow"):  # importing mlflow and opening its store are most of it
        return MlflowTracker(config)


def log_shard_runs(tracker: Tracker, reports: list[ShardReport]) -> None:
    """A child run per shard with its per-slice metrics (step = slice)."""
    for report in reports:
        params = {"shard": report.shard, "resumed_from": report.resumed_from, "slices_trained": len(report.slices)}
        with tracker.run(f"shard-{report.shard:03d}", params=params, tags={"shard": str(report.shard)}):
            for s in report.slices:
                tracker.log_metrics({"slice/loss": s.loss, "slice/acc": s.accuracy, "slice/seconds": s.seconds,
                                     "slice/samples": s.num_samples, "slice/samples_epochs": s.samples_epochs},
                                    step=s.slice)


def write_json(folder: Path, name: str, data: Any) -> Path:
    """Write `data` as JSON into `folder`, returning the path."""
    path = folder / name
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A temporary folder for artifacts being exported."""
    return tempfile.TemporaryDirectory(prefix="unlearn-")
