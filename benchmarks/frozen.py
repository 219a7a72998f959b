"""Frozen-backbone SISA against full-network SISA and the monolithic model: accuracy, deletion cost,
storage and prediction latency, measured side by side in one run.

Per workload (Fashion-MNIST's full training split; a CIFAR-10 subset):

1. pretrain the backbone with `unlearn pretrain`'s function on the public share of the training data
   (`--public-fraction`, declared non-deletable; chosen by a hash of each id);
2. train the monolithic model (the full network, one shard of one slice, on all the training data)
   `--repeats` times: the median is the time to retrain from scratch after a deletion;
3. for every S (R slices), train full-network, head and adapter SISA runs in this process, score
   them on the test split, measure their storage, and serve `--repeats` single-sample deletion
   requests of random deletable samples, each on a fresh copy of the trained run: the time of
   `SisaRun.forget` (validation, ledger, retraining, purges), of its retraining alone, and its
   samples x epochs;
4. time predictions with each ensemble loaded (`SisaRun.predictor`): one sample, and the test split;
5. time the end-to-end `unlearn forget` command (a new process, as a user runs it) on copies of the
   head run at `end_to_end_shards`, and profile one to say where the time beyond the in-process
   deletion goes.

Recipes: the full network (monolithic and full-network SISA) trains with SGD as the other
benchmarks do; heads and adapters with AdamW (see `recipe`). Everything runs in one process, one
thing at a time, so the times compare like for like; timings are only meaningful on an otherwise
idle machine.

    python -m benchmarks.frozen            # Fashion-MNIST 60,000 and CIFAR-10 10,000, small CNN
    python -m benchmarks.frozen --quick    # digits, MLP, S in {2, 4}: a few minutes (CI)

On 2 idle cores Fashion-MNIST takes about 80 min; CIFAR-10, with its 30-epoch augmented recipe, 53 min.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import copy_run_dir, median, remove_run_copy, write_results
from orchestration.config import DataConfig, ModelConfig, RayConfig, RunConfig, TrackingConfig
from orchestration.datasets import load_dataset
from orchestration.datasets.cache import train_cache
from orchestration.frozen.features import feature_files
from orchestration.frozen.pretrain import pretrain
from orchestration.frozen.public import public_ids
from orchestration.runs import Session, open_run
from orchestration.status import accuracies
from sisa import SampleTable, SisaConfig

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Workload:
    """A data set and the network whose backbone is frozen."""

    name: str
    data: DataConfig
    model: ModelConfig
    epochs: int = 10
    """Epochs of the full network's recipe: the backbone's pretraining, the monolithic model, full-network and
    adapter SISA (heads train `head_epochs` on fixed features)."""
    augment: bool = False
    """Random crop and flip in that recipe (heads train on features computed once, so never augmented)."""


FULL = {"workloads": (Workload("fashion-mnist", DataConfig(name="fashion-mnist", root=str(SHARED / "fashion-mnist")),
                               ModelConfig(name="cnn")),
                      # CIFAR-10 with crop and flip, as every CIFAR recipe trains: without them the small CNN
                      # overfits 10,000 images within 10 epochs (55% test accuracy), and a backbone trained
                      # that way on the public half reaches 41%. With them, 30 epochs give 59% (monolithic)
                      # and 57% (backbone on the public half).
                      Workload("cifar10", DataConfig(name="cifar10", root=str(SHARED / "cifar-10-jpeg"),
                                                     train_limit=10_000), ModelConfig(name="cnn"), epochs=30,
                               augment=True)),
        "shards": (4, 16, 64), "slices": 4, "head_epochs": 20,
        "end_to_end_shards": 16, "latency_calls": 20}
QUICK = {"workloads": (Workload("digits", DataConfig(name="digits"), ModelConfig(name="mlp", hidden=64), epochs=4),),
         "shards": (2, 4), "slices": 2, "head_epochs": 6, "end_to_end_shards": 4,
         "latency_calls": 3}
MODES = ("full", "head", "adapter")


def recipe(mode: str, shards: int, slices: int, spec: dict[str, Any], workload: Workload) -> SisaConfig:
    """The training recipe of each kind of run.

    The full network trains as in the other benchmarks (SGD, lr 0.05, momentum 0.9, batch 64) for the
    workload's epochs, with its augmentation; the backbone pretrains with the same recipe, so the
    monolithic model and the backbone are trained alike. A head is a linear layer on fixed features:
    AdamW at lr 3e-3 for more epochs, which costs little. Adapters start at zero (LoRA) on a trained
    backbone: AdamW at lr 1e-3, the usual LoRA rate, with the full network's epochs and augmentation.
    """
    if mode == "head":
        return SisaConfig(num_shards=shards, num_slices=slices, epochs=spec["head_epochs"], optimizer="adamw", lr=3e-3,
                          weight_decay=1e-4, trainable="head")
    if mode == "adapter":
        return SisaConfig(num_shards=shards, num_slices=slices, epochs=workload.epochs, optimizer="adamw", lr=1e-3,
                          weight_decay=1e-4, trainable="adapter", augment=workload.augment)
    return SisaConfig(num_shards=shards, num_slices=slices, epochs=workload.epochs, augment=workload.augment)


def run_config(workload: Workload, mode: str, shards: int, slices: int, spec: dict[str, Any], backbone: Path,
               public_fraction: float) -> RunConfig:
    """The complete config of one run (engine local, tracking off)."""
    model = workload.model if mode == "full" else dataclasses.replace(workload.model, backbone=str(backbone))
    return RunConfig(seed=0, data=dataclasses.replace(workload.data, public_fraction=public_fraction), model=model,
                     sisa=recipe(mode, shards, slices, spec, workload), ray=RayConfig(engine="local"),
                     tracking=TrackingConfig(enabled=False),
                     pretrain=recipe("full", 1, 1, spec, workload))


def copy_run(session: Session, run_dir: Path) -> RunConfig:
    """Copy a trained run to `run_dir` (`copy_run_dir`: its own data cache); returns the config that opens it."""
    settings = copy_run_dir(session.run.run_dir, run_dir, train_cache(session.config.data))
    if not settings:
        return session.config
    cache = settings[1].partition("=")[2]
    return dataclasses.replace(session.config, data=dataclasses.replace(session.config.data, cache_dir=cache))


def latency(session: Session, calls: int) -> dict[str, float]:
    """Prediction time with the ensemble loaded: one sample (median of `calls`), and the whole test split."""
    predict = session.run.predictor()
    x, _ = session.test.tensors()
    predict(x[:1])  # untimed: first-call allocations
    one = []
    for i in range(calls):
        began = time.perf_counter()
        predict(x[i : i + 1])
        one.append(time.perf_counter() - began)
    split = []
    for _ in range(max(1, calls // 10)):
        began = time.perf_counter()
        predict(x)
        split.append(time.perf_counter() - began)
    return {"one_sample_ms": 1000 * median(one), "test_split_s": median(split), "test_samples": len(x)}


def deletions(session: Session, data: tuple[SampleTable, SampleTable], deletable: np.ndarray, root: Path,
              repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    """Serve `repeats` single-sample requests, each on a fresh copy of the run."""
    result: dict[str, list] = {"ids": [], "forget_s": [], "serve_s": [], "retrain_s": [], "samples_epochs": []}
    for repeat in range(repeats):
        config = copy_run(session, root / f"copy-{repeat}")
        # From its own cache when it has one (as a command opens it, so a deletion purges the cache too).
        copy = open_run(root / f"copy-{repeat}", config, None if config.data.cache_dir else data)
        sample = int(rng.choice(deletable))
        began = time.perf_counter()
        report = copy.run.forget([sample], reason="benchmark")
        result["forget_s"].append(time.perf_counter() - began)
        result["ids"].append(sample)
        result["serve_s"].append(report.seconds)
        result["retrain_s"].append(sum(r.seconds for r in report.shards))
        result["samples_epochs"].append(report.samples_epochs)
        remove_run_copy(copy.run.run_dir)
    result["median_s"] = median(result["forget_s"])
    result["median_retrain_s"] = median(result["retrain_s"])
    return result


def measure(root: Path, workload: Workload, mode: str, shards: int, spec: dict[str, Any], backbone: Path,
            public_fraction: float, data: tuple[SampleTable, SampleTable], deletable: np.ndarray, repeats: int,
            rng: np.random.Generator) -> tuple[dict[str, Any], Session]:
    """Train one run, score it, time its predictions and its single-sample deletions."""
    slices = 1 if shards == 1 else spec["slices"]
    config = run_config(workload, mode, shards, slices, spec, backbone, public_fraction)
    began = time.perf_counter()
    session = open_run(root / f"{mode}-s{shards}", config, data)  # head mode: extracts the features here
    opened = time.perf_counter() - began
    began = time.perf_counter()
    reports = session.run.train()
    point: dict[str, Any] = {"mode": mode, "shards": shards, "slices": slices, "open_s": opened,
                             "train_s": time.perf_counter() - began,
                             "train_samples_epochs": sum(r.samples_epochs for r in reports)}
    # Scored as `unlearn train` scores a run: each constituent's test outputs (and a head run's test
    # features) stay cached with it, so its copies start where a user's trained run starts.
    point.update({f"acc_{how}": value for how, value in accuracies(session).items()})
    files = feature_files(session.run.run_dir)
    point.update(store_bytes=session.run.store.nbytes(), features_bytes=sum(p.stat().st_size for p in files),
                 latency=latency(session, spec["latency_calls"]),
                 deletion=deletions(session, data, deletable, root / f"{mode}-s{shards}-copies", repeats, rng))
    return point, session


def end_to_end(session: Session, data: tuple[SampleTable, SampleTable], deletable: np.ndarray, root: Path,
               repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    """Time `unlearn forget` as a user runs it, on copies of a trained run; profile one run of it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    seconds = []
    for repeat in range(repeats + 1):
        run_dir = root / f"cli-{repeat}"
        config = copy_run(session, run_dir)
        settings = ["--set", f"data.cache_dir={config.data.cache_dir}"] if config.data.cache_dir else []
        argv = ["-m", "orchestration.cli", "forget", "--run-dir", str(run_dir),
                "--ids", str(int(rng.choice(deletable))), "--engine", "local", "--no-track", *settings]
        profile = root / "forget.prof"
        if repeat == repeats:  # the last one runs under the profiler, to see where the time goes
            argv = ["-m", "cProfile", "-o", str(profile), *argv]
        began = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, cwd=root)
        elapsed = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"unlearn forget failed: {done.stderr.strip().splitlines()[-1:]}")
        if repeat < repeats:
            seconds.append(elapsed)
        remove_run_copy(run_dir)
    return {"mode": session.config.sisa.trainable, "shards": session.config.sisa.num_shards, "command_s": seconds,
            "median_s": median(seconds), "breakdown": breakdown(profile), "imports_s": _timed_python(
                "import orchestration.cli", env), "optimizer_first_use_s": _timed_python(
                "import torch, time; t = time.perf_counter(); import torch._dynamo; print(time.perf_counter() - t)",
                env, own_clock=True)}


