"""FT: fine-tune on the retain set only, relying on catastrophic forgetting of the forget set.

Warnecke et al., NDSS 2023, "Machine Unlearning of Features and Labels"; as run in Jia et al.,
NeurIPS 2023 (OPTML-Group/Unlearn-Sparse, unlearn/FT.py). Each epoch is one pass over the retain
set. Defaults from that code and its arg_parser.py: SGD lr 0.01 (`--unlearn_lr`), momentum 0.9,
weight decay 5e-4, 10 epochs (`--unlearn_epochs`), batch 256 (`--batch_size`); its MultiStepLR
milestones (91, 136) never fall within 10 epochs, so the rate is constant.
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
class FineTune(EpochMethod):
    """Descent on the retain set."""

    name = "finetune"
    summary = "FT: descent on the retain set only (catastrophic forgetting of the forget set)"
    reference = "Warnecke et al., NDSS 2023; code: OPTML-Group/Unlearn-Sparse unlearn/FT.py"
    uses = ("retain",)

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("retain", "retain")]

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {"retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y)}
