"""The `unlearn` command line: train, forget, status, predict, methods, approx, bench, tune, audit, pretrain, serve."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

import approx
from approx.registry import method_class, parameter_docs, parameters
from orchestration import commands, timings
from orchestration.audit import certificate
from orchestration.bench import tuned
from orchestration.bench.protocol import create_methods
from orchestration.config import RunConfig, load_config
from orchestration.frozen.public import describe_public
from orchestration.requests import check_new, describe_ids, ids_from_file, ids_from_text
from orchestration.runs import Session, open_session, resolve_config
from orchestration.status import describe
from orchestration.tracking import make_tracker
from sisa import InvalidRequestError, PendingRequestError, SisaError, SliceReport, aggregate
from sisa.errors import LedgerError, RunBindingError

log = logging.getLogger("unlearn")


def request_ids(args: argparse.Namespace, session: Session) -> np.ndarray:
    """The sample_ids of a request given as --ids or --ids-file, in the data set's own ids."""
    table = session.run.table
    if args.ids is not None:
        ids = ids_from_text(args.ids, table, history=session.run.ledger.requests())
    elif args.ids_file is not None:
        ids = ids_from_file(args.ids_file, table, session.config.data.id_column, session.run.ledger.requests())
    else:
        raise InvalidRequestError("give --ids or --ids-file")
    check_new(table, ids, session.run.ledger.requests())
    # Refused here, before the command makes its tracker: opening MLflow creates its store on disk,
    # and a refused request must leave nothing behind.
    return session.run.validate(ids)


class Progress:
    """One tqdm bar over the slices a command trains."""

    def __init__(self, what: str) -> None:
        self.bar = tqdm(desc=what, unit="slice", dynamic_ncols=True, leave=False, disable=None)

    def __call__(self, report: SliceReport) -> None:
        self.bar.set_postfix(shard=report.shard, slice=report.slice, loss=f"{report.loss:.3f}")
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _settings(args: argparse.Namespace) -> list[str]:
    """--set values (method.* parameters excluded): settings a new run keeps."""
    return [s for s in args.set if not s.startswith("method.")]


def _flags(args: argparse.Namespace) -> list[str]:
    """The shorthand flags, as settings for this command only (never saved with a run)."""
    extra = []
    if getattr(args, "engine", None):
        extra.append(f"ray.engine={args.engine}")
    if getattr(args, "address", None):
        extra.append(f"ray.address={args.address}")
    if getattr(args, "tracking_uri", None):
        extra.append(f"tracking.uri={args.tracking_uri}")
    if getattr(args, "no_track", False):
        extra.append("tracking.enabled=false")
    return extra


def _session(args: argparse.Namespace, create: bool = False, trains: bool = True) -> Session:
    session = open_session(args.run_dir, getattr(args, "config", None), _settings(args), create=create,
                           lock_timeout=args.lock_timeout, flags=_flags(args), trains=trains)
    # Torch's default of one thread per core collapses when another process shares the cores (threads
    # wait at every operation's barrier for the one that was descheduled); the run's count does not,
    # and matches the shard actors', so both engines train the same bits. main() restores the default.
    torch.set_num_threads(session.config.ray.command_threads())
    return session


def cmd_train(args: argparse.Namespace) -> None:
    session = _session(args, create=True)
    progress = Progress("training")
    try:
        reports, metrics = commands.train(session, make_tracker(session.config.tracking), progress)
    finally:
        progress.close()
    print(f"trained {int(metrics['cost/slices_trained'])} slice(s) over {len(reports)} shard(s): "
          f"{int(metrics['cost/samples_epochs'])} samples x epochs, {metrics['time/wall_s']:.1f} s")
    print(f"test accuracy: {metrics['test/acc']:.4f}")


