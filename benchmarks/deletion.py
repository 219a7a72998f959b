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
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED_MNIST, median, write_results
from orchestration.bench.plots import pyplot
from orchestration.bench.populations import clone
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
            copy = clone(run, root / f"s{shards}-r{slices}-b{request}-{repeat}")
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


def _requests(results: dict[str, Any]) -> list[int]:
    return sorted(int(key[1:]) for key in results["points"][0] if key[0] == "b" and key[1:].isdigit())


def analyse(results: dict[str, Any]) -> dict[str, Any]:
    """Add predictions, speedups and their summary to measured results (in place).

    Time per sample x epoch is fitted once for the whole run, as the median over every timed
    training and deletion; each deletion's predicted time is its samples x epochs at that rate.
    """
    requests = _requests(results)
    timed = [(s, results["retrain_samples_epochs"]) for s in results["retrain_s"]]
    for point in results["points"]:
        timed.append((point["train_s"], point["train_samples_epochs"]))
        for request in requests:
            timed += [(s, w) for s, w in zip(point[f"b{request}"]["seconds"], point[f"b{request}"]["samples_epochs"]) if w]
    rate = median([s / w for s, w in timed])
    ratios = []
    fastest = min(results["retrain_s"])
    for point in results["points"]:
        for request in requests:
            b = point[f"b{request}"]
            b["predicted_s"] = b["mean_samples_epochs"] * rate
            b["measured_over_predicted"] = float(np.mean(b["seconds"])) / b["predicted_s"] if b["predicted_s"] else 1.0
            ratios += [s / (w * rate) for s, w in zip(b["seconds"], b["samples_epochs"]) if w]
            b["speedup"] = results["retrain_median_s"] / b["median_s"]
            b["speedup_vs_fastest_retrain"] = fastest / b["median_s"]
            b["expected_speedup"] = results["retrain_samples_epochs"] / b["expected_samples_epochs"]
    mono = np.array(results["retrain_s"])
    results["analysis"] = {
        "seconds_per_sample_epoch": rate, "deletions": len(ratios),
        "median_measured_over_predicted": median(ratios),
        "share_within_10pct": float(np.mean([abs(r - 1) <= 0.10 for r in ratios])),
        "share_within_20pct": float(np.mean([abs(r - 1) <= 0.20 for r in ratios])),
        "retrain_repeats_spread": float((mono.max() - mono.min()) / np.median(mono)),
    }
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, MLP, a small grid (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="deletions (and monolithic trainings) per point")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON results")
    parser.add_argument("--analyse", metavar="JSON", help="only redo the analysis, table and plot of saved results")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    if args.analyse:
        results = analyse(json.loads(Path(args.analyse).read_text()))
        Path(args.analyse).write_text(json.dumps(results, indent=2))
        plot_tradeoff(results, Path(args.analyse).with_suffix(".png"))
        print(table_text(results, tuple(_requests(results))))
        print(", ".join(f"{k} {v:.3g}" for k, v in results["analysis"].items()))
        return results
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
    results = {"workload": {"data": dataclasses.asdict(spec["data"]), "model": dataclasses.asdict(spec["model"]),
                            "samples": len(table), "epochs": spec["epochs"], "repeats": args.repeats},
               "retrain_s": mono_s, "retrain_median_s": retrain_s, "retrain_samples_epochs": mono_work,
               "points": points}
    analyse(results)
    write_results("deletion-quick" if args.quick else "deletion", results, Path(args.out))
    plot_tradeoff(results, Path(args.out) / ("deletion-quick.png" if args.quick else "deletion.png"))
    print(table_text(results, spec["requests"]))
    print(", ".join(f"{k} {v:.3g}" for k, v in results["analysis"].items()))
    return results


def plot_tradeoff(results: dict[str, Any], path: Path) -> Path:
    """Test accuracy vs single-deletion speedup, one point per (S, R): the trade-off a user picks from."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for how, marker in (("vote", "o"), ("mean", "s")):
        xs = [p["b1"]["speedup"] for p in results["points"]]
        ax.scatter(xs, [100 * p[f"acc_{how}"] for p in results["points"]], marker=marker, label=f"ensemble, {how}")
    for p in results["points"]:
        ax.annotate(f"S={p['shards']},R={p['slices']}", (p["b1"]["speedup"], 100 * p["acc_mean"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    mono = next(p for p in results["points"] if p["shards"] == p["slices"] == 1)
    ax.axhline(100 * mono["acc_vote"], color="gray", linestyle="--", label="monolithic model")
    ax.set_xscale("log")
    ax.set_xlabel("single-deletion speedup over retraining (median, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Cost of sharding and slicing: accuracy vs deletion speedup")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
