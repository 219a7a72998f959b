"""Metrics on hand-built cases: accuracies, MIA polarity, gaps, divergences, forget quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from orchestration.evaluation import (
    Outputs,
    accuracy_metrics,
    avg_gap,
    divergences,
    forget_quality,
    logit_confidence,
    mia_efficacy,
    model_device,
    outputs,
    sample_epsilon,
)


def _outputs(confidence: dict[str, list[float]]) -> Outputs:
    """Two-class outputs whose true label (0) gets the given probability per sample."""
    probs = {s: torch.tensor([[c, 1 - c] for c in cs], dtype=torch.float64) for s, cs in confidence.items()}
    labels = {s: torch.zeros(len(cs), dtype=torch.long) for s, cs in confidence.items()}
    return Outputs(probs, {s: p.argmax(1) for s, p in probs.items()}, labels)


def test_accuracy_metrics_are_percentages_with_ua_as_forget_error():
    out = _outputs({"forget": [0.9, 0.2, 0.3, 0.8], "retain": [0.9] * 4, "test": [0.9, 0.9, 0.9, 0.1]})
    assert accuracy_metrics(out) == {"UA": 50.0, "RA": 100.0, "TA": 75.0}


def test_outputs_average_the_posteriors_and_aggregate_the_labels():
    class Fixed(nn.Module):
        def __init__(self, logits: list[float]) -> None:
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.logits.expand(len(x), -1)

    sets = {"forget": (torch.zeros(2, 1), torch.tensor([0, 1]))}
    out = outputs([Fixed([0.0, 0.0]), Fixed([math.log(3), 0.0])], "mean", sets)
    # softmaxes [1/2, 1/2] and [3/4, 1/4] average to [5/8, 3/8]
    assert torch.allclose(out.probs["forget"], torch.tensor([[0.625, 0.375]] * 2, dtype=torch.float64))
    assert out.predicted["forget"].tolist() == [0, 0]
    assert out.accuracy("forget") == 0.5


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
    assert out.accuracy("forget") == 0.8 and out.probs["forget"].device.type == "cpu"


def test_model_device_reads_parameters_then_buffers_and_defaults_to_cpu():
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffers_only = nn.BatchNorm1d(2, affine=False, device="meta")
    assert model_device(buffers_only) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")


def test_mia_efficacy_counts_forget_samples_predicted_non_member():
    rng = np.random.default_rng(0)
    member = list(rng.uniform(0.97, 1.0, 200))
    non_member = list(rng.uniform(0.3, 0.6, 200))
    looks_unseen = _outputs({"retain": member, "test": non_member, "forget": list(rng.uniform(0.3, 0.6, 50))})
    looks_trained = _outputs({"retain": member, "test": non_member, "forget": list(rng.uniform(0.97, 1.0, 50))})
    assert mia_efficacy(looks_unseen) == 100.0
    assert mia_efficacy(looks_trained) == 0.0


def test_avg_gap_is_zero_for_the_reference_and_the_mean_absolute_difference_otherwise():
    reference = {"UA": 5.0, "MIA": 10.0, "RA": 100.0, "TA": 94.0}
    assert avg_gap(reference, reference) == 0.0
    assert avg_gap({"UA": 1.0, "MIA": 12.0, "RA": 99.0, "TA": 93.0}, reference) == pytest.approx((4 + 2 + 1 + 1) / 4)


def test_divergences_match_hand_computed_values():
    p = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[0.25, 0.75]])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # = 0.5 ln(4/3)
    m = [0.375, 0.625]
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) \
        + 0.5 * (0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1]))
    assert divergences(p, q) == pytest.approx({"KL": kl, "JS": js})
    assert divergences(p, p) == {"KL": 0.0, "JS": 0.0}


def test_logit_confidence_is_log_odds_of_the_true_label():
    out = _outputs({"forget": [0.5, 0.75]})
    assert logit_confidence(out) == pytest.approx([0.0, math.log(3)])


def test_sample_epsilon_of_a_hand_worked_case():
    # Retrained 0,1,2,3 vs unlearned 1.5,2.5,3.5,4.5: the best attack says "unlearned" above 2,
    # with FPR = 1/4 (the retrained 3) and FNR = 1/4 (the unlearned 1.5): eps = ln((1 - d - 1/4) / (1/4)).
    eps = sample_epsilon(np.array([1.5, 2.5, 3.5, 4.5]), np.array([0.0, 1.0, 2.0, 3.0]), delta=1e-5)
    assert eps == pytest.approx(math.log((0.75 - 1e-5) / 0.25))


def test_forget_quality_is_one_for_the_retrained_models_themselves():
    retrained = np.random.default_rng(0).normal(size=(5, 30))
    assert forget_quality(retrained.copy(), retrained) == 1.0


def test_forget_quality_is_near_zero_when_every_sample_separates_the_two_sets():
    retrained = np.random.default_rng(0).normal(size=(4, 20))
    assert forget_quality(retrained + 100, retrained) == pytest.approx(2.0**-100)


def test_forget_quality_scores_epsilon_buckets_and_scales_by_accuracy_ratios():
    # Sample 0: eps = ln 3 (bucket 2, score 1/4); sample 1: identical sets (score 1).
    retrained = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    unlearned = np.array([[1.5, 0.0], [2.5, 1.0], [3.5, 2.0], [4.5, 3.0]])
    assert forget_quality(unlearned, retrained) == pytest.approx((0.25 + 1) / 2)
    assert forget_quality(unlearned, retrained, ra_ratio=0.9, ta_ratio=0.5) == pytest.approx(0.625 * 0.45)


def test_forget_quality_needs_two_models_of_each():
    with pytest.raises(ValueError, match="at least 2 models"):
        forget_quality(np.zeros((1, 3)), np.zeros((1, 3)))
