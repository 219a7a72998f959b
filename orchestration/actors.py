"""ShardWorker: the plain class that trains shards; `cluster.py` makes it a Ray actor.

A worker gets the training data from the driver (or loads it from the config), and in adapter mode
the frozen backbone, rebuilds constituents as the driver does (frozen/constituents.py), and shares
checkpoints with the driver through the store URI, so it can run on any node that reaches the store.
In head mode the data it gets is the backbone's features: it never needs the backbone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from orchestration.config import RunConfig
from orchestration.datasets import load_dataset
from orchestration.frozen.backbone import Backbone
from orchestration.frozen.constituents import constituent_factory
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
    """Trains shard jobs of one run; torch threads follow the CPUs reserved per shard."""

    def __init__(self, config: RunConfig, store_uri: str, fault: FaultSpec | None = None,
                 num_classes: int | None = None, fingerprint: str | None = None) -> None:
        torch.set_num_threads(config.ray.shard_threads())
        self.config, self.store_uri, self.fault, self.num_classes = config, store_uri, fault, num_classes
        self.fingerprint = fingerprint or config.fingerprint()
        self._trainer: ShardTrainer | None = None
        self._table_id: int | None = None

    def _trainer_for(self, train: SampleTable | None, backbone: Backbone | None) -> ShardTrainer:
        """A trainer over `train` (the driver's data or features, from Ray's object store), or the config's data."""
        if self._trainer is not None and (train is None or id(train) == self._table_id):
            return self._trainer
        num_classes = self.num_classes
        if train is None or num_classes is None:
            if self.config.sisa.trainable != "all":
                raise ValueError("a frozen-backbone run's workers train on what the driver sends them")
            train, test = load_dataset(self.config.data)
            num_classes = max(train.num_classes, test.num_classes)
        factory = constituent_factory(self.config.model, self.config.sisa.trainable, train.sample_shape, num_classes,
                                      backbone)
        self._trainer = ShardTrainer(train, factory, self.config.sisa, CheckpointStore(self.store_uri),
                                     self.fingerprint, self.config.seed, on_batch=self.fault)
        self._table_id = id(train)
        return self._trainer

    def train(self, job: ShardJob, train: SampleTable | None = None, backbone: Backbone | None = None) -> ShardReport:
        """Bring the shard's checkpoints up to date (see sisa.ShardTrainer.train)."""
        return self._trainer_for(train, backbone).train(job)

    def ready(self) -> bool:
        """Returns once the worker is constructed."""
        return True

    def warm_up(self, train: SampleTable | None = None, backbone: Backbone | None = None) -> None:
        """Build the trainer and take one throwaway training step on a fresh model, writing nothing.

        The first step a process takes imports parts of torch lazily (about 1.7 s); a service pays
        it once here instead of in its first deletion.
        """
        trainer = self._trainer_for(train, backbone)
        model = trainer.new_model(0)
        x, y = trainer.table.tensors(trainer.table.ids[:2])  # two samples: batch norm needs more than one
        loss = torch.nn.functional.cross_entropy(model.train()(x), y)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        loss.backward()
        optimizer.step()
