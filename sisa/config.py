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
    lr: float = 0.05
    """SGD learning rate (constant)."""
    momentum: float = 0.9
    """SGD momentum; its buffers are part of every checkpoint so resuming is exact."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    aggregation: str = "vote"
    """How constituent outputs are combined: 'vote' (label majority) or 'mean' (mean posterior)."""
    device: str = "cpu"
    """Torch device for training; exactness is guaranteed (and tested) on 'cpu'."""
    checkpoint_every: int = 1
    """Store the checkpoint of every k-th slice only (and always the last): fewer bytes, while a
    deletion resumes from the deepest stored checkpoint before its slice, so it may retrain more
    slices. Weights, and so exactness, do not depend on it."""

    def __post_init__(self) -> None:
        for name in ("num_shards", "num_slices", "epochs", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"sisa.{name} must be a positive integer, got {value!r}")
        # `not x > 0` (rather than `x <= 0`) also refuses NaN, which compares false to everything.
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"sisa.lr must be a positive finite number, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"sisa.momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"sisa.weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        try:
            kind = torch.device(self.device).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ("cpu", "cuda", "mps"):
            raise ValueError(f"sisa.device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {self.device!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"sisa.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")

    @property
    def slice_epochs(self) -> int:
        """Epochs spent on each cumulative slice.

        Slice r (1-based) trains on r/R of the shard, so e' epochs per slice process
        e' * (R+1)/2 shard-epochs in all; e' = 2e/(R+1) matches the unsliced budget e.
        Rounded to the nearest integer, at least 1.
        """
        return max(1, round(2 * self.epochs / (self.num_slices + 1)))

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
