"""One row of the bench: a population of models scored against the oracles, sample by sample.

Like for like: every population metric compares N/2 candidate models with N/2 oracles, in two
folds (candidates 1..N/2 against oracles N/2+1..N, then the other halves) whose per-sample values
are averaged. The floor is the same computation with the oracles as candidates (one half of the
oracles against the other), so a method and the floor see the same number of models, and an exact
method sits at the floor up to noise. The ceiling is the originals (no unlearning) against the
oracles.

Summary keys (the tables' columns): klom_<split> (P95 over samples) and klom_<split>_median,
ulira, fq, with _lo/_hi bounds of a 95% bootstrap interval over samples; ua, ra, ta, ta_class, mia
(mean over models, _std with ddof 1, _lo/_hi of a 95% Student-t interval); gap (Avg. Gap of the
means to the oracles'), kl and js (each model against an oracle); seconds (median, _q25 and _q75),
cpu_seconds, cpu_share, samples_epochs and peak_mb (medians).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from orchestration.bench import metrics
from orchestration.bench.jobs import ModelOutputs
from orchestration.bench.measure import Cost

PERCENTILE = 95
ACCURACIES = {"ua": "forget", "ra": "retain", "ta": "test", "ta_class": "test_class"}
"""Accuracy-like metrics (%) and the split each is measured on; UA is 100 - forget accuracy."""


@dataclass
class Population:
    """N models' per-example outputs stacked as (models, samples) per split, and their costs."""

    margins: dict[str, np.ndarray]
    correct: dict[str, np.ndarray]
    forget_log_probs: np.ndarray
    """(models, forget samples, classes)."""
    costs: list[Cost] = field(default_factory=list)
    _per_model: dict[int, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def stack(cls, outputs: list[ModelOutputs], costs: list[Cost], labels: dict[str, np.ndarray]) -> Population:
        """Stack per-model outputs; `labels` are the true labels of each split."""
        splits = outputs[0].margins
        return cls({s: np.stack([o.margins[s] for o in outputs]) for s in splits},
                   {s: np.stack([o.predicted[s] == labels[s] for o in outputs]) for s in splits},
                   np.stack([o.forget_log_probs for o in outputs]), list(costs))

    def __len__(self) -> int:
        return len(self.forget_log_probs)

    def per_model(self, seed: int) -> dict[str, np.ndarray]:
        """UA, RA, TA (TA class) and MIA-efficacy of each model, computed once (oracles serve every row)."""
        if seed not in self._per_model:
            self._per_model[seed] = _per_model(self, seed)
        return self._per_model[seed]


@dataclass
class Scores:
    """Per-sample values (split -> array) and the summary of one population against the oracles."""

    per_sample: dict[str, np.ndarray]
    summary: dict[str, float]


def score(candidate: Population, reference: Population, challenge: Population | None = None, seed: int = 0) -> Scores:
    """Score `candidate` against the oracles in `reference`.

    Args:
        candidate: the population to score (pass `reference` itself for the floor).
        reference: the oracles, retrained without the forget set.
        challenge: for forget quality, N unlearning runs from one original (the challenge's
            protocol); without it, forget quality uses `candidate`.
        seed: seeds the MIA's member sample and the bootstrap.
    """
    per_sample: dict[str, np.ndarray] = {}
    summary: dict[str, float] = {}
    for split in candidate.margins:
        values = _folds(metrics.klom, candidate.margins[split], reference.margins[split])
        per_sample[f"klom/{split}"] = values
        summary[f"klom_{split}"] = float(np.percentile(values, PERCENTILE))
        summary[f"klom_{split}_median"] = float(np.median(values))
        _bounds(summary, f"klom_{split}", values, lambda d: np.percentile(d, PERCENTILE, axis=1), seed)
        _bounds(summary, f"klom_{split}_median", values, lambda d: np.median(d, axis=1), seed)
    half = min(len(candidate), len(reference)) // 2
    summary["ulira"] = summary["fq"] = math.nan
    if half >= 4:
        per_sample["ulira"] = _folds(metrics.ulira, candidate.margins["forget"], reference.margins["forget"])
        summary["ulira"] = float(per_sample["ulira"].mean())
        _bounds(summary, "ulira", per_sample["ulira"], lambda d: d.mean(1), seed)
    unlearned = challenge if challenge is not None else candidate
    if min(len(unlearned), len(reference)) // 2 >= 3:
        ratio = (np.mean(unlearned.correct["retain"]) / np.mean(reference.correct["retain"])
                 * np.mean(unlearned.correct["test"]) / np.mean(reference.correct["test"]))
        per_sample["fq"] = _folds(metrics.forget_scores, unlearned.margins["forget"], reference.margins["forget"])
        summary["fq"] = float(per_sample["fq"].mean() * ratio)
        _bounds(summary, "fq", per_sample["fq"], lambda d: d.mean(1) * ratio, seed)
    summary.update(sanity(candidate, reference, seed))
    summary.update(cost_summary(candidate.costs))
    return Scores(per_sample, summary)


ArrayMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(candidate (models, samples), reference (models, samples)) -> per-sample values (samples,)."""


def _folds(metric: ArrayMetric, candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-sample mean of `metric` over the two folds of N/2 candidates against N/2 oracles."""
    n = min(len(candidate), len(reference)) // 2
    if n < 1:
        raise ValueError(f"populations need at least 2 models each, got {len(candidate)} and {len(reference)}")
    return (metric(candidate[:n], reference[n : 2 * n]) + metric(candidate[n : 2 * n], reference[:n])) / 2


def _bounds(summary: dict[str, float], name: str, per_sample: np.ndarray,
            statistic: Callable[[np.ndarray], np.ndarray], seed: int) -> None:
    summary[f"{name}_lo"], summary[f"{name}_hi"] = metrics.bootstrap_ci(per_sample, statistic, seed)


def sanity(candidate: Population, reference: Population, seed: int = 0) -> dict[str, float]:
    """UA/RA/TA/MIA per model (mean, std, interval), Avg. Gap of the means, KL/JS to the oracles."""
    out: dict[str, float] = {}
    means = {}
    for name, population in (("candidate", candidate), ("reference", reference)):
        values = population.per_model(seed)
        means[name] = {k: float(np.mean(v)) for k, v in values.items()}
        if name == "candidate":
            for key, per_model in values.items():
                mean, std, low, high = metrics.mean_ci(per_model)
                # an interval reaching past 0% or 100% says no more than one ending there
                out.update({key: mean, f"{key}_std": std, f"{key}_lo": max(low, 0.0), f"{key}_hi": min(high, 100.0)})
    out["gap"] = metrics.avg_gap(means["candidate"], means["reference"])
    # Each candidate against the oracle half a population away: never a model against itself,
    # so the floor (oracles against oracles) measures how much retrained models differ.
    n = len(reference)
    kl, js = zip(*(metrics.divergences(reference.forget_log_probs[(i + n // 2) % n], candidate.forget_log_probs[i])
                   for i in range(min(len(candidate), n))))
    for key, values in (("kl", kl), ("js", js)):
        mean, std, low, high = metrics.mean_ci(np.array([v.mean() for v in values]))
        out.update({key: mean, f"{key}_std": std, f"{key}_lo": max(low, 0.0), f"{key}_hi": high})
    return out


def _per_model(population: Population, seed: int) -> dict[str, np.ndarray]:
    values = {}
    for key, split in ACCURACIES.items():
        if split in population.correct:
            accuracy = 100 * population.correct[split].mean(1)
            values[key] = 100 - accuracy if key == "ua" else accuracy
    margins = population.margins
    values["mia"] = np.array([metrics.mia_efficacy(margins["retain"][i], margins["test"][i], margins["forget"][i], seed)
                              for i in range(len(population))])
    return values


def cost_summary(costs: list[Cost]) -> dict[str, float]:
    """Medians of the costs (NaN when there are none, e.g. for the floor's halves)."""
    if not costs:
        return {k: math.nan for k in ("seconds", "seconds_q25", "seconds_q75", "cpu_seconds", "cpu_share",
                                      "samples_epochs", "peak_mb")}
    seconds = np.array([c.seconds for c in costs])
    return {"seconds": float(np.median(seconds)), "seconds_q25": float(np.percentile(seconds, 25)),
            "seconds_q75": float(np.percentile(seconds, 75)),
            # A job runs one torch thread, so its CPU time is its own work: unlike wall time, it
            # does not grow when other processes share the cores.
            "cpu_seconds": float(np.median([c.cpu_seconds for c in costs])),
            "cpu_share": float(np.nanmedian([c.cpu_share for c in costs])),
            "samples_epochs": float(np.median([c.samples_epochs for c in costs])),
            "peak_mb": float(np.nanmedian([c.peak_mb for c in costs])) if any(not math.isnan(c.peak_mb) for c in costs)
            else math.nan}


def floor_verdict(summary: dict[str, float], floor: dict[str, float], ceiling: dict[str, float],
                  key: str = "ulira") -> str:
    """'at the floor', 'not at the floor', or 'undecided' when the floor and ceiling intervals overlap.

    At the floor = nearer to the floor than to the ceiling, with the two apart: a method that
    forgot nothing lands at the ceiling and fails; an exact method lands at the floor up to noise.
    """
    value, low, high = summary[key], floor[key], ceiling[key]
    bounds = [floor.get(f"{key}_lo", low), floor.get(f"{key}_hi", low), ceiling.get(f"{key}_lo", high),
              ceiling.get(f"{key}_hi", high)]
    if any(math.isnan(v) for v in [value, low, high]) or not (bounds[1] < bounds[2] or bounds[0] > bounds[3]):
        return "undecided"
    return "at the floor" if abs(value - low) < abs(value - high) else "not at the floor"
