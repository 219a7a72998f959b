"""Default vs tuned: every method on the Fashion-MNIST and CIFAR-10 subset settings, random and hard forget sets.

For each setting and scenario, four steps, each an `unlearn` command run in this process:

1. `unlearn tune`: every method's search against retraining (at most 20 trials, 8 models a side)
   under a wall-clock budget per method (BUDGET_S; SFR-on, whose one trial costs more, BUDGETS_S
   in a command of its own), writing `configs/tuned/<data>-cnn-<scenario>/<method>.toml`;
2. `unlearn bench`: every method with its defaults (16 models a side), into
   `benchmarks/results/bench-<setting>-<scenario>/` (the head-to-head bench of benchmarks/README.md);
3. `unlearn bench --tuned`: the same bench with the tuned configurations (it shares the model cache of
   step 2, so only the unlearning runs are new), into `...-tuned/`;
4. the comparison (`benchmarks/results/tuning-<setting>-<scenario>.md` and `.json`): per method the
   search budget it got (trials finished, search time) and its default and tuned scores on the
   reported test samples and seeds, with the rank of each by the tuning objective (computed on the
   reported scores against the oracles' means) and by Avg. Gap (SalUn's ranking metric).

    python -m benchmarks.tuning --plan                       # the commands; runs nothing
    python -m benchmarks.tuning                              # all four settings and scenarios
    python -m benchmarks.tuning --only fashion-mnist-random  # one of them
    python -m benchmarks.tuning --quick                      # digits, 2 methods, 3 trials: checks the sequence (CI)

Each step's outputs stay where they are, so a step that is interrupted is rerun alone: the tune's and
the benches' model caches (`runs/tuning/<setting>/`) keep every finished model. `--steps` runs some
of the steps and reads the others' results from disk: `--steps tune,tuned` beside a recorded
head-to-head bench (the tuned bench then trains the same originals and oracles itself; the
comparison refuses two benches whose floor and ceiling rows differ).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.csv as pcsv

import approx
from orchestration.bench import tuned, tuning
from orchestration.cli import main as unlearn
from orchestration.config import load_config

SHARED = Path("../shared/data")
"""The real data sets, relative to the repository root (run the benchmark from there)."""
SETTINGS = {  # name -> (config, data folder under ../shared/data)
    "fashion-mnist": ("configs/bench-fashion-mnist.toml", "fashion-mnist"),
    "cifar10": ("configs/bench-cifar10.toml", "cifar-10-jpeg"),
}
SCENARIOS = ("random", "hard")
BUDGET_S = 180.0
"""Seconds of search per method (`tune.time_budget_s`; trials still running then are stopped, so the
planned 20 trials are a ceiling). On the Fashion-MNIST random setting on 2 cores every method but
SFR-on used 46-190 s for its trials (8 unlearning runs and the scores each, two at a time): all
finished their 20 but SCRUB, whose budget stopped its last; the table reports what each got."""
BUDGETS_S = {"sfr_on": 900.0}
"""Methods whose own values cost more than BUDGET_S for one trial: SFR-on's 300 forget and 1,500
retain reference steps take 55 s a run, so its trial 0 takes 440 s (8 runs on one core); its drawn
configurations draw at most 20% of the samples the original training drew (iterations x batch size).
It is searched in a command of its own (hence its own `--out`); on Fashion-MNIST random its 20
trials took 432 s."""
QUICK = ["--quick", "--set", "data.train_limit=200", "--set", "sisa.epochs=10", "--set", "sisa.batch_size=16"]
STEPS = ("tune", "default", "tuned")
"""The steps of a plan, in the order they run (`--steps` picks some)."""
REFERENCE_SCORES = ("ua", "ra", "ta", "ulira", "klom_forget", "klom_retain", "klom_test", "mia", "fq")
"""Scores of the floor and ceiling rows that depend only on the models and the protocol (not on time)."""


@dataclass
class Plan:
    """The commands of one setting and scenario, and where their results go."""

    name: str
    tunes: list[list[str]]
    """One `unlearn tune` per search budget (BUDGET_S, then each of BUDGETS_S)."""
    default: list[str]
    tuned: list[str]
    config: list[str]
    """The config arguments every command shares (to resolve the setting's config here)."""
    tuned_dir: Path
    results: Path


def plan(setting: str, scenario: str, out: Path) -> Plan:
    """The full run of one setting and scenario."""
    config, folder = SETTINGS[setting]
    name = f"{setting}-{scenario}"
    shared = ["--config", config, "--set", f"data.root={SHARED / folder}", "--set", f"bench.scenario={scenario}"]
    runs = Path("runs/tuning") / setting  # model caches shared by both scenarios (same originals)
    rest = ",".join(m for m in approx.available() if m not in BUDGETS_S)
    groups = [(rest, BUDGET_S, f"tune-{scenario}"),
              *((m, budget, f"tune-{scenario}-{m}") for m, budget in BUDGETS_S.items())]
    tunes = [["tune", "--method", methods, *shared, "--set", f"tune.time_budget_s={budget:g}",
              "--set", f"bench.cache_dir={runs / 'tune-models'}", "--out", str(runs / folder), "--no-track"]
             for methods, budget, folder in groups]
    bench = ["bench", *shared, "--set", f"bench.cache_dir={runs / 'bench-models'}", "--no-track"]
    return Plan(name, tunes, [*bench, "--out", str(out / f"bench-{name}")],
                [*bench, "--tuned", "--out", str(out / f"bench-{name}-tuned")], shared, tuned.TUNED_DIR, out)


def quick_plan(out: Path) -> Plan:
    """Digits, fine-tuning and gradient ascent, 3 trials, the quick benches: the sequence in a few minutes."""
    methods = ["--set", "bench.methods=finetune,gradient_ascent", "--set", "bench.sisa=false"]
    tuned_dir = out / "tuned"
    return Plan("digits-random-quick",
                [["tune", "--method", "finetune,gradient_ascent", "--trials", "3", *QUICK, "--tuned-dir", str(tuned_dir),
                 "--out", str(out / "tune"), "--no-track"]],
                ["bench", *QUICK, *methods, "--set", f"bench.cache_dir={out / 'bench-models'}", "--engine", "local",
                 "--no-track", "--out", str(out / "bench-default")],
                ["bench", *QUICK, *methods, "--set", f"bench.cache_dir={out / 'bench-models'}", "--engine", "local",
                 "--no-track", "--tuned", str(tuned_dir), "--out", str(out / "bench-tuned")],
                QUICK, tuned_dir, out)


def _run(argv: list[str]) -> float:
    print(f"$ unlearn {shlex.join(argv)}", flush=True)
    began = time.perf_counter()
    code = unlearn(argv)
    if code != 0:
        raise SystemExit(f"unlearn {argv[0]} failed (exit {code}); its outputs so far are kept, rerun to go on")
    return time.perf_counter() - began


def _out_of(argv: list[str]) -> Path:
    return Path(argv[argv.index("--out") + 1])


def _results(p: Plan, side: str) -> Path:
    """The results table of the default or tuned bench of `p`; refused in one line when it is not there."""
    path = _out_of(p.default if side == "default" else p.tuned) / "results.csv"
    if not path.exists():
        raise SystemExit(f"no {side} bench in {path.parent}: run its step (--steps ...,{side})")
    return path


def compare(p: Plan) -> dict[str, Any]:
    """Per method: the search budget it got and its default and tuned reported scores, with ranks."""
    config = load_config(_value(p.config, "--config"), _pairs(p.config))
    sides = {side: {r["method"]: r for r in pcsv.read_csv(_results(p, side)).to_pylist() if r["target"] == "single"}
             for side in ("default", "tuned")}
    same_models(sides["default"], sides["tuned"])
    methods: dict[str, dict[str, Any]] = {}
    for side, rows in sides.items():
        floor = rows["retrain"]
        reference = {k: floor[k] for k in ("ua", "ra", "ta")}
        for name, row in rows.items():
            if row["kind"] != "approximate":
                continue
            entry = methods.setdefault(name, {})
            scores = {k: row.get(k) for k in ("klom_forget", "ulira", "fq", "ua", "ra", "ta", "gap")}
            valid = row.get("ulira") is not None and not math.isnan(row["ulira"])
            entry[side] = {**scores, "objective": tuning.objective(row, reference) if valid else math.nan,
                           "note": row.get("note") or ""}
    for name, entry in methods.items():
        path = tuned.path_of(p.tuned_dir, config, name)
        record = tuned.read(path).tuning if path.exists() else {}
        entry["search"] = {k: record.get(k) for k in ("trials", "finished", "failed", "not_run", "seconds", "objective",
                                                        "default_objective", "best_trial")}
    for side in ("default", "tuned"):
        for key in ("objective", "gap"):
            ranked = sorted((e[side][key], n) for n, e in methods.items() if side in e and not math.isnan(e[side][key]))
            for rank, (_, name) in enumerate(ranked, start=1):
                methods[name][side][f"rank_{key}"] = rank
    return {"setting": p.name, "methods": methods}


def same_models(default: dict[str, dict[str, Any]], tuned: dict[str, dict[str, Any]]) -> None:
    """Refuse to compare two benches that did not score the same originals and oracles.

    The two sides differ only in the unlearning runs, so their retraining (floor) and no-unlearning
    (ceiling) rows must agree score for score; a difference means another protocol, recipe or code,
    e.g. a default bench recorded before a change that moved trained bits.

    Raises:
        SystemExit: naming the first score that differs.
    """
    for name in ("retrain", "original"):
        for key in REFERENCE_SCORES:
            a, b = default[name].get(key), tuned[name].get(key)
            if a is None or b is None or (isinstance(a, float) and math.isnan(a) and math.isnan(b)):
                continue
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
                raise SystemExit(f"the default and tuned benches scored different models: {name} {key} is {a} "
                                 f"against {b}; rerun the default bench (--steps default)")


def _value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def _pairs(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


def markdown(comparison: dict[str, Any]) -> str:
    """The comparison as a Markdown table, methods by their tuned rank."""
    head = ("| method | trials (finished/planned) | search s | default: objective | U-LiRA | UA | RA | TA | Gap | rank | "
            "tuned: objective | U-LiRA | UA | RA | TA | Gap | rank |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = sorted(comparison["methods"].items(), key=lambda kv: kv[1].get("tuned", {}).get("rank_objective", 99))
    for name, entry in order:
        search = entry["search"]
        cells = [name, f"{search.get('finished', '-')}/{search.get('trials', '-')}", _fmt(search.get("seconds"), ".0f")]
        for side in ("default", "tuned"):
            s = entry.get(side, {})
            cells += [_fmt(s.get("objective"), ".3f"), _fmt(s.get("ulira"), ".2f")]
            cells += [_fmt(s.get(k), ".1f") for k in ("ua", "ra", "ta")]
            cells += [_fmt(s.get("gap"), ".2f"), str(s.get("rank_objective", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--only", help="one setting and scenario, e.g. fashion-mnist-random")
    parser.add_argument("--quick", action="store_true", help="digits, 2 methods, 3 trials (CI)")
    parser.add_argument("--out", help="results folder (default benchmarks/results; --quick: runs/tuning-quick)")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help=f"the steps to run, comma-separated (default {','.join(STEPS)}); the comparison reads the "
                             "others' results from disk, e.g. --steps tune,tuned beside a recorded head-to-head bench, "
                             "or --steps= to redo only the comparison")
    args = parser.parse_args(argv)
    chosen = [step.strip() for step in args.steps.split(",") if step.strip()]
    if set(chosen) - set(STEPS):
        raise SystemExit(f"--steps {args.steps!r}: give some of {', '.join(STEPS)}, comma-separated, or none "
                         "(--steps= : only the comparison)")
    if args.quick:
        plans = [quick_plan(Path(args.out or "runs/tuning-quick"))]
    else:
        out = Path(args.out or "benchmarks/results")
        plans = [plan(s, c, out) for s in SETTINGS for c in SCENARIOS if args.only in (None, f"{s}-{c}")]
        if not plans:
            raise SystemExit(f"--only {args.only}: valid: {', '.join(f'{s}-{c}' for s in SETTINGS for c in SCENARIOS)}")
    results = []
    for p in plans:
        steps = [*((f"tune {i}", argv) for i, argv in enumerate(p.tunes, start=1)), ("default", p.default),
                 ("tuned", p.tuned)]
        if args.plan:
            for _, argv in steps:
                print(f"unlearn {shlex.join(argv)}")
            continue
        for side in (s for s in ("default", "tuned") if s not in chosen):
            _results(p, side)  # a step not run must have run before: say so before the others take hours
        seconds = {step: _run(argv) for step, argv in steps if step.split()[0] in chosen}
        comparison = {**compare(p), "seconds": seconds,
                      "commands": {step: ["unlearn", *argv] for step, argv in steps}}
        p.results.mkdir(parents=True, exist_ok=True)
        (p.results / f"tuning-{p.name}.json").write_text(json.dumps(comparison, indent=1, default=str))
        (p.results / f"tuning-{p.name}.md").write_text(markdown(comparison))
        print(markdown(comparison), end="")
        print(f"steps took {', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}")
        results.append(comparison)
    return results


if __name__ == "__main__":
    main()
