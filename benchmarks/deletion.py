"""SISA deletion cost and accuracy over shards S and slices R, against a monolithic model.

For every (S, R) of the grid it trains the ensemble once (in-process), records its test accuracy
under both aggregations, then serves deletion requests of 1, 10 and 100 uniformly random samples,
each on a fresh copy of the trained run, `--repeats` times. Reported per point: median wall time,
samples x epochs retrained, the analytic expectation of samples x epochs, the time those samples
x epochs predict at the monolithic model's measured throughput, and the speedup over retraining
the monolithic model (S = R = 1, same epochs) from scratch, whose time is the median of
`--repeats` trainings measured in the same run.

    python -m benchmarks.deletion                 # MNIST, small CNN, about 25 minutes on 2 cores
    python -m benchmarks.deletion --quick         # digits, MLP, a small grid, seconds (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED_MNIST, median, write_results
from orchestration.config import DataConfig, ModelConfig
from orchestration.datasets import load_dataset
from orchestration.models import build_model
from sisa import SampleTable, SisaConfig, SisaRun, aggregate

FULL = {"data": DataConfig(name="mnist", root=str(SHARED_MNIST), train_limit=6000), "model": ModelConfig(name="cnn"),
        "shards": (1, 2, 4, 8, 16), "slices": (1, 4, 8), "requests": (1, 10, 100), "epochs": 10}
QUICK = {"data": DataConfig(name="digits"), "model": ModelConfig(name="mlp"), "shards": (1, 2, 4), "slices": (1, 2),
         "requests": (1, 10), "epochs": 4}


def expected_samples_epochs(n: int, shards: int, slices: int, slice_epochs: int, request: int) -> float:
    """Expected samples x epochs SISA retrains for `request` ids drawn uniformly from `n` samples.

    A shard holds n/S samples in R equal slices; retraining from slice k (1-based) costs
    sum_{r=k..R} (r/R)(n/S) e'. The shard's earliest affected slice is >= k with probability
    (1 - (k-1)/(S R))^B (ids drawn independently), so
    E = S sum_k [(1-(k-1)/(SR))^B - (1-k/(SR))^B] C_k. For B = 1 this is (n/S) e' (R+1)(2R+1)/(6R),
    the SISA paper's (2R+1)/(3R) of the shard's epoch budget.
    """
    per_shard = n / shards
    cost = [sum(r / slices * per_shard * slice_epochs for r in range(k, slices + 1)) for k in range(1, slices + 1)]
    cells = shards * slices
    probability = [(1 - (k - 1) / cells) ** request - (1 - k / cells) ** request for k in range(1, slices + 1)]
    return shards * float(np.dot(probability, cost))


def _run(folder: Path, table: SampleTable, model: ModelConfig, config: SisaConfig, num_classes: int) -> SisaRun:
    factory = functools.partial(build_model, model, table.sample_shape, num_classes)
    return SisaRun(folder, table, factory, config, seed=0, fingerprint=f"bench-{config}")


def _copy(run: SisaRun, folder: Path) -> SisaRun:
    shutil.copytree(run.run_dir, folder, ignore=shutil.ignore_patterns("lock"))
    return SisaRun(folder, run.table, run.trainer.model_factory, run.config, run.seed, run.fingerprint)


def measure_point(root: Path, table: SampleTable, test: SampleTable, spec: dict[str, Any], shards: int, slices: int,
                  repeats: int, rng: np.random.Generator) -> dict[str, Any]:
    """Train one (S, R) ensemble, score it, and time deletions of every request size on copies of it."""
    config = SisaConfig(num_shards=shards, num_slices=slices, epochs=spec["epochs"])
    num_classes = max(table.num_classes, test.num_classes)
    run = _run(root / f"s{shards}-r{slices}", table, spec["model"], config, num_classes)
    began = time.perf_counter()
    reports = run.train()
    point: dict[str, Any] = {"shards": shards, "slices": slices, "slice_epochs": config.slice_epochs,
                             "train_s": time.perf_counter() - began,
                             "train_samples_epochs": sum(r.samples_epochs for r in reports)}
    x, labels = test.tensors()
    logits = run.logits(x)
    for how in ("vote", "mean"):
        point[f"acc_{how}"] = (aggregate(logits, how) == labels).double().mean().item()
    point["store_bytes"] = run.store.nbytes()
    for request in spec["requests"]:
        seconds, work = [], []
        for repeat in range(repeats):
            copy = _copy(run, root / f"s{shards}-r{slices}-b{request}-{repeat}")
            ids = rng.choice(table.ids, request, replace=False)
            report = copy.forget(ids)
            seconds.append(report.seconds)
            work.append(report.samples_epochs)
            shutil.rmtree(copy.run_dir)
        point[f"b{request}"] = {"seconds": seconds, "samples_epochs": work, "median_s": median(seconds),
                                "mean_samples_epochs": float(np.mean(work)),
                                "expected_samples_epochs": expected_samples_epochs(len(table), shards, slices,
                                                                                   config.slice_epochs, request)}
    shutil.rmtree(run.run_dir)
    return point


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, MLP, a small grid (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="deletions (and monolithic trainings) per point")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    table, test = load_dataset(spec["data"])
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="bench-deletion-"))
    try:
        mono = SisaConfig(num_shards=1, num_slices=1, epochs=spec["epochs"])
        mono_s = []
        _run(root / "warm-up", table, spec["model"], mono, max(table.num_classes, test.num_classes)).train()  # untimed
        for repeat in range(args.repeats):  # retraining from scratch = training the monolithic model
            run = _run(root / f"mono-{repeat}", table, spec["model"], mono, max(table.num_classes, test.num_classes))
            began = time.perf_counter()
            mono_work = sum(r.samples_epochs for r in run.train())
            mono_s.append(time.perf_counter() - began)
        retrain_s = median(mono_s)
        points = [measure_point(root, table, test, spec, s, r, args.repeats, rng)
                  for s in spec["shards"] for r in spec["slices"]]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_sample_epoch = retrain_s / mono_work
    for point in points:
        for request in spec["requests"]:
            b = point[f"b{request}"]
            b["predicted_s"] = b["mean_samples_epochs"] * per_sample_epoch
            b["measured_over_predicted"] = float(np.mean(b["seconds"])) / b["predicted_s"]
            b["speedup"] = retrain_s / b["median_s"]
            b["expected_speedup"] = mono_work / b["expected_samples_epochs"]
    results = {"workload": {"data": dataclasses.asdict(spec["data"]), "model": dataclasses.asdict(spec["model"]),
                            "samples": len(table), "epochs": spec["epochs"], "repeats": args.repeats},
               "retrain_s": mono_s, "retrain_median_s": retrain_s, "retrain_samples_epochs": mono_work,
               "points": points}
    write_results("deletion-quick" if args.quick else "deletion", results, Path(args.out))
    print(table_text(results, spec["requests"]))
    return results


def table_text(results: dict[str, Any], requests: tuple[int, ...]) -> str:
    """Markdown table of the grid."""
    lines = ["| S | R | acc vote | acc mean | " + " | ".join(
        f"B={b} s | B={b} speedup (expected) | B={b} measured/predicted" for b in requests) + " |",
        "|" + "---|" * (4 + 3 * len(requests))]
    for p in results["points"]:
        cells = [str(p["shards"]), str(p["slices"]), f"{p['acc_vote']:.4f}", f"{p['acc_mean']:.4f}"]
        for b in requests:
            d = p[f"b{b}"]
            cells += [f"{d['median_s']:.2f}", f"{d['speedup']:.1f}x ({d['expected_speedup']:.1f}x)",
                      f"{d['measured_over_predicted']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
