"""Running models on splits: mean posterior of an ensemble, aggregated labels, margins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from orchestration.evaluation import outputs


class Fixed(nn.Module):
    """Outputs the same logits for every input."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_outputs_average_the_posteriors_and_aggregate_the_labels():
    sets = {"forget": (torch.zeros(2, 1), torch.tensor([0, 1]))}
    out = outputs([Fixed([0.0, 0.0]), Fixed([math.log(3), 0.0])], "mean", sets)
    # softmaxes [1/2, 1/2] and [3/4, 1/4] average to [5/8, 3/8]
    assert torch.allclose(out.log_probs["forget"].exp(), torch.tensor([[0.625, 0.375]] * 2, dtype=torch.float64))
    assert out.predicted["forget"].tolist() == [0, 0] and out.accuracy("forget") == 0.5


def test_margins_are_the_true_logit_minus_logsumexp_of_the_others():
    # logits (2, 0, -1): for label 0, 2 - ln(e^0 + e^-1); for label 2, -1 - ln(e^2 + e^0)
    sets = {"test": (torch.zeros(2, 1), torch.tensor([0, 2]))}
    margins = outputs([Fixed([2.0, 0.0, -1.0])], "vote", sets).margins("test")
    assert margins == pytest.approx([2 - math.log(1 + math.exp(-1)), -1 - math.log(math.exp(2) + 1)])
    # and log p_y - log(1 - p_y) of the ensemble's mean posterior: p = 5/8 -> ln(5/3)
    out = outputs([Fixed([0.0, 0.0]), Fixed([math.log(3), 0.0])], "mean", {"f": (torch.zeros(1, 1), torch.tensor([0]))})
    assert out.margins("f") == pytest.approx(np.array([math.log(5 / 3)]))