def cmd_forget(args: argparse.Namespace) -> None:
    if args.ids is None and args.ids_file is None and not args.resume:
        raise InvalidRequestError("give --ids, --ids-file, or --resume to finish an interrupted request")
    session = _session(args)
    ids = None if args.resume and args.ids is None and args.ids_file is None else request_ids(args, session)
    progress = Progress("retraining")
    try:
        reports, metrics = commands.forget(session, make_tracker(session.config.tracking), ids, args.reason, progress)
    finally:
        progress.close()
    if not reports:
        print("no interrupted request to finish")
        return
    for report in reports:
        print(f"request {', '.join(report.request_ids)}: {len(report.sample_ids)} sample(s) forgotten "
              f"({describe_ids(session.run.table, report.sample_ids)}); "
              f"retrained {report.retrained or 'nothing'} (shard: slices), "
              f"{report.samples_epochs} samples x epochs, {report.seconds:.1f} s; "
              f"destroyed {report.purged} checkpoint(s) and {len(report.destroyed) - report.purged} other item(s) "
              "that saw the samples")
    print(f"test accuracy: {metrics['test/acc']:.4f}")


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        session = _session(args)
    except (LedgerError, RunBindingError) as err:
        print(f"audit FAILED: {err}")
        return 1
    report = certificate(session, args.request, Path(args.retrain) if args.retrain else None)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"run {report['run']} ({report['run_id']}): ledger of {report['ledger']['records']} records verified, "
          f"{report['deleted_ids']} sample(s) deleted; checked {', '.join(report['checked'])}")
    for entry in report["requests"]:
        kinds: dict[str, int] = {}
        for item in entry["destroyed"]:
            kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
        print(f"  {entry['request_id']} {entry['state']}: {entry['num_ids']} id(s) (sha256 {entry['ids_sha256'][:16]}), "
              f"recorded {entry['recorded']}, finished {entry['finished'] or '-'}; retrained {entry['retrained'] or '-'}; "
              f"destroyed {kinds or 'nothing'}; replaced by {', '.join(entry['replaced_by']) or '-'}")
    for finding in report["findings"]:
        print(f"FOUND {finding}")
    print("audit: clean" if report["clean"] else f"audit FAILED: {len(report['findings'])} finding(s)")
    if args.json:
        print(f"certificate written to {args.json}")
    return 0 if report["clean"] else 1


def cmd_status(args: argparse.Namespace) -> None:
    session = _session(args, trains=False)
    info = describe(session)
    if args.json:
        print(json.dumps(info, indent=2))
        return
    d, s, store = info["data"], info["sisa"], info["store"]
    print(f"run: {info['run']} (id {info['run_id']})")
    print(f"data: {d['name']}: {d['train']} training samples ({d['retained']} retained), {d['test']} test")
    print(f"model: {info['model']}, seed {info['seed']}")
    print(f"sisa: {s['num_shards']} shards x {s['num_slices']} slices, {s['epochs']} epochs "
          f"({s['slice_epochs']} per slice), {s['optimizer']} lr {s['lr']} {s['lr_schedule']}"
          f"{', augmented' if s['augment'] else ''}, aggregation {s['aggregation']}")
    if info["backbone"]:
        b = info["backbone"]
        print(f"backbone: {b['path']} (sha256 {b['sha256'][:16]}, frozen, features {tuple(b['feature_shape'])}); "
              f"each shard trains {b['each_shard_trains']}")
    if info["features"]:
        f = info["features"]
        print(f"features: {f['path']}: {f['rows']} sample(s), {f['bytes'] / 1e6:.2f} MB")
    if info["public"]["samples"]:
        print(f"public: {info['public']['samples']} sample(s), non-deletable ({info['public']['declared_by']})")
    if info["classes"]:
        print(f"classes: {', '.join(info['classes'])}")
    print(f"store: {store['uri']}: {store['checkpoints']} checkpoints, {store['bytes'] / 1e6:.2f} MB")
    print("shards (checkpoints: + present, . missing):")
    for row in info["shards"]:
        marks = "".join("+" if present else "." for present in row["checkpoints"]) or "(empty shard)"
        print(f"  shard {row['shard']:>3}: {row['samples']:>6} samples, checkpoints {marks}")
    print(f"requests: {len(info['requests'])}")
    for row in info["requests"]:
        state = "pending" if row["state"] == "pending" else f"done, retrained {row['retrained']}"
        print(f"  {row['request_id']} {row['time']} {row['num_ids']} id(s) ({row['ids']}) {state}"
              f"{' ' + row['reason'] if row['reason'] else ''}")
    accuracy = info["test_accuracy"]
    print(f"test accuracy: {accuracy}" if accuracy else f"test accuracy unavailable: {info['test_accuracy_unavailable']}")


