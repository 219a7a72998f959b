"""ShardWorker: the plain class that trains shards; `cluster.py` makes it a Ray actor.

A worker gets the training data from the driver (or loads it from the config), rebuilds models
by name, and shares checkpoints with the driver through the store URI, so it can run on any node
that reaches the store.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from orchestration.config import RunConfig
from orchestration.datasets import load_dataset
from orchestration.models import build_model
from sisa import CheckpointStore, SampleTable, ShardJob, ShardReport, ShardTrainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultSpec:
    """Kill the worker process at the start of (shard, slice, epoch): a chaos hook for tests.

    With `marker` set, the kill happens once (the marker file records it), so a restarted
    worker succeeds; without it, every attempt dies and the shard keeps failing.
    """

    shard: int
    slice: int
    epoch: int = 0
    marker: str | None = None

    def __call__(self, shard: int, slice_: int, epoch: int, batch: int) -> None:
        if (shard, slice_, epoch, batch) != (self.shard, self.slice, self.epoch, 0):
            return
        if self.marker is not None:
            if Path(self.marker).exists():
                return
            Path(self.marker).touch()
        log.error("fault injection: killing the worker of shard %d in slice %d", shard, slice_)
        os._exit(1)


class ShardWorker:
    """Trains shard jobs of one run; holds the training data in memory between jobs."""

    def __init__(self, config: RunConfig, store_uri: str, fault: FaultSpec | None = None,
                 train: SampleTable | None = None, num_classes: int | None = None) -> None:
        """Build a ShardTrainer; torch threads follow the CPUs reserved per shard.

        The training data comes from the driver when given (through Ray's object store, so no
        worker re-reads or re-decodes it), else it is loaded from the config.
        """
        torch.set_num_threads(max(1, round(config.ray.num_cpus_per_shard)))
        if train is None or num_classes is None:
            train, test = load_dataset(config.data)
            num_classes = max(train.num_classes, test.num_classes)
        factory = functools.partial(build_model, config.model, train.sample_shape, num_classes)
        self.trainer = ShardTrainer(train, factory, config.sisa, CheckpointStore(store_uri), config.fingerprint(),
                                    config.seed, on_batch=fault)

    def train(self, job: ShardJob) -> ShardReport:
        """Bring the shard's checkpoints up to date (see sisa.ShardTrainer.train)."""
        return self.trainer.train(job)

    def ready(self) -> bool:
        """Returns once the worker is constructed (its data loaded)."""
        return True
