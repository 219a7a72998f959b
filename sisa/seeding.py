"""Seeds for every random draw, derived from (seed, shard, slice, epoch, ...).

Training must be a pure function of the config, the seed and the ids in each slice, so that a
shard retrained after a deletion matches one trained from scratch. Every draw therefore comes
from a generator whose seed is a hash of where it happens, never from shared global state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that depends on `seed` and every key, stable across platforms and runs."""
    text = ":".join(str(part) for part in (seed, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU torch.Generator seeded by `derive_seed(seed, *keys)`."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


@contextmanager
def seeded(seed: int, *keys: int | str) -> Iterator[None]:
    """Run a block with torch's global RNGs seeded from the keys, restoring them afterwards.

    Model initialisation and dropout draw from the global RNG (dropout on CUDA from the device's);
    forking it keeps them deterministic without disturbing the caller's random state. CUDA
    generators are forked only once CUDA is initialised: forking would initialise it, and a block
    that runs before any model is on the device draws from the CPU generator alone.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, *keys))
        yield
