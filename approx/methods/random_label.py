"""RL: train on the forget set with random wrong labels, together with the retain set.

Reference: Golatkar et al. 2020 / Fan et al. 2024; defaults from OPTML-Group/Unlearn-Saliency
(lr 0.013, 10 epochs). Each step pairs a retain batch with a forget batch relabelled uniformly
among the wrong classes; without the retain term retain accuracy collapses (a reported pitfall).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import Progress, UnlearnBatch, UnlearningMethod
from approx.methods.common import random_wrong_labels
from approx.registry import register


@register
@dataclass
class RandomLabel(UnlearningMethod):
    """Descent on forget samples with random wrong labels plus descent on the retain set."""

    name = "random_label"
    summary = "RL: forget samples relabelled at random (wrong classes) plus the retain set"
    driver = "retain"
    lr: float = 0.013

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        wrong = random_wrong_labels(batch.forget_y, batch.num_classes, batch.rng)
        return {
            "forget_random_ce": F.cross_entropy(model(batch.forget_x), wrong),
            "retain_ce": F.cross_entropy(model(batch.retain_x), batch.retain_y),
        }
