"""`unlearn tune`: every method searched against retraining, on data and seeds the bench never reports.

For one setting (data set, model, scenario: a bench config) the tuner

1. carves its protocol beside the bench's (tuning.py) and writes both, with the ids and seeds and
   what they share (nothing), to `<out>/tune_protocol.json`;
2. trains the tuning populations, N originals on its data and N oracles without its forget set,
   through the bench's fan-out and model cache, and scores the floor (oracles against oracles)
   and the ceiling (originals: no unlearning) with the objective, for scale;
3. per method: resolves its space (`Budget`s against the original training: its epochs, or for
   iteration-counted methods the samples it drew), and searches it on Ray Tune (search.py). Trial 0
   is the method as configured: it is the baseline the search is measured against, and it may be
   the best only when it fits the budget (a reference recipe may run longer than the 20% the search
   allows; then the best is the best drawn trial, every one of which fits);
4. writes each method's best configuration to `<tuned dir>/<data>-<model>-<scenario>/<method>.toml`
   (tuned.py) and every trial to `<out>/trials.jsonl` (its parameters, scores and what it saw).

MLflow (only this process logs): a parent run per command (the resolved config and
`tune_protocol.json`), a child run per method (budget, best objective and parameters, the tuned
file) and under it a run per trial (its parameters, scores, and `saw.json`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import approx
from approx.space import over_budget, resolve
from orchestration.bench import protocol, tuned, tuning
from orchestration.bench.fanout import Progress, torch_threads
from orchestration.bench.protocol import Protocol
from orchestration.bench.run import make_fanout, metric_name
from orchestration.bench.study import Study
from orchestration.config import BenchConfig, RunConfig
from orchestration.datasets import load_dataset
from orchestration.tracking import Tracker, make_tracker
from sisa import SampleTable
from sisa.seeding import derive_seed

log = logging.getLogger(__name__)


@dataclass
class MethodSearch:
    """One method's search, or why it was not searched."""

    method: str
    result: Any = None
    """search.SearchResult, or None when the method was skipped."""
    default: float = math.nan
    """Objective of trial 0: the method as configured."""
    best: Any = None
    """search.TrialRecord: the finished trial of lowest objective among those within the budget."""
    default_over: list[str] = field(default_factory=list)
    """How the method's own values exceed the budget ('epochs=10 > 8'); empty when they fit."""
    path: Path | None = None
    """The tuned configuration written, if any trial finished."""
    space: dict[str, str] = field(default_factory=dict)
    """Parameter -> its domain, as searched."""
    note: str = ""
    """Why the method was not searched, else empty."""
    planned: int = 0
    """Trials the budget allowed (tune.trials)."""

    @property
    def failed(self) -> int:
        """Trials that ended without a result (errors, or stopped by the time budget while running)."""
        return len(self.result.trials) - len(self.result.finished) if self.result is not None else 0

    @property
    def not_run(self) -> int:
        """Trials never started: the time budget ran out first."""
        return self.planned - len(self.result.trials) if self.result is not None else 0


@dataclass
class TuneResult:
    """What a tune produced."""

    tuning: Protocol
    reported: Protocol
    floor: float
    """Objective of the oracles against themselves: what exact unlearning would score."""
    ceiling: float
    """Objective of the originals: what doing nothing scores."""
    searches: list[MethodSearch]
    header: str
    made: int = 0
    reused: int = 0


def searched(config: RunConfig, methods: list[str]) -> BenchConfig:
    """The bench settings with `methods` to run, keeping only their bench.params: the bench config's
    params for the methods not searched now are kept out, a name no method has is refused (a typo
    would otherwise leave the method at its defaults without a word)."""
    unknown = sorted(set(config.bench.params) - set(approx.available()))
    if unknown:
        raise ValueError(f"bench.params names unknown method(s) {unknown}; methods: {', '.join(approx.available())}")
    for name, values in config.bench.params.items():  # the searched ones are built (and checked) by create_methods
        if name not in methods:
            approx.create(name, **values)
    params = {k: v for k, v in config.bench.params.items() if k in methods}
    return dataclasses.replace(config.bench, methods=tuple(methods), params=params)


def original_budget(config: RunConfig, train: SampleTable) -> dict[str, int]:
    """The original single model's training in each Budget unit: its epochs, and the samples it drew
    (an epoch draws every training sample once, whatever the batch size)."""
    return {"epochs": config.sisa.epochs, "samples": config.sisa.epochs * len(train)}


