"""The work behind `unlearn train | forget | approx | bench | tune | pretrain`, tracked: one parent run per command.

The CLI parses and prints; these functions run the SISA and approximate libraries and log what
they did (params, per-shard child runs, metrics, artifacts, a new model version of the ensemble).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import approx
from orchestration.approximate import ApproxReport, run_approx
from orchestration.bench.fanout import Progress
from orchestration.config import RunConfig
from orchestration.frozen.pretrain import PretrainReport
from orchestration.frozen.pretrain import pretrain as pretrain_backbone
from orchestration.registry import RUN_TAG, model_name, published, record_published
from orchestration.runs import Session
from orchestration.status import accuracies
from orchestration.timings import phase
from orchestration.tracking import Tracker, log_shard_runs, scratch_dir, write_json
from sisa import DeletionReport, ShardReport
from sisa.ensemble import OnSlice
from sisa.frozen import trainable_state
from sisa.ledger import ids_digest_hex

if TYPE_CHECKING:  # the bench and the tuner import scipy.stats (0.5 s): loaded by their commands only
    from orchestration.bench.run import BenchResult
    from orchestration.bench.tune import TuneResult

log = logging.getLogger(__name__)


def export_ensemble(session: Session, folder: Path, keys: Mapping[int, str] | None = None) -> Path:
    """Write the constituents' weights (tensors only), the config and metadata for the pyfunc model.

    `keys` names the ensemble version (shard -> final checkpoint key); default the current one.
    With a frozen backbone, its weights are written once (`backbone.pt`) and each constituent's file
    holds only what it trained (a head, or adapters and a head). The example input is zeros of the
    input shape: no sample, training or test, leaves the run.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for number, (_, model) in enumerate(session.run.constituents(keys)):
        names.append(f"constituent-{number:03d}.pt")
        torch.save(trainable_state(model), folder / names[-1])
    session.config.save(folder / "config.toml")
    meta = {"sample_shape": list(session.run.table.sample_shape), "num_classes": session.num_classes,
            "aggregation": session.config.sisa.aggregation, "weights": names,
            "trainable": session.config.sisa.trainable}
    if session.backbone is not None:
        torch.save(session.backbone.module.state_dict(), folder / "backbone.pt")
        meta.update(backbone="backbone.pt", backbone_num_classes=session.backbone.num_classes)
    (folder / "meta.json").write_text(json.dumps(meta))
    np.save(folder / "example.npy", np.zeros((2, int(np.prod(session.run.table.sample_shape))), np.float32))
    return folder


@contextmanager
def _parent(tracker: Tracker, session: Session, command: str, extra: dict[str, Any] | None = None,
            tags: dict[str, str] | None = None) -> Iterator[Any]:
    """The command's parent run; opening and closing it count as MLflow time."""
    params = {**session.config.flat(), **(extra or {})}
    run = tracker.run(command, params=params,
                      tags={"command": command, "run_dir": str(session.run.run_dir.resolve()), **(tags or {})})
    with phase("mlflow"):
        active = run.__enter__()
    try:
        yield active
    except BaseException:
        with phase("mlflow"):
            if not run.__exit__(*sys.exc_info()):
                raise
    else:
        with phase("mlflow"):
            run.__exit__(None, None, None)


def _common_artifacts(tracker: Tracker, session: Session) -> None:
    plan = session.run.plan()
    summary = {"num_shards": plan.num_shards, "num_slices": plan.num_slices, "retained": len(plan),
               "shard_sizes": plan.shard_sizes().tolist(),
               "slice_sizes": [[len(ids) for ids in plan.slice_ids(s)] for s in range(plan.num_shards)]}
    tracker.log_dict(summary, "plan.json")
    tracker.log_artifact(session.run.run_dir / "config.toml")


