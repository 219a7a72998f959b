"""When the deletion worker starts a retraining, and which pending requests it serves.

Requests are served oldest first. Serving several together costs less than serving them one by one
(each affected shard retrains once, from the earliest slice any of them touches), but the first
request waits for the others. The policy weighs the two with three settings (`[serve]`):

- `batch_window_s`: once a request is pending and the worker is idle, wait this long for others;
- `batch_max_requests`: serve at most this many at once (0: no limit), the oldest first;
- `full_cost_fraction`: when the pending requests together already cost this share of retraining
  every shard, serve them all now: more requests would add almost nothing to the cost, while
  waiting would only delay them.

Cost is the samples x epochs the retraining would process (`sisa.unlearning.retraining_cost`),
computed exactly from the shard plan, which the benchmarks show time follows.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.config import ServeConfig


@dataclass(frozen=True)
class Batch:
    """What the worker does now: serve the oldest `requests` pending requests, and why."""

    requests: int
    reason: str


def decide(settings: ServeConfig, pending: int, waited_s: float, cost: int, full_cost: int) -> Batch | None:
    """The batch to serve now, or None to keep waiting.

    Args:
        settings: the service's batching settings.
        pending: requests pending, oldest first.
        waited_s: seconds the oldest pending request has waited for the worker while it was idle.
        cost: samples x epochs of serving every pending request together.
        full_cost: samples x epochs of retraining every shard from its first slice.
    """
    if pending == 0:
        return None
    if cost >= settings.full_cost_fraction * full_cost:
        return Batch(pending, f"{cost} samples x epochs, {cost / max(full_cost, 1):.0%} of retraining everything")
    cap = settings.batch_max_requests
    if cap and pending >= cap:
        return Batch(cap, f"{cap} request(s), the most one batch serves")
    if waited_s >= settings.batch_window_s:
        return Batch(pending, f"window of {settings.batch_window_s:g} s closed")
    return None
