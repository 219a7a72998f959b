"""The public data of a run: training samples declared non-deletable, the data a frozen backbone learns from.

A frozen backbone is trained once and never retrained by a deletion, so it may only learn from data
no one can ask to delete: a public or licensed split. The run declares it with `data.public_fraction`
(a share of the training data chosen by a hash of each id, the same in every command) and/or
`data.public_ids` (a file naming the samples); `unlearn pretrain` trains the backbone on exactly
these samples and records their digest in the backbone file; the run checks it, binds the digest
into its fingerprint, and refuses every request that names one of them (nothing is recorded).
Heads and adapters train on public samples too, like on any retained sample.
"""

from __future__ import annotations

import numpy as np

from orchestration.config import DataConfig
from orchestration.datasets.split import holdout
from orchestration.requests import ids_from_file
from sisa import InvalidRequestError, SampleTable


def public_ids(config: DataConfig, train: SampleTable) -> np.ndarray:
    """Sorted sample_ids of the training samples the run declares public (empty when none).

    Raises:
        ValueError: data.public_ids cannot be read or names samples that are not in the training data.
    """
    parts = [np.zeros(0, np.int64)]
    if config.public_fraction:
        parts.append(train.ids[holdout(train.ids, config.public_fraction, config.subset_seed, "public")])
    if config.public_ids:
        try:
            named = ids_from_file(config.public_ids, train, config.id_column)
        except InvalidRequestError as err:
            raise ValueError(f"data.public_ids: {err}") from None
        unknown = np.setdiff1d(named, train.ids)
        if unknown.size:
            raise ValueError(f"data.public_ids {config.public_ids} names {unknown.size} id(s) that are not in the "
                             f"training data, e.g. {unknown[:5].tolist()}")
        parts.append(named)
    return np.unique(np.concatenate(parts))


def describe_public(config: DataConfig) -> str:
    """The settings that declare the public data, as the user wrote them."""
    named = []
    if config.public_fraction:
        named.append(f"data.public_fraction = {config.public_fraction}")
    if config.public_ids:
        named.append(f"data.public_ids = {config.public_ids}")
    return " and ".join(named)


def refusal_reason(config: DataConfig) -> str:
    """Why a request naming a public sample is refused."""
    return (f"they are public data ({describe_public(config)}), declared non-deletable: the frozen backbone "
            "learns from them and is never retrained by a deletion")
