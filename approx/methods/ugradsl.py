"""UGradSL and UGradSL+: gradient-based unlearning with negative label smoothing (NLS).

Di et al., "Machine Unlearning Using Gradient-based Smoothed Label" (UCSC-REAL/
Label-Smoothing-Unlearn). Forget targets are smoothed with a negative rate a < 0,
y = (1 - a) * onehot + a / K, and ascended, mixed with descent on the retain set:
L = p * CE(retain) - (1 - p) * CE(forget; y). UGradSL iterates over the forget set (a GA
backbone) with the retain set cycled; UGradSL+ iterates over the retain set (an FT backbone)
with the forget set cycled. The ascent is unbounded, so, as in the paper, a run stops once the
forget set has converged: here, when a forget batch's plain cross-entropy exceeds
`stop_forget_loss` (default ln K, the loss of chance-level predictions). No public default for
a and p was found: a = -0.5 and p = 0.5 were chosen here (the NLS paper uses rates in [-1, 0);
p = 0.5 weighs both sets equally), and lr/epochs follow the backbones (GA: 1e-3, 5 epochs;
FT: 0.01, 5 epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import Progress, UnlearnBatch, UnlearningMethod
from approx.methods.common import soft_cross_entropy
from approx.registry import register


def nls_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(1 - a) * onehot(y) + a / K, shape (N, K); with a < 0 the true class gets more than 1."""
    return (1 - smoothing) * F.one_hot(labels, num_classes).float() + smoothing / num_classes


@register
@dataclass
class UGradSL(UnlearningMethod):
    """Ascent on NLS forget targets mixed with retain descent, iterating the forget set."""

    name = "ugradsl"
    summary = "UGradSL: ascent on forget with negative label smoothing plus retain descent (GA backbone)"
    driver = "forget"
    lr: float = 1e-3
    epochs: int = 5
    smoothing: float = -0.5
    """Label-smoothing rate a; negative for NLS."""
    retain_weight: float = 0.5
    """p in L = p * L_retain - (1 - p) * L_forget."""
    stop_forget_loss: float = 0.0
    """Stop once a forget batch's cross-entropy exceeds this; 0 means ln K (chance level)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.retain_weight <= 1:
            raise ValueError(f"{self.name}.retain_weight must be in [0, 1], got {self.retain_weight}")
        self._forget_ce, self._stop_at = 0.0, float("inf")

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        targets = nls_targets(batch.forget_y, batch.num_classes, self.smoothing).to(batch.forget_x.device)
        forget_logits = model(batch.forget_x)
        self._forget_ce = F.cross_entropy(forget_logits.detach(), batch.forget_y).item()
        self._stop_at = self.stop_forget_loss or math.log(batch.num_classes)
        return {
            "retain_ce": self.retain_weight * F.cross_entropy(model(batch.retain_x), batch.retain_y),
            "forget_nls_ascent": -(1 - self.retain_weight) * soft_cross_entropy(forget_logits, targets),
        }

    def converged(self, progress: Progress) -> bool:
        return self._forget_ce > self._stop_at


@register
@dataclass
class UGradSLPlus(UGradSL):
    """UGradSL with the fine-tuning backbone: iterates the retain set, the forget set cycled."""

    name = "ugradsl_plus"
    summary = "UGradSL+: UGradSL with a fine-tuning backbone (iterates the retain set)"
    driver = "retain"
    lr: float = 0.01
    epochs: int = 5
