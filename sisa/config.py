"""SisaConfig: the hyperparameters that define a SISA ensemble and its training recipe."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

AGGREGATIONS = ("vote", "mean")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine", "step")
TRAINABLE = ("all", "head", "adapter")


@dataclass(frozen=True)
class SisaConfig:
    """How the data is split and how each constituent model is trained."""

    num_shards: int = 4
    """Number of disjoint shards S; one constituent model is trained per shard."""
    num_slices: int = 4
    """Number of slices R per shard; a checkpoint is kept after each slice."""
    epochs: int = 10
    """Training budget e, in epochs over a whole shard; each slice gets about 2e/(R+1) (SISA paper)."""
    batch_size: int = 64
    """Mini-batch size."""
    optimizer: str = "sgd"
    """'sgd' (with momentum) or 'adamw'; its state is part of every checkpoint so resuming is exact."""
    lr: float = 0.05
    """Peak learning rate; the schedule scales it per epoch (see lr_at)."""
    momentum: float = 0.9
    """SGD momentum, or AdamW's beta1."""
    beta2: float = 0.999
    """AdamW's beta2 (decay of the squared-gradient average); unused by SGD."""
    weight_decay: float = 5e-4
    """Weight decay (decoupled from the gradient for AdamW)."""
    lr_schedule: str = "constant"
    """'constant', 'cosine' (lr to lr_min) or 'step' (times lr_gamma), over all slices' epochs in a row (see lr_at)."""
    lr_min: float = 0.0
    """Learning rate the cosine schedule decays towards."""
    lr_step_epochs: int = 10
    """Epochs between two decays of the step schedule, counted over all slices in a row."""
    lr_gamma: float = 0.1
    """Factor of each decay of the step schedule."""
    label_smoothing: float = 0.0
    """Share of the target mass spread uniformly over the classes (0 = plain cross-entropy)."""
    augment: bool = False
    """Random crop (zero padding) and horizontal flip of images (C, H, W), seeded by (seed, shard, slice, epoch)."""
    augment_padding: int = 4
    """Pixels of zero padding around an image before its random crop back to the original size."""
    aggregation: str = "vote"
    """How constituent outputs are combined: 'vote' (label majority) or 'mean' (mean posterior)."""
    device: str = "cpu"
    """Torch device for training; exactness is guaranteed (and tested) on 'cpu'."""
    checkpoint_every: int = 1
    """Store the checkpoint of every k-th slice only (and always the last): fewer bytes, while a
    deletion resumes from the deepest stored checkpoint before its slice, so it may retrain more
    slices. Weights, and so exactness, do not depend on it."""
    trainable: str = "all"
    """What each constituent trains: 'all' (every weight), 'head' (a head on features a frozen backbone
    computed once per sample) or 'adapter' (adapters inside a frozen backbone, plus a head); checkpoints
    hold only what trains (see sisa.frozen)."""

    def __post_init__(self) -> None:
        for name in ("num_shards", "num_slices", "epochs", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"sisa.{name} must be a positive integer, got {value!r}")
        # Every float must be finite: NaN passes `<` and `<=` checks (it compares false to everything).
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"sisa.{name} must be a finite number, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"sisa.lr must be a positive finite number, got {self.lr!r}")
        for name in ("momentum", "beta2", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"sisa.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.weight_decay < 0:
            raise ValueError(f"sisa.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        try:
            kind = torch.device(self.device).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ("cpu", "cuda", "mps"):
            raise ValueError(f"sisa.device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {self.device!r}")
        for name, valid in (("aggregation", AGGREGATIONS), ("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES),
                            ("trainable", TRAINABLE)):
            if getattr(self, name) not in valid:
                raise ValueError(f"sisa.{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        if not 0 <= self.lr_min <= self.lr:
            raise ValueError(f"sisa.lr_min must be in [0, lr={self.lr}], got {self.lr_min!r}")
        if not isinstance(self.lr_step_epochs, int) or isinstance(self.lr_step_epochs, bool) or self.lr_step_epochs < 1:
            raise ValueError(f"sisa.lr_step_epochs must be a positive integer, got {self.lr_step_epochs!r}")
        if not 0 < self.lr_gamma <= 1:
            raise ValueError(f"sisa.lr_gamma must be in (0, 1], got {self.lr_gamma!r}")
        if not isinstance(self.augment_padding, int) or isinstance(self.augment_padding, bool) or self.augment_padding < 0:
            raise ValueError(f"sisa.augment_padding must be an integer >= 0, got {self.augment_padding!r}")
        if self.augment and self.trainable == "head":
            raise ValueError("sisa.augment cannot apply with sisa.trainable='head': heads train on features computed once "
                             "per sample, never on crops; use sisa.trainable='adapter' to train on augmented images")

    @property
    def slice_epochs(self) -> int:
        """Epochs spent on each cumulative slice.

        Slice r (1-based) trains on r/R of the shard, so e' epochs per slice process
        e' * (R+1)/2 shard-epochs in all; e' = 2e/(R+1) matches the unsliced budget e.
        Rounded to the nearest integer, at least 1.
        """
        return max(1, round(2 * self.epochs / (self.num_slices + 1)))

    def lr_at(self, slice_: int, epoch: int) -> float:
        """Learning rate of `epoch` (0-based) of cumulative slice `slice_` (0-based).

        The schedule runs over the global epoch g = slice_ * slice_epochs + epoch, out of
        T = num_slices * slice_epochs: 'constant' keeps lr; 'cosine' gives
        lr_min + (lr - lr_min) * (1 + cos(pi * g / T)) / 2; 'step' gives lr * lr_gamma ** (g // lr_step_epochs).
        It depends on (slice, epoch) and the config only, never on how many samples a slice
        holds, so a deletion that retrains slices r.. replays exactly the rates a run trained from
        scratch without the deleted ids uses there, and the reused slices before r are untouched.
        """
        g, total = slice_ * self.slice_epochs + epoch, self.num_slices * self.slice_epochs
        if self.lr_schedule == "cosine":
            return self.lr_min + (self.lr - self.lr_min) * (1 + math.cos(math.pi * g / total)) / 2
        if self.lr_schedule == "step":
            return self.lr * self.lr_gamma ** (g // self.lr_step_epochs)
        return self.lr

    def check_sample_shape(self, sample_shape: tuple[int, ...]) -> None:
        """Raise ValueError when the recipe cannot train on samples of this shape (augmentation needs images)."""
        if self.augment and len(sample_shape) != 3:
            raise ValueError(f"sisa.augment crops and flips images (C, H, W), but the samples have shape "
                             f"{tuple(sample_shape)}; set sisa.augment=false for this data set")

    def stores_slice(self, slice_: int) -> bool:
        """Whether the checkpoint after `slice_` (0-based) is kept (see checkpoint_every)."""
        return slice_ == self.num_slices - 1 or (slice_ + 1) % self.checkpoint_every == 0


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A stable hash of everything that determines training (config, model, data, seed).

    Args:
        settings: JSON-serialisable mapping; key order does not matter.

    Returns:
        A hex sha256 digest.
    """
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def training_settings(config: SisaConfig) -> dict[str, Any]:
    """The part of a SisaConfig that changes trained weights (aggregation and checkpoint_every do not)."""
    settings = asdict(config)
    settings.pop("aggregation")
    settings.pop("checkpoint_every")
    return settings
