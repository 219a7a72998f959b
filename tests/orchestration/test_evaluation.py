"""Running models on splits: mean posterior of an ensemble, aggregated labels, margins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from orchestration.evaluation import model_device, outputs


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


def test_outputs_move_every_batch_to_the_models_device():
    """A model on an accelerator gets its inputs there. The stub stands for one without a GPU: its weight lives
    on the meta device and its forward refuses inputs anywhere else (a meta tensor holds no values, so it
    answers with fixed CPU logits)."""

    class OnMeta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(2, device="meta"))
            self.seen: list[torch.device] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.device == self.weight.device, f"input on {x.device}, model on {self.weight.device}"
            self.seen.append(x.device)
            return torch.tensor([[2.0, 0.0]]).expand(len(x), -1)

    model = OnMeta()
    out = outputs([model], "vote", {"forget": (torch.zeros(5, 3), torch.tensor([0, 0, 1, 0, 0]))}, batch_size=2)
    assert model.seen == [torch.device("meta")] * 3  # batches of 2, 2 and 1
    assert out.accuracy("forget") == 0.8 and out.log_probs["forget"].device.type == "cpu"


def test_model_device_reads_parameters_then_buffers_and_defaults_to_cpu():
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffers_only = nn.BatchNorm1d(2, affine=False, device="meta")
    assert model_device(buffers_only) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")
