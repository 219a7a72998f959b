"""Tuning against retraining on data and seeds the bench never reports: the protocol, the objective, a trial.

The bench reports on its protocol (protocol.py): a forget set F drawn from the training data D, a
test split T and a validation split V from the test data, and populations seeded from `seed` and
the stage 'bench'. The tuner works beside that protocol, never inside it (`carve`):

- its data are D' = D minus F (for the hard scenario, minus F's whole random pool, since the hard
  set is chosen from it by trained models): no tuning model trains on, unlearns or is scored on a
  sample the bench forgets;
- its forget set F' is drawn from D' by the scenario's rule with a seed of its own (class-wise:
  another class, drawn from those left in D');
- it is scored on V, the bench's validation split (class-wise: without F''s class, which becomes
  its `test_class`), never on T. V is held out of the test split rather than carved from D: like
  T, no model of either protocol ever trains on it, and the tuning models train on D' alone, as
  close to the bench's D as leaving out F allows, so a tuned recipe is fitted to the bench's
  training set size;
- its populations are seeded from the stage 'tune', so no tuning model is a reported model.

`overlaps` counts what the two protocols share (all zeros, or the tuner refuses to run), and every
trial reports what it saw (`seen`: digests of the ids its models trained on, unlearned and were
scored on, and every seed), so the promise can be checked after the fact against the ids the
tuner records (`tune_protocol.json`) and the bench's own `protocol.json`.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import approx
from orchestration.bench import protocol
from orchestration.bench.fanout import InProcess, torch_threads
from orchestration.bench.jobs import Unlearn, folder_name
from orchestration.bench.protocol import ROLES, Protocol
from orchestration.bench.study import Study
from orchestration.config import RunConfig
from sisa import SampleTable
from sisa.plan import ids_digest
from sisa.seeding import derive_seed

TARGET = "single"
"""Methods are tuned on single models; `bench --tuned` applies the result to every target."""
WORST = 2.0
"""The objective's largest value: given to a configuration that fails (its loss diverges, or the
method refuses the combination), so a search steers away from it instead of stopping."""
REPORTED = ("ulira", "ua", "ra", "ta", "gap", "klom_forget", "fq", "seconds", "samples_epochs")
"""Summary scores a trial reports beside its objective."""


# --- The tuning protocol -------------------------------------------------------------------------


def reported_protocol(config: RunConfig, train: SampleTable, test: SampleTable) -> Protocol:
    """The bench's protocol as far as the tuner must keep away from it.

    For the hard scenario this is the random pool its hard set is chosen from (the same test and
    validation splits and seeds): the hard set needs trained models to find, and avoiding the
    whole pool avoids it.
    """
    bench = config.bench
    if bench.scenario == "hard":
        bench = dataclasses.replace(bench, scenario="random")
    return protocol.build(bench, train, test, config.seed)


def carve(config: RunConfig, train: SampleTable, test: SampleTable,
          reported: Protocol) -> tuple[SampleTable, Protocol]:
    """The tuner's data D' and protocol beside `reported` (see the module docstring).

    For the hard scenario the protocol returned holds the random pool drawn from D'; its hard set
    is chosen from it afterwards, as the bench does (`protocol.hardest`).

    Raises:
        ValueError: class-wise, when D' holds fewer than two classes (one to forget, one to keep).
    """
    bench = config.bench
    data = train.take(np.setdiff1d(train.ids, reported.forget))
    seed = derive_seed(bench.forget_seed, "tune") >> 32  # the tuning forget set's own draw
    rule = dataclasses.replace(bench, scenario="random" if bench.scenario == "hard" else bench.scenario,
                               forget_seed=seed)
    if bench.scenario == "class":
        classes = np.unique(data.labels)
        if len(classes) < 2:
            raise ValueError(f"tuning the class scenario forgets a class other than bench.forget_class "
                             f"{bench.forget_class}, and keeps another; the training data has {len(classes)} other(s)")
        rule = dataclasses.replace(rule, forget_class=int(np.random.default_rng(seed).choice(classes)))
    requests = protocol.draw_requests(rule, data)
    forget = np.sort(np.concatenate(requests))
    scored, test_class = reported.validation, np.empty(0, np.int64)
    if bench.scenario == "class":
        # validation ids never hold the reported class; the tuning class's become its test_class
        in_class = test.labels[np.searchsorted(test.ids, scored)] == rule.forget_class
        test_class, scored = scored[in_class], scored[~in_class]
    tuning = Protocol(rule.scenario, tuple(np.asarray(r, np.int64) for r in requests), forget,
                      np.setdiff1d(data.ids, forget), scored, np.empty(0, np.int64), test_class,
                      config.tune.models, config.seed, stage="tune")
    return data, tuning


def with_forget(tuning: Protocol, data: SampleTable, forget: np.ndarray) -> Protocol:
    """`tuning` forgetting `forget` (the hard set chosen from its pool) in one request."""
    forget = np.sort(forget)
    return dataclasses.replace(tuning, scenario="hard", requests=(forget,), forget=forget,
                               retain=np.setdiff1d(data.ids, forget))


def overlaps(tuning: Protocol, data: SampleTable, reported: Protocol) -> dict[str, int]:
    """How many ids and seeds the tuner shares with the bench, per kind (all 0 when they are apart)."""
    reported_test = np.union1d(reported.test, reported.test_class)
    tuning_seeds = {s for role in ROLES for s in tuning.seeds(role)}
    reported_seeds = {s for role in ROLES for s in reported.seeds(role)}
    return {
        "trained on a reported forget sample": len(np.intersect1d(data.ids, reported.forget)),
        "scored on a reported test sample": len(np.intersect1d(np.union1d(tuning.test, tuning.test_class), reported_test)),
        "seeds shared with reported models": len(tuning_seeds & reported_seeds),
    }


# --- The objective -------------------------------------------------------------------------------


def objective(summary: dict[str, float], reference: dict[str, float]) -> float:
    """What a configuration is tuned to minimise: how far its unlearned models are from retraining.

        objective = 2 max(0, U-LiRA - 1/2) + (|UA - UA_o| + |RA - RA_o| + |TA - TA_o|) / 300

    - U-LiRA (`summary['ulira']`): accuracy of the per-sample likelihood-ratio attack telling the
      unlearned models from the oracles on the forget set; 2 (U-LiRA - 1/2) is its advantage over
      guessing, in [0, 1]. It is two-sided (a Gaussian per side and sample): forgetting too little
      and forgetting too much (margins far below the oracles', as random labels give) are both
      told apart. KLoM is not the criterion: its margin histograms need many models a side, and
      with the 8 to 16 a tune affords on CPU its floor (oracles against oracles) lies above its
      ceiling (no unlearning), as the bench's report says on digits, so it cannot rank
      configurations; U-LiRA's pooled-variance Gaussians separate populations of 8 (4 shadow and 4
      target models a side, in two folds).
    - the accuracy gaps (percentage points) to the oracles' means `reference` on the forget (UA),
      retain (RA) and validation (TA) samples, each weighted 1/3 of a unit per 100 points, as in
      Deep Unlearn's tuning objective (xcadet/deepunlearn, munl/hpsearch/objectives.py): damage
      to what is kept costs, and so does forgetting beyond retraining. MIA-efficacy is left out:
      its one-feature SVC flips between seeds on small sets.

    The sum lies in [0, 2]: 0 is indistinguishable from retraining at equal accuracy. A score that
    cannot be computed (NaN) counts as WORST.

    Example: U-LiRA 0.6, UA 10 (oracles 5), RA 98 (99), TA 90 (93): 2 x 0.1 + (5 + 1 + 3) / 300 = 0.23.
    """
    values = [summary[k] for k in ("ulira", "ua", "ra", "ta")] + [reference[k] for k in ("ua", "ra", "ta")]
    if any(math.isnan(v) for v in values):  # max(0, nan) would be 0: check first
        return WORST
    gaps = [abs(summary[k] - reference[k]) for k in ("ua", "ra", "ta")]
    return float(2 * max(0.0, summary["ulira"] - 0.5) + sum(gaps) / 300)


# --- One trial -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Trial:
    """What every trial of one method's search shares; travels once to the cluster."""

    config: RunConfig
    data: SampleTable
    """D': the training data the tuner may use."""
    test: SampleTable
    protocol: Protocol
    """The tuning protocol (see `carve`)."""
    cache: Path
    """The model cache holding the tuning populations (absolute: trials run in other processes)."""
    method: str
    base: dict[str, Any]
    """The method's configured parameters (bench.params), which every trial starts from."""
    reference: dict[str, float]
    """The oracles' mean UA, RA and TA (%): what the objective's gaps compare with."""

    def create(self, params: dict[str, Any]) -> approx.UnlearningMethod:
        """The trial's method: see `configured`."""
        return configured(self.method, self.base, params)


