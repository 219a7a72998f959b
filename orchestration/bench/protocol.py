"""What the bench compares: the forget set, the splits every model is scored on, and the seeds.

A protocol is fixed before any model is trained and is recorded with the results
(`protocol.json`), so a tuner or a reader can see exactly which samples each score used:

- the deletion requests (one request for `random`, `class` and `hard`; `stream` serves single-sample
  requests one after another) and their union, the forget set;
- the retain set (training samples not forgotten) and, from a seeded stratified subset of the test
  split (`test_samples`), a validation part (for tuning) and the test part the bench reports; in the `class` scenario
  both leave the forgotten class out (the papers' TA) and `test_class` keeps its test samples;
- the seeds of every population, derived from `seed`, a stage ('bench' for the reported
  populations, 'tune' for the tuner's) and a role, so tuning never shares a model with a result.

Scenarios: `random` forgets `forget_fraction` of the training samples, `class` every sample of
`forget_class`, `stream` `stream_requests` single samples, and `hard` the `hard_fraction` most
memorised samples of the random forget set (see `hardest`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

import approx
from orchestration.config import BenchConfig
from sisa import SampleTable
from sisa.seeding import derive_seed

ROLES = ("original", "oracle", "unlearn")
"""Populations with their own seeds: models trained on all data, retrained without the forget set,
and the seeds of the unlearning runs (batch order)."""


@dataclass(frozen=True, eq=False)
class Protocol:
    """The samples and seeds of one bench; every array holds sorted sample_ids."""

    scenario: str
    requests: tuple[np.ndarray, ...]
    """Deletion requests in the order they are served."""
    forget: np.ndarray
    retain: np.ndarray
    test: np.ndarray
    """Test-split ids the bench reports on (without the forgotten class in the `class` scenario)."""
    validation: np.ndarray
    """Test-split ids held out for tuning."""
    test_class: np.ndarray
    """Test-split ids of the forgotten class (`class` scenario only; else empty)."""
    models: int
    """Models a side: N originals, N oracles, N unlearning runs per method."""
    seed: int
    """Base of every population's seeds."""
    stage: str = "bench"
    """'bench' (the populations results are reported on) or 'tune' (the tuner's own): part of every seed."""

    def seeds(self, role: str) -> list[int]:
        """The N seeds of a population; roles and stages are independent of each other and of `seed`'s neighbours."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
        # 31 bits keep the seeds readable in logs and valid for every RNG they reach.
        return [derive_seed(self.seed, self.stage, role, i) >> 32 for i in range(self.models)]

    def splits(self) -> dict[str, tuple[str, np.ndarray]]:
        """Split name -> (table, ids) every model is evaluated on; `table` is 'train' or 'test'."""
        splits = {"forget": ("train", self.forget), "retain": ("train", self.retain), "test": ("test", self.test),
                  "validation": ("test", self.validation)}
        if len(self.test_class):
            splits["test_class"] = ("test", self.test_class)
        return {name: (table, ids) for name, (table, ids) in splits.items() if len(ids)}

    def record(self) -> dict[str, Any]:
        """The protocol as JSON-ready data (every id list in full)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record: dict[str, Any] = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in fields.items()}
        record["requests"] = [r.tolist() for r in self.requests]
        record["seeds"] = {role: self.seeds(role) for role in ROLES}
        return record


