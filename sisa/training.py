"""Train one shard slice by slice (cumulative), resuming from the deepest valid checkpoint.

Slice r of a shard starts from the checkpoint after slice r-1 and trains on the union of slices
0..r. Training is a pure function of (config, seed, ids of each slice): the model is initialised
from a generator of (seed, shard), each epoch's order, augmentation and dropout from (seed, shard,
slice, epoch), its learning rate from (slice, epoch) (see SisaConfig.lr_at), and ids are sorted
before the permutation. Retraining after a deletion is therefore bit-identical (on CPU) to
training from scratch without the deleted ids.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sisa.augment import crop_flip, draw_views
from sisa.config import SisaConfig
from sisa.data import SampleTable
from sisa.errors import CheckpointCorruptError, CheckpointMissingError
from sisa.frozen import check_constituent, load_trainable, trainable_parameters, trainable_state
from sisa.plan import slice_keys
from sisa.seeding import generator, seeded
from sisa.store import CheckpointStore

log = logging.getLogger(__name__)

ModelFactory = Callable[[], nn.Module]
BatchHook = Callable[[int, int, int, int], None]
"""Called before every training batch with (shard, slice, epoch, batch number)."""


@dataclass(frozen=True)
class ShardJob:
    """The work for one shard: the sorted ids of each of its slices (not cumulative)."""

    shard: int
    slice_ids: tuple[np.ndarray, ...]

    @property
    def num_samples(self) -> int:
        """Samples in the whole shard."""
        return sum(len(ids) for ids in self.slice_ids)


@dataclass(frozen=True)
class SliceReport:
    """What training one slice did."""

    shard: int
    slice: int
    num_samples: int
    """Samples in the cumulative union of slices 0..slice."""
    epochs: int
    loss: float
    """Mean training loss over the slice's last epoch (nan when there was nothing to train)."""
    accuracy: float
    """Training accuracy over the slice's last epoch."""
    seconds: float

    @property
    def samples_epochs(self) -> int:
        """Samples x epochs processed: the cost measure of training this slice."""
        return self.num_samples * self.epochs


@dataclass
class ShardReport:
    """What training or retraining one shard did."""

    shard: int
    resumed_from: int
    """Slice whose checkpoint training resumed from; -1 when it started from initialisation."""
    slices: list[SliceReport] = field(default_factory=list)

    @property
    def retrained_slices(self) -> list[int]:
        """Slices trained by this job."""
        return [s.slice for s in self.slices]

    @property
    def samples_epochs(self) -> int:
        """Total samples x epochs processed."""
        return sum(s.samples_epochs for s in self.slices)

    @property
    def seconds(self) -> float:
        """Wall time spent training slices."""
        return sum(s.seconds for s in self.slices)


