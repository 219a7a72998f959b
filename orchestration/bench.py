"""`unlearn bench`: exact and approximate unlearning head to head on one data set, model and forget set.

Per model seed it trains the originals (a single model, and the SISA ensemble), then serves the
scenario's requests by retraining the single model from scratch (the reference), by SISA deletion,
and by every approximate method that fits the model (CT and MSG need convolutions) on the single
model and on the ensemble's affected constituents. Each result is scored against that seed's
retrained model (see evaluation.py). Everything runs in this process, one thing at a time, so
wall times compare like for like.

    out/seed-<s>/ensemble          the original SISA ensemble
    out/seed-<s>/ensemble/single   the original single model (one shard, one slice, same recipe)
    out/seed-<s>/sisa              the ensemble after SISA deletion
    out/seed-<s>/retrain           the single model retrained from scratch without the forget set
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

import approx
from orchestration.approximate import single_model_run, unlearn_constituents
from orchestration.config import BenchConfig, RunConfig
from orchestration.evaluation import Outputs, accuracy_metrics, avg_gap, divergences, logit_confidence, mia_efficacy, outputs
from orchestration.measure import Cost, measure
from orchestration.runs import Session, open_run
from sisa import SampleTable, SisaRun
from sisa.plan import ShardPlan

log = logging.getLogger(__name__)

OnStep = Callable[[str], None] | None
"""Called with a description after every step of the bench (for progress bars)."""


@dataclass
class Row:
    """One method on one target at one seed: its metrics and what forget quality needs."""

    method: str
    target: str
    seed: int
    kind: str
    """'original' (before unlearning; its cost is the training cost), 'exact' or 'approximate'."""
    metrics: dict[str, float] = field(default_factory=dict)
    forget_stat: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Logit-scaled confidence on each forget sample (for forget quality)."""


def forget_requests(bench: BenchConfig, table: SampleTable) -> list[np.ndarray]:
    """The scenario's deletion requests, drawn with bench.forget_seed (the same for every model seed)."""
    rng = np.random.default_rng(bench.forget_seed)
    if bench.scenario == "class":
        labels = table.table.column("label").to_numpy()
        ids = table.ids[labels == bench.forget_class]
        if len(ids) == 0 or len(ids) == len(table):
            raise ValueError(f"bench.forget_class {bench.forget_class} must be a label with some but not all "
                             f"samples; labels present: {sorted(set(labels.tolist()))}")
        return [ids]
    count = round(bench.forget_fraction * len(table)) if bench.scenario == "random" else bench.stream_requests
    if not 0 < count < len(table):
        raise ValueError(f"the {bench.scenario} scenario forgets {count} of {len(table)} samples; "
                         "it must forget at least one and keep at least one")
    ids = rng.choice(table.ids, count, replace=False)
    return [np.sort(ids)] if bench.scenario == "random" else [ids[i : i + 1] for i in range(count)]


def create_methods(bench: BenchConfig, model: nn.Module | None = None) -> list[approx.UnlearningMethod]:
    """The configured methods with their parameter overrides; unknown names or parameters raise here.

    Given the bench's model, a method that cannot run on it (CT and MSG need convolutions) is left
    out with a log line saying why when the bench runs every method (`bench.methods` empty), and
    is an error when `bench.methods` names it.
    """
    names = list(bench.methods) or approx.available()
    stray = sorted(set(bench.params) - set(names))
    if stray:
        raise ValueError(f"bench.params names method(s) {stray} that the bench does not run; running: {names}")
    methods = [approx.create(name, **bench.params.get(name, {})) for name in names]
    if model is None:
        return methods
    runnable = []
    for method in methods:
        try:
            method.check_model(model)
        except ValueError as err:
            if bench.methods:
                raise
            log.info("the bench leaves out %s: %s", method.name, err)
            continue
        runnable.append(method)
    return runnable


def bench_steps(bench: BenchConfig, methods: list[approx.UnlearningMethod]) -> int:
    """Progress steps of a bench: per seed, the originals, retraining, SISA and every method on every target."""
    return len(bench.seeds) * (4 + len(methods) * len(bench.targets))


def clone(run: SisaRun, run_dir: Path) -> SisaRun:
    """A copy of `run` (its directory and default checkpoint store) that can be changed on its own."""
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(run.run_dir, run_dir, ignore=shutil.ignore_patterns("lock", "single"))
    return SisaRun(run_dir, run.table, run.trainer.model_factory, run.config, run.seed, run.fingerprint,
                   lock_timeout=run.lock_timeout)


