"""The tuning protocol beside the bench's, the objective, and the method spaces as Ray Tune domains."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import approx
from approx.registry import method_class
from approx.space import Budget, Choice, IntUniform, LogUniform, Quota, Uniform, over_budget, resolve
from orchestration.bench import protocol, tuning
from orchestration.bench.protocol import ROLES
from orchestration.bench.tune import original_budget
from orchestration.config import load_config
from orchestration.datasets import load_dataset
from sisa.seeding import derive_seed

DIGITS = load_config(None, ["data.train_limit=400", "bench.models=16", "tune.models=8"])


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DIGITS.data)


def test_objective_matches_values_worked_by_hand():
    """U-LiRA 0.6 -> advantage 2 x 0.1 = 0.2; gaps |10-5| + |98-99| + |90-93| = 9 points -> 9/300 = 0.03."""
    reference = {"ua": 5.0, "ra": 99.0, "ta": 93.0}
    assert tuning.objective({"ulira": 0.6, "ua": 10.0, "ra": 98.0, "ta": 90.0}, reference) == pytest.approx(0.23)
    # an attack no better than guessing costs nothing; U-LiRA below 1/2 is noise, not a bonus
    assert tuning.objective({"ulira": 0.45, **reference}, reference) == 0.0
    # a collapsed model: always told apart (1) and 100 points off on each accuracy (1): the worst value
    assert tuning.objective({"ulira": 1.0, "ua": 100.0, "ra": 0.0, "ta": 0.0},
                            {"ua": 0.0, "ra": 100.0, "ta": 100.0}) == tuning.WORST == 2.0
    assert tuning.objective({"ulira": math.nan, **reference}, reference) == tuning.WORST


@pytest.mark.parametrize("scenario", ["random", "class", "stream", "hard"])
def test_carved_protocol_shares_no_sample_or_seed_with_the_bench(digits, scenario):
    train, test = digits
    config = dataclasses.replace(DIGITS, bench=dataclasses.replace(DIGITS.bench, scenario=scenario, forget_class=3))
    reported = tuning.reported_protocol(config, train, test)
    data, tuned = tuning.carve(config, train, test, reported)
    assert tuning.overlaps(tuned, data, reported) == {"trained on a reported forget sample": 0,
                                                      "scored on a reported test sample": 0,
                                                      "seeds shared with reported models": 0}
    bench = protocol.build(config.bench, train, test, config.seed) if scenario != "hard" else reported
    assert not np.intersect1d(data.ids, bench.forget).size  # the bench's forget set (hard: its whole pool)
    assert np.array_equal(np.union1d(tuned.forget, tuned.retain), data.ids) and len(tuned.forget) > 0
    assert set(tuned.test) | set(tuned.test_class) == set(bench.validation)  # scored on validation, never test
    assert not set(bench.test) & set(tuned.test) and tuned.models == 8 and tuned.stage == "tune"
    if scenario == "class":
        forgotten = set(data.labels[np.searchsorted(data.ids, tuned.forget)])
        (label,) = forgotten
        assert label != 3 and set(test.labels[np.searchsorted(test.ids, tuned.test_class)]) == {label}
    if scenario == "stream":
        assert len(tuned.requests) == config.bench.stream_requests


def test_reported_seeds_are_unchanged_and_tuning_seeds_come_from_their_own_stage(digits):
    train, test = digits
    reported = protocol.build(DIGITS.bench, train, test, DIGITS.seed)
    assert reported.seeds("oracle")[:2] == [derive_seed(0, "bench", "oracle", i) >> 32 for i in range(2)]
    tuned = dataclasses.replace(reported, stage="tune")
    assert not {s for r in ROLES for s in tuned.seeds(r)} & {s for r in ROLES for s in reported.seeds(r)}


def test_class_tuning_needs_another_class_to_forget_and_one_to_keep():
    config = load_config(None, ["data.name=synthetic", "data.synthetic_classes=2", "bench.scenario=class"])
    train, test = load_dataset(config.data)
    reported = tuning.reported_protocol(config, train, test)
    with pytest.raises(ValueError, match="forgets a class other than bench.forget_class 0, and keeps another"):
        tuning.carve(config, train, test, reported)


def test_original_budget_counts_epochs_and_the_samples_they_drew(digits):
    """20 epochs over 400 samples drew 8,000, whatever the batch size."""
    assert original_budget(DIGITS, digits[0]) == {"epochs": 20, "samples": 8000}


@pytest.mark.parametrize("name", approx.available())
def test_every_method_space_becomes_ray_tune_domains_that_sample_inside_it(name):
    from orchestration.bench.search import domains

    space = resolve(method_class(name).space, {"epochs": 20, "samples": 8000})
    translated = domains(space)
    assert set(translated) == set(space)
    rng = np.random.default_rng(0)
    for _ in range(20):
        drawn = {k: translated[k].sample(random_state=rng) if hasattr(translated[k], "sample") else translated[k]
                 for k, domain in space.items() if not isinstance(domain, Quota)}
        drawn |= {k: translated[k].sample(config=drawn, random_state=rng)
                  for k, domain in space.items() if isinstance(domain, Quota)}
        for key, domain in space.items():
            value = drawn[key]
            if isinstance(domain, LogUniform | Uniform | IntUniform):
                assert domain.low <= value <= domain.high, (key, value)
            elif isinstance(domain, Quota):
                assert domain.low <= value <= domain.high(drawn), (key, value)
            else:
                assert isinstance(domain, Choice) and value in domain.values
        assert over_budget(method_class(name).space, {"epochs": 20, "samples": 8000}, drawn) == []


def test_unresolved_budgets_are_refused_by_the_translation():
    from orchestration.bench.search import domains

    with pytest.raises(TypeError, match="resolve Budget domains"):
        domains({"epochs": Budget()})
    assert domains({"lr": LogUniform(0.1, 0.1)}) == {"lr": 0.1}


def test_trial_methods_take_numpy_values_in_their_fields_types():
    method = tuning.configured("finetune", {"momentum": 0.5}, {"batch_size": np.int64(64), "lr": np.float64(0.02)})
    assert type(method.batch_size) is int and type(method.lr) is float and method.momentum == 0.5


def test_the_best_configuration_is_the_best_trial_within_the_budget():
    """Trial 0 (a method's own 10 epochs, past the 4 the budget allows) scores best but is not chosen."""
    from orchestration.bench.search import SearchResult, TrialRecord

    space, budget = method_class("finetune").space, {"epochs": 20, "samples": 8000}
    trials = [TrialRecord(0, {"epochs": 10}, {"objective": 0.1}), TrialRecord(1, {"epochs": 4}, {"objective": 0.3}),
              TrialRecord(2, {"epochs": 1}, {"objective": 0.2}), TrialRecord(3, {"epochs": 2}, error="died")]
    result = SearchResult(trials, 1.0)
    assert result.best.number == 0
    assert result.best_of(lambda t: not over_budget(space, budget, t.params)).number == 2