def build(bench: BenchConfig, train: SampleTable, test: SampleTable, seed: int,
          forget_ids: np.ndarray | None = None) -> Protocol:
    """The protocol of `bench` on the data and seeds from `seed`.

    Args:
        bench: the scenario, sizes and seeds of the forget set and the validation split.
        train: the training split (forget and retain come from it).
        test: the test split (test, validation and, class-wise, test_class come from it).
        seed: base of every population's seeds.
        forget_ids: forget these ids in one request instead of drawing them (required for the
            `hard` scenario, whose ids come from `hardest`).
    """
    if bench.scenario == "hard" and forget_ids is None:
        raise ValueError("the hard scenario's forget set comes from the random scenario's models: see hardest()")
    requests = [np.sort(forget_ids)] if forget_ids is not None else draw_requests(bench, train)
    forget = np.sort(np.concatenate(requests))
    validation, reported = split_test(test, bench.test_samples, bench.validation_fraction, bench.forget_seed)
    test_class = np.empty(0, np.int64)
    if bench.scenario == "class":
        in_class = test.labels[np.searchsorted(test.ids, reported)] == bench.forget_class
        test_class, reported = reported[in_class], reported[~in_class]
        validation = validation[test.labels[np.searchsorted(test.ids, validation)] != bench.forget_class]
    return Protocol(bench.scenario, tuple(np.asarray(r, np.int64) for r in requests), forget,
                    np.setdiff1d(train.ids, forget), reported, validation, test_class, bench.models, seed)


def draw_requests(bench: BenchConfig, table: SampleTable) -> list[np.ndarray]:
    """The scenario's deletion requests, drawn with bench.forget_seed (never with a model seed).

    `hard` starts from the `random` draw: it is the pool its hardest samples are chosen from.
    """
    rng = np.random.default_rng(bench.forget_seed)
    if bench.scenario == "class":
        ids = table.ids[table.labels == bench.forget_class]
        if len(ids) == 0 or len(ids) == len(table):
            raise ValueError(f"bench.forget_class {bench.forget_class} must be a label with some but not all "
                             f"samples; labels present: {sorted(set(table.labels.tolist()))}")
        return [ids]
    count = bench.stream_requests if bench.scenario == "stream" else round(bench.forget_fraction * len(table))
    if not 0 < count < len(table):
        raise ValueError(f"the {bench.scenario} scenario forgets {count} of {len(table)} samples; "
                         "it must forget at least one and keep at least one")
    ids = rng.choice(table.ids, count, replace=False)
    return [ids[i : i + 1] for i in range(count)] if bench.scenario == "stream" else [np.sort(ids)]


def split_test(test: SampleTable, samples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, test) ids from a seeded stratified subset of `samples` test ids (0 = all of them):
    `fraction` of each class for validation, the rest for test."""
    rng = np.random.default_rng(derive_seed(seed, "validation"))
    share = min(1.0, samples / len(test)) if samples else 1.0
    classes = [test.ids[test.labels == c] for c in np.unique(test.labels)]
    chosen = [rng.choice(ids, round(share * len(ids)), replace=False) for ids in classes]
    validation = [rng.choice(ids, round(fraction * len(ids)), replace=False) for ids in chosen]
    kept = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, np.int64)
    held = np.sort(np.concatenate(validation)) if validation else np.empty(0, np.int64)
    return held, np.setdiff1d(kept, held)


def hardest(pool: np.ndarray, original_margins: np.ndarray, oracle_margins: np.ndarray, fraction: float) -> np.ndarray:
    """The `fraction` of `pool` most memorised: largest mean margin under models that saw them
    (originals) minus the mean under models that did not (oracles retrained without the pool).

    Args:
        pool: (samples,) candidate ids, in the column order of the margins.
        original_margins: (models, samples) margins under the originals.
        oracle_margins: (models, samples) margins under oracles trained without `pool`.
        fraction: share of the pool to keep (at least one sample).

    The same originals are scored afterwards, so the chosen samples' original margins are, on
    average, a little higher than a fresh draw of originals would give them.
    """
    memorised = original_margins.mean(0) - oracle_margins.mean(0)
    count = max(1, round(fraction * len(pool)))
    return np.sort(pool[np.argsort(-memorised, kind="stable")[:count]])


def create_methods(bench: BenchConfig) -> list[approx.UnlearningMethod]:
    """The configured methods with their parameter overrides; unknown names or parameters raise here."""
    names = list(bench.methods) or approx.available()
    stray = sorted(set(bench.params) - set(names))
    if stray:
        raise ValueError(f"bench.params names method(s) {stray} that the bench does not run; running: {names}")
    return [approx.create(name, **bench.params.get(name, {})) for name in names]
