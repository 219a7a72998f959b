"""SSD: Selective Synaptic Dampening, a training-free edit of the weights most specific to the forget set.

Foster et al., AAAI 2024, "Fast Machine Unlearning Without Retraining Through Selective Synaptic
Dampening" (if-loops/selective-synaptic-dampening, src/ssd.py; ssd_tuning in
forget_random_strategies.py). Importance is the diagonal Fisher information (common.fisher_diagonal,
as ssd.calc_importance computes it) on the forget set, I_f, and on the whole training set
D = retain + forget, I_D. Every parameter with I_f > alpha I_D is multiplied by
min(lambda I_D / I_f, 1); the others are left alone. There is no optimizer step: the whole method
is `prepare`, and the loop only times it. Defaults from the reference: lambda 1 (dampening
constant), alpha 10 (selection weighting), importance batches of 128, the full set ordered retain
then forget as its ConcatDataset is, the model in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from approx.base import Pair, UnlearningMethod
from approx.methods.common import fisher_diagonal
from approx.registry import register
from approx.space import Domain, LogUniform


def dampening_factors(forget_importance: torch.Tensor, full_importance: torch.Tensor, lam: float,
                      alpha: float) -> torch.Tensor:
    """min(lam I_D / I_f, 1) where I_f > alpha I_D, else 1 (elementwise)."""
    selected = forget_importance > alpha * full_importance
    factor = (lam * full_importance / forget_importance).clamp(max=1.0)
    return torch.where(selected, factor, torch.ones_like(factor))


@register
@dataclass
class SSD(UnlearningMethod):
    """Dampen the parameters far more important to the forget set than to the training set."""

    name = "ssd"
    summary = "SSD: no training; scale parameters with I_forget > alpha I_train by min(lambda I_train / I_forget, 1)"
    reference = "Foster et al., AAAI 2024; code: if-loops/selective-synaptic-dampening src/ssd.py"
    space: ClassVar[dict[str, Domain]] = {"lam": LogUniform(0.1, 10.0), "alpha": LogUniform(1.0, 100.0)}
    batch_size: int = 128
    lam: float = 1.0
    """lambda, the dampening constant: a selected parameter is scaled by min(lambda I_D / I_f, 1)."""
    alpha: float = 10.0
    """The selection weighting: parameters with I_f > alpha I_D are dampened."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam <= 0 or self.alpha <= 0:
            raise ValueError(f"ssd: lam and alpha must be > 0, got {self.lam}, {self.alpha}")

    @torch.no_grad()
    def _dampen(self, model: nn.Module, forget: list[torch.Tensor], full: list[torch.Tensor]) -> None:
        for p, f, d in zip(model.parameters(), forget, full):
            p.mul_(dampening_factors(f, d, self.lam, self.alpha))

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        full = torch.cat([retain[0], forget[0]]), torch.cat([retain[1], forget[1]])
        forget_importance = fisher_diagonal(model, *forget, self.batch_size)
        full_importance = fisher_diagonal(model, *full, self.batch_size)
        self._dampen(model, forget_importance, full_importance)
        return len(forget[0]) + len(full[0])