@contextmanager
def deterministic(device: str | torch.device = "cpu") -> Iterator[None]:
    """Force deterministic torch kernels for the block, restoring the previous setting.

    On CPU every kernel these models use has a deterministic implementation, which is what makes
    retraining bit-identical; any that had none would fail loudly. On an accelerator some backward
    kernels (max and adaptive average pooling on CUDA) have none, so there they warn instead of
    failing, and cuBLAS gets the fixed workspace its deterministic mode needs (it reads
    CUBLAS_WORKSPACE_CONFIG when its first handle is made; a value the user set is kept). Training
    on an accelerator is therefore reproducible only as far as its kernels are, and bit-identity is
    guaranteed on CPU alone.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    strict = torch.device(device).type == "cpu"
    if not strict:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=not strict)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


class ShardTrainer:
    """Trains the shards of one SISA ensemble; holds no state between jobs besides its inputs."""

    def __init__(
        self,
        table: SampleTable,
        model_factory: ModelFactory,
        config: SisaConfig,
        store: CheckpointStore,
        fingerprint: str,
        seed: int,
        on_batch: BatchHook | None = None,
    ) -> None:
        """Args: the training data, a factory of fresh models, the recipe, the checkpoint store,
        the run's fingerprint (part of every checkpoint key), the seed, and an optional hook run
        before every batch (progress reporting, fault injection in tests).

        Raises:
            ValueError: the recipe cannot train on the table's samples (augmentation of non-images).
        """
        config.check_sample_shape(table.sample_shape)
        self.table = table
        self.model_factory = model_factory
        self.config = config
        self.store = store
        self.fingerprint = fingerprint
        self.seed = seed
        self.on_batch = on_batch

    def new_model(self, shard: int) -> nn.Module:
        """The shard's initial model: a pure function of (seed, shard).

        Raises:
            ValueError: the model does not fit `sisa.trainable` (see sisa.frozen.check_constituent).
        """
        with seeded(self.seed, "init", shard):
            model = self.model_factory()
        check_constituent(self.config.trainable, model)
        return model

    def load_model(self, shard: int, state: dict) -> nn.Module:
        """The shard's model with a checkpoint's trained weights over its frozen parts (see sisa.frozen)."""
        return load_trainable(self.new_model(shard), state["model"])

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        params = trainable_parameters(model)  # frozen backbone weights never enter the optimizer
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.lr, betas=(c.momentum, c.beta2), weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _resume_point(self, job: ShardJob, keys: list[str]) -> tuple[int, dict | None]:
        """Deepest slice whose checkpoint exists and verifies; corrupt ones are removed and skipped."""
        for r in reversed(range(len(keys))):
            try:
                return r, self.store.load(job.shard, r, keys[r])
            except CheckpointMissingError:
                continue
            except CheckpointCorruptError as err:
                log.warning("%s; it will be retrained", err)
                self.store.delete(self.store.entry(job.shard, r, keys[r]))
        return -1, None

    def train(self, job: ShardJob, on_slice: Callable[[SliceReport], None] | None = None) -> ShardReport:
        """Bring every slice checkpoint of `job.shard` up to date, training only what is missing."""
        keys = slice_keys(self.fingerprint, job.shard, job.slice_ids)
        start, state = self._resume_point(job, keys)
        report = ShardReport(job.shard, resumed_from=start)
        if start == len(keys) - 1:
            return report
        device = torch.device(self.config.device)
        model = self.new_model(job.shard).to(device)
        optimizer = self._optimizer(model)
        if state is not None:
            load_trainable(model, state["model"])
            optimizer.load_state_dict(state["optimizer"])
        seen = np.concatenate(job.slice_ids[: start + 1]) if start >= 0 else np.zeros(0, np.int64)
        with deterministic(device):
            for r in range(start + 1, len(keys)):
                seen = np.sort(np.concatenate([seen, job.slice_ids[r]]))
                result = self._train_slice(model, optimizer, job.shard, r, seen)
                if self.config.stores_slice(r):
                    self.store.save(job.shard, r, keys[r], self._state(model, optimizer, job.shard, r, len(seen)),
                                    seen, self.fingerprint)
                report.slices.append(result)
                if on_slice is not None:
                    on_slice(result)
        return report

    def _state(self, model: nn.Module, optimizer: torch.optim.Optimizer, shard: int, slice_: int,
               num_samples: int) -> dict:
        state = {"model": trainable_state(model),  # the whole state dict, less any frozen part
                 "counters": {"shard": shard, "slice": slice_, "num_samples": num_samples}}
        # Training only ever resumes from a slice before the last, so the last slice's checkpoint
        # (read to predict) does without the optimizer state, as large again as the model.
        if slice_ < self.config.num_slices - 1:
            state["optimizer"] = optimizer.state_dict()
        return state

    def _train_slice(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, shard: int, slice_: int, ids: np.ndarray
    ) -> SliceReport:
        began = time.perf_counter()
        epochs = self.config.slice_epochs if len(ids) else 0
        x, y = self.table.tensors(ids)
        device = next(model.parameters()).device
        x, y = x.to(device), y.to(device)
        loss_sum, correct = float("nan"), 0
        c = self.config
        model.train()
        for epoch in range(epochs):
            for group in optimizer.param_groups:  # set, not stepped: resuming needs no scheduler state
                group["lr"] = c.lr_at(slice_, epoch)
            order = torch.randperm(len(ids), generator=generator(self.seed, shard, slice_, epoch))
            views = draw_views(len(ids), c.augment_padding, self.seed, shard, slice_, epoch) if c.augment else None
            loss_sum, correct = 0.0, 0
            with seeded(self.seed, "dropout", shard, slice_, epoch):
                for number, batch in enumerate(_batches(order, c.batch_size)):
                    if self.on_batch is not None:
                        self.on_batch(shard, slice_, epoch, number)
                    inputs = x[batch]
                    if views is not None:
                        inputs = crop_flip(inputs, views.offsets[batch], views.flips[batch], c.augment_padding)
                    logits = model(inputs)  # (batch, classes)
                    loss = nn.functional.cross_entropy(logits, y[batch], label_smoothing=c.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.item() * len(batch)
                    correct += int((logits.argmax(1) == y[batch]).sum())
        n = max(len(ids), 1)
        return SliceReport(
            shard, slice_, len(ids), epochs, loss_sum / n, correct / n, time.perf_counter() - began
        )


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split an epoch's order into batches, folding a trailing batch of one sample into the one
    before it: batch norm cannot train on a single sample."""
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches
