"""What each shard trains, by `sisa.trainable`: one factory of constituents for every place that builds them.

    all       the network model.name builds, on the samples
    head      model.head on the frozen backbone's features (the samples the trainer sees are features)
    adapter   the frozen backbone with LoRA adapters, and model.head on its features (see adapters.py)

The run (runs.py), the Ray shard workers (actors.py) and the exported MLflow model (pyfunc.py) all
build constituents here, so they always agree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from orchestration.config import ModelConfig
from orchestration.frozen.adapters import AdaptedModel
from orchestration.frozen.backbone import Backbone
from orchestration.models import build_head, build_model


def _adapted(config: ModelConfig, backbone: Backbone, num_classes: int) -> nn.Module:
    head = build_head(config, backbone.feature_shape, num_classes)
    return AdaptedModel(backbone.module, head, config.adapter_rank, config.adapter_layers)


def constituent_factory(config: ModelConfig, trainable: str, input_shape: tuple[int, ...], num_classes: int,
                        backbone: Backbone | None = None) -> Callable[[], nn.Module]:
    """A factory of fresh constituents for inputs of `input_shape` (the features' shape in head mode).

    Raises:
        ValueError: adapter mode without a backbone.
    """
    if trainable == "head":
        return functools.partial(build_head, config, tuple(input_shape), num_classes)
    if trainable == "adapter":
        if backbone is None:
            raise ValueError("sisa.trainable='adapter' needs the frozen backbone (model.backbone)")
        return functools.partial(_adapted, config, backbone, num_classes)
    return functools.partial(build_model, config, tuple(input_shape), num_classes)
