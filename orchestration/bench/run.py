"""`unlearn bench` from start to end: protocol, populations, scores, report, MLflow.

MLflow gets a parent run per bench (the resolved config, the protocol, tables and plots) and a
child run per row (method and target): its parameters, its summary metrics and its per-example
arrays (`examples/<target>-<method>.npz`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestration.bench import metrics, plots, protocol
from orchestration.bench.fanout import Fanout, InProcess, Progress, RayTasks, torch_threads
from orchestration.bench.report import terminal_table, write_tables
from orchestration.bench.scoring import floor_verdict
from orchestration.bench.study import Row, Study
from orchestration.config import TARGETS, RunConfig
from orchestration.datasets import load_dataset
from orchestration.tracking import Tracker, make_tracker
from sisa import SampleTable

log = logging.getLogger(__name__)
LOADED = 0.9
"""Median CPU time / wall time below which the bench says its timings were taken under load."""


@dataclass
class BenchResult:
    """What a bench produced."""

    rows: list[Row]
    protocol: protocol.Protocol
    header: str
    """The lines above the table: setting, memorisation, cache use, notes."""
    table: str
    """The compact terminal table."""
    files: list[Path] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)
    made: int = 0
    """Models trained or unlearned by this bench."""
    reused: int = 0
    """Models found in the cache."""


def make_fanout(config: RunConfig) -> Fanout:
    """Ray tasks (`ray.engine = ray`, on the local cluster or `ray.address`) or this process."""
    if config.ray.engine == "ray":
        return RayTasks(config.ray.address, config.ray.max_retries)
    return InProcess()


def run_bench(config: RunConfig, out: Path, tracker: Tracker | None = None, fanout: Fanout | None = None,
              progress: Progress | None = None, notes: Sequence[str] = ()) -> BenchResult:
    """Run the bench of `config.bench`, write its tables and plots under `out`, log it to `tracker`.

    Without a tracker, the one `config.tracking` describes is opened once the forget set is known
    to be valid, so a bad setting changes nothing on disk. `notes` are lines added to the header
    (e.g. which methods run tuned hyperparameters).
    """
    bench = config.bench
    methods = protocol.create_methods(bench)  # bad names or parameters fail before any training
    if config.sisa.trainable != "all":
        raise ValueError("unlearn bench compares methods that unlearn full networks (sisa.trainable = all); for "
                         "heads and adapters on a frozen backbone see `python -m benchmarks.frozen`")
    fanout = fanout or make_fanout(config)
    train, test = load_dataset(config.data)
    # absolute: Ray workers do not share this process's working directory
    cache = (Path(bench.cache_dir) if bench.cache_dir else out / "models").resolve()
    # SISA's rows need ensembles even where no approximate method runs on them
    built = tuple(t for t in TARGETS if t in bench.targets or (t == "ensemble" and bench.sisa))
    with torch_threads(1):  # the driver's own scoring, like every job, on one thread
        chosen, pool = _protocol(config, train, test, fanout, cache, progress)  # a bad forget set fails here
        tracker = tracker or make_tracker(config.tracking)
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.toml")
        study = Study(config, train, test, chosen, fanout, cache, progress)
        if pool is not None:  # the hard set's selection models count as this bench's work
            study.made, study.reused = pool.made, pool.reused
        params = {**config.flat(), "bench.forget_count": len(chosen.forget), "bench.test_count": len(chosen.test)}
        with tracker.run("bench", params=params, tags={"command": "bench", "scenario": chosen.scenario,
                                                       "out": str(out.resolve())}):
            study.prepare(built, exact=bench.sisa)
            rows = [row for target in built for row in study.reference_rows(target, exact=bench.sisa)]
            rows += [study.method_row(method, target) for target in bench.targets for method in methods]
            curve = study.cost_curve(bench.cost_requests) if bench.sisa and bench.cost_requests else []
            header = "\n".join([describe(config, chosen, rows, study), *notes])
            files = write_tables(rows, chosen, header, out) + _plots(rows, chosen, curve, out)
            for row in rows:
                _log_row(tracker, row, out)
            for path in files:
                if path.parent == out:
                    tracker.log_artifact(path)
            tracker.log_artifact(out / "config.toml")
    return BenchResult(rows, chosen, header, terminal_table(rows, chosen), files, curve, study.made, study.reused)


def _protocol(config: RunConfig, train: SampleTable, test: SampleTable, fanout: Fanout, cache: Path,
              progress: Progress | None) -> tuple[protocol.Protocol, Study | None]:
    """The bench's protocol (and, for the hard scenario, the study that scored the random forget set's
    samples to choose it)."""
    bench = config.bench
    if bench.scenario != "hard":
        return protocol.build(bench, train, test, config.seed), None
    pool = protocol.build(dataclasses.replace(bench, scenario="random"), train, test, config.seed)
    study = Study(config, train, test, pool, fanout, cache, progress)
    originals, oracles = study.population("single", "original"), study.population("single", "oracle")
    hard = protocol.hardest(pool.forget, originals.margins["forget"], oracles.margins["forget"], bench.hard_fraction)
    return protocol.build(bench, train, test, config.seed, forget_ids=hard), study


def _plots(rows: list[Row], chosen: protocol.Protocol, curve: list[dict[str, float]], out: Path) -> list[Path]:
    files = [plots.plot_klom_vs_time(rows, out / "klom_vs_time.png")]
    for target in dict.fromkeys(r.target for r in rows):
        files.append(plots.plot_metrics(rows, target, out / f"metrics_{target}.png"))
        if any(r.target == target and r.kind in ("exact", "approximate") and r.population is not None for r in rows):
            files.append(plots.plot_margins(rows, target, chosen.forget, out / f"margins_{target}.png"))
    if curve:
        oracle = next(r for r in rows if r.target == "ensemble" and r.kind == "floor")
        files.append(plots.plot_sisa_cost(curve, oracle.scores.summary["seconds"], out / "sisa_cost.png"))
    return files


def describe(config: RunConfig, chosen: protocol.Protocol, rows: list[Row], study: Study) -> str:
    """What the table is about, and what to keep in mind reading it."""
    d, n = config.data, chosen.models
    lines = [f"{d.name}, {config.model.name}, scenario {chosen.scenario}: {len(chosen.forget)} of "
             f"{len(chosen.forget) + len(chosen.retain)} training samples forgotten in {len(chosen.requests)} request(s); "
             f"{n} models a side; test {len(chosen.test)}, validation {len(chosen.validation)} samples"]
    for row in (r for r in rows if r.kind == "ceiling" and r.scores is not None):
        s = row.scores.summary
        gap = s["ra"] - s["ta"]
        weak = "" if gap >= 10 else "; under 10 points the originals barely memorise, so forgetting is hard to measure"
        lines.append(f"{row.target} originals: train accuracy {s['ra']:.1f}%, test {s['ta']:.1f}% "
                     f"(gap {gap:.1f} points{weak})")
    for row in (r for r in rows if r.kind == "floor" and r.population is not None):
        quarter = len(row.population) // 4
        if quarter >= 1:
            half = _floor_klom(row, quarter * 2)
            lines.append(f"{row.target} floor KLoM-F P95: {row.scores.summary['klom_forget']:.2f} with {n // 2} models a "
                         f"side, {half:.2f} with {quarter}; the floor falls as models are added, and a method "
                         "reads as exact only within the floor's noise")
    exact = next((r for r in rows if r.kind == "exact" and r.scores is not None), None)
    if exact is not None and not math.isnan(exact.scores.summary["ulira"]):
        floor, ceiling = (next(r for r in rows if r.target == exact.target and r.kind == k).scores.summary
                          for k in ("floor", "ceiling"))
        verdict = floor_verdict(exact.scores.summary, floor, ceiling)
        verdict += " (floor and ceiling overlap: this setting cannot tell)" if verdict == "undecided" else ""
        lines.append(f"SISA's exact deletions against SISA oracles: U-LiRA {exact.scores.summary['ulira']:.3f} "
                     f"(floor {floor['ulira']:.3f}, ceiling {ceiling['ulira']:.3f}): {verdict}")
    if n < 8:
        lines.append(f"U-LiRA needs 8 models a side and forget quality 6 (bench.models); with {n} they show as -")
    lines += [f"{r.method} on the {r.target} target skipped: {r.note}" for r in rows if r.scores is None]
    for target in dict.fromkeys(r.target for r in rows):
        floor, ceiling = (next(r for r in rows if r.target == target and r.kind == k).scores.summary
                          for k in ("floor", "ceiling"))
        inverted = [name for key, name in (("klom_forget", "KLoM-F"), ("ulira", "U-LiRA")) if floor[key] >= ceiling[key]]
        if inverted:
            lines.append(f"{target}: {' and '.join(inverted)} of the floor is not below the ceiling: with {n // 2} "
                         "models a side it cannot rank methods here (KLoM's histograms need many models; EasyDUB "
                         "uses 100 a side)")
    lines.append(f"models: {study.made} made, {study.reused} reused from the cache")
    shares = [c.cpu_share for r in rows if r.population is not None for c in r.population.costs if c.seconds > 0]
    share = float(np.nanmedian(shares)) if shares else math.nan
    if share < LOADED:
        lines.append(f"timings were taken under load: the jobs got {share:.0%} of a CPU (median CPU/wall time); "
                     "other processes shared the cores, so times are inflated")
    return "\n".join(lines)


def _floor_klom(floor: Row, models: int) -> float:
    """KLoM-F P95 of the floor computed from only the first `models` oracles: how fast the floor settles."""
    margins = floor.population.margins["forget"][:models]
    half = models // 2
    per_sample = (metrics.klom(margins[:half], margins[half:]) + metrics.klom(margins[half:], margins[:half])) / 2
    return float(np.percentile(per_sample, 95))


METRIC_NAMES = {"klom_forget_median": "klom/forget_median", "klom_retain_median": "klom/retain_median",
                "klom_test_median": "klom/test_median", "klom_validation_median": "klom/validation_median",
                "klom_forget": "klom/forget_p95", "klom_retain": "klom/retain_p95", "klom_test": "klom/test_p95",
                "klom_validation": "klom/validation_p95", "ulira": "ulira/acc", "fq": "fq/score", "ua": "forget/UA",
                "ra": "retain/acc", "ta": "test/acc", "ta_class": "test/acc_forgotten_class", "mia": "mia/efficacy",
                "gap": "gap/avg", "kl": "forget/kl_to_retrain", "js": "forget/js_to_retrain", "seconds": "time/unlearn_s",
                "cpu_share": "time/cpu_share", "speedup": "time/speedup", "samples_epochs": "cost/samples_epochs",
                "peak_mb": "cost/peak_mb"}


def metric_name(key: str) -> str:
    """A summary key as an MLflow metric: e.g. klom_forget_lo -> klom/forget_p95_lo."""
    for base, name in sorted(METRIC_NAMES.items(), key=lambda kv: -len(kv[0])):
        if key == base or key.startswith(base + "_"):
            return name + key[len(base) :]
    return f"bench/{key}"


def _log_row(tracker: Tracker, row: Row, out: Path) -> None:
    params: dict[str, Any] = {"method": row.method, "target": row.target, "kind": row.kind}
    params.update({f"method.{k}": v for k, v in row.params.items()})
    with tracker.run(f"{row.method}-{row.target}", params=params,
                     tags={"method": row.method, "target": row.target, "kind": row.kind}):
        if row.scores is None:
            tracker.log_dict({"skipped": row.note}, "skipped.json")
            return
        tracker.log_metrics({metric_name(k): v for k, v in row.scores.summary.items() if not math.isnan(v)})
        examples = out / "examples" / f"{row.target}-{row.method}.npz"
        if examples.exists():
            tracker.log_artifact(examples)
