"""The `unlearn` command line: train, forget, status, predict, methods, approx, bench."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
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
from orchestration.bench.protocol import create_methods
from orchestration.config import RunConfig, load_config
from orchestration.runs import Session, open_session
from orchestration.status import describe
from orchestration.tracking import make_tracker
from sisa import InvalidRequestError, SisaError, SliceReport, aggregate

log = logging.getLogger("unlearn")


def parse_ids(text: str) -> list[int]:
    """'3,17, 42' -> [3, 17, 42]; anything that is not an integer is rejected by name."""
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    bad = [t for t in tokens if not re.fullmatch(r"[+-]?\d+", t)]
    if bad:
        raise InvalidRequestError(f"sample ids must be integers; got {bad[:5]}")
    return [int(t) for t in tokens]


def read_ids_file(path: str) -> list[int]:
    """Ids from a Parquet file's `sample_id` column, or a text file with one id per line (# comments)."""
    file = Path(path)
    if not file.exists():
        raise InvalidRequestError(f"ids file {path} does not exist")
    if file.suffix == ".parquet":
        table = pq.read_table(file)
        if "sample_id" not in table.column_names:
            raise InvalidRequestError(f"{path} has no 'sample_id' column (columns: {table.column_names})")
        column = table.column("sample_id")
        if not pa.types.is_integer(column.type):
            raise InvalidRequestError(f"{path}: column sample_id must be integers, not {column.type}")
        return column.to_pylist()
    lines = [line.split("#", 1)[0] for line in file.read_text().splitlines()]
    return parse_ids(" ".join(lines))


def request_ids(args: argparse.Namespace) -> list[int]:
    """The ids of a request given as --ids or --ids-file."""
    if args.ids is not None:
        return parse_ids(args.ids)
    if args.ids_file is not None:
        return read_ids_file(args.ids_file)
    raise InvalidRequestError("give --ids or --ids-file")


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


def _session(args: argparse.Namespace, create: bool = False) -> Session:
    return open_session(args.run_dir, getattr(args, "config", None), _overrides(args), create=create,
                        lock_timeout=args.lock_timeout)


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
    ids = None if args.resume and args.ids is None and args.ids_file is None else request_ids(args)
    progress = Progress("retraining")
    try:
        reports, metrics = commands.forget(session, make_tracker(session.config.tracking), ids, args.reason, progress)
    finally:
        progress.close()
    if not reports:
        print("no interrupted request to finish")
    for report in reports:
        print(f"request {report.request_id}: {len(report.sample_ids)} sample(s) forgotten; "
              f"retrained {report.retrained or 'nothing'} (shard: slices), "
              f"{report.samples_epochs} samples x epochs, {report.seconds:.1f} s; "
              f"purged {report.purged} checkpoint(s)")
    print(f"test accuracy: {metrics['test/acc']:.4f}")


def cmd_status(args: argparse.Namespace) -> None:
    session = _session(args)
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
                print(f"  {row['request_id']} {row['time']} {row['num_ids']} id(s) {row['state']}"
                      f"{' ' + row['reason'] if row['reason'] else ''}")
        else:
            print(f"{key}: {value}")


def cmd_predict(args: argparse.Namespace) -> None:
    session = _session(args)
    table = session.test if args.split == "test" else session.run.table
    ids = np.asarray(parse_ids(args.ids), np.int64) if args.ids else table.ids
    x, labels = table.tensors(ids)
    logits = session.run.logits(x)
    how = args.aggregation or session.config.sisa.aggregation
    predicted = aggregate(logits, how)
    print(f"{args.split} accuracy ({how}): {(predicted == labels).double().mean().item():.4f} on {len(ids)} samples")
    if args.output:
        out = pa.table({"sample_id": ids, "label": labels.numpy(), "predicted": predicted.numpy()})
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
    report = commands.approximate(session, make_tracker(session.config.tracking), method, request_ids(args),
                                  args.target)
    print(f"{report.method} on the {report.target} model(s) {report.shards}: {len(report.forget_ids)} sample(s), "
          f"{report.samples} samples processed, {report.seconds:.2f} s")
    for key in report.before:
        print(f"  {key:12} {report.before[key]:.4f} -> {report.after[key]:.4f}")
    print(f"unlearned model(s) written to {report.saved_to} (the exact SISA checkpoints are unchanged)")


def quick(config: RunConfig) -> RunConfig:
    """`--quick`: the same bench shrunk for CI: 8 models a side, at most 500 training samples (fewer
    samples also make the originals memorise more), 2 cost-curve requests."""
    limit = min(config.data.train_limit or 500, 500)
    return dataclasses.replace(
        config, data=dataclasses.replace(config.data, train_limit=limit),
        bench=dataclasses.replace(config.bench, models=min(config.bench.models, 8),
                                  cost_requests=min(config.bench.cost_requests, 2)))


class BenchProgress:
    """One tqdm bar over every job of the bench; its total grows as the bench plans more."""

    def __init__(self) -> None:
        self.bar = tqdm(total=0, desc="bench", unit="model", dynamic_ncols=True, leave=False, disable=None)

    def planned(self, count: int) -> None:
        self.bar.total += count
        self.bar.refresh()

    def finished(self, label: str) -> None:
        self.bar.set_postfix_str(label, refresh=False)
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


def cmd_bench(args: argparse.Namespace) -> None:
    config = load_config(args.config, _overrides(args))
    if args.quick:
        config = quick(config)
    create_methods(config.bench)  # bad names or parameters fail before anything starts
    progress = BenchProgress()
    try:
        result = commands.bench(config, Path(args.out), progress=progress)
    finally:
        progress.close()
    print(result.header)
    print(result.table, end="")
    print(f"full tables (with 95% intervals), per-example arrays and plots in {args.out}: "
          + ", ".join(p.name for p in result.files if p.parent == Path(args.out)))
    print(f"trained and unlearned models are cached in {config.bench.cache_dir or Path(args.out) / 'models'} "
          "(a rerun reuses them; delete the folder to free the space)")


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
    forget.add_argument("--ids", help="comma-separated sample ids, e.g. 3,17,42")
    forget.add_argument("--ids-file", help="text file with one id per line, or Parquet with a sample_id column")
    forget.add_argument("--reason", default="", help="why the samples are deleted (kept in the ledger)")
    forget.add_argument("--resume", action="store_true", help="only finish an interrupted request")
    forget.set_defaults(func=cmd_forget)
    status = command("status", "Show a run's config, shards, checkpoints, requests and accuracy.")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=cmd_status)
    predict = command("predict", "Predict with the ensemble on the test or train split.")
    predict.add_argument("--split", choices=("test", "train"), default="test")
    predict.add_argument("--ids", help="only these sample ids of the split")
    predict.add_argument("--aggregation", choices=("vote", "mean"))
    predict.add_argument("--output", help="write sample_id, label, predicted as .csv or .parquet")
    predict.set_defaults(func=cmd_predict)
    methods = sub.add_parser("methods", help="List the approximate unlearning methods.")
    methods.add_argument("--verbose", "-v", action="store_true", help="also list each method's parameters")
    methods.set_defaults(func=cmd_methods)
    approx_ = command("approx", "Approximately unlearn samples with a method (see `unlearn methods`).")
    approx_.add_argument("--method", required=True, help="method name, e.g. salun")
    approx_.add_argument("--ids", help="comma-separated sample ids")
    approx_.add_argument("--ids-file", help="text file with one id per line, or Parquet with a sample_id column")
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
