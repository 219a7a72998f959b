"""The `unlearn` command line: train, forget, status, predict, methods, approx, bench."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

import approx
from approx.registry import parameters
from orchestration import commands
from orchestration.bench import create_methods
from orchestration.bench_report import markdown_table
from orchestration.config import RunConfig, load_config
from orchestration.requests import check_new, describe_ids, ids_from_file, ids_from_text
from orchestration.runs import Session, open_session
from orchestration.status import describe
from orchestration.tracking import make_tracker
from sisa import InvalidRequestError, SisaError, SliceReport, aggregate

log = logging.getLogger("unlearn")


def request_ids(args: argparse.Namespace, session: Session) -> np.ndarray:
    """The sample_ids of a request given as --ids or --ids-file, in the data set's own ids."""
    table = session.run.table
    if args.ids is not None:
        ids = ids_from_text(args.ids, table)
    elif args.ids_file is not None:
        ids = ids_from_file(args.ids_file, table, session.config.data.id_column)
    else:
        raise InvalidRequestError("give --ids or --ids-file")
    check_new(table, ids, session.run.ledger.requests())
    return ids


class Progress:
    """One tqdm bar over the slices a command trains."""

    def __init__(self, what: str) -> None:
        self.bar = tqdm(desc=what, unit="slice", dynamic_ncols=True, leave=False, disable=None)

    def __call__(self, report: SliceReport) -> None:
        self.bar.set_postfix(shard=report.shard, slice=report.slice, loss=f"{report.loss:.3f}")
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set values plus the shorthand flags, which are settings too."""
    extra = []
    if getattr(args, "engine", None):
        extra.append(f"ray.engine={args.engine}")
    if getattr(args, "address", None):
        extra.append(f"ray.address={args.address}")
    if getattr(args, "tracking_uri", None):
        extra.append(f"tracking.uri={args.tracking_uri}")
    if getattr(args, "no_track", False):
        extra.append("tracking.enabled=false")
    return [s for s in args.set if not s.startswith("method.")] + extra


def _session(args: argparse.Namespace, create: bool = False, trains: bool = True) -> Session:
    return open_session(args.run_dir, getattr(args, "config", None), _overrides(args), create=create,
                        lock_timeout=args.lock_timeout, trains=trains)


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
    session = _session(args)
    if args.ids is None and args.ids_file is None and not args.resume:
        raise InvalidRequestError("give --ids, --ids-file, or --resume to finish an interrupted request")
    ids = None if args.resume and args.ids is None and args.ids_file is None else request_ids(args, session)
    progress = Progress("retraining")
    try:
        reports, metrics = commands.forget(session, make_tracker(session.config.tracking), ids, args.reason, progress)
    finally:
        progress.close()
    if not reports:
        print("no interrupted request to finish")
    for report in reports:
        print(f"request {report.request_id}: {len(report.sample_ids)} sample(s) forgotten "
              f"({describe_ids(session.run.table, report.sample_ids)}); "
              f"retrained {report.retrained or 'nothing'} (shard: slices), "
              f"{report.samples_epochs} samples x epochs, {report.seconds:.1f} s; "
              f"purged {report.purged} checkpoint(s)")
    print(f"test accuracy: {metrics['test/acc']:.4f}")


def cmd_status(args: argparse.Namespace) -> None:
    session = _session(args, trains=False)
    info = describe(session)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if key == "shards":
            print("shards:")
            for row in value:
                print(f"  shard {row['shard']:>3}: {row['samples']:>6} samples, checkpoints {row['checkpoints']}")
        elif key == "requests":
            print(f"requests: {len(value)}")
            for row in value:
                print(f"  {row['request_id']} {row['time']} {row['num_ids']} id(s) ({row['ids']}) {row['state']}"
                      f"{' ' + row['reason'] if row['reason'] else ''}")
        else:
            print(f"{key}: {value}")


def cmd_predict(args: argparse.Namespace) -> None:
    session = _session(args, trains=False)
    table = session.test if args.split == "test" else session.run.table
    ids = ids_from_text(args.ids, table) if args.ids else table.ids
    x, labels = table.tensors(ids)
    logits = session.run.logits(x)
    how = args.aggregation or session.config.sisa.aggregation
    predicted = aggregate(logits, how)
    print(f"{args.split} accuracy ({how}): {(predicted == labels).double().mean().item():.4f} on {len(ids)} samples")
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
    for name, summary in approx.describe().items():
        print(f"{name:16} {summary}")
        if args.verbose:
            print("".join(f"{'':18}{k} = {v!r}\n" for k, v in parameters(name).items()), end="")


def cmd_approx(args: argparse.Namespace) -> None:
    method_params = {k.removeprefix("method."): v for k, _, v in (s.partition("=") for s in args.set)
                     if k.startswith("method.")}
    method = approx.create(args.method, **method_params)
    session = _session(args)
    report = commands.approximate(session, make_tracker(session.config.tracking), method,
                                  request_ids(args, session), args.target)
    print(f"{report.method} on the {report.target} model(s) {report.shards}: {len(report.forget_ids)} sample(s), "
          f"{report.samples} samples processed, {report.seconds:.2f} s")
    for key in report.before:
        print(f"  {key:12} {report.before[key]:.4f} -> {report.after[key]:.4f}")
    print(f"unlearned model(s) written to {report.saved_to} (the exact SISA checkpoints are unchanged)")


def quick(config: RunConfig) -> RunConfig:
    """`--quick`: the same bench, shrunk to run in CI: 2 seeds, at most 5 epochs, 2000 samples, 3 cost-curve requests."""
    limit = min(config.data.train_limit or 2000, 2000)
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, train_limit=limit),
        sisa=dataclasses.replace(config.sisa, epochs=min(config.sisa.epochs, 5)),
        bench=dataclasses.replace(config.bench, seeds=config.bench.seeds[:2] if len(config.bench.seeds) > 1 else (0, 1),
                                  cost_requests=min(config.bench.cost_requests, 3)))


def cmd_bench(args: argparse.Namespace) -> None:
    config = load_config(args.config, _overrides(args))
    if args.quick:
        config = quick(config)
    steps = len(config.bench.seeds) * (4 + len(create_methods(config.bench)) * len(config.bench.targets))
    bar = tqdm(total=steps, desc="bench", unit="step", dynamic_ncols=True, leave=False, disable=None)
    try:
        result = commands.bench(config, Path(args.out), make_tracker(config.tracking),
                                lambda what: (bar.set_postfix_str(what), bar.update()))
    finally:
        bar.close()
    b = config.bench
    print(f"{config.data.name}, {config.model.name}, scenario {b.scenario}, {len(result.rows[0].forget_stat)} sample(s) "
          f"forgotten, seeds {list(b.seeds)}; metrics in %, mean ± std over seeds, gaps measured to retraining")
    print(markdown_table(result.summary))
    print(f"tables and plots written to {args.out}: " + ", ".join(p.name for p in result.files))


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
    bench = sub.add_parser("bench", help="Compare retraining, SISA and approximate methods (see configs/).",
                           description="Train, unlearn and score every method against retraining, over several "
                                       "seeds; print the table and write tables and plots. With no arguments: a "
                                       "quick run on the embedded digits data set.")
    bench.add_argument("--config", help="TOML config file with a [bench] section (see configs/bench-*.toml)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set bench.scenario=class (repeatable)")
    bench.add_argument("--out", default="runs/bench", help="where runs, tables and plots go (default runs/bench)")
    bench.add_argument("--quick", action="store_true", help="shrink the bench to a CI-sized run")
    bench.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    bench.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `unlearn` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (SisaError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
