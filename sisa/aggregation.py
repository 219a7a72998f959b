"""Aggregation of constituent outputs: label majority vote and mean posterior.

Aggregators see only model outputs, never training data, so they hold nothing to delete.
"""

from __future__ import annotations

import torch


def majority_vote(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Class each sample gets most (weighted) votes for.

    Args:
        logits: (models, samples, classes) outputs of the constituents.
        weights: optional (models,) vote weights; default one vote each.

    Returns:
        (samples,) predicted labels. Ties go to the smallest class index.
    """
    models, _, classes = logits.shape
    weights = torch.ones(models) if weights is None else weights.to(torch.float64)
    votes = torch.nn.functional.one_hot(logits.argmax(-1), classes).to(torch.float64)  # (M, N, K)
    tally = torch.einsum("m,mnk->nk", weights.to(torch.float64), votes)
    # argmax returns the first maximum, which makes the tie rule "smallest class index".
    return tally.argmax(-1)


def mean_posterior(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) mean of the constituents' softmax outputs, shape (samples, classes)."""
    probs = logits.softmax(-1)  # (M, N, K)
    if weights is None:
        return probs.mean(0)
    weights = weights.to(probs.dtype)
    return torch.einsum("m,mnk->nk", weights / weights.sum(), probs)


def aggregate(logits: torch.Tensor, how: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted labels (samples,) by 'vote' or 'mean' aggregation."""
    if how == "vote":
        return majority_vote(logits, weights)
    if how == "mean":
        return mean_posterior(logits, weights).argmax(-1)
    raise ValueError(f"unknown aggregation {how!r}; valid: 'vote', 'mean'")
