"""Aggregation against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from sisa import aggregate, majority_vote, mean_posterior


def test_majority_vote_takes_the_most_voted_class_and_breaks_ties_to_the_smallest_index():
    """Votes per sample: [2, 2, 0] -> 2; [1, 0, x] with 2 models -> tie 1 vs 0 -> 0."""
    logits = torch.tensor([
        [[0.0, 0.0, 5.0], [0.0, 5.0, 0.0]],
        [[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]],
        [[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ])  # (models=3, samples=2, classes=3); model 3 votes 0 for sample 1 (argmax of zeros is 0)
    assert majority_vote(logits).tolist() == [2, 0]
    assert majority_vote(logits[:2, 1:]).tolist() == [0]


def test_weighted_vote_lets_a_heavier_model_win():
    logits = torch.tensor([[[5.0, 0.0]], [[5.0, 0.0]], [[0.0, 5.0]]])
    assert majority_vote(logits, torch.tensor([1.0, 1.0, 3.0])).tolist() == [1]


def test_mean_posterior_averages_softmax_outputs():
    """softmax([0, ln 3]) = [0.25, 0.75]; softmax([0, 0]) = [0.5, 0.5]; mean = [0.375, 0.625]."""
    logits = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))]], [[0.0, 0.0]]])
    assert torch.allclose(mean_posterior(logits), torch.tensor([[0.375, 0.625]]))
    weighted = mean_posterior(logits, torch.tensor([3.0, 1.0]))  # 0.75*[.25,.75] + 0.25*[.5,.5]
    assert torch.allclose(weighted, torch.tensor([[0.3125, 0.6875]]))


def test_aggregate_rejects_unknown_methods_listing_valid_ones():
    with pytest.raises(ValueError, match="'vote', 'mean'"):
        aggregate(torch.zeros(1, 1, 2), "median")
