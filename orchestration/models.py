"""Constituent architectures, chosen by name: MLP, small CNN, CIFAR ResNet-18 and ResNet-20, or a
user's own model by import path ('package.module:factory'); and the heads trained on a frozen
backbone's features (`model.head`).

The ResNets follow the CIFAR convention of the unlearning literature: a 3x3 stem with stride 1
and no max-pool (ResNet-18 as in Unlearn-Sparse/SalUn; ResNet-20 as in He et al. 2016, sec. 4.2).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from orchestration.config import ModelConfig

MODELS = ("mlp", "cnn", "resnet18", "resnet20")


class MLP(nn.Module):
    """Two hidden layers on the flattened input."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        features = int(torch.tensor(input_shape).prod())
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; adaptive pooling makes it fit 8x8 to 32x32 inputs."""

    channels_last_inference = True  # no .view in forward: see sisa.inference

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(3),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(18 * c, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (N, C, H, W) -> (N, 2c, 3, 3) -> (N, classes)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, no max-pool, stages of BasicBlocks, global average pool."""

    channels_last_inference = True  # no .view in forward: see sisa.inference

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...], depths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                blocks.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def import_factory(name: str) -> Callable[..., nn.Module]:
    """The callable named 'package.module:attribute' (dots in the attribute reach nested objects).

    This imports and so runs the module's code: the name is a trusted input, like a config file.

    Raises:
        ValueError: the name is malformed, the module does not import, or the attribute is missing or not callable.
    """
    module_name, _, attribute = name.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model.name {name!r} must be a built-in ({', '.join(MODELS)}) or 'package.module:factory'")
    try:
        target = importlib.import_module(module_name)
    except Exception as err:  # any error while importing user code becomes one clear line
        raise ValueError(f"model.name {name!r}: cannot import {module_name!r} ({type(err).__name__}: {err}); it must "
                         "be importable (installed, or on PYTHONPATH) wherever shards train") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model.name {name!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model.name {name!r}: {attribute!r} is a {type(target).__name__}, not a callable")
    return target


def _from_factory(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    factory = import_factory(name)
    try:
        model = factory(tuple(input_shape), num_classes)
    except Exception as err:  # the factory is user code: say which call failed, in one line
        raise ValueError(f"model.name {name!r}: calling it with (input_shape={tuple(input_shape)}, "
                         f"num_classes={num_classes}) failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.name {name!r} returned a {type(model).__name__}; it must return a torch.nn.Module")
    return model


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model of the configured architecture (built-in, or 'package.module:factory')."""
    if ":" in config.name:
        return _from_factory(config.name, input_shape, num_classes)
    if config.name != "mlp" and len(input_shape) != 3:
        raise ValueError(f"model {config.name!r} needs image inputs (C, H, W); got shape {input_shape}: use model.name=mlp")
    builders: dict[str, Callable[[], nn.Module]] = {
        "mlp": lambda: MLP(input_shape, num_classes, config.hidden),
        "cnn": lambda: SmallCNN(input_shape, num_classes, config.channels),
        "resnet18": lambda: ResNet(input_shape[0], num_classes, (64, 128, 256, 512), (2, 2, 2, 2)),
        "resnet20": lambda: ResNet(input_shape[0], num_classes, (16, 32, 64), (3, 3, 3)),
    }
    if config.name not in builders:
        raise ValueError(f"unknown model {config.name!r}; valid: {', '.join(MODELS)}, or 'package.module:factory'")
    return builders[config.name]()


def build_head(config: ModelConfig, feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised head on features of `feature_shape`: linear, or an MLP with one hidden layer."""
    features = int(torch.tensor(feature_shape).prod())
    if config.head == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, config.head_hidden), nn.ReLU(),
                             nn.Linear(config.head_hidden, num_classes))
    return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
