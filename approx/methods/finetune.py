"""FT: fine-tune on the retain set only, relying on catastrophic forgetting of the forget set.

Reference: Warnecke et al. 2023; defaults from OPTML-Group/Unlearn-Sparse (SGD lr 0.01,
momentum 0.9, weight decay 5e-4, 10 epochs).
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
class FineTune(UnlearningMethod):
    """Descent on the retain set."""

    name = "finetune"
    summary = "FT: descent on the retain set only (catastrophic forgetting of the forget set)"
    driver = "retain"
    uses = ("retain",)

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {"retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y)}