def cmd_predict(args: argparse.Namespace) -> None:
    if args.output and not Path(args.output).resolve().parent.is_dir():
        raise ValueError(f"--output {args.output}: folder {Path(args.output).resolve().parent} does not exist")
    session = _session(args, trains=False)
    table = session.test if args.split == "test" else session.run.table
    note = ""
    if args.ids:
        ids = ids_from_text(args.ids, table)
    elif args.split == "train":
        ids = session.run.retained_ids()
        excluded = len(table) - len(ids)
        note = f" ({excluded} deleted sample(s) excluded; name them with --ids to score them)" if excluded else ""
    else:
        ids = table.ids
    x, labels = table.tensors(ids)
    logits = session.run.logits(x)
    how = args.aggregation or session.config.sisa.aggregation
    predicted = aggregate(logits, how)
    print(f"{args.split} accuracy ({how}): {(predicted == labels).double().mean().item():.4f} on {len(ids)} samples{note}")
    if args.output:
        # The data set's own ids and class names, when it has them.
        id_name = "sample_id" if table.keys is None else session.config.data.id_column
        columns = {id_name: table.keys_of(ids), "label": labels.numpy(), "predicted": predicted.numpy()}
        if table.class_names is not None:
            names = pa.array(table.class_names, pa.string())
            columns.update(label=names.take(columns["label"]), predicted=names.take(columns["predicted"]))
        out = pa.table(columns)
        if args.output.endswith(".parquet"):
            pq.write_table(out, args.output)
        else:
            import pyarrow.csv as pcsv

            pcsv.write_csv(out, args.output)
        print(f"wrote {len(ids)} predictions to {args.output}")


def cmd_methods(args: argparse.Namespace) -> None:
    width = max(map(len, approx.available())) + 2
    for name, summary in approx.describe().items():
        print(f"{name:{width}}{summary}")
        if args.verbose:
            print(f"{'':{width}}reference: {method_class(name).reference}")
            docs, defaults = parameter_docs(name), parameters(name)
            settings = {key: f"{key} = {value!r}" for key, value in defaults.items()}
            column = max(map(len, settings.values())) + 2
            for key, setting in settings.items():
                print(f"{'':{width + 2}}{setting:{column}}{docs[key]}")


def cmd_approx(args: argparse.Namespace) -> None:
    method_params = {k.removeprefix("method."): v for k, _, v in (s.partition("=") for s in args.set)
                     if k.startswith("method.")}
    method = approx.create(args.method, **method_params)
    session = _session(args)
    report = commands.approximate(session, make_tracker(session.config.tracking), method,
                                  request_ids(args, session), args.target)
    if report.trained_single is not None:
        print(f"trained the single model on the run's retained data first ({report.trained_single[0]} samples x "
              f"epochs, {report.trained_single[1]:.1f} s); later runs reuse it until the next deletion")
    print(f"{report.method} on the {report.target} model(s) {report.shards}: {len(report.forget_ids)} sample(s), "
          f"{report.samples} samples processed, {report.seconds:.2f} s")
    for key in report.before:
        print(f"  {key:12} {report.before[key]:.4f} -> {report.after[key]:.4f}")
    print(f"unlearned model(s) written to {report.saved_to} (the exact SISA checkpoints are unchanged)")


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestration.serve.launch import serve_forever

    flags = _flags(args) + [f"serve.{key}={getattr(args, key)}" for key in ("host", "port") if getattr(args, key)]
    config, _ = resolve_config(Path(args.run_dir), None, _settings(args), create=False, flags=flags)
    return serve_forever(Path(args.run_dir), config)


def quick(config: RunConfig) -> RunConfig:
    """`--quick`: the same bench shrunk for CI: 8 models a side, at most 500 training samples (fewer
    samples also make the originals memorise more), 2 cost-curve requests."""
    limit = min(config.data.train_limit or 500, 500)
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, train_limit=limit),
        bench=dataclasses.replace(config.bench, models=min(config.bench.models, 8),
                                  cost_requests=min(config.bench.cost_requests, 2)))


