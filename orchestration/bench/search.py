"""One method's search on Ray Tune: its space as Ray Tune domains, trials of one CPU in parallel, streamed.

`search` runs trials on the Ray cluster this process is connected to (a local one, or the one at
`--address`), as many at once as the cluster has CPUs (or `concurrency`), each a Ray Tune trial
of one CPU running `objective(params, context)` with one torch thread. The first trial evaluates
`first` (the method as configured), the others are drawn by Ray Tune's random search, seeded. A
trial whose worker dies (killed, out of memory) is retried `retries` times on a fresh worker; one
that still fails is reported with its error, and the search goes on. `time_budget_s` stops the
search (and the trials still running) after that many seconds.

Each finished or failed trial is handed to `on_trial` as it happens, in this process (Ray Tune's
callbacks run in the driver): that is where MLflow runs and progress are written, so trials never
talk to MLflow themselves.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search.sample import Domain as RayDomain
from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
from ray.tune.search.variant_generator import RecursiveDependencyError

from approx.space import Budget, Choice, Domain, IntUniform, LogUniform, Quota, Uniform
from orchestration.bench.fanout import torch_threads

METRIC = "objective"
"""The key of the objective in what a trial returns; lower is better."""
RETURNED = "returned"
"""Where a trial's whole return value travels in its Ray Tune result."""
SECONDS = "objective_seconds"
"""Where the objective's wall time travels beside it."""
Objective = Callable[[dict[str, Any], Any], dict[str, Any]]
"""(params, context) -> a dict holding METRIC (and anything else worth recording)."""


class _QuotaDomain(RayDomain):
    """A Quota as a Ray Tune domain, drawn from the search's seeded random state once the field it
    depends on is drawn (Ray Tune retries a domain that reads an unresolved field). Not a
    `sample_from`: those get no random state, and a first trial cannot preset their value."""

    def __init__(self, quota: Quota) -> None:
        self.quota = quota

    def sample(self, config: Any = None, size: int = 1, random_state: Any = None) -> int:
        spec = config["config"] if "config" in config else config  # Ray Tune passes its spec, a test the config
        per = spec[self.quota.per]
        if isinstance(per, RayDomain):
            raise RecursiveDependencyError(f"{self.quota.per} is not drawn yet")
        rng = random_state if isinstance(random_state, _BackwardsCompatibleNumpyRng) \
            else _BackwardsCompatibleNumpyRng(random_state)
        return int(rng.integers(self.quota.low, self.quota.high({self.quota.per: per}) + 1))

    def is_valid(self, value: Any) -> bool:
        return self.quota.low <= value

    @property
    def domain_str(self) -> str:
        return repr(self.quota)


def domains(space: Mapping[str, Domain]) -> dict[str, Any]:
    """approx.space domains as Ray Tune domains; a domain of one value becomes that constant.

    Raises:
        TypeError: a Budget left unresolved (see approx.space.resolve).
    """
    out: dict[str, Any] = {}
    for name, domain in space.items():
        if isinstance(domain, Budget):
            raise TypeError(f"{name}: resolve Budget domains against the original training first (approx.space.resolve)")
        if isinstance(domain, LogUniform | Uniform) and domain.low == domain.high:
            out[name] = domain.low
        elif isinstance(domain, LogUniform):
            out[name] = tune.loguniform(domain.low, domain.high)
        elif isinstance(domain, Uniform):
            out[name] = tune.uniform(domain.low, domain.high)
        elif isinstance(domain, IntUniform):
            out[name] = tune.randint(domain.low, domain.high + 1)  # randint leaves out its upper bound
        elif isinstance(domain, Choice):
            out[name] = tune.choice(list(domain.values))
        elif isinstance(domain, Quota):
            out[name] = _QuotaDomain(domain)
        else:
            raise TypeError(f"{name}: no Ray Tune domain for {domain!r}")
    return out


@dataclass
class TrialRecord:
    """One trial as the search saw it."""

    number: int
    """0, 1, ... in the order trials were created; 0 is `first` when one was given."""
    params: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)
    """What the objective returned; empty when the trial failed or was stopped."""
    error: str = ""
    """Why there is no result (the error's last line, or 'stopped before it reported'), else empty."""
    failures: int = 0
    """Times the trial's worker died or it raised (each followed by a retry, while retries are left)."""
    seconds: float = math.nan
    """Wall time of the objective on its worker (its last attempt); NaN when it never reported."""

    @property
    def objective(self) -> float:
        return float(self.result[METRIC]) if METRIC in self.result else math.nan