class SeedBench:
    """Everything the bench does at one model seed."""

    def __init__(self, config: RunConfig, seed: int, data: tuple[SampleTable, SampleTable], requests: list[np.ndarray],
                 out: Path, on_step: OnStep = None) -> None:
        self.seed, self.requests, self.on_step = seed, requests, on_step or (lambda _: None)
        self.config = dataclasses.replace(config, seed=seed)
        self.dir = out / f"seed-{seed}"
        shutil.rmtree(self.dir, ignore_errors=True)  # a rerun trains afresh, so training costs are real
        self.session: Session = open_run(self.dir / "ensemble", self.config, data)
        self.forget_ids = np.sort(np.concatenate(requests))
        table = self.session.run.table
        self.sets = {"forget": table.tensors(self.forget_ids),
                     "retain": table.tensors(np.setdiff1d(table.ids, self.forget_ids)),
                     "test": self.session.test.tensors()}
        self.reference: Outputs | None = None
        self.reference_metrics: dict[str, float] = {}
        self.rows: list[Row] = []

    def run(self, methods: list[approx.UnlearningMethod], targets: tuple[str, ...]) -> list[Row]:
        """Train the originals, retrain, delete with SISA, run every method; one row each."""
        ensemble = self.session.run
        single = single_model_run(self.session)
        originals = {"single": single, "ensemble": ensemble}
        training = {}
        for target, base in originals.items():
            with measure() as cost:
                reports = base.train()
            training[target] = (cost, sum(r.samples_epochs for r in reports))
        self._exact("retrain", "single", single, self.dir / "retrain")  # the reference every row is scored against
        for target, base in originals.items():
            self._add("original", target, "original", base, *training[target])
        self._exact("sisa", "ensemble", ensemble, self.dir / "sisa")
        for target in targets:
            original = originals[target]
            plan, constituents = original.plan(), original.constituents()  # verified once, copied per method
            for method in methods:
                self._approximate(method, target, original, plan, constituents)
        return self.rows

    def _exact(self, name: str, target: str, original: SisaRun, run_dir: Path) -> None:
        run = clone(original, run_dir)
        with measure() as cost:
            reports = [run.forget(ids, reason=f"bench {self.config.bench.scenario}") for ids in self.requests]
        self._add(name, target, "exact", run, cost, sum(r.samples_epochs for r in reports))

    def _approximate(self, method: approx.UnlearningMethod, target: str, original: SisaRun, plan: ShardPlan,
                     constituents: list[tuple[int, nn.Module]]) -> None:
        models = {shard: copy.deepcopy(model) for shard, model in constituents}
        forgotten = np.empty(0, np.int64)
        samples = 0
        with measure() as cost:
            for ids in self.requests:
                samples += unlearn_constituents(models, plan, original.table, ids, method, self.session.num_classes,
                                                self.seed, self.config.sisa.device, forgotten)
                forgotten = np.union1d(forgotten, ids)
        self._add(method.name, target, "approximate", original, cost, samples, list(models.values()))

    def _add(self, method: str, target: str, kind: str, run: SisaRun, cost: Cost, samples_epochs: int,
             models: list[nn.Module] | None = None) -> None:
        models = models if models is not None else [m for _, m in run.constituents()]
        how = self.config.sisa.aggregation if target == "ensemble" else "vote"
        out = outputs(models, how, self.sets)
        metrics = {**accuracy_metrics(out), "MIA": mia_efficacy(out, self.seed)}
        if method == "retrain":
            self.reference, self.reference_metrics = out, metrics
        if self.reference is not None:
            metrics["gap"] = avg_gap(metrics, self.reference_metrics)
            metrics.update(divergences(self.reference.probs["forget"], out.probs["forget"]))
        metrics.update({"seconds": cost.seconds, "samples_epochs": float(samples_epochs), "peak_mb": cost.peak_mb,
                        "store_mb": run.store.nbytes() / 1e6})
        self.rows.append(Row(method, target, self.seed, kind, metrics, logit_confidence(out)))
        log.debug("seed %d %s/%s: %s", self.seed, method, target,
                 ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()))
        self.on_step(f"seed {self.seed} {method}/{target}")


def cost_curve(session: Session, requests: list[np.ndarray], count: int, seed: int, out: Path) -> list[dict[str, float]]:
    """SISA serving `count` single-sample requests one by one (from the forget set), on a copy of the ensemble.

    Each point gives the request's measured seconds and samples x epochs, and the samples x epochs
    a retrain from scratch would process for it (the retained samples times the epochs).
    """
    ids = np.random.default_rng(seed).permutation(np.concatenate(requests))[:count]
    run = clone(session.run, out / "cost-curve")
    remaining, points = len(run.table), []
    for number, sample_id in enumerate(ids.tolist(), start=1):
        with measure() as cost:
            report = run.forget([sample_id], reason="bench cost curve")
        remaining -= 1
        points.append({"request": number, "seconds": cost.seconds, "samples_epochs": float(report.samples_epochs),
                       "retrain_samples_epochs": float(remaining * run.config.epochs)})
    shutil.rmtree(run.run_dir, ignore_errors=True)
    return points