def run_tune(config: RunConfig, methods: list[str], out: Path, tuned_dir: Path, command: str,
             tracker: Tracker | None = None, progress: Progress | None = None) -> TuneResult:
    """Tune `methods` in the setting of `config` (see the module docstring).

    Args:
        config: the setting (data, model, recipe, bench scenario) and `config.tune`'s budget.
        methods: method names (each must be registered).
        out: where the protocol, trial records, Ray Tune's experiments and (by default) the model
            cache go.
        tuned_dir: where the tuned configurations are written (`configs/tuned`).
        command: the command line, recorded in each tuned file.
        tracker: MLflow (or a test double); by default the one `config.tracking` describes.
        progress: hears of every model job and every trial.
    """
    from orchestration.bench import search
    from orchestration.cluster import ensure_ray

    bases = {m.name: m for m in protocol.create_methods(searched(config, methods))}
    train, test = load_dataset(config.data)
    ensure_ray(config.ray.address)  # joined before anything is written: a cluster that cannot be reached changes nothing
    out = out.resolve()
    cache = (Path(config.bench.cache_dir) if config.bench.cache_dir else out / "models").resolve()
    fanout = make_fanout(dataclasses.replace(config, ray=dataclasses.replace(config.ray, engine="ray")))
    with torch_threads(1):
        reported = tuning.reported_protocol(config, train, test)
        data, chosen = tuning.carve(config, train, test, reported)
        study = Study(config, data, test, chosen, fanout, cache, progress)
        if chosen.scenario == "random" and config.bench.scenario == "hard":
            originals, oracles = study.population(tuning.TARGET, "original"), study.population(tuning.TARGET, "oracle")
            hard = protocol.hardest(chosen.forget, originals.margins["forget"], oracles.margins["forget"],
                                    config.bench.hard_fraction)
            made, reused = study.made, study.reused
            chosen = tuning.with_forget(chosen, data, hard)
            study = Study(config, data, test, chosen, fanout, cache, progress)
            study.made, study.reused = made, reused
        shared = tuning.overlaps(chosen, data, reported)
        if any(shared.values()):  # by construction never; a seed collision is a 1 in 2^31 event per pair
            raise RuntimeError(f"the tuning protocol shares with the bench's: {shared}; change bench.forget_seed")
        out.mkdir(parents=True, exist_ok=True)
        (out / "trials.jsonl").unlink(missing_ok=True)  # this command's trials only
        record = {"tuning": {**chosen.record(), "data": data.ids.tolist()}, "reported": reported.record(),
                  "reported_is_pool": config.bench.scenario == "hard", "shared": shared}
        (out / "tune_protocol.json").write_text(json.dumps(record))
        tracker = tracker or make_tracker(config.tracking)
        floor_row, ceiling_row = study.reference_rows(tuning.TARGET, exact=False)
    reference = {k: floor_row.scores.summary[k] for k in ("ua", "ra", "ta")}
    floor = tuning.objective(floor_row.scores.summary, reference)
    ceiling = tuning.objective(ceiling_row.scores.summary, reference)
    header = describe(config, chosen, reported, data, floor, ceiling)
    budget = original_budget(config, train)
    model = study.ws.factory()()
    searches = []
    with tracker.run("tune", params={**config.flat(), "tune.forget_count": len(chosen.forget)},
                     tags={"command": "tune", "scenario": config.bench.scenario, "out": str(out)}):
        tracker.log_metrics({"objective/floor": floor, "objective/ceiling": ceiling})
        tracker.log_artifact(out / "tune_protocol.json")
        for name, base in bases.items():
            try:
                base.check_model(model)
            except ValueError as err:
                searches.append(MethodSearch(name, note=str(err).splitlines()[0]))
                continue
            space = resolve(type(base).space, budget)
            trial = tuning.Trial(config, data, test, chosen, cache, name, config.bench.params.get(name, {}), reference)
            first = {k: getattr(base, k) for k in space}
            with tracker.run(name, params={"method": name, "tune.trials": config.tune.trials,
                                           "tune.time_budget_s": config.tune.time_budget_s,
                                           **{f"space.{k}": repr(d) for k, d in space.items()}},
                             tags={"method": name, "kind": "search"}):
                if progress is not None:
                    progress.planned(config.tune.trials)
                shutil.rmtree(out / "ray" / name, ignore_errors=True)  # a new search, not a resumed one
                result = search.search(
                    name, search.domains(space), tuning.evaluate, trial, trials=config.tune.trials, storage=out / "ray",
                    seed=derive_seed(config.seed, "tune", "search", name) >> 32, first=first,
                    time_budget_s=config.tune.time_budget_s, retries=config.ray.max_retries,
                    concurrency=config.ray.max_workers, on_trial=_on_trial(tracker, name, out, progress))
                found = MethodSearch(name, result, space={k: repr(d) for k, d in space.items()},
                                     planned=config.tune.trials)
                zero = next((t for t in result.trials if t.number == 0), None)
                found.default = zero.objective if zero is not None else math.nan
                declared = type(base).space
                found.default_over = over_budget(declared, budget, first)
                found.best = result.best_of(lambda t, declared=declared: not over_budget(declared, budget, t.params))
                if found.best is not None:
                    found.path = _write(config, tuned_dir, found, base, floor, ceiling, command, budget)
                    tracker.log_metrics({"objective/best": found.best.objective, "objective/default": found.default,
                                         "trials/finished": len(result.finished),
                                         "trials/failed": found.failed, "trials/not_run": found.not_run,
                                         "time/search_s": result.seconds})
                    tracker.log_artifact(found.path)
                searches.append(found)
    return TuneResult(chosen, reported, floor, ceiling, searches, header, study.made, study.reused)


