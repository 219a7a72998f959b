"""SalUn: random-label unlearning restricted to the weights salient for the forget set.

Fan et al., ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency"
(OPTML-Group/Unlearn-Saliency). The mask keeps the top `fraction` of |d loss_forget / d theta|
over all parameters (one global threshold). Non-salient weights stay exactly fixed: they are
restored after every optimizer step, so neither weight decay nor momentum can move them (the
reference's later fix). Defaults: top 50%, lr 0.013, 10 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import Progress
from approx.methods.random_label import RandomLabel
from approx.registry import register


def saliency_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fraction: float,
                   batch_size: int = 256) -> list[torch.Tensor]:
    """Per-parameter 0/1 masks: 1 where |grad of the forget cross-entropy| is in the top `fraction`."""
    model.zero_grad(set_to_none=True)
    for start in range(0, len(x), batch_size):
        loss = F.cross_entropy(model(x[start : start + batch_size]), y[start : start + batch_size], reduction="sum")
        loss.backward()
    grads = [p.grad.abs() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    flat = torch.cat([g.flatten() for g in grads])
    keep = int(round(fraction * flat.numel()))
    if keep == 0:
        return [torch.zeros_like(g) for g in grads]
    threshold = flat.kthvalue(flat.numel() - keep + 1).values
    return [(g >= threshold).to(g.dtype) for g in grads]


@register
@dataclass
class SalUn(RandomLabel):
    """RL on salient weights only."""

    name = "salun"
    summary = "SalUn: RL restricted to weights salient for the forget loss (others exactly fixed)"
    fraction: float = 0.5
    """Share of all weights that may change (top |gradient| of the forget loss)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.fraction <= 1:
            raise ValueError(f"salun.fraction must be in (0, 1], got {self.fraction}")
        self.masks: list[torch.Tensor] = []
        self._frozen: list[torch.Tensor] = []

    def prepare(self, model: nn.Module, forget, retain) -> None:  # noqa: ANN001
        self.masks = saliency_masks(model, *forget, self.fraction)
        self._frozen = [p.detach().clone() for p in model.parameters()]

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        for p, m in zip(model.parameters(), self.masks):
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: Progress) -> None:
        for p, m, frozen in zip(model.parameters(), self.masks, self._frozen):
            p.copy_(torch.where(m.bool(), p, frozen))
