"""l1-sparse: fine-tuning on the retain set plus a linearly decaying L1 penalty on the weights.

Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning" (OPTML-Group/
Unlearn-Sparse, unlearn/FT.py with `with_l1`). Loss = CE(retain) + alpha_t * ||theta||_1 over all
parameters, alpha_t = alpha * (1 - epoch/E), decayed per epoch as in that code; each epoch is one
pass over the retain set. Defaults: alpha 1e-4 (the paper's value; the code's CLI default of 0.2
belongs to another method), SGD lr 0.01, momentum 0.9, weight decay 5e-4, 10 epochs, batch 256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from approx.base import Progress, UnlearnBatch
from approx.methods.finetune import FineTune
from approx.registry import register
from approx.space import Domain, LogUniform


@register
@dataclass
class L1Sparse(FineTune):
    """FT with an L1 sparsity penalty whose weight decays linearly to 0."""

    name = "l1_sparse"
    summary = "l1-sparse: FT plus alpha_t * ||theta||_1, alpha_t decaying linearly to 0"
    reference = "Jia et al., NeurIPS 2023; code: OPTML-Group/Unlearn-Sparse unlearn/FT.py (FT_l1)"
    space: ClassVar[dict[str, Domain]] = {**FineTune.space, "alpha": LogUniform(1e-6, 1e-2)}
    alpha: float = 1e-4
    """Initial L1 weight alpha_0."""

    def l1_weight(self, progress: Progress) -> float:
        """alpha_t = alpha * (1 - epoch / epochs)."""
        return self.alpha * (1 - progress.epoch / progress.epochs)

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        l1 = torch.stack([p.abs().sum() for p in model.parameters()]).sum()
        return {**super().loss_terms(model, batch, progress), "l1": self.l1_weight(progress) * l1}