@dataclass
class SearchResult:
    """Every trial of one search, and how long the search took."""

    trials: list[TrialRecord]
    seconds: float

    @property
    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if METRIC in t.result]

    @property
    def best(self) -> TrialRecord | None:
        """The finished trial of lowest objective (the earlier one on a tie); None if none finished."""
        return self.best_of(lambda trial: True)

    def best_of(self, eligible: Callable[[TrialRecord], bool]) -> TrialRecord | None:
        """The eligible finished trial of lowest objective (the earlier one on a tie), or None."""
        return min((t for t in self.finished if eligible(t)), key=lambda t: (t.objective, t.number), default=None)


def _run_trial(params: dict[str, Any], objective: Objective, context: Any) -> dict[str, Any]:
    """A trial's body on its worker: the objective with one torch thread. What it returned travels
    whole under RETURNED (Ray Tune adds its own keys beside it)."""
    began = time.perf_counter()
    with torch_threads(1):
        returned = objective(params, context)
    return {METRIC: float(returned[METRIC]), RETURNED: returned, SECONDS: time.perf_counter() - began}


class _Stream(tune.Callback):
    """Driver-side: records each trial as it ends and hands it to `on_trial`."""

    def __init__(self, on_trial: Callable[[TrialRecord], None] | None) -> None:
        self.on_trial = on_trial
        self.records: dict[str, TrialRecord] = {}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        returned = trial.last_result.get(RETURNED)
        self.end(trial, returned or {}, "" if returned else "stopped before it reported")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.end(trial, {}, _last_line(trial.get_error()))

    def end(self, trial: Any, returned: dict[str, Any], error: str) -> None:
        record = TrialRecord(_number(trial, len(self.records)), dict(trial.config), dict(returned), error,
                             int(trial.num_failures), float(trial.last_result.get(SECONDS, math.nan)))
        self.records[trial.trial_id] = record
        if self.on_trial is not None:
            self.on_trial(record)


def _number(trial: Any, fallback: int) -> int:
    """The trial's creation number: Ray Tune's experiment tag starts with it ('3_lr=0.01,...')."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(head) if head.isdigit() else fallback


def _last_line(error: BaseException | None) -> str:
    """The last line of a trial's error: Ray Tune wraps the cause's traceback, whose last line names it."""
    text = str(error).strip() if error is not None else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def search(name: str, param_space: dict[str, Any], objective: Objective, context: Any, *, trials: int, storage: Path,
           seed: int, first: dict[str, Any] | None = None, time_budget_s: float = 0.0, retries: int = 2,
           concurrency: int = 0, on_trial: Callable[[TrialRecord], None] | None = None) -> SearchResult:
    """Search `param_space` (Ray Tune domains) for the lowest METRIC that `objective` returns.

    Args:
        name: the experiment's name (its folder under `storage`).
        param_space: parameter -> Ray Tune domain or constant (see `domains`).
        objective: runs one trial; must be importable by the workers (a module-level function).
        context: shared by every trial (put once in the object store).
        trials: how many trials, `first` included.
        storage: where Ray Tune keeps the experiment (a path every node reaches on a cluster).
        seed: seeds the random search, so a search is repeatable.
        first: parameters of the first trial (the method's own values), or None.
        time_budget_s: stop the search after this many seconds; 0 for no limit.
        retries: restarts of a failed trial before it is reported as failed.
        concurrency: trials at once; 0 for as many as the cluster's CPUs hold.
        on_trial: called in this process with each trial that finished or failed.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Ray Tune's newer console output prints a banner per experiment even when told to be silent;
    # the older one is silent at verbose=0. Progress is this command's to show.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # `first` may lie outside the space (a method's own epochs beyond the budget): on purpose, it
    # measures the method as configured; the caller decides whether such a trial may be the best.
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    stream = _Stream(on_trial)
    trainable = tune.with_resources(tune.with_parameters(_run_trial, objective=objective, context=context), {"cpu": 1})
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="min", num_samples=trials, max_concurrent_trials=concurrency or None,
            search_alg=BasicVariantGenerator(points_to_evaluate=[first] if first else None, random_state=seed),
            time_budget_s=time_budget_s or None, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(Path(storage).resolve()), verbose=0, callbacks=[stream],
                                  failure_config=tune.FailureConfig(max_failures=retries)),
    )
    began = time.perf_counter()
    tuner.fit()  # every trial's outcome reached the callback
    seconds = time.perf_counter() - began
    return SearchResult(sorted(stream.records.values(), key=lambda t: t.number), seconds)
