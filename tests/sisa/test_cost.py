"""The retraining cost model: samples x epochs a set of affected shards costs, against what serving does."""

from __future__ import annotations

import dataclasses

import numpy as np

from sisa import ShardPlan, SisaConfig
from sisa.unlearning import retraining_cost
from tests.conftest import SMALL, open_run

# Shard 0 holds slices of 2, 3 and 1 samples (cumulative 2, 5, 6); shard 1 slices of 1, 1, 2
# (cumulative 1, 2, 4). epochs=4, R=3: each slice trains round(2*4/4) = 2 epochs.
PLAN = ShardPlan(np.arange(10), np.array([0] * 6 + [1] * 4), np.array([0, 0, 1, 1, 1, 2, 0, 1, 2, 2]), 2, 3)
CONFIG = SisaConfig(num_shards=2, num_slices=3, epochs=4)


def test_retraining_cost_counts_every_cumulative_slice_from_the_affected_one():
    assert CONFIG.slice_epochs == 2
    assert retraining_cost(PLAN, {0: 1}, CONFIG) == (5 + 6) * 2  # slices 1 and 2 of shard 0: 22
    assert retraining_cost(PLAN, {0: 2, 1: 0}, CONFIG) == 6 * 2 + (1 + 2 + 4) * 2  # 12 + 14
    assert retraining_cost(PLAN, {}, CONFIG) == 0


def test_retraining_cost_of_everything_is_every_shard_from_its_first_slice():
    assert retraining_cost(PLAN, {0: 0, 1: 0}, CONFIG) == (2 + 5 + 6) * 2 + (1 + 2 + 4) * 2  # 26 + 14 = 40


def test_retraining_cost_resumes_from_the_deepest_stored_checkpoint():
    # checkpoint_every=2 with R=3 keeps slices 1 and 2: a deletion in slice 1 has no checkpoint
    # before it (slice 0 is not kept) and retrains from scratch; one in slice 2 resumes after slice 1.
    sparse = dataclasses.replace(CONFIG, checkpoint_every=2)
    assert retraining_cost(PLAN, {0: 1}, sparse) == (2 + 5 + 6) * 2  # 26
    assert retraining_cost(PLAN, {0: 2}, sparse) == 6 * 2  # 12


def test_retraining_cost_predicts_what_serving_the_requests_trains(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    run.train()
    plan = run.plan()
    first, second = plan.slice_ids(0)[1][:2], plan.slice_ids(2)[0][:1]
    run.submit(first, "a")
    run.submit(second, "b")
    ids = np.concatenate([first, second])
    expected = retraining_cost(run.plan(), run.dirty(ids), SMALL)
    assert run.dirty(ids) == {0: 1, 2: 0}
    assert run.serve_pending().samples_epochs == expected > 0
