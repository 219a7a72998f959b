"""Loss pieces several methods share."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_wrong_labels(labels: torch.Tensor, num_classes: int, rng: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each true label: (y + U{1..K-1}) mod K."""
    shift = torch.randint(1, num_classes, labels.shape, generator=rng).to(labels.device)
    return (labels + shift) % num_classes


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k * log softmax(logits)_k; targets (N, K) may be negative."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()
