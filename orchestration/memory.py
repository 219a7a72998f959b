"""Will a shard fit? An estimate of what training materialises, checked before anything is written.

Training a slice materialises the inputs of every sample it has seen so far as float32 tensors
(`SampleTable.tensors`), next to a transient copy in the stored dtype; the last slice holds the
whole shard. A run whose largest shard cannot fit would be killed by the operating system
mid-training, so commands refuse it up front instead.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from orchestration.config import RunConfig
from sisa import SampleTable


class MemoryLimitError(ValueError):
    """The shards a machine trains at once would not fit in its available memory."""


def available_bytes() -> int | None:
    """Memory this process can still use: MemAvailable, capped by a cgroup v2 limit; None when unknown."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max" and available is not None:
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def shard_bytes(table: SampleTable, num_shards: int, feature_shape: tuple[int, ...] | None = None) -> int:
    """Bytes the largest shard's tensors take while its last slice trains.

    A shard holds Binomial(N, 1/S) samples, mean N/S, standard deviation below sqrt(N/S); four
    deviations above the mean bounds the largest of a few hundred shards. Each sample costs its
    values as float32 plus, while converting, a copy in the stored dtype (uint8 images: 1 + 4 bytes
    a value; float32 tables: 4, the conversion is a no-op). Heads on a frozen backbone train on its
    float32 features (`feature_shape`) instead.
    """
    mean = len(table) / num_shards
    samples = min(len(table), math.ceil(mean + 4 * math.sqrt(mean)))
    if feature_shape is not None:
        return samples * int(np.prod(feature_shape)) * 4
    values = int(np.prod(table.sample_shape))
    stored = table.table.column("x").type.value_type.byte_width
    per_value = 4 + (stored if stored != 4 else 0)
    return samples * values * per_value


def shards_at_once(config: RunConfig) -> int:
    """Shards this machine trains at the same time: one in-process, or as many local Ray actors as its CPUs hold."""
    r = config.ray
    if r.engine == "local" or r.address or os.environ.get("RAY_ADDRESS"):
        return 1  # on a cluster each node holds its own actors' shards; this machine is not the measure
    if r.max_workers:
        at_once = r.max_workers
    elif r.num_cpus_per_shard:
        at_once = int((os.cpu_count() or 1) // r.num_cpus_per_shard)
    else:
        at_once = config.sisa.num_shards
    return max(1, min(at_once, config.sisa.num_shards))


def check_fits(table: SampleTable, config: RunConfig, feature_shape: tuple[int, ...] | None = None) -> None:
    """Raise MemoryLimitError when the shards trained at once would not fit in the available memory.

    Does nothing when the available memory cannot be read (not Linux). `feature_shape`: the shards
    train on features of this shape (head mode), not on the samples.
    """
    available = available_bytes()
    if available is None:
        return
    per_shard, at_once = shard_bytes(table, config.sisa.num_shards, feature_shape), shards_at_once(config)
    if per_shard * at_once > available:
        gib = 2**30
        raise MemoryLimitError(
            f"training would materialise about {per_shard / gib:.2f} GiB per shard ({len(table)} samples of shape "
            f"{list(table.sample_shape)} over {config.sisa.num_shards} shards, as float32) x {at_once} shard(s) at "
            f"once, but only {available / gib:.2f} GiB of memory is available; use more shards (sisa.num_shards), "
            "fewer at once (ray.max_workers), a subset (data.train_limit), or a machine with more memory"
        )
