"""A study: one data set, model and protocol, its model populations, and the score of any method.

    study = Study(config, train, test, protocol, fanout, cache)
    row = study.method_row(approx.create("finetune"), "single")   # per-example scores + summary

For each target, single model or SISA ensemble ("ensemble"), a study trains (once, cached):

- N originals on all the training data (seeds of role `original`);
- N oracles on the retain set (role `oracle`): the floor compares their halves, the ceiling
  compares the originals with them;
- for the ensemble, the N exact SISA deletions of the forget set from the originals;
- per method, N unlearning runs, one from each original, and N - 1 more from the first original
  (the challenge's protocol for forget quality; run 0 is shared).

Everything runs through the fan-out and lands in the cache; a second call finds it there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import approx
from orchestration.bench.fanout import Fanout, Progress
from orchestration.bench.jobs import Delete, Job, JobResult, Train, Unlearn, Workspace
from orchestration.bench.populations import run_job
from orchestration.bench.protocol import Protocol
from orchestration.bench.scoring import Population, Scores, score
from orchestration.config import RunConfig
from sisa import SampleTable

log = logging.getLogger(__name__)
FAMILY = {"single": "single", "ensemble": "sisa"}
"""Bench target -> the family of models it trains."""


@dataclass
class Row:
    """One line of the results: a population of one target scored against that target's oracles."""

    method: str
    target: str
    kind: str
    """'floor' (oracles vs oracles), 'ceiling' (originals: no unlearning), 'exact' or 'approximate'."""
    scores: Scores | None
    population: Population | None = None
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    """Why there are no scores (e.g. the method needs convolutions), else empty."""

    @property
    def summary(self) -> dict[str, Any]:
        values = self.scores.summary if self.scores is not None else {}
        return {"method": self.method, "target": self.target, "kind": self.kind, "note": self.note, **values}


