"""Every architecture builds by name and maps its inputs to class logits; a user's own by import path."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from orchestration.cli import main
from orchestration.config import ModelConfig
from orchestration.models import MODELS, build_head, build_model
from orchestration.runs import open_session
from sisa.inference import for_inference, outputs


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_model_outputs_one_logit_per_class(name, shape):
    model = build_model(ModelConfig(name=name), shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_predicts_in_its_inference_layout_what_it_computes_in_the_default_one(name):
    """The layout `for_inference` gives a built-in model changes its outputs only by rounding."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), (3, 16, 16), 10).eval()
    x = torch.randn(70, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    got = outputs(for_inference(model), x, batch_size=32)  # 32, 32, 6: a short last batch
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert bool(convs) == getattr(model, "channels_last_inference", False)  # every built-in with convolutions opts in


def test_resnet18_has_the_cifar_stem_and_11m_parameters():
    model = build_model(ModelConfig(name="resnet18"), (3, 32, 32), 10)
    assert model.stem[0].kernel_size == (3, 3) and model.stem[0].stride == (1, 1)
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.2e6


def test_resnet20_has_0_27m_parameters():
    model = build_model(ModelConfig(name="resnet20"), (3, 32, 32), 10)
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.28e6


@pytest.mark.parametrize(("head", "parameters"), [("linear", 32 * 10 + 10), ("mlp", 32 * 16 + 16 + 16 * 10 + 10)])
def test_head_on_backbone_features_outputs_one_logit_per_class(head, parameters):
    """Features (2, 2, 16), flattened to 32: linear 32x10 + 10 bias; mlp 32x16 + 16, then 16x10 + 10."""
    model = build_head(ModelConfig(head=head, head_hidden=16), (2, 16), 10)
    assert model(torch.zeros(3, 2, 16)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_unknown_model_and_non_image_input_are_rejected():
    with pytest.raises(ValueError, match="valid: mlp, cnn, resnet18, resnet20"):
        build_model(ModelConfig(name="vgg"), (1, 8, 8), 10)
    with pytest.raises(ValueError, match="use model.name=mlp"):
        build_model(ModelConfig(name="cnn"), (16,), 4)


_USER_MODULE = '''
from torch import nn


class Tiny(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        features = 1
        for size in input_shape:
            features *= size
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))

    def forward(self, x):
        return self.net(x)


def make(input_shape, num_classes):
    return Tiny(input_shape, num_classes)


def not_a_model(input_shape, num_classes):
    return "a string"


def broken(input_shape, num_classes):
    raise RuntimeError("out of ideas")


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module outside the package, importable as `user_models_<test>` from tmp_path."""
    name = f"user_models_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(_USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_model_by_import_path_trains_a_run_through_the_cli(user_module, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--engine", "local", "--no-track",
                 "--set", f"model.name={user_module}:make", "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=1",
                 "--set", "sisa.epochs=1"]) == 0
    models = open_session(run_dir).run.constituents()
    assert len(models) == 2 and all(type(m).__name__ == "Tiny" and type(m).__module__ == user_module for _, m in models)
    assert models[0][1].net[1].in_features == 64 and models[0][1].net[1].out_features == 10, "got (1, 8, 8) and 10 classes"


@pytest.mark.parametrize(
    ("target", "message"),
    [("nowhere_at_all:make", "cannot import 'nowhere_at_all' (ModuleNotFoundError"),
     ("{m}:missing", "has no attribute 'missing'"),
     ("{m}:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a callable"),
     ("{m}:not_a_model", "returned a str; it must return a torch.nn.Module"),
     ("{m}:broken", "failed: RuntimeError: out of ideas"),
     (":make", "must be a built-in (mlp, cnn, resnet18, resnet20) or 'package.module:factory'")],
)
def test_model_import_path_errors_say_what_is_wrong(user_module, target, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(ModelConfig(name=target.format(m=user_module)), (1, 8, 8), 10)
