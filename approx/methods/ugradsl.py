"""UGradSL and UGradSL+: gradient-based unlearning with negative label smoothing (NLS).

Di et al., ICLR 2026 (arXiv 2406.07698), "Label Smoothing Improves Machine Unlearning"
(UCSC-REAL/Label-Smoothing-Unlearn; no code was public to check against). Forget targets are
smoothed with a negative rate a < 0, y = (1 - a) onehot + a / K, and ascended, mixed with descent
on the retain set: L = p CE(retain) - (1 - p) CE(forget; y), one retain and one forget batch per
step.

- UGradSL has the GA backbone: each epoch is one pass over the forget set with retain batches
  cycled. Its ascent is unbounded, so it stops once the forget set has converged, read here as
  a forget batch's plain cross-entropy passing `stop_forget_loss` (default ln K, the loss of
  chance-level predictions). Its lr and epochs are GA's (lr 1e-4, 5 epochs, batch 256).
- UGradSL+ has the FT backbone: each epoch is one pass over the retain set with forget batches
  cycled, and it stops when the retain set converges: after an epoch whose mean retain
  cross-entropy is less than `retain_tol` (relative) below the previous epoch's. Its lr and epochs
  are FT's (lr 0.01, up to 10 epochs, batch 256).

No public a or p was found, so they are chosen: a = -0.5 (the NLS paper uses rates in [-1, 0));
p = 0.5 for UGradSL (both sets weigh the same, as GA's backbone needs the forget term) and p = 0.9
for UGradSL+ (with p = 0.5 the ascent dominates ten epochs of steps and collapses small models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import EpochMethod, Pair, Phase, Progress, UnlearnBatch
from approx.methods.common import soft_cross_entropy
from approx.registry import register
from approx.space import Domain, Uniform


def nls_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(1 - a) * onehot(y) + a / K, shape (N, K); with a < 0 the true class gets more than 1."""
    return (1 - smoothing) * F.one_hot(labels, num_classes).float() + smoothing / num_classes


@dataclass
class SmoothedLabelUnlearning(EpochMethod):
    """The loss both variants share; they differ in backbone (phases) and stop rule."""

    space: ClassVar[dict[str, Domain]] = {
        **EpochMethod.space,
        "smoothing": Uniform(-1.0, -0.05),
        "retain_weight": Uniform(0.0, 1.0),
    }
    smoothing: float = -0.5
    """Label-smoothing rate a; negative for NLS."""
    retain_weight: float = 0.5
    """p in L = p * L_retain - (1 - p) * L_forget."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.retain_weight <= 1:
            raise ValueError(f"{self.name}.retain_weight must be in [0, 1], got {self.retain_weight}")

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        targets = nls_targets(batch.forget_y, batch.num_classes, self.smoothing).to(batch.forget_x.device)
        forget_logits, retain_logits = model(batch.forget_x), model(batch.retain_x)
        self.observe(forget_logits.detach(), retain_logits.detach(), batch)
        return {
            "retain_ce": self.retain_weight * F.cross_entropy(retain_logits, batch.retain_y),
            "forget_nls_ascent": -(1 - self.retain_weight) * soft_cross_entropy(forget_logits, targets),
        }

    def observe(self, forget_logits: torch.Tensor, retain_logits: torch.Tensor, batch: UnlearnBatch) -> None:
        """Record what the stop rule needs from a step's (detached) outputs."""


@register
@dataclass
class UGradSL(SmoothedLabelUnlearning):
    """NLS ascent mixed with retain descent, iterating the forget set; stops when the forget set converges."""

    name = "ugradsl"
    summary = "UGradSL: ascent on forget with negative label smoothing plus retain descent (GA backbone)"
    reference = "Di et al., ICLR 2026 (arXiv 2406.07698); code: UCSC-REAL/Label-Smoothing-Unlearn"
    lr: float = 1e-4
    epochs: int = 5
    stop_forget_loss: float = 0.0
    """Stop once a forget batch's cross-entropy exceeds this; 0 means ln K (chance level)."""

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        self._forget_ce, self._stop_at = 0.0, math.inf
        return 0

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("joint", "forget", cycled=("retain",))]

    def observe(self, forget_logits: torch.Tensor, retain_logits: torch.Tensor, batch: UnlearnBatch) -> None:
        self._forget_ce = F.cross_entropy(forget_logits, batch.forget_y).item()
        self._stop_at = self.stop_forget_loss or math.log(batch.num_classes)

    def converged(self, progress: Progress) -> bool:
        return self._forget_ce > self._stop_at


@register
@dataclass
class UGradSLPlus(SmoothedLabelUnlearning):
    """NLS ascent mixed with retain descent, iterating the retain set; stops when the retain set converges."""

    name = "ugradsl_plus"
    summary = "UGradSL+: UGradSL with a fine-tuning backbone (iterates the retain set; stops when it converges)"
    reference = "Di et al., ICLR 2026 (arXiv 2406.07698); code: UCSC-REAL/Label-Smoothing-Unlearn"
    lr: float = 0.01
    epochs: int = 10
    retain_weight: float = 0.9
    retain_tol: float = 0.01
    """Converged after an epoch whose mean retain CE is less than this share below the previous epoch's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retain_tol < 0:
            raise ValueError(f"ugradsl_plus.retain_tol must be >= 0, got {self.retain_tol}")

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        self.epoch_losses: list[float] = []
        """Mean retain cross-entropy of each finished epoch."""
        self._sum, self._count, self._done = 0.0, 0, False
        return 0

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("joint", "retain", cycled=("forget",))]

    def observe(self, forget_logits: torch.Tensor, retain_logits: torch.Tensor, batch: UnlearnBatch) -> None:
        self._sum += F.cross_entropy(retain_logits, batch.retain_y, reduction="sum").item()
        self._count += len(batch.retain_y)

    def end_epoch(self, model: nn.Module, progress: Progress) -> None:
        self.epoch_losses.append(self._sum / max(self._count, 1))
        self._sum, self._count = 0.0, 0
        if len(self.epoch_losses) >= 2:
            before, now = self.epoch_losses[-2:]
            self._done = before - now < self.retain_tol * before

    def converged(self, progress: Progress) -> bool:
        return self._done
