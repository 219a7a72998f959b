"""The method protocol: hyperparameters as dataclass fields, loss terms, and optional hooks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class Progress:
    """Where the loop is: steps are optimizer steps, counted from 0."""

    step: int
    total_steps: int
    epoch: int
    epochs: int

    @property
    def fraction(self) -> float:
        """step / total_steps, in [0, 1)."""
        return self.step / self.total_steps

    def cosine(self) -> float:
        """Cosine decay factor 0.5 * (1 + cos(pi * step / total_steps)): 1 at the start, towards 0."""
        return 0.5 * (1 + math.cos(math.pi * self.fraction))


@dataclass
class UnlearnBatch:
    """One step's data: a forget batch and a retain batch (either may be empty) and a generator."""

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    num_classes: int
    rng: torch.Generator
    """For random draws inside a step (e.g. random labels), seeded per step by the loop."""


@dataclass
class UnlearningMethod:
    """Base of every method: the shared optimiser hyperparameters plus the method's own fields.

    Subclasses set `name`, `summary` and `driver`, and implement `loss_terms`. The total loss is
    the sum of the terms; a term to ascend is returned negated.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    driver: ClassVar[str] = "retain"
    """Which set one epoch iterates over ('forget' or 'retain'); the other set is cycled."""
    uses: ClassVar[tuple[str, ...]] = ("forget", "retain")
    """Which sets a step draws batches from."""

    lr: float = 0.01
    """SGD learning rate."""
    epochs: int = 10
    """Passes over the driver set."""
    batch_size: int = 64
    """Samples per batch (of each set used)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value; 0 disables clipping."""
    schedule: str = "constant"
    """Learning-rate schedule: 'constant' or 'cosine' (over all steps)."""
    bn_eval: bool = False
    """Keep batch-norm layers in eval mode (running statistics frozen) while unlearning."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"{self.name}: lr must be > 0, epochs and batch_size >= 1")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"{self.name}: schedule must be 'constant' or 'cosine', got {self.schedule!r}")

    def total_steps(self, num_forget: int, num_retain: int) -> int:
        """Optimizer steps of the whole run: epochs x batches of the driver set."""
        driver = num_forget if self.driver == "forget" else num_retain
        return self.epochs * math.ceil(driver / self.batch_size)

    def step_uses(self, progress: Progress) -> tuple[str, ...]:
        """Which sets this step draws a batch from (default: `uses`)."""
        return self.uses

    def retain_limit(self, num_forget: int) -> int | None:
        """Size of the random retain subset the method sees; None means the whole retain set."""
        return None

    def prepare(self, model: nn.Module, forget: tuple[torch.Tensor, torch.Tensor],
                retain: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Hook before the first step (saliency masks, Fisher information, weight snapshots)."""

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        """Named scalar loss terms of one step; their sum is minimised."""
        raise NotImplementedError

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        """Hook between backward and the optimizer step (gradient surgery)."""

    def after_step(self, model: nn.Module, progress: Progress) -> None:
        """Hook after the optimizer step (weight surgery)."""

    def converged(self, progress: Progress) -> bool:
        """Checked after every step: True ends the run early."""
        return False
