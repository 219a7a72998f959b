"""The work behind `unlearn train | forget | approx | bench`, tracked: one parent run per command.

The CLI parses and prints; these functions run the SISA and approximate libraries and log what
they did (params, per-shard child runs, metrics, artifacts, a new model version of the ensemble).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import approx
from orchestration.approximate import ApproxReport, run_approx
from orchestration.bench import OnStep, Row, SeedBench, cost_curve, create_methods, forget_requests
from orchestration.bench_report import plot_gap_vs_time, plot_metrics, plot_sisa_cost, summarize, write_tables
from orchestration.config import RunConfig
from orchestration.datasets import load_dataset
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


def forget(session: Session, tracker: Tracker, sample_ids: list[int] | np.ndarray | None, reason: str = "",
           on_slice: OnSlice = None) -> tuple[list[DeletionReport], dict[str, float]]:
    """Serve a deletion request (or, with no ids, finish interrupted ones); one model version per request."""
    num_ids = 0 if sample_ids is None else len(sample_ids)
    with _parent(tracker, session, "forget", {"request.num_ids": num_ids, "request.reason": reason}):
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
            record = {"request_id": report.request_id, "sample_ids": report.sample_ids.tolist(),
                      "reason": reason, "dirty": report.dirty, "retrained": report.retrained,
                      "samples_epochs": report.samples_epochs, "purged": report.purged, "seconds": report.seconds}
            if session.run.table.keys is not None:
                record["ids"] = session.run.table.keys_of(report.sample_ids).to_pylist()  # the data set's own ids
            tracker.log_dict(record, f"requests/{report.request_id}.json")
        _common_artifacts(tracker, session)
        if reports:
            _log_model(tracker, session, {"command": "forget", "request_id": reports[-1].request_id})
    return reports, metrics


def approximate(session: Session, tracker: Tracker, method: approx.UnlearningMethod,
                sample_ids: list[int] | np.ndarray, target: str) -> ApproxReport:
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


@dataclass
class BenchResult:
    """What `unlearn bench` produced."""

    rows: list[Row]
    summary: list[dict[str, Any]]
    curve: list[dict[str, float]]
    files: list[Path]


def bench(config: RunConfig, out: Path, tracker: Tracker, on_step: OnStep = None) -> BenchResult:
    """Run the head-to-head bench of `config.bench`, write its tables and plots to `out` and log everything.

    A parent run holds the config, the tables and plots; a child run per method, target and seed
    holds that result's metrics. Shards are trained in-process whatever `ray.engine` says, so the
    times of retraining, SISA and the approximate methods compare like for like.
    """
    methods = create_methods(config.bench)  # bad names or parameters fail before any training
    config = dataclasses.replace(config, store="", ray=dataclasses.replace(config.ray, engine="local"))
    data = load_dataset(config.data)
    requests = forget_requests(config.bench, data[0])
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.toml")
    tags = {"command": "bench", "scenario": config.bench.scenario, "out": str(out.resolve())}
    with tracker.run("bench", params={**config.flat(), "bench.forget_count": sum(map(len, requests))}, tags=tags):
        rows: list[Row] = []
        first: Session | None = None
        for seed in config.bench.seeds:
            seed_bench = SeedBench(config, seed, data, requests, out, on_step)
            first = first or seed_bench.session
            for row in seed_bench.run(methods, config.bench.targets):
                _log_row(tracker, row, methods)
                rows.append(row)
        curve = []
        if config.bench.cost_requests and first is not None:
            curve = cost_curve(first, requests, config.bench.cost_requests, config.bench.forget_seed, out)
        summary = summarize(rows)
        retrain_s = float(np.mean([r.metrics["seconds"] for r in rows if r.method == "retrain"])) / len(requests)
        files = write_tables(summary, rows, out) + [plot_gap_vs_time(summary, out / "gap_vs_time.png"),
                                                    plot_metrics(summary, out / "metrics.png")]
        if curve:
            files.append(plot_sisa_cost(curve, retrain_s, out / "sisa_cost.png"))
            tracker.log_dict(curve, "sisa_cost_curve.json")
        for path in files + [out / "config.toml"]:
            tracker.log_artifact(path)
        tracker.log_metrics({f"{e['method']}.{e['target']}/{k}": e[k] for e in summary for k in ("gap", "FQ", "seconds")
                             if not np.isnan(e[k])})
    return BenchResult(rows, summary, curve, files)


def _log_row(tracker: Tracker, row: Row, methods: list[approx.UnlearningMethod]) -> None:
    method = next((m for m in methods if m.name == row.method), None)
    params: dict[str, Any] = {"method": row.method, "target": row.target, "seed": row.seed, "kind": row.kind}
    if method is not None:
        params.update({f"method.{f.name}": getattr(method, f.name) for f in dataclasses.fields(method)})
    with tracker.run(f"{row.method}-{row.target}-seed{row.seed}", params=params,
                     tags={"method": row.method, "target": row.target, "seed": str(row.seed)}):
        tracker.log_metrics({_METRIC_NAMES.get(k, k): v for k, v in row.metrics.items() if not np.isnan(v)})


_METRIC_NAMES = {"UA": "forget/UA", "RA": "retain/acc", "TA": "test/acc", "MIA": "mia/efficacy", "gap": "gap/avg",
                 "KL": "forget/kl_to_retrain", "JS": "forget/js_to_retrain", "seconds": "time/unlearn_s",
                 "samples_epochs": "cost/samples_epochs", "peak_mb": "cost/peak_mb", "store_mb": "store/mb"}
