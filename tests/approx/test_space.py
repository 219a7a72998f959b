"""Search-space domains: bounds, sampling, and budgets resolved against the original training."""

from __future__ import annotations

import random

import pytest

from approx.registry import method_class
from approx.space import Budget, Choice, IntUniform, LogUniform, Uniform, resolve, sample


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


def test_space_needs_the_original_count_of_every_budget_unit():
    with pytest.raises(ValueError, match=r"budgets in \['steps'\]"):
        sample({"iterations": Budget(1, 0.2, "steps")}, random.Random(0), {"epochs": 20})


@pytest.mark.parametrize(("domain", "args"), [(LogUniform, (0.0, 1.0)), (Uniform, (2.0, 1.0)), (IntUniform, (3, 1)),
                                              (Choice, ((),)), (Budget, (1, 0.2, "hours"))])
def test_invalid_domains_are_refused(domain, args):
    with pytest.raises(ValueError):
        domain(*args)


def test_shared_knobs_follow_the_tuning_protocol():
    """lr and weight decay log-uniform on [1e-5, 1e-1], batch {64, 128, 256}, epochs up to 20% of training."""
    domains = method_class("finetune").space
    assert domains["lr"] == domains["weight_decay"] == LogUniform(1e-5, 1e-1)
    assert domains["batch_size"] == Choice((64, 128, 256))
    assert domains["epochs"] == Budget(1, 0.2, "epochs")
    assert method_class("sfr_on").space["iterations"].unit == "steps"
    assert "lr" not in method_class("ssd").space, "SSD takes no optimizer steps"