def _on_trial(tracker: Tracker, method: str, out: Path, progress: Progress | None) -> Callable[[Any], None]:
    """What happens in this process as each trial ends: its MLflow run, its line in trials.jsonl, progress."""

    def on_trial(record: Any) -> None:
        returned = dict(record.result)
        saw = returned.pop("saw", None)
        with tracker.run(f"{method}-trial-{record.number:03d}",
                         params={"method": method, **{f"method.{k}": v for k, v in record.params.items()}},
                         tags={"method": method, "trial": str(record.number), "kind": "trial",
                               "error": record.error, "note": str(returned.get("note", ""))}):
            metrics = {metric_name(k): v for k, v in returned.items() if isinstance(v, int | float) and k != "objective"}
            metrics = {k: float(v) for k, v in metrics.items() if not math.isnan(float(v))}
            if "objective" in returned:
                metrics["objective"] = float(returned["objective"])
            tracker.log_metrics({**metrics, "trial/failures": record.failures, "trial/seconds": record.seconds
                                 if not math.isnan(record.seconds) else 0.0})
            if saw is not None:
                tracker.log_dict(saw, "saw.json")
        line = {"method": method, "trial": record.number, "params": record.params, "error": record.error,
                "failures": record.failures, "seconds": record.seconds, **record.result}
        with open(out / "trials.jsonl", "a") as f:
            f.write(json.dumps(line, default=_plain) + "\n")
        if progress is not None:
            progress.finished(f"{method} trial {record.number}: "
                              + (f"{record.objective:.3f}" if not math.isnan(record.objective) else record.error))

    return on_trial


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers, for JSON."""
    return value.item() if isinstance(value, np.generic) else str(value)


def _write(config: RunConfig, tuned_dir: Path, found: MethodSearch, base: approx.UnlearningMethod, floor: float,
           ceiling: float, command: str, budget: dict[str, int]) -> Path:
    """The best configuration as `<tuned_dir>/<setting>/<method>.toml`, with how it was found."""
    result, best = found.result, found.best
    defaults = dataclasses.asdict(approx.create(found.method))
    chosen = dataclasses.asdict(tuning.configured(found.method, config.bench.params.get(found.method, {}), best.params))
    # the searched values, and any other value the bench set that differs from the method's default
    params = {k: v for k, v in chosen.items() if k in found.space or v != defaults[k]}
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    scores = {k: float(best.result[k]) for k in tuning.REPORTED if k in best.result}
    limit = f", {config.tune.time_budget_s:g} s" if config.tune.time_budget_s else ""
    header = [
        f"{found.method} tuned for {config.data.name}, {config.model.name}, scenario {config.bench.scenario}, by "
        f"`unlearn tune` on {date}:",
        f"  {command}",
        f"Random search over {', '.join(found.space)} ({config.tune.trials} trials{limit}; budgets against the "
        f"original training's {budget['epochs']} epochs, {budget['samples']} samples drawn; trial 0 is the method's own "
        + (f"values, over the budget ({', '.join(found.default_over)}), so not a candidate):" if found.default_over
           else "values):"),
        f"{len(result.finished)} finished, {found.failed} failed, {found.not_run} not run (time budget), "
        f"{result.seconds:.0f} s of search.",
        f"Best objective {best.objective:.4f} (trial {best.number}; the method's own values: {found.default:.4f}; "
        f"floor {floor:.4f}, ceiling {ceiling:.4f}), lower is better: 2 max(0, U-LiRA - 1/2) + mean accuracy gap",
        f"to the oracles over UA, RA, TA / 100, on {config.tune.models} models a side, the validation split and seeds "
        "the bench never reports (orchestration/bench/tuning.py).",
        "Used by `unlearn bench --tuned` with the same recipe and protocol settings ([tuning.recipe], [tuning.protocol]).",
    ]
    record = {"date": date, "command": command, "search": config.tune.search, "trials": config.tune.trials,
              "finished": len(result.finished), "failed": found.failed, "not_run": found.not_run,
              "time_budget_s": config.tune.time_budget_s,
              "seconds": round(result.seconds, 1), "models": config.tune.models, "objective": best.objective,
              "default_objective": found.default, "default_over_budget": found.default_over,
              "floor_objective": floor, "ceiling_objective": ceiling,
              "best_trial": best.number, "scores": scores, "space": found.space,
              "recipe": tuned.recipe(config), "protocol": tuned.protocol_settings(config)}
    return tuned.write(tuned.path_of(tuned_dir, config, found.method), found.method, params, record, header)


def describe(config: RunConfig, chosen: Protocol, reported: Protocol, data: SampleTable, floor: float,
             ceiling: float) -> str:
    """What the tune works on, and how far apart the floor and ceiling of its objective are."""
    kept = "its random pool" if config.bench.scenario == "hard" else "them"
    lines = [
        f"tuning on {config.data.name}, {config.model.name}, scenario {config.bench.scenario}: forgets {len(chosen.forget)} "
        f"of {len(data)} training samples (the bench's {len(reported.forget)} forgotten samples left out with {kept}); "
        f"scored on the bench's validation split ({len(chosen.test) + len(chosen.test_class)} test-split samples, "
        f"never its {len(reported.test) + len(reported.test_class)} test samples); {chosen.models} models a side, "
        "seeds apart from the bench's",
        f"objective (lower is better): floor {floor:.3f} (oracles against oracles), ceiling {ceiling:.3f} (no unlearning)",
    ]
    if ceiling <= floor:
        lines.append("the ceiling is not above the floor: the originals are indistinguishable from the oracles here, "
                     "so the search can only keep accuracy (use a setting whose originals memorise)")
    return "\n".join(lines)


def tune_table(result: TuneResult) -> str:
    """Each method's search in a line (trials, failures, the objective of its own values and of the
    best, the best's scores, search time), then its best parameters and where they were written."""
    columns = f"{'method':22}{'finished':>9}{'failed':>7}{'own':>8}{'best':>8}{'U-LiRA':>8}{'UA':>7}{'RA':>7}{'TA':>7}" \
              f"{'search s':>10}"
    lines = [columns]
    for found in result.searches:
        if found.result is None:
            lines.append(f"{found.method:22}skipped: {found.note}")
            continue
        trials, best = found.result.trials, found.best
        row = f"{found.method:22}{f'{len(found.result.finished)}/{found.planned}':>9}{found.failed:>7}{found.default:>8.3f}"
        if best is None:
            why = ("no trial within the budget finished" if found.result.finished
                   else f"no trial finished: {trials[0].error if trials else 'none started'}")
            lines.append(f"{row}  {why}")
            continue
        scores = best.result
        lines.append(f"{row}{best.objective:>8.3f}{scores['ulira']:>8.2f}{scores['ua']:>7.1f}{scores['ra']:>7.1f}"
                     f"{scores['ta']:>7.1f}{found.result.seconds:>10.0f}")
        params = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        lines.append(f"  trial {best.number}: {params} -> {found.path}")
        if found.default_over:
            lines.append(f"  its own values run past the budget ({', '.join(found.default_over)}): trial 0 measured them, "
                         "not a candidate")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
