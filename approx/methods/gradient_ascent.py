"""GA: gradient ascent on the forget set only.

Thudi et al., EuroS&P 2022, "Unrolling SGD"; as run in OPTML-Group/Unlearn-Sparse and
Unlearn-Saliency (unlearn/GA.py). Each epoch is one pass over the forget set. Defaults from that
code: SGD lr 1e-4 (tuned there for class-wise forgetting; its maintainers grid-search [1e-5, 0.1]),
momentum 0.9, weight decay 5e-4, 5 epochs, batch 256. Another reference
(K1nght/Unified-Unlearning-w-Remain-Geometry, unlearn/gradient_ascent.py) runs 9 epochs with
gradient clipping at 0.1 and batch norm in eval mode: set epochs=9, grad_clip=0.1, bn_eval=true.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import EpochMethod, Phase, Progress, UnlearnBatch
from approx.registry import register


@register
@dataclass
class GradientAscent(EpochMethod):
    """Ascent on the forget set's cross-entropy."""

    name = "gradient_ascent"
    summary = "GA: gradient ascent on the forget set only"
    reference = "Thudi et al., EuroS&P 2022; code: OPTML-Group/Unlearn-Saliency Classification/unlearn/GA.py"
    uses = ("forget",)
    lr: float = 1e-4
    epochs: int = 5

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("forget", "forget")]

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {"forget_ce_ascent": -F.cross_entropy(model(batch.forget_x), batch.forget_y)}
