"""SalUn: random-label unlearning restricted to the weights salient for the forget set.

Fan et al., ICLR 2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency"
(OPTML-Group/Unlearn-Saliency: Classification/generate_mask.py for the mask, unlearn/RL.py for
the loop). The mask keeps the top `fraction` of |gradient of the forget cross-entropy| over all
parameters (one global ranking), the gradient summed over forget batches of `batch_size` with the
model in eval mode, as generate_mask.py does. The loop is RL's (see random_label.py). Masked
weights stay exactly at their starting values: they are restored after every optimizer step, so
neither weight decay nor momentum can move them (the reference's fix of February 2026 restores
them likewise). Defaults from Unlearn-Saliency: top 50%, SGD lr 0.013, 10 epochs, batch 256; the
SFR-on code's SalUn uses 20% and lr 0.007.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import Pair, Progress
from approx.methods.random_label import RandomLabel
from approx.registry import register
from approx.space import Domain, Uniform


def saliency_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fraction: float,
                   batch_size: int = 256) -> list[torch.Tensor]:
    """Per-parameter 0/1 masks: 1 on the int(fraction * #weights) largest |summed forget-loss gradients|.

    Ties are broken by parameter order (a stable sort), so exactly that many weights are salient.
    """
    model.eval()
    model.zero_grad(set_to_none=True)
    for start in range(0, len(x), batch_size):
        F.cross_entropy(model(x[start : start + batch_size]), y[start : start + batch_size]).backward()
    grads = [p.grad.abs() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    flat = torch.cat([g.flatten() for g in grads])
    salient = torch.zeros_like(flat)
    salient[torch.argsort(flat, descending=True, stable=True)[: int(fraction * flat.numel())]] = 1
    return [part.view_as(g) for part, g in zip(salient.split([g.numel() for g in grads]), grads)]


@register
@dataclass
class SalUn(RandomLabel):
    """RL on salient weights only."""

    name = "salun"
    summary = "SalUn: RL restricted to weights salient for the forget loss (the others exactly fixed)"
    reference = "Fan et al., ICLR 2024; code: OPTML-Group/Unlearn-Saliency (generate_mask.py, unlearn/RL.py)"
    space: ClassVar[dict[str, Domain]] = {**RandomLabel.space, "fraction": Uniform(0.05, 1.0)}
    fraction: float = 0.5
    """Share of all weights that may change (top |gradient| of the forget loss)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.fraction <= 1:
            raise ValueError(f"salun.fraction must be in (0, 1], got {self.fraction}")
        self.masks: list[torch.Tensor] = []
        self._frozen: list[torch.Tensor] = []

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        self.masks = saliency_masks(model, *forget, self.fraction, self.batch_size)
        self._frozen = [p.detach().clone() for p in model.parameters()]
        return len(forget[0])

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        for p, m in zip(model.parameters(), self.masks):
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: Progress) -> None:
        for p, m, frozen in zip(model.parameters(), self.masks, self._frozen):
            p.copy_(torch.where(m.bool(), p, frozen))
