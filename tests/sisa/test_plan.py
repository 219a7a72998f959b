"""ShardPlan: keyed by the run's secret, stable under deletion."""

from __future__ import annotations

import numpy as np

from sisa import ShardPlan
from sisa.plan import slice_keys

SECRET = b"s" * 32


def test_plan_of_remaining_ids_equals_plan_without_deleted_ids():
    ids = np.arange(1000)
    removed = np.random.default_rng(0).choice(ids, 137, replace=False)
    full = ShardPlan.build(ids, 5, 4, SECRET)
    assert ShardPlan.build(np.setdiff1d(ids, removed), 5, 4, SECRET) == full.without(removed)


def test_plan_puts_every_id_in_exactly_one_shard_and_slice_with_balanced_sizes():
    plan = ShardPlan.build(np.arange(8000), 4, 3, SECRET)
    cells = [ids for s in range(4) for ids in plan.slice_ids(s)]
    assert np.array_equal(np.sort(np.concatenate(cells)), np.arange(8000))
    assert all(abs(len(c) - 8000 / 12) < 100 for c in cells)


def test_plan_depends_on_the_secret_alone():
    a = ShardPlan.build(np.arange(500), 4, 2, SECRET)
    assert a == ShardPlan.build(np.arange(500), 4, 2, SECRET)
    assert a != ShardPlan.build(np.arange(500), 4, 2, b"t" * 32)


def test_earliest_slices_names_each_affected_shard_once():
    plan = ShardPlan.build(np.arange(300), 3, 3, SECRET)
    picks = [plan.slice_ids(2)[2][0], plan.slice_ids(2)[1][0], plan.slice_ids(0)[2][1]]
    assert plan.earliest_slices(np.array(picks)) == {0: 2, 2: 1}


def test_slice_keys_change_from_the_first_changed_slice_on():
    slices = (np.array([1, 4]), np.array([2, 5]), np.array([3, 6]))
    before = slice_keys("fp", 0, slices)
    after = slice_keys("fp", 0, (slices[0], np.array([2]), slices[2]))
    assert before[0] == after[0] and before[1] != after[1] and before[2] != after[2]
    assert slice_keys("other", 0, slices)[0] != before[0]