class Study:
    """Populations of one protocol, made through a fan-out and kept in a model cache."""

    def __init__(self, config: RunConfig, train: SampleTable, test: SampleTable, protocol: Protocol, fanout: Fanout,
                 cache: Path, progress: Progress | None = None) -> None:
        self.config, self.protocol, self.fanout, self.progress = config, protocol, fanout, progress
        splits = protocol.splits()
        self.ws = Workspace(config, train, test, max(train.num_classes, test.num_classes), splits, Path(cache))
        tables = {"train": train, "test": test}
        self.labels = {name: tables[t].labels[np.searchsorted(tables[t].ids, ids)] for name, (t, ids) in splits.items()}
        self.made = self.reused = 0
        self._populations: dict[tuple[str, str], Population] = {}

    # --- jobs ---

    def originals(self, target: str) -> list[Train]:
        """N models on all the training data; ensembles keep their slice checkpoints for deletions."""
        family = FAMILY[target]
        return [Train(family, s, self.ws.train.ids, keep_run=family == "sisa") for s in self.protocol.seeds("original")]

    def oracles(self, target: str) -> list[Train]:
        """N models retrained from scratch on the retain set, with seeds of their own."""
        return [Train(FAMILY[target], s, self.protocol.retain) for s in self.protocol.seeds("oracle")]

    def unlearning_jobs(self, method: approx.UnlearningMethod, target: str) -> tuple[list[Unlearn], list[Unlearn]]:
        """(one run from each original, N runs from the first original); both start with the same run."""
        originals, seeds, requests = self.originals(target), self.protocol.seeds("unlearn"), self.protocol.requests
        spread = [Unlearn(o, method, requests, s) for o, s in zip(originals, seeds)]
        return spread, [spread[0]] + [Unlearn(originals[0], method, requests, s) for s in seeds[1:]]

    def run(self, jobs: list[Job]) -> list[JobResult]:
        """Run jobs through the fan-out (the cache answers those already done), in the order given."""
        if not jobs:
            return []
        results: dict[int, JobResult] = {}
        index = {id(job): i for i, job in enumerate(jobs)}
        for job, result in self.fanout.map(run_job, jobs, self.ws, self.progress):
            results[index[id(job)]] = result
            if result.skipped:  # nothing was made (the method does not apply): neither made nor reused
                continue
            if result.fresh:
                self.made += 1
            else:
                self.reused += 1
        return [results[i] for i in range(len(jobs))]

    # --- populations ---

    def prepare(self, targets: tuple[str, ...], exact: bool = True) -> None:
        """Make every target's originals and oracles (one fan-out), then (with `exact`) the ensembles'
        exact deletions."""
        wanted = [(t, kind) for t in targets for kind in ("original", "oracle") if (t, kind) not in self._populations]
        jobs = [(t, kind, self.originals(t) if kind == "original" else self.oracles(t)) for t, kind in wanted]
        results = self.run([job for _, _, group in jobs for job in group])
        for t, kind, group in jobs:
            self._populations[(t, kind)] = self._stack(results[: len(group)])
            results = results[len(group) :]
        if exact and "ensemble" in targets and ("ensemble", "exact") not in self._populations:
            deletions = [Delete(o, self.protocol.requests) for o in self.originals("ensemble")]
            self._populations[("ensemble", "exact")] = self._stack(self.run(deletions))

    def population(self, target: str, kind: str) -> Population:
        """'original', 'oracle' or (ensemble only) 'exact' population of a target."""
        if (target, kind) not in self._populations:
            self.prepare((target,))
        return self._populations[(target, kind)]

    def _stack(self, results: list[JobResult]) -> Population:
        return Population.stack([r.outputs for r in results], [r.cost for r in results], self.labels)

    # --- rows ---

    def reference_rows(self, target: str, exact: bool = True) -> list[Row]:
        """The floor, the ceiling and (with `exact`, for the ensemble) SISA's exact deletions."""
        oracle = self.population(target, "oracle")
        rows = [Row("retrain", target, "floor", self._score(oracle, oracle, target), oracle),
                Row("original", target, "ceiling", self._score(self.population(target, "original"), oracle, target),
                    self.population(target, "original"))]
        if exact and target == "ensemble":
            deleted = self.population(target, "exact")
            rows.append(Row("sisa", target, "exact", self._score(deleted, oracle, target), deleted))
        return rows

    def method_row(self, method: approx.UnlearningMethod, target: str, challenge: bool = True) -> Row:
        """Unlearn every original (and N times the first) with `method`; score against the oracles.

        This is the whole evaluation of one method configuration: given the study's data, forget
        set and seeds, the per-example scores (`row.scores.per_sample`) and their summary.
        Without `challenge` only the runs from each original are made (half the work) and forget
        quality is computed from them.
        """
        params = dataclasses.asdict(method)
        spread, from_first = self.unlearning_jobs(method, target)
        results = self.run(spread + (from_first[1:] if challenge else []))
        skipped = next((r.skipped for r in results if r.skipped), "")
        if skipped:
            return Row(method.name, target, "approximate", None, params=params, note=skipped)
        population = self._stack(results[: len(spread)])
        runs = self._stack(results[:1] + results[len(spread) :]) if challenge else None
        return Row(method.name, target, "approximate", self._score(population, self.population(target, "oracle"), target,
                                                                     runs), population, params)

    def _score(self, candidate: Population, oracle: Population, target: str, challenge: Population | None = None) -> Scores:
        scores = score(candidate, oracle, challenge, seed=self.protocol.seed)
        # Retraining from scratch, once per request, is what every unlearning step is measured against.
        retrain = float(np.median([c.seconds for c in oracle.costs])) * len(self.protocol.requests)
        seconds = scores.summary["seconds"]
        scores.summary["speedup"] = retrain / seconds if seconds > 0 else math.nan
        retrain_cpu = float(np.median([c.cpu_seconds for c in oracle.costs])) * len(self.protocol.requests)
        cpu = scores.summary["cpu_seconds"]
        scores.summary["speedup_cpu"] = retrain_cpu / cpu if cpu > 0 else math.nan
        return scores

    def cost_curve(self, count: int) -> list[dict[str, float]]:
        """SISA serving `count` single-sample requests from the forget set, one after another, on a
        copy of the first original ensemble: seconds and samples x epochs per request, and what
        retraining from scratch would process for each."""
        ids = np.random.default_rng(self.config.bench.forget_seed).permutation(self.protocol.forget)[:count]
        original = self.originals("ensemble")[0]
        (result,) = self.run([Delete(original, tuple(ids[i : i + 1] for i in range(len(ids))), evaluate=False)])
        remaining, points = len(original.ids), []
        for number, cost in enumerate(result.request_costs, start=1):
            remaining -= 1
            points.append({"request": number, "seconds": cost.seconds, "samples_epochs": cost.samples_epochs,
                           "retrain_samples_epochs": float(remaining * self.config.sisa.epochs)})
        return points
