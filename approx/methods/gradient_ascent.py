"""GA: gradient ascent on the forget set only.

Reference: Thudi et al. 2022; defaults from OPTML-Group/Unlearn-Sparse (lr 1e-4, 5 epochs).
Another reference (K1nght/Unified-Unlearning-w-Remain-Geometry) uses 9 epochs, gradient clipping
at 0.1 and batch norm in eval mode: set grad_clip=0.1, bn_eval=true, epochs=9.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import Progress, UnlearnBatch, UnlearningMethod
from approx.registry import register


@register
@dataclass
class GradientAscent(UnlearningMethod):
    """Ascent on the forget set's cross-entropy."""

    name = "gradient_ascent"
    summary = "GA: gradient ascent on the forget set only"
    driver = "forget"
    uses = ("forget",)
    lr: float = 1e-4
    epochs: int = 5

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {"forget_ce_ascent": -F.cross_entropy(model(batch.forget_x), batch.forget_y)}