def _publish(tracker: Tracker, session: Session, tags: dict[str, str], keys: Mapping[int, str] | None = None) -> str | None:
    """Log and register the ensemble (version `keys`, default the current one), and record the
    version with the run (so a deletion finds it)."""
    run = session.run
    with phase("mlflow"), scratch_dir() as tmp:
        entry = tracker.log_model(export_ensemble(session, Path(tmp) / "ensemble", keys),
                                  model_name(run, session.config.tracking.model_name), {**tags, RUN_TAG: run.run_id})
    if entry is None:
        return None
    record_published(run, entry)
    log.info("registered %s", entry["uri"])
    return entry["uri"]


def _ensemble_metrics(session: Session, reports: list[ShardReport], seconds: float,
                      keys: Mapping[int, str] | None = None) -> dict[str, float]:
    test = accuracies(session, keys)
    return {"test/acc": test[session.config.sisa.aggregation], "test/acc_vote": test["vote"],
            "test/acc_mean": test["mean"],
            "time/wall_s": seconds, "time/train_s": sum(r.seconds for r in reports),
            "cost/samples_epochs": sum(r.samples_epochs for r in reports),
            "cost/slices_trained": sum(len(r.slices) for r in reports), "store/bytes": session.run.store.nbytes()}


def train(session: Session, tracker: Tracker, on_slice: OnSlice = None) -> tuple[list[ShardReport], dict[str, float]]:
    """Train (or resume) the ensemble; returns the shard reports and the logged metrics.

    A new model version is registered when training changed the ensemble, or when the run has
    no version live at this tracking URI; a finished run trained again registers nothing.
    """
    run = session.run
    with run.locked(), _parent(tracker, session, "train"):
        began = time.perf_counter()
        reports = run.train(on_slice)
        log_shard_runs(tracker, reports)
        metrics = _ensemble_metrics(session, reports, time.perf_counter() - began)
        tracker.log_metrics(metrics)
        _common_artifacts(tracker, session)
        if any(r.slices for r in reports) or not tracker.has_live_version(published(run.run_dir)):
            _publish(tracker, session, {"command": "train"})
    return reports, metrics


def forget(session: Session, tracker: Tracker, sample_ids: list[int] | np.ndarray | None, reason: str = "",
           on_slice: OnSlice = None) -> tuple[list[DeletionReport], dict[str, float]]:
    """Serve a deletion request (or, with no ids, finish interrupted ones); one model version per request.

    The whole command holds the run's lock, so the version it registers and the state it reports
    are the ones its request made. A refused request opens no MLflow run.
    """
    run = session.run
    with run.locked():
        if sample_ids is not None:
            run.validate(sample_ids)
        elif not run.ledger.pending():
            return [], {}
        params = {"request.num_ids": len(sample_ids) if sample_ids is not None else 0}
        with _parent(tracker, session, "forget", params):
            began = time.perf_counter()
            if sample_ids is None:
                reports = [report for report in [run.serve_pending(on_slice)] if report is not None]
            else:
                reports = [run.forget(sample_ids, reason=reason, on_slice=on_slice)]
            metrics, _ = _log_deletion(tracker, session, reports, began, {"command": "forget"})
    return reports, metrics


def track_deletion(session: Session, tracker: Tracker, report: DeletionReport, began: float,
                   keys: Mapping[int, str], tags: dict[str, str]) -> tuple[dict[str, float], str | None]:
    """Track requests served elsewhere (a service) as `forget` does, one parent run, and register the
    ensemble version `keys` they made; returns the metrics and the registered model's URI (None
    when nothing was published)."""
    with _parent(tracker, session, "forget", {"request.num_ids": len(report.sample_ids)}, tags):
        return _log_deletion(tracker, session, [report], began, tags, keys)


def _log_deletion(tracker: Tracker, session: Session, reports: list[DeletionReport], began: float,
                  tags: dict[str, str], keys: Mapping[int, str] | None = None) -> tuple[dict[str, float], str | None]:
    """Inside the parent run: shard runs, metrics, request summaries, artifacts, and the new model version."""
    run = session.run
    shard_reports = [r for report in reports for r in report.shards]
    with phase("mlflow"):
        log_shard_runs(tracker, shard_reports)
    metrics = _ensemble_metrics(session, shard_reports, time.perf_counter() - began, keys)
    metrics["time/unlearn_s"] = sum(r.seconds for r in reports)
    with phase("mlflow"):
        tracker.log_metrics(metrics)
        for report in reports:
            tracker.log_dict(request_summary(report), f"requests/{'+'.join(report.request_ids)}.json")
        _common_artifacts(tracker, session)
    uri = _publish(tracker, session, {**tags, "request_id": reports[-1].request_id}, keys)
    if uri is not None:
        run.record_version(reports[-1].request_id, uri)
    return metrics, uri