def configured(method: str, base: dict[str, Any], params: dict[str, Any]) -> approx.UnlearningMethod:
    """`method` with `base` (bench.params) and then `params` replacing its defaults; `params` are
    coerced to the fields' types (tuners hand NumPy scalars)."""
    defaults = approx.create(method)
    typed = {k: type(getattr(defaults, k))(v) for k, v in params.items()}
    return approx.create(method, **{**base, **typed})


def evaluate(params: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """One trial: unlearn the N tuning originals with `params`, score them against the tuning oracles.

    Runs in this process with one torch thread. The unlearned models are deleted from the cache
    afterwards (only the populations are worth keeping). Returns the objective, the scores in
    REPORTED, `note` (why the configuration failed, else empty) and `saw` (see `seen`).
    """
    with torch_threads(1):
        study = Study(trial.config, trial.data, trial.test, trial.protocol, InProcess(), trial.cache)
        try:
            method = trial.create(params)
        except ValueError as err:  # a combination the method refuses
            return {"objective": WORST, "note": str(err).splitlines()[0], "saw": seen(study, [])}
        jobs, _ = study.unlearning_jobs(method, TARGET)
        try:
            row = study.method_row(method, TARGET, challenge=False)
        finally:
            for job in jobs:
                shutil.rmtree(trial.cache / folder_name(job, trial.config), ignore_errors=True)
    saw = seen(study, jobs)
    if row.scores is None:
        return {"objective": WORST, "note": row.note, "saw": saw}
    summary = row.scores.summary
    return {"objective": objective(summary, trial.reference), **{k: summary[k] for k in REPORTED}, "note": "",
            "saw": saw}


def seen(study: Study, jobs: list[Unlearn]) -> dict[str, Any]:
    """What a trial's models saw, from the jobs and splits it used: id digests (sha256 of the sorted
    ids, `sisa.plan.ids_digest`) with counts, and every seed."""

    def ids(values: np.ndarray, table: str = "train") -> dict[str, Any]:
        return {"table": table, "count": int(len(values)), "sha256": ids_digest(values)}

    originals, oracles = study.originals(TARGET), study.oracles(TARGET)
    forget = np.unique(np.concatenate(jobs[0].requests)) if jobs else np.empty(0, np.int64)
    return {
        "trained_on": {"original": ids(np.unique(np.concatenate([j.ids for j in originals]))),
                       "oracle": ids(np.unique(np.concatenate([j.ids for j in oracles])))},
        "unlearned": {"forget": ids(forget),
                      "retain": ids(np.setdiff1d(originals[0].ids, forget) if jobs else np.empty(0, np.int64))},
        "scored_on": {name: ids(split_ids, table) for name, (table, split_ids) in study.ws.splits.items()},
        "seeds": {"original": [j.seed for j in originals], "oracle": [j.seed for j in oracles],
                  "unlearn": [j.seed for j in jobs]},
    }
