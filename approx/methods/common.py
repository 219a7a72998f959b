"""Pieces several methods share: random labels, soft targets, diagonal Fisher information, conv layers."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def random_labels(labels: torch.Tensor, num_classes: int, rng: torch.Generator) -> torch.Tensor:
    """A label drawn uniformly from all K classes for each sample (it may equal the true label)."""
    return torch.randint(0, num_classes, labels.shape, generator=rng).to(labels.device)


def random_wrong_labels(labels: torch.Tensor, num_classes: int, rng: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each true label: (y + U{1..K-1}) mod K."""
    shift = torch.randint(1, num_classes, labels.shape, generator=rng).to(labels.device)
    return (labels + shift) % num_classes


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k targets_k * log softmax(logits)_k; targets (N, K) may be negative."""
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def fisher_diagonal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Diagonal Fisher information as the reference codes estimate it, one tensor per parameter.

    The mean over batches (in order, the last one possibly short) of the squared gradient of the
    batch-mean cross-entropy, with the model in eval mode (batch-norm statistics are not updated).
    Both SFR-on and SSD estimate importance this way.
    """
    model.eval()
    totals = [torch.zeros_like(p) for p in model.parameters()]
    batches = 0
    for start in range(0, len(x), batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[start : start + batch_size]), y[start : start + batch_size]).backward()
        for total, p in zip(totals, model.parameters()):
            if p.grad is not None:
                total += p.grad.detach() ** 2
        batches += 1
    model.zero_grad(set_to_none=True)
    return [t / max(batches, 1) for t in totals]


def conv_layers(model: nn.Module, method: str, what: str) -> list[nn.Conv2d]:
    """Every Conv2d of `model`; a model without one is refused, naming methods that work on any model.

    Args:
        model: the model to unlearn from.
        method: the method's name, for the message.
        what: what the method does to the convolutions, for the message.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{method} needs a model with Conv2d layers ({what}), and {type(model).__name__} has none; "
                         "use a method that works on any model instead, e.g. finetune, neggrad_plus, scrub or salun")
    return convs
