"""l1-sparse: fine-tuning on the retain set plus a linearly decaying L1 penalty on the weights.

Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning" (OPTML-Group/
Unlearn-Sparse). Loss = CE(retain) + alpha_t * ||theta||_1 with alpha_t = alpha * (1 - epoch/E),
decayed per epoch as in the reference code. alpha defaults to 1e-4 (the reference CLI default
of 0.2 belongs to another method); lr 0.01, 10 epochs.
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
class L1Sparse(UnlearningMethod):
    """FT with an L1 sparsity penalty whose weight decays linearly to 0."""

    name = "l1_sparse"
    summary = "l1-sparse: FT plus alpha_t * ||theta||_1, alpha_t decaying linearly to 0"
    driver = "retain"
    uses = ("retain",)
    alpha: float = 1e-4
    """Initial L1 weight alpha_0."""

    def l1_weight(self, progress: Progress) -> float:
        """alpha_t = alpha * (1 - epoch / epochs)."""
        return self.alpha * (1 - progress.epoch / progress.epochs)

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        l1 = torch.stack([p.abs().sum() for p in model.parameters()]).sum()
        return {
            "retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y),
            "l1": self.l1_weight(progress) * l1,
        }
