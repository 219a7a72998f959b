"""Search-space domains: bounds, sampling, and budgets resolved against the original training."""

from __future__ import annotations

import random

import pytest

from approx.registry import method_class
from approx.space import Budget, Choice, IntUniform, LogUniform, Quota, Uniform, over_budget, resolve, sample


def test_domains_sample_within_their_bounds():
    rng = random.Random(0)
    logs = [LogUniform(1e-5, 1e-1).sample(rng) for _ in range(2000)]
    assert all(1e-5 <= v <= 1e-1 for v in logs)
    # log-uniform: about half the draws below the geometric midpoint 1e-3
    assert 0.45 < sum(v < 1e-3 for v in logs) / len(logs) < 0.55
    assert all(0.2 <= Uniform(0.2, 0.4).sample(rng) <= 0.4 for _ in range(100))
    assert {IntUniform(1, 3).sample(rng) for _ in range(100)} == {1, 2, 3}
    assert {Choice((64, 128, 256)).sample(rng) for _ in range(100)} == {64, 128, 256}


def test_budget_resolves_to_a_share_of_the_original_training():
    """20% of 20 epochs = 4, so IntUniform(1, 4); a share below one epoch still allows `low`."""
    assert Budget(1, 0.2, "epochs").resolve(20) == IntUniform(1, 4)
    assert Budget(1, 0.2, "epochs").resolve(3) == IntUniform(1, 1)
    assert resolve({"epochs": Budget(), "lr": LogUniform(1e-3, 1e-1)}, {"epochs": 50}) == {
        "epochs": IntUniform(1, 10), "lr": LogUniform(1e-3, 1e-1)}


def test_a_sample_budget_buys_fewer_iterations_with_a_larger_batch():
    """20% of 20 epochs of 1,000 samples = 4,000 samples: 62 iterations of 64, 15 of 256; every draw,
    iterations times its own batch size, stays within the 4,000."""
    space = {"batch_size": Choice((64, 256)), "iterations": Budget(1, 0.2, "samples", per="batch_size")}
    assert resolve(space, {"samples": 20_000})["iterations"] == Quota(1, 4000, "batch_size")
    rng = random.Random(0)
    draws = [sample(space, rng, {"samples": 20_000}) for _ in range(400)]
    assert all(d["iterations"] * d["batch_size"] <= 4000 for d in draws)
    assert max(d["iterations"] for d in draws if d["batch_size"] == 64) == 62
    assert max(d["iterations"] for d in draws if d["batch_size"] == 256) == 15


def test_over_budget_names_the_values_a_configuration_runs_past_its_budget():
    space = {"batch_size": Choice((64, 256)), "iterations": Budget(1, 0.2, "samples", per="batch_size"),
             "epochs": Budget(), "lr": LogUniform(1e-3, 1e-1)}
    budget = {"epochs": 20, "samples": 20_000}
    assert over_budget(space, budget, {"batch_size": 64, "iterations": 62, "epochs": 4, "lr": 1.0}) == []
    assert over_budget(space, budget, {"batch_size": 256, "iterations": 62, "epochs": 5, "lr": 1e-2}) == [
        "iterations=62 > 15", "epochs=5 > 4"]


def test_space_needs_the_original_count_of_every_budget_unit():
    with pytest.raises(ValueError, match=r"budgets in \['samples'\]"):
        sample({"batch_size": Choice((64,)), "iterations": Budget(1, 0.2, "samples", per="batch_size")},
               random.Random(0), {"epochs": 20})


def test_a_sample_budget_needs_its_batch_field_drawn_beside_it():
    with pytest.raises(ValueError, match="budget is per 'batch_size'"):
        resolve({"iterations": Budget(1, 0.2, "samples", per="batch_size")}, {"samples": 100})


@pytest.mark.parametrize(("domain", "args"), [(LogUniform, (0.0, 1.0)), (Uniform, (2.0, 1.0)), (IntUniform, (3, 1)),
                                              (Choice, ((),)), (Budget, (1, 0.2, "hours")),
                                              (Budget, (1, 0.2, "samples")), (Budget, (1, 0.2, "epochs", "batch_size"))])
def test_invalid_domains_are_refused(domain, args):
    with pytest.raises(ValueError):
        domain(*args)


def test_shared_knobs_follow_the_tuning_protocol():
    """lr and weight decay log-uniform on [1e-5, 1e-1], batch {64, 128, 256}, epochs up to 20% of training."""
    domains = method_class("finetune").space
    assert domains["lr"] == domains["weight_decay"] == LogUniform(1e-5, 1e-1)
    assert domains["batch_size"] == Choice((64, 128, 256))
    assert domains["epochs"] == Budget(1, 0.2, "epochs")
    assert method_class("sfr_on").space["iterations"] == Budget(1, 0.2, "samples", per="batch_size")
    assert "lr" not in method_class("ssd").space, "SSD takes no optimizer steps"