class BenchProgress:
    """One tqdm bar over every job of the bench (or tune); its total grows as more are planned."""

    def __init__(self, desc: str = "bench", unit: str = "model") -> None:
        self.bar = tqdm(total=0, desc=desc, unit=unit, dynamic_ncols=True, leave=False, disable=None)

    def planned(self, count: int) -> None:
        self.bar.total += count
        self.bar.refresh()

    def finished(self, label: str) -> None:
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def cmd_bench(args: argparse.Namespace) -> None:
    config = load_config(args.config, _settings(args) + _flags(args))
    if args.quick:
        config = quick(config)
    create_methods(config.bench)  # bad names or parameters fail before anything starts
    notes: list[str] = []
    if args.tuned is not None:
        config, notes = tuned.apply(config, Path(args.tuned))
    progress = BenchProgress()
    try:
        result = commands.bench(config, Path(args.out), progress=progress, notes=notes)
    finally:
        progress.close()
    print(result.header)
    print(result.table, end="")
    print(f"full tables (with 95% intervals), per-example arrays and plots in {args.out}: "
          + ", ".join(p.name for p in result.files if p.parent == Path(args.out)))
    print(f"trained and unlearned models are cached in {config.bench.cache_dir or Path(args.out) / 'models'} "
          "(a rerun reuses them; delete the folder to free the space)")


def quick_tune(config: RunConfig) -> RunConfig:
    """`tune --quick`: the bench's quick setting, at most 4 trials per method on 8 models a side."""
    config = quick(config)
    return dataclasses.replace(config, tune=dataclasses.replace(config.tune, trials=min(config.tune.trials, 4), models=8))


