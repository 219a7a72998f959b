"""RL: relabel the forget set at random and train on it, then on the retain set.

Golatkar et al., CVPR 2020; as run in Fan et al., ICLR 2024 (OPTML-Group/Unlearn-Saliency,
Classification/unlearn/RL.py). The reference's CIFAR-10/SVHN path is the default (`loop='split'`):
each epoch is one pass over the forget set with random labels, then one pass over the retain set,
each batch its own SGD step; the forget set is seen once per epoch. Its CIFAR-100/TinyImageNet
path is `loop='mixed'`: one pass over the shuffled union of the relabelled forget set and the
retain set. Labels are drawn from all K classes (`labels='any'`, the reference's randint); the
SFR-on code (K1nght/Unified-Unlearning-w-Remain-Geometry) draws a random wrong class
(`labels='wrong'`). Defaults from Unlearn-Saliency: SGD lr 0.013, momentum 0.9, weight decay 5e-4,
10 epochs, batch 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import EpochMethod, Phase, Progress, UnlearnBatch
from approx.methods.common import random_labels, random_wrong_labels
from approx.registry import register

LOOPS = ("split", "mixed")
LABELS = ("any", "wrong")


@register
@dataclass
class RandomLabel(EpochMethod):
    """Descent on forget samples with random labels and on the retain set, as separate steps."""

    name = "random_label"
    summary = "RL: a pass over the forget set with random labels, then a pass over the retain set"
    reference = "Golatkar et al., CVPR 2020; code: OPTML-Group/Unlearn-Saliency Classification/unlearn/RL.py"
    lr: float = 0.013
    loop: str = "split"
    """'split': forget pass then retain pass (CIFAR-10 path); 'mixed': one pass over their shuffled union."""
    labels: str = "any"
    """Random labels from 'any' of the K classes (reference) or only the 'wrong' ones (SFR-on code)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loop not in LOOPS or self.labels not in LABELS:
            raise ValueError(f"{self.name}: loop must be one of {LOOPS} and labels one of {LABELS}; "
                             f"got {self.loop!r}, {self.labels!r}")

    def phases(self, epoch: int) -> list[Phase]:
        if self.loop == "mixed":
            return [Phase("mixed", "both")]
        return [Phase("forget", "forget"), Phase("retain", "retain")]

    def relabel(self, batch: UnlearnBatch) -> torch.Tensor:
        """The forget batch's random labels."""
        draw = random_labels if self.labels == "any" else random_wrong_labels
        return draw(batch.forget_y, batch.num_classes, batch.rng)

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        if progress.phase == "forget":
            return {"forget_random_ce": F.cross_entropy(model(batch.forget_x), self.relabel(batch))}
        if progress.phase == "retain":
            return {"retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y)}
        # 'mixed': one cross-entropy over the batch, whatever its share of forget samples
        x, y = torch.cat([batch.forget_x, batch.retain_x]), torch.cat([self.relabel(batch), batch.retain_y])
        return {"mixed_ce": F.cross_entropy(model(x), y)}