PHASES = {
    "open the run (data, backbone, ledger, data digest, stored features)": ("orchestration/runs.py", "open_session"),
    "validate and record the request (digest of the remaining data, ledger)": ("sisa/ensemble.py", "submit"),
    "retrain the affected slices": ("sisa/training.py", "train"),
    "purge checkpoints": ("sisa/unlearning.py", "purge_stale"),
    "purge stored feature rows": ("orchestration/frozen/features.py", "destroy_feature_rows"),
    "purge the decoded-data cache's rows": ("orchestration/runs.py", "purge_cached_rows"),
    "test accuracy after the deletion": ("orchestration/status.py", "accuracies"),
    "export the new model version (done with --no-track too)": ("orchestration/commands.py", "export_ensemble"),
}
"""Where `unlearn forget` spends its time: cumulative time of each function in a profile of the command."""


def breakdown(profile: Path) -> dict[str, float]:
    """Seconds of each phase in a profiled run (profiler overhead included), the command's main and the whole run."""
    stats = pstats.Stats(str(profile)).stats  # (file, line, function) -> (calls, primitive, own, cumulative, callers)
    out = {}
    for phase, (file, function) in {**PHASES, "the command (main)": ("orchestration/cli.py", "main")}.items():
        out[phase] = sum(v[3] for (f, _, name), v in stats.items() if f.endswith(file) and name == function)
    out["whole process under the profiler"] = max(v[3] for v in stats.values())
    return out


