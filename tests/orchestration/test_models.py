"""Every architecture builds by name and maps its inputs to class logits."""

from __future__ import annotations

import pytest
import torch

from orchestration.config import ModelConfig
from orchestration.models import MODELS, build_model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_model_outputs_one_logit_per_class(name, shape):
    model = build_model(ModelConfig(name=name), shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_resnet18_has_the_cifar_stem_and_11m_parameters():
    model = build_model(ModelConfig(name="resnet18"), (3, 32, 32), 10)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.2e6


def test_resnet20_has_0_27m_parameters():
    model = build_model(ModelConfig(name="resnet20"), (3, 32, 32), 10)
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6


def test_unknown_model_and_non_image_input_are_rejected():
    with pytest.raises(ValueError, match="valid: mlp, cnn, resnet18, resnet20"):
        build_model(ModelConfig(name="vgg"), (1, 8, 8), 10)
    with pytest.raises(ValueError, match="use model.name=mlp"):
        build_model(ModelConfig(name="cnn"), (16,), 4)