def cmd_tune(args: argparse.Namespace) -> None:
    extra = [f"tune.trials={args.trials}"] if args.trials is not None else []
    extra += [f"tune.time_budget_s={args.time_budget}"] if args.time_budget is not None else []
    config = load_config(args.config, _settings(args) + extra + _flags(args))
    if args.quick:
        config = quick_tune(config)
    if config.ray.address.startswith("ray://"):
        raise ValueError(f"unlearn tune drives Ray Tune from this process, which a Ray Client address "
                         f"({config.ray.address}) cannot do; run it on a cluster node with --address auto (or through "
                         "`ray job submit`)")
    names = approx.available() if args.method.strip() == "all" else \
        list(dict.fromkeys(n.strip() for n in args.method.split(",") if n.strip()))  # once each, in order
    if not names:
        raise ValueError(f"--method {args.method!r} names no method; give a method, several comma-separated, or 'all' "
                         "(`unlearn methods` lists them)")
    from orchestration.bench.tune import searched, tune_table  # scipy.stats: 0.5 s no other command pays

    create_methods(searched(config, names))  # bad names or parameters fail before anything starts
    progress = BenchProgress("tune", "job")
    command = "unlearn " + shlex.join(args.argv)
    try:
        result = commands.tune(config, names, Path(args.out), Path(args.tuned_dir), command, progress=progress)
    finally:
        progress.close()
    print(result.header)
    print(tune_table(result), end="")
    print(f"models: {result.made} made, {result.reused} reused from the cache")
    print(f"every trial (parameters, scores, what it saw) in {Path(args.out) / 'trials.jsonl'}; the tuning and bench "
          f"protocols in {Path(args.out) / 'tune_protocol.json'}")
    if any(s.path for s in result.searches):
        print(f"run the bench with them: unlearn bench{' --config ' + args.config if args.config else ''} --tuned"
              f"{'' if Path(args.tuned_dir) == tuned.TUNED_DIR else ' ' + args.tuned_dir}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    config = load_config(args.config, _settings(args) + _flags(args))
    progress = Progress("pretraining")
    try:
        report = commands.pretrain(config, Path(args.out), make_tracker(config.tracking), progress)
    finally:
        progress.close()
    print(f"pretrained {config.model.name} on {report.samples} public sample(s) ({describe_public(config.data)}): "
          f"{report.samples_epochs} samples x epochs, {report.seconds:.1f} s; test accuracy of the pretrained "
          f"classifier {report.test_accuracy:.4f}")
    print(f"wrote {report.path} (sha256 {report.sha256[:16]}, classifier {report.classifier or 'none'} removed); "
          f"train on it with --set model.backbone={report.path} --set sisa.trainable=head (or adapter)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn", description="Exact (SISA) and approximate machine unlearning.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--run-dir", required=True, help="directory of the run (config, checkpoints, ledger)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set sisa.num_shards=8 (repeatable)")
        p.add_argument("--lock-timeout", type=float, default=None,
                       help="seconds to wait for another command on the run dir (default: wait)")
        p.add_argument("--engine", choices=("ray", "local"), help="shard execution engine (default: ray)")
        p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS or a new local cluster)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
        p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
        p.add_argument("--timings", action="store_true", help="print where the command's time went")
        return p

    train = command("train", "Train (or resume training) a SISA ensemble.")
    train.add_argument("--config", help="TOML config file (see configs/)")
    train.set_defaults(func=cmd_train)
    forget = command("forget", "Exactly unlearn samples: retrain only the slices that saw them.")
    forget.add_argument("--ids", help="comma-separated ids of the data set, e.g. 3,17,42 or user-42,user-77")
    forget.add_argument("--ids-file", help="text file with one id per line, or Parquet with a data.id_column "
                                           "or sample_id column")
    forget.add_argument("--reason", default="", help="why the samples are deleted (kept in the ledger)")
    forget.add_argument("--resume", action="store_true", help="only finish an interrupted request")
    forget.set_defaults(func=cmd_forget)
    status = command("status", "Show a run's config, shards, checkpoints, requests and accuracy.")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)
    predict = command("predict", "Predict with the ensemble on the test or train split.")
    predict.add_argument("--split", choices=("test", "train"), default="test")
    predict.add_argument("--ids", help="only these ids of the split (comma-separated)")
    predict.add_argument("--aggregation", choices=("vote", "mean"))
    predict.add_argument("--output", help="write sample_id, label, predicted as .csv or .parquet")
    predict.set_defaults(func=cmd_predict)
    methods = sub.add_parser("methods", help="List the approximate unlearning methods.")
    methods.add_argument("--verbose", "-v", action="store_true", help="also list each method's parameters")
    methods.set_defaults(func=cmd_methods)
    approx_ = command("approx", "Approximately unlearn samples with a method (see `unlearn methods`).")
    approx_.add_argument("--method", required=True, help="method name, e.g. salun")
    approx_.add_argument("--ids", help="comma-separated ids of the data set")
    approx_.add_argument("--ids-file", help="text file with one id per line, or Parquet with a data.id_column "
                                            "or sample_id column")
    approx_.add_argument("--target", choices=("ensemble", "single"), default="ensemble",
                         help="the SISA ensemble's affected constituents, or a single model trained on all data")
    approx_.set_defaults(func=cmd_approx)
    bench = sub.add_parser("bench", help="Score retraining, SISA and approximate methods against retrained models.",
                           description="Train populations of original and retrained models, unlearn with every method, "
                                       "and score each per example against the retrained ones (KLoM, U-LiRA, forget "
                                       "quality) between a floor and a ceiling; print the table and write tables, "
                                       "per-example arrays and plots. With no arguments: the embedded digits data set.")
    bench.add_argument("--config", help="TOML config file with a [bench] section (see configs/bench-*.toml)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set bench.scenario=class (repeatable)")
    bench.add_argument("--out", default="runs/bench",
                       help="where tables, plots and the model cache go (default runs/bench)")
    bench.add_argument("--quick", action="store_true", help="shrink the bench to a CI-sized run")
    bench.add_argument("--engine", choices=("ray", "local"),
                       help="ray: one task of 1 CPU per model (default); local: one after another in this process")
    bench.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS or a new local cluster)")
    bench.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    bench.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    bench.add_argument("--tuned", nargs="?", const=str(tuned.TUNED_DIR), metavar="DIR",
                       help="run each method with its tuned hyperparameters from DIR (default configs/tuned) where "
                            "they were tuned for this setting; the others run their defaults, and the output says so")
    bench.set_defaults(func=cmd_bench)
    tune = sub.add_parser("tune", help="Tune methods' hyperparameters against retraining with Ray Tune.",
                          description="Search each method's hyperparameters (Ray Tune, one CPU per trial) for the "
                                      "configuration whose unlearned models are closest to retrained ones, on a "
                                      "forget set, validation samples and seeds the bench never reports; write the "
                                      "best to configs/tuned/<data>-<model>-<scenario>/<method>.toml for "
                                      "`unlearn bench --tuned`.")
    tune.add_argument("--method", required=True, help="a method, several comma-separated, or 'all'")
    tune.add_argument("--config", help="TOML config file with a [bench] section (see configs/bench-*.toml)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a setting, e.g. --set tune.models=16 (repeatable)")
    tune.add_argument("--trials", type=int, help="trials per method (tune.trials, default 20)")
    tune.add_argument("--time-budget", type=float, metavar="SECONDS",
                      help="stop each method's search after this many seconds (tune.time_budget_s; default none)")
    tune.add_argument("--out", default="runs/tune", help="trial records, protocols, Ray Tune's files and the model "
                                                         "cache (default runs/tune)")
    tune.add_argument("--tuned-dir", default=str(tuned.TUNED_DIR), help="where tuned configs go (default configs/tuned)")
    tune.add_argument("--quick", action="store_true", help="shrink the tune to a CI-sized run")
    tune.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS or a new local cluster)")
    tune.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    tune.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    tune.set_defaults(func=cmd_tune)
    audit = command("audit", "Check that nothing the project keeps saw a deleted sample; print the deletion "
                             "certificate. Exits 1 when anything is found.")
    audit.add_argument("--request", help="only this request's part of the certificate, e.g. r-0003")
    audit.add_argument("--json", metavar="FILE", help="also write the certificate as JSON")
    audit.add_argument("--retrain", metavar="DIR", help="also train the retained data from scratch into DIR (same "
                                                        "recipe, seed and secret) and check every constituent is "
                                                        "bit-identical")
    audit.set_defaults(func=cmd_audit)
    pretrain = sub.add_parser("pretrain", help="Train a frozen backbone on the data a run declares public.",
                              description="Train model.name on the public (non-deletable) training samples "
                                          "(data.public_fraction, data.public_ids) with the [pretrain] recipe and "
                                          "write it, without its classifier, to --out for model.backbone.")
    pretrain.add_argument("--out", required=True, help="the backbone file to write (must not exist)")
    pretrain.add_argument("--config", help="TOML config file (the one the run will use)")
    pretrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a setting, e.g. --set pretrain.epochs=20 (repeatable)")
    pretrain.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    pretrain.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    pretrain.set_defaults(func=cmd_pretrain)
    serve = command("serve", "Serve predictions and deletion requests over HTTP (Ray Serve) until stopped.")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8000)")
    serve.set_defaults(func=cmd_serve)
    return parser


