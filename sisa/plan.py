"""ShardPlan: which shard and which slice each sample_id belongs to.

Assignment is a seeded hash of the sample_id alone, so removing ids never moves any other id:
`ShardPlan.build(D \\ X) == ShardPlan.build(D).without(X)`. This is what lets a deletion
touch only the slices that held the deleted samples.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from sisa.seeding import derive_seed

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(values: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 finaliser of (value + seed): a fast, well-mixed 64-bit hash, vectorised."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(derive_seed(seed, "plan"))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK


@dataclass(frozen=True, eq=False)
class ShardPlan:
    """Sorted sample_ids with their shard and slice."""

    sample_ids: np.ndarray
    shard: np.ndarray
    slice: np.ndarray
    num_shards: int
    num_slices: int

    @classmethod
    def build(cls, sample_ids: np.ndarray, num_shards: int, num_slices: int, seed: int) -> ShardPlan:
        """Assign every id to (shard, slice) = (h mod S, (h div S) mod R) with h a seeded hash."""
        ids = np.unique(np.asarray(sample_ids, dtype=np.int64))
        h = _splitmix64(ids, seed)
        shard = (h % np.uint64(num_shards)).astype(np.int64)
        slice_ = ((h // np.uint64(num_shards)) % np.uint64(num_slices)).astype(np.int64)
        return cls(ids, shard, slice_, num_shards, num_slices)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardPlan):
            return NotImplemented
        return (
            (self.num_shards, self.num_slices) == (other.num_shards, other.num_slices)
            and np.array_equal(self.sample_ids, other.sample_ids)
            and np.array_equal(self.shard, other.shard)
            and np.array_equal(self.slice, other.slice)
        )

    def __len__(self) -> int:
        return len(self.sample_ids)

    def without(self, sample_ids: np.ndarray) -> ShardPlan:
        """The plan with `sample_ids` removed; every other id keeps its shard and slice."""
        keep = ~np.isin(self.sample_ids, sample_ids)
        return ShardPlan(
            self.sample_ids[keep], self.shard[keep], self.slice[keep], self.num_shards, self.num_slices
        )

    def locate(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, slice) of each id; every id must be in the plan."""
        pos = np.searchsorted(self.sample_ids, np.asarray(sample_ids, dtype=np.int64))
        return self.shard[pos], self.slice[pos]

    def slice_ids(self, shard: int) -> tuple[np.ndarray, ...]:
        """The sorted ids of each slice of `shard` (not cumulative), one array per slice."""
        in_shard = self.shard == shard
        return tuple(self.sample_ids[in_shard & (self.slice == r)] for r in range(self.num_slices))

    def shard_sizes(self) -> np.ndarray:
        """Number of samples in each shard, shape (S,)."""
        return np.bincount(self.shard, minlength=self.num_shards)

    def earliest_slices(self, sample_ids: np.ndarray) -> dict[int, int]:
        """For each shard holding some of `sample_ids`: the earliest slice that holds one."""
        shards, slices = self.locate(sample_ids)
        earliest: dict[int, int] = {}
        for s, r in zip(shards.tolist(), slices.tolist()):
            earliest[s] = min(r, earliest.get(s, r))
        return dict(sorted(earliest.items()))


def ids_digest(sample_ids: np.ndarray) -> str:
    """sha256 of sorted int64 ids, used to name and verify what a checkpoint has seen."""
    return hashlib.sha256(np.sort(np.asarray(sample_ids, dtype=np.int64)).tobytes()).hexdigest()


def slice_keys(fingerprint: str, shard: int, slice_ids: tuple[np.ndarray, ...]) -> list[str]:
    """Content keys of a shard's slice checkpoints.

    Key r hashes key r-1 with the ids of slice r, so it changes exactly when the ids of some
    slice <= r change: a deletion invalidates the affected slice and every later one, and the
    checkpoint before the earliest affected slice keeps its key and is reused.
    """
    keys = []
    previous = hashlib.sha256(f"{fingerprint}:{shard}".encode()).hexdigest()
    for ids in slice_ids:
        previous = hashlib.sha256(f"{previous}:{ids_digest(ids)}".encode()).hexdigest()
        keys.append(previous[:24])
    return keys
