"""Constituent architectures, chosen by name: MLP, small CNN, CIFAR ResNet-18 and ResNet-20.

The ResNets follow the CIFAR convention of the unlearning literature: a 3x3 stem with stride 1
and no max-pool (ResNet-18 as in Unlearn-Sparse/SalUn; ResNet-20 as in He et al. 2016, sec. 4.2).
"""

from __future__ import annotations

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


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model of the configured architecture."""
    if config.name != "mlp" and len(input_shape) != 3:
        raise ValueError(f"model {config.name!r} needs image inputs (C, H, W); got shape {input_shape}: use model.name=mlp")
    builders: dict[str, Callable[[], nn.Module]] = {
        "mlp": lambda: MLP(input_shape, num_classes, config.hidden),
        "cnn": lambda: SmallCNN(input_shape, num_classes, config.channels),
        "resnet18": lambda: ResNet(input_shape[0], num_classes, (64, 128, 256, 512), (2, 2, 2, 2)),
        "resnet20": lambda: ResNet(input_shape[0], num_classes, (16, 32, 64), (3, 3, 3)),
    }
    if config.name not in builders:
        raise ValueError(f"unknown model {config.name!r}; valid: {', '.join(MODELS)}")
    return builders[config.name]()