def _timed_python(code: str, env: dict[str, str], own_clock: bool = False) -> float:
    """Seconds a fresh interpreter takes to run `code` (or the number it prints)."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip()) if own_clock else time.perf_counter() - began


def prepare(root: Path, workload: Workload, spec: dict[str, Any], public_fraction: float
            ) -> tuple[tuple[SampleTable, SampleTable], Path, RunConfig, Any, np.ndarray]:
    """The workload's data, its backbone pretrained on the public ids (in `root`), the monolithic
    model's config, the pretraining report and the public ids."""
    data = load_dataset(dataclasses.replace(workload.data, public_fraction=public_fraction))
    backbone = root / f"{workload.name}-backbone.pt"
    config = run_config(workload, "full", 1, 1, spec, backbone, public_fraction)
    report = pretrain(config, backbone)  # also the warm-up: first-use costs are paid before anything is timed
    return data, backbone, config, report, public_ids(config.data, data[0])


def run_workload(root: Path, workload: Workload, spec: dict[str, Any], repeats: int, public_fraction: float,
                 rng: np.random.Generator) -> dict[str, Any]:
    """Every measurement of one workload."""
    root.mkdir(parents=True, exist_ok=True)
    # Loaded with the runs' own data settings, so that their decoded-data cache is known
    # (`train_cache`) and every copy of a run gets a copy of it.
    data, backbone, config, report, public = prepare(root, workload, spec, public_fraction)
    train, test = data
    deletable = np.setdiff1d(train.ids, public)
    result: dict[str, Any] = {
        "samples": len(train), "test_samples": len(test), "public_fraction": public_fraction, "public": len(public),
        "pretrain": {"seconds": report.seconds, "samples_epochs": report.samples_epochs,
                     "test_acc": report.test_accuracy, "backbone_bytes": backbone.stat().st_size},
    }
    mono_s = []
    for repeat in range(repeats):  # retraining from scratch = training the monolithic model
        run = open_run(root / f"monolithic-{repeat}", config, data).run
        began = time.perf_counter()
        mono_work = sum(r.samples_epochs for r in run.train())
        mono_s.append(time.perf_counter() - began)
        if repeat < repeats - 1:
            shutil.rmtree(run.run_dir)
    session = open_run(root / f"monolithic-{repeats - 1}", config, data)
    result["monolithic"] = {"train_s": mono_s, "median_s": median(mono_s), "samples_epochs": mono_work,
                            **{f"acc_{k}": v for k, v in accuracies(session).items()},
                            "store_bytes": session.run.store.nbytes(), "latency": latency(session, spec["latency_calls"])}
    print(f"{workload.name}: backbone test acc {report.test_accuracy:.4f}, monolithic {median(mono_s):.1f} s "
          f"(test acc {result['monolithic']['acc_vote']:.4f})", flush=True)
    points = []
    for mode in MODES:
        for shards in spec["shards"]:
            point, session = measure(root, workload, mode, shards, spec, backbone, public_fraction, data, deletable,
                                     repeats, rng)
            d = point["deletion"]
            d["speedup"] = median(mono_s) / d["median_s"]
            d["speedup_samples_epochs"] = mono_work / max(1.0, float(np.mean(d["samples_epochs"])))
            points.append(point)
            print(f"{workload.name}: {mode} S={shards} acc {point['acc_vote']:.4f}, deletion {d['median_s']:.3f} s "
                  f"({d['speedup']:.1f}x)", flush=True)
            if mode == "head" and shards == spec["end_to_end_shards"]:
                result["end_to_end"] = end_to_end(session, data, deletable, root / "cli", repeats, rng)
                result["end_to_end"]["in_process_median_s"] = d["median_s"]
            shutil.rmtree(session.run.run_dir)
    result["points"] = points
    return result


