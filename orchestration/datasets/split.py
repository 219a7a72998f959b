"""Seeded, id-keyed choices of samples: the test hold-out of file data sets, the `train_limit` subset and the
public share (`public_fraction`) of the training data.

All are part of the data set's definition, so they use `data.subset_seed`, never the run's seed:
every model seed trains on the same samples. Both rank samples by a hash of (subset_seed, sample_id)
rather than by their position in the files, so reordering the files changes nothing, and removing
rows from them moves no other sample between train and test.
"""

from __future__ import annotations

import numpy as np

from sisa.seeding import derive_seed

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def id_hash(sample_ids: np.ndarray, seed: int, purpose: str) -> np.ndarray:
    """A uniform 64-bit hash of each id (SplitMix64 finaliser of id + a seed derived from (seed, purpose))."""
    with np.errstate(over="ignore"):
        z = np.asarray(sample_ids, np.int64).astype(np.uint64) + np.uint64(derive_seed(seed, purpose))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK


def holdout(sample_ids: np.ndarray, fraction: float, seed: int, purpose: str = "test") -> np.ndarray:
    """Boolean mask of the ids chosen for `purpose` ('test': held out for testing; 'public': declared public),
    each with probability `fraction`, decided by its hash alone."""
    return id_hash(sample_ids, seed, purpose) < np.uint64(fraction * 2.0**64)


def stratified_subset(sample_ids: np.ndarray, labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`limit` ids (sorted), each class keeping its share of the data set.

    Class c with n_c of N samples gets floor(limit * n_c / N) ids, and the ids left over go one each
    to the classes with the largest remainders (ties: the smaller label first). Within a class the
    ids with the smallest hashes are kept. E.g. classes of 7 and 3 samples, limit 5: shares 3.5 and
    1.5, floors 3 and 1, the one left over goes to class 0 (tie), so 4 and 1.
    """
    sample_ids, labels = np.asarray(sample_ids, np.int64), np.asarray(labels)
    if limit >= len(sample_ids):
        return np.sort(sample_ids)
    _, klass, counts = np.unique(labels, return_inverse=True, return_counts=True)
    share = limit * counts / len(sample_ids)
    quota = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - quota), kind="stable")[: limit - int(quota.sum())]
    quota[extra] += 1
    order = np.lexsort((id_hash(sample_ids, seed, "subset"), klass))  # by class, then by hash
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, counts)  # position within the class
    return np.sort(sample_ids[order[rank < quota[klass[order]]]])
