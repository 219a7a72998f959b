"""A served version predicts from all its constituents at once, naming its classes when the data set has them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from orchestration.serve.versions import NoVersionError, ServedEnsemble


def _constant(logits: list[float]) -> nn.Module:
    """A model whose output is `logits` whatever the input: Linear with zero weights and these biases."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, len(logits)))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor(logits))
    return model


def test_served_ensemble_answers_its_version_vote_mean_posterior_and_class_names():
    """Logits [0, 0] give posteriors (0.5, 0.5) and argmax 0 (ties to the smallest class); [0, ln 3] give
    (1/4, 3/4) and 1. Mean posterior (0.375, 0.625): label 1. Vote: one each, the tie goes to 0."""
    models = [_constant([0.0, 0.0]), _constant([0.0, float(np.log(3))])]
    ensemble = ServedEnsemble({"number": 7}, models, (1, 2), "vote", ["cat", "dog"])
    answer = ensemble.predict(np.zeros((3, 2), np.float32))
    assert answer["version"] == 7 and answer["labels"] == [0, 0, 0] and answer["classes"] == ["cat"] * 3
    assert np.allclose(answer["probabilities"], [[0.375, 0.625]] * 3)
    mean = ServedEnsemble({"number": 7}, models, (1, 2), "mean").predict(np.zeros((1, 2), np.float32))
    assert mean["labels"] == [1] and "classes" not in mean


def test_a_version_without_constituents_refuses_to_predict():
    with pytest.raises(NoVersionError, match="version 3 has no model: every training sample was deleted"):
        ServedEnsemble({"number": 3}, [], (2,), "vote").predict(np.zeros((1, 2), np.float32))
