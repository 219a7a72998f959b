"""Fixtures of the approx tests: models trained on the embedded digits data, forgetting class 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def _train(kind: str, epochs: int):
    """A model of `kind` trained on digits, and a class-wise split forgetting class 0."""
    from orchestration.config import DataConfig, ModelConfig
    from orchestration.datasets import load_dataset
    from orchestration.models import build_model

    train, _ = load_dataset(DataConfig(name="digits"))
    x, y = train.tensors()
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=kind), train.sample_shape, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    forget = y == 0
    return model.eval(), (x[forget], y[forget]), (x[~forget], y[~forget])


@pytest.fixture(scope="session")
def digits_model():
    """The default MLP trained on digits (about 97% test accuracy), forgetting class 0."""
    return _train("mlp", 20)


@pytest.fixture(scope="session")
def digits_cnn():
    """The small CNN trained on digits, for the methods that need convolutions."""
    return _train("cnn", 10)
