"""NegGrad+: descent on the retain set and ascent on the forget set, weighted in one loss.

Kurmanji et al., NeurIPS 2023, "Towards Unbounded Machine Unlearning" (the SCRUB paper, which
introduced it as a baseline; meghdadk/SCRUB thirdparty/repdistiller/helper/loops.py train_negrad).
L = alpha CE(retain) - (1 - alpha) CE(forget); each epoch is one pass over the retain set, a
forget batch paired with every retain batch and the forget set cycled. Defaults from
xcadet/deepunlearn munl/unlearning/neggradplus.py (the Deep Unlearn benchmark, which found it the
stronger weak baseline once tuned): alpha 0.95, SGD lr 0.01, momentum 0.9, weight decay 0,
10 epochs, batch 256, and the model in eval mode while training (`bn_eval`; SCRUB's own loop
trains in train mode: set bn_eval=false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import EpochMethod, Phase, Progress, UnlearnBatch
from approx.registry import register
from approx.space import Domain, Uniform


@register
@dataclass
class NegGradPlus(EpochMethod):
    """alpha * retain descent - (1 - alpha) * forget ascent, iterating the retain set."""

    name = "neggrad_plus"
    summary = "NegGrad+: alpha CE(retain) - (1 - alpha) CE(forget), the forget set cycled along the retain set"
    reference = "Kurmanji et al., NeurIPS 2023; code: xcadet/deepunlearn munl/unlearning/neggradplus.py"
    space: ClassVar[dict[str, Domain]] = {**EpochMethod.space, "alpha": Uniform(0.0, 1.0)}
    weight_decay: float = 0.0
    bn_eval: bool = True
    alpha: float = 0.95
    """Weight of the retain loss; the forget ascent gets 1 - alpha."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"neggrad_plus.alpha must be in [0, 1], got {self.alpha}")

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("joint", "retain", cycled=("forget",))]

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        return {
            "retain_ce": self.alpha * F.cross_entropy(model(batch.retain_x), batch.retain_y),
            "forget_ce_ascent": -(1 - self.alpha) * F.cross_entropy(model(batch.forget_x), batch.forget_y),
        }