def request_summary(report: DeletionReport) -> dict[str, Any]:
    """What MLflow gets about a request: counts and digests only.

    The ledger in the run directory keeps the ids and which shards and slices were retrained;
    published records never say which shard held which sample (the assignment is secret).
    """
    kinds: dict[str, int] = {}
    for item in report.destroyed:
        kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
    return {"request_ids": report.request_ids, "num_ids": int(len(report.sample_ids)),
            "ids_sha256": ids_digest_hex(report.sample_ids), "shards_retrained": len(report.retrained),
            "slices_retrained": sum(len(v) for v in report.retrained.values()),
            "samples_epochs": report.samples_epochs, "destroyed": kinds, "seconds": round(report.seconds, 3)}


def approximate(session: Session, tracker: Tracker, method: approx.UnlearningMethod,
                sample_ids: list[int] | np.ndarray, target: str) -> ApproxReport:
    """Run an approximate method; a child run holds the method's params and before/after metrics."""
    session.run.validate(sample_ids)  # a refused request opens no MLflow run
    with _parent(tracker, session, "approx", {"request.num_ids": len(sample_ids)}):
        params = {f"method.{f.name}": getattr(method, f.name) for f in dataclasses.fields(method)}
        with tracker.run(f"{method.name}-{target}", params={"method": method.name, "target": target, **params}):
            report = run_approx(session, method, sample_ids, target=target)
            tracker.log_metrics({**report.after, **{f"before/{k}": v for k, v in report.before.items()},
                                 "time/unlearn_s": report.seconds, "cost/samples": report.samples})
            with scratch_dir() as tmp:
                tracker.log_artifact(write_json(Path(tmp), "request.json",
                                                {"num_ids": len(report.forget_ids),
                                                 "ids_sha256": ids_digest_hex(report.forget_ids)}))
    return report


def pretrain(config: RunConfig, out: Path, tracker: Tracker, on_slice: OnSlice = None) -> PretrainReport:
    """Pretrain a backbone on the public data (see orchestration.frozen.pretrain); the run logs its params and metrics."""
    with tracker.run("pretrain", params=config.flat(), tags={"command": "pretrain", "out": str(out.resolve())}):
        report = pretrain_backbone(config, out, on_slice)
        tracker.log_metrics({"test/acc": report.test_accuracy, "time/train_s": report.seconds,
                             "cost/samples_epochs": report.samples_epochs, "data/public_samples": report.samples})
        tracker.log_dict({"path": str(report.path.resolve()), "sha256": report.sha256, "classifier": report.classifier},
                         "backbone.json")
    return report


def bench(config: RunConfig, out: Path, tracker: Tracker | None = None, progress: Progress | None = None,
          notes: Sequence[str] = ()) -> BenchResult:
    """Run the bench of `config.bench` (see orchestration/bench): populations of models on Ray or in this
    process, per-example scores against retraining, tables and plots in `out`, a parent MLflow run
    with a child per method (`config.tracking`'s tracker unless one is given); `notes` join its header."""
    from orchestration.bench.run import run_bench

    return run_bench(config, out, tracker, progress=progress, notes=notes)


def tune(config: RunConfig, methods: list[str], out: Path, tuned_dir: Path, command: str,
         tracker: Tracker | None = None, progress: Progress | None = None) -> TuneResult:
    """Tune `methods` against retraining in the setting of `config` (see orchestration/bench/tune.py): a
    Ray Tune search per method on data and seeds the bench never reports, each trial an MLflow run,
    the best configurations written under `tuned_dir`."""
    from orchestration.bench.tune import run_tune

    return run_tune(config, methods, out, tuned_dir, command, tracker, progress)