def table_text(name: str, result: dict[str, Any]) -> str:
    """Markdown table of one workload."""
    mono = result["monolithic"]
    lines = [f"{name}: {result['samples']} training samples ({result['public']} public), backbone pretrained on the "
             f"public ones: test accuracy {result['pretrain']['test_acc']:.4f}",
             "| model | S | test acc vote | test acc mean | deletion s (median) | retraining s | speedup | "
             "samples x epochs | storage MB | 1-sample prediction ms | test split prediction s |",
             "|" + "---|" * 11,
             f"| monolithic | 1 | {mono['acc_vote']:.4f} | {mono['acc_mean']:.4f} | {mono['median_s']:.2f} | "
             f"{mono['median_s']:.2f} | 1.0x | {mono['samples_epochs']} | {mono['store_bytes'] / 1e6:.2f} | "
             f"{mono['latency']['one_sample_ms']:.2f} | {mono['latency']['test_split_s']:.3f} |"]
    for p in result["points"]:
        d, lat = p["deletion"], p["latency"]
        storage = (p["store_bytes"] + p["features_bytes"]) / 1e6
        lines.append(f"| {p['mode']} SISA | {p['shards']} | {p['acc_vote']:.4f} | {p['acc_mean']:.4f} | "
                     f"{d['median_s']:.3f} | {d['median_retrain_s']:.3f} | {d['speedup']:.1f}x | "
                     f"{float(np.mean(d['samples_epochs'])):.0f} | {storage:.2f} | {lat['one_sample_ms']:.2f} | "
                     f"{lat['test_split_s']:.3f} |")
    e2e = result.get("end_to_end")
    if e2e:
        lines.append(f"`unlearn forget` ({e2e['mode']}, S={e2e['shards']}): {e2e['median_s']:.2f} s end to end "
                     f"against {e2e['in_process_median_s']:.3f} s in process; interpreter and imports "
                     f"{e2e['imports_s']:.2f} s, of which torch's compiler stack on the first optimizer "
                     f"{e2e['optimizer_first_use_s']:.2f} s")
        lines += [f"  {phase}: {seconds:.2f} s (profiled)" for phase, seconds in e2e["breakdown"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, MLP, S in {2, 4} (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="monolithic trainings, deletions and commands per point")
    parser.add_argument("--public-fraction", type=float, default=0.5,
                        help="share of the training data declared public: the backbone's training data")
    parser.add_argument("--only", action="append", default=None,
                        help="measure only this workload (repeatable): fashion-mnist, cifar10 (digits with --quick)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    chosen = [w for w in spec["workloads"] if args.only is None or w.name in args.only]
    if not chosen:
        parser.error(f"--only names no workload; valid: {', '.join(w.name for w in spec['workloads'])}")
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench-frozen-"))
    name = "frozen-quick" if args.quick else "frozen"
    # `--only` re-measures some workloads: the others' results stay in the file as they were measured,
    # each with its own recipes and settings.
    previous = Path(args.out) / f"{name}.json"
    workloads: dict[str, Any] = json.loads(previous.read_text()).get("workloads", {}) if previous.exists() else {}
    measured: list[str] = []
    try:
        for w in chosen:  # results are written after each workload, so a long run keeps what it finished
            result = run_workload(root / w.name, w, spec, args.repeats, args.public_fraction, rng)
            result.update(measured_on=time.strftime("%Y-%m-%d"), repeats=args.repeats,
                          settings={"data": dataclasses.asdict(w.data), "model": dataclasses.asdict(w.model)},
                          recipes={mode: dataclasses.asdict(recipe(mode, 1, 1, spec, w)) for mode in MODES})
            workloads[w.name] = result
            measured.append(w.name)
            results = {"spec": {k: v for k, v in spec.items() if k != "workloads"}, "workloads": workloads}
            write_results(name, results, Path(args.out))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for workload_name in measured:
        print(table_text(workload_name, workloads[workload_name]))
    return results


if __name__ == "__main__":
    main()
