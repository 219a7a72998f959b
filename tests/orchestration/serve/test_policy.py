"""The batching policy: when the deletion worker starts a retraining and how many requests it serves."""

from __future__ import annotations

from orchestration.config import ServeConfig
from orchestration.serve.policy import decide

SETTINGS = ServeConfig(batch_window_s=2.0, batch_max_requests=3, full_cost_fraction=0.8)


def test_policy_waits_out_the_window_for_companions_then_serves_everything_pending():
    # one request, 0.5 s old, costing 10% of everything: wait; at 2 s the window closes.
    assert decide(SETTINGS, pending=1, waited_s=0.5, cost=100, full_cost=1000) is None
    assert decide(SETTINGS, pending=2, waited_s=2.0, cost=150, full_cost=1000).requests == 2


def test_policy_serves_at_once_the_most_one_batch_holds():
    batch = decide(SETTINGS, pending=5, waited_s=0.0, cost=500, full_cost=1000)
    assert batch.requests == 3 and "most one batch serves" in batch.reason


def test_policy_serves_everything_pending_once_it_costs_about_a_full_retraining():
    # 800 of 1000 samples x epochs is the 0.8 threshold: more requests would cost little more,
    # so all 7 are served now, past the cap of 3 and before the window closes.
    batch = decide(SETTINGS, pending=7, waited_s=0.0, cost=800, full_cost=1000)
    assert batch.requests == 7 and "80% of retraining everything" in batch.reason
    assert decide(SETTINGS, pending=2, waited_s=0.0, cost=799, full_cost=1000) is None


def test_policy_without_a_window_or_cap_serves_each_request_as_it_comes():
    eager = ServeConfig(batch_window_s=0.0)
    assert decide(eager, pending=1, waited_s=0.0, cost=10, full_cost=1000).requests == 1
    assert decide(eager, pending=0, waited_s=9.0, cost=0, full_cost=1000) is None
