"""The work behind `unlearn train | forget | approx | bench`, tracked: one parent run per command.

The CLI parses and prints; these functions run the SISA and approximate libraries and log what
they did (params, per-shard child runs, metrics, artifacts, a new model version of the ensemble).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import approx
from orchestration.approximate import ApproxReport, run_approx
from orchestration.bench.fanout import Progress
from orchestration.bench.run import BenchResult, run_bench
from orchestration.config import RunConfig
from orchestration.runs import Session
from orchestration.status import accuracies
from orchestration.tracking import Tracker, log_shard_runs, scratch_dir, write_json
from sisa import DeletionReport, ShardReport, SisaError
from sisa.ensemble import OnSlice

log = logging.getLogger(__name__)


def export_ensemble(session: Session, folder: Path) -> Path:
    """Write the constituents (model weights only), the config and metadata for the pyfunc model."""
    folder.mkdir(parents=True, exist_ok=True)
    constituents = session.run.constituents()
    for shard, model in constituents:
        torch.save(model.state_dict(), folder / f"shard-{shard:03d}.pt")
    session.config.save(folder / "config.toml")
    meta = {"sample_shape": list(session.run.table.sample_shape), "num_classes": session.num_classes,
            "aggregation": session.config.sisa.aggregation, "shards": [s for s, _ in constituents]}
    (folder / "meta.json").write_text(json.dumps(meta))
    x, _ = session.test.tensors(session.test.ids[:2])
    np.save(folder / "example.npy", x.reshape(len(x), -1).numpy())
    return folder


def model_name(session: Session) -> str:
    """Registered model name of the run's ensemble."""
    return session.config.tracking.model_name or f"unlearn-{session.run.run_dir.resolve().name}"


def _parent(tracker: Tracker, session: Session, command: str, extra: dict[str, Any] | None = None) -> Any:
    params = {**session.config.flat(), **(extra or {})}
    return tracker.run(command, params=params, tags={"command": command, "run_dir": str(session.run.run_dir.resolve())})


def _common_artifacts(tracker: Tracker, session: Session) -> None:
    plan = session.run.plan()
    summary = {"num_shards": plan.num_shards, "num_slices": plan.num_slices, "retained": len(plan),
               "shard_sizes": plan.shard_sizes().tolist(),
               "slice_sizes": [[len(ids) for ids in plan.slice_ids(s)] for s in range(plan.num_shards)]}
    tracker.log_dict(summary, "plan.json")
    tracker.log_artifact(session.run.run_dir / "config.toml")


def _log_model(tracker: Tracker, session: Session, tags: dict[str, str]) -> str | None:
    try:
        with scratch_dir() as tmp:
            return tracker.log_model(export_ensemble(session, Path(tmp) / "ensemble"), model_name(session), tags)
    except SisaError as err:
        log.warning("ensemble not logged as a model: %s", err)
        return None


def _ensemble_metrics(session: Session, reports: list[ShardReport], seconds: float) -> dict[str, float]:
    test = accuracies(session)
    return {"test/acc": test[session.config.sisa.aggregation], "test/acc_vote": test["vote"],
            "test/acc_mean": test["mean"],
            "time/wall_s": seconds, "time/train_s": sum(r.seconds for r in reports),
            "cost/samples_epochs": sum(r.samples_epochs for r in reports),
            "cost/slices_trained": sum(len(r.slices) for r in reports), "store/bytes": session.run.store.nbytes()}


def train(session: Session, tracker: Tracker, on_slice: OnSlice = None) -> tuple[list[ShardReport], dict[str, float]]:
    """Train (or resume) the ensemble; returns the shard reports and the logged metrics."""
    with _parent(tracker, session, "train"):
        began = time.perf_counter()
        reports = session.run.train(on_slice)
        log_shard_runs(tracker, reports)
        metrics = _ensemble_metrics(session, reports, time.perf_counter() - began)
        tracker.log_metrics(metrics)
        _common_artifacts(tracker, session)
        _log_model(tracker, session, {"command": "train"})
    return reports, metrics


def forget(session: Session, tracker: Tracker, sample_ids: list[int] | None, reason: str = "",
           on_slice: OnSlice = None) -> tuple[list[DeletionReport], dict[str, float]]:
    """Serve a deletion request (or, with no ids, finish interrupted ones); one model version per request."""
    with _parent(tracker, session, "forget", {"request.num_ids": len(sample_ids or []), "request.reason": reason}):
        began = time.perf_counter()
        if sample_ids is None:
            reports = session.run.finish_pending(on_slice)
        else:
            reports = [session.run.forget(sample_ids, reason=reason, on_slice=on_slice)]
        shard_reports = [r for report in reports for r in report.shards]
        log_shard_runs(tracker, shard_reports)
        metrics = _ensemble_metrics(session, shard_reports, time.perf_counter() - began)
        metrics["time/unlearn_s"] = sum(r.seconds for r in reports)
        tracker.log_metrics(metrics)
        for report in reports:
            tracker.log_dict({"request_id": report.request_id, "sample_ids": report.sample_ids.tolist(),
                              "reason": reason, "dirty": report.dirty, "retrained": report.retrained,
                              "samples_epochs": report.samples_epochs, "purged": report.purged,
                              "seconds": report.seconds}, f"requests/{report.request_id}.json")
        _common_artifacts(tracker, session)
        if reports:
            _log_model(tracker, session, {"command": "forget", "request_id": reports[-1].request_id})
    return reports, metrics


def approximate(session: Session, tracker: Tracker, method: approx.UnlearningMethod, sample_ids: list[int],
                target: str) -> ApproxReport:
    """Run an approximate method; a child run holds the method's params and before/after metrics."""
    with _parent(tracker, session, "approx", {"request.num_ids": len(sample_ids)}):
        params = {f"method.{f.name}": getattr(method, f.name) for f in dataclasses.fields(method)}
        with tracker.run(f"{method.name}-{target}", params={"method": method.name, "target": target, **params}):
            report = run_approx(session, method, sample_ids, target=target)
            tracker.log_metrics({**report.after, **{f"before/{k}": v for k, v in report.before.items()},
                                 "time/unlearn_s": report.seconds, "cost/samples": report.samples})
            with scratch_dir() as tmp:
                tracker.log_artifact(write_json(Path(tmp), "request.json",
                                                {"sample_ids": report.forget_ids.tolist(), "shards": report.shards}))
    return report


def bench(config: RunConfig, out: Path, tracker: Tracker | None = None, progress: Progress | None = None) -> BenchResult:
    """Run the bench of `config.bench` (see orchestration/bench): populations of models on Ray or in this
    process, per-example scores against retraining, tables and plots in `out`, a parent MLflow run
    with a child per method (`config.tracking`'s tracker unless one is given)."""
    return run_bench(config, out, tracker, progress=progress)