_OWN = ("sisa", "approx", "orchestration")


class _Formatter(logging.Formatter):
    """Our own progress lines as plain text; anything else (or worse than INFO) with its level and source."""

    def format(self, record: logging.LogRecord) -> str:
        own = record.name.split(".")[0] in _OWN
        return record.getMessage() if own and record.levelno == logging.INFO else \
            f"{record.levelname} {record.name}: {record.getMessage()}"


def _configure_logging() -> None:
    """Our packages log progress at INFO; other libraries are heard only when they warn."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in _OWN:
        logging.getLogger(name).setLevel(logging.INFO)


def _ray_connected() -> bool:
    ray = sys.modules.get("ray")  # never imported by commands that do not use it
    return ray is not None and ray.is_initialized()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `unlearn` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, recorded by `tune`
    _configure_logging()
    timings.reset()
    began, startup, threads = time.perf_counter(), timings.process_age(), torch.get_num_threads()
    connected = _ray_connected()
    try:
        return args.func(args) or 0
    except PendingRequestError as err:
        print(f"error: {err} Run `unlearn forget --run-dir {args.run_dir} --resume` to finish it.", file=sys.stderr)
    except (SisaError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: an unfinished deletion stays pending in the ledger and is finished by the next command "
              "on the run (or `unlearn forget --resume`)", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)
        if not connected and _ray_connected():
            # Stop (or leave) the cluster this command started now rather than at exit, so that
            # --timings counts it.
            with timings.phase("ray stop"):
                sys.modules["ray"].shutdown()
        if getattr(args, "timings", False):
            parts = timings.breakdown(time.perf_counter() - began, startup)
            total = parts.pop("total")
            print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()) + f"; total {total:.2f} s",
                  file=sys.stderr)
    return 2


def script() -> int:
    """The `unlearn` console script: `main`, then an exit that skips the last garbage collection.

    At exit CPython's final collections walk every object still alive; once torch has imported its
    compiler stack (the first optimizer does) there are millions, and the walk takes 0.6-1.1 s of
    every command on this machine. Freezing them first (`gc.freeze`) skips it; the operating system
    reclaims the memory, and files, MLflow and Ray are closed before `main` returns. Only the
    script does this: `main` called in a long-lived process (tests, a notebook) keeps collecting.
    """
    code = main()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(script())
