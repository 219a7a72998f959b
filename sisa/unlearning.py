"""Deletion requests: validation, what they make dirty, and the compliance purge.

A request is checked in full before anything is written: a bad id rejects the whole request and
leaves the ledger, the store and every model as they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sisa.config import SisaConfig
from sisa.errors import InvalidRequestError
from sisa.ledger import Request
from sisa.plan import ShardPlan, slice_keys
from sisa.store import CheckpointEntry, CheckpointStore
from sisa.training import ShardReport


@dataclass
class DeletionReport:
    """What serving deletion requests did: one request, or several served together by one retraining."""

    request_ids: list[str]
    sample_ids: np.ndarray
    """Every id the requests deleted, sorted."""
    dirty: dict[int, int]
    """Affected shard -> earliest slice holding a deleted id."""
    shards: list[ShardReport] = field(default_factory=list)
    destroyed: list[dict] = field(default_factory=list)
    """Everything destroyed because it saw a deleted id: checkpoints, and what the run's purgers
    destroyed (derived models, published model versions, cached rows); one record each."""
    seconds: float = 0.0
    final_keys: dict[int, str] = field(default_factory=dict)
    """Affected shard -> key of its final checkpoint after serving; a shard left without samples is absent."""

    @property
    def purged(self) -> int:
        """Checkpoints deleted because they saw a deleted id (or became unreachable)."""
        return sum(1 for item in self.destroyed if item.get("kind") == "checkpoint")

    @property
    def request_id(self) -> str:
        """The last request served (the only one, unless earlier ones were pending)."""
        return self.request_ids[-1]

    @property
    def retrained(self) -> dict[int, list[int]]:
        """Shard -> slices retrained."""
        return {r.shard: r.retrained_slices for r in self.shards if r.slices}

    @property
    def samples_epochs(self) -> int:
        """Samples x epochs retrained in all."""
        return sum(r.samples_epochs for r in self.shards)


_INT64_MAX = np.iinfo(np.int64).max


def _as_ids(sample_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(sample_ids)
    if ids.ndim != 1:
        raise InvalidRequestError(f"sample ids must be a flat list, got shape {ids.shape}")
    if ids.size == 0:
        raise InvalidRequestError("the request names no sample ids; give at least one")
    if ids.dtype == object and all(isinstance(v, int) and not isinstance(v, bool) for v in ids.tolist()):
        too_big = [v for v in ids.tolist() if not -_INT64_MAX - 1 <= v <= _INT64_MAX]
        raise InvalidRequestError(f"sample ids must fit in 64-bit signed integers (at most {_INT64_MAX}); got {too_big[:5]}")
    if ids.dtype.kind == "u" and ids.max() > _INT64_MAX:
        raise InvalidRequestError(f"sample ids must fit in 64-bit signed integers (at most {_INT64_MAX}); "
                                  f"got {ids[ids > _INT64_MAX][:5].tolist()}")
    if ids.dtype.kind not in "iu":
        shown = [v for v in ids.tolist() if not isinstance(v, int) or isinstance(v, bool)][:5]
        raise InvalidRequestError(f"sample ids must be integers; got {shown or ids[:5].tolist()!r}")
    return ids.astype(np.int64)


def validate_request(
    sample_ids: Sequence[int] | np.ndarray, known_ids: np.ndarray, history: list[Request]
) -> np.ndarray:
    """Check a request against the data and earlier requests; returns the ids as sorted int64.

    Raises:
        InvalidRequestError: empty, non-integer, negative, duplicate, unknown or already deleted ids.
    """
    ids = _as_ids(sample_ids)
    if (ids < 0).any():
        raise InvalidRequestError(f"sample ids are >= 0; got {ids[ids < 0][:5].tolist()}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InvalidRequestError(f"sample ids appear more than once in the request: {unique[counts > 1][:5].tolist()}")
    for request in history:
        again = np.intersect1d(unique, request.sample_ids)
        if again.size:
            raise InvalidRequestError(
                f"sample ids {again[:10].tolist()} were already deleted by request {request.request_id}"
            )
    unknown = unique[~np.isin(unique, known_ids)]
    if unknown.size:
        raise InvalidRequestError(
            f"sample ids {unknown[:10].tolist()} are not in the training data "
            f"(its {len(known_ids)} ids run from {known_ids.min()} to {known_ids.max()})"
        )
    return unique


def expected_keys(plan: ShardPlan, fingerprint: str, shard: int) -> set[str]:
    """Keys of the checkpoints `shard` should hold under `plan` (none for an empty shard)."""
    slices = plan.slice_ids(shard)
    if sum(len(ids) for ids in slices) == 0:
        return set()
    return set(slice_keys(fingerprint, shard, slices))


def purge_stale(store: CheckpointStore, plan: ShardPlan, fingerprint: str, shards: list[int]) -> list[dict]:
    """Delete every checkpoint of `shards` that the current plan does not reach; one record each.

    Under a plan without the deleted ids, a checkpoint that saw one has a key no slice has any
    more, so this removes all of them (and leftovers of interrupted writes).
    """
    removed: list[dict] = []
    for shard in shards:
        removed += store.purge(shard, expected_keys(plan, fingerprint, shard))
    return removed


def retraining_cost(plan: ShardPlan, dirty: Mapping[int, int], config: SisaConfig) -> int:
    """Samples x epochs that retraining `dirty` (shard -> earliest affected slice) costs under `plan`.

    An affected shard resumes from its deepest stored checkpoint before the affected slice (see
    `SisaConfig.checkpoint_every`) and trains every later cumulative slice for `slice_epochs`
    epochs. With every shard dirty from slice 0 it is the cost of retraining everything.
    """
    total = 0
    for shard, earliest in dirty.items():
        cumulative = np.cumsum([len(ids) for ids in plan.slice_ids(shard)])  # (R,) samples seen by each slice
        stored = [r for r in range(earliest) if config.stores_slice(r)]
        start = stored[-1] + 1 if stored else 0
        total += int(cumulative[start:].sum()) * config.slice_epochs
    return total


def audit(store: CheckpointStore, sample_ids: np.ndarray) -> list[CheckpointEntry]:
    """Checkpoints whose manifest lists any of `sample_ids` (empty after a compliant deletion)."""
    sample_ids = np.asarray(sample_ids, np.int64)
    return [
        entry
        for entry in store.entries()
        if np.isin(np.asarray(store.read_manifest(entry)["sample_ids"], np.int64), sample_ids).any()
    ]
