"""Frozen backbones: the network `model.name` builds, without its classifier, with weights from a file.

A backbone is built exactly as a full-network constituent is (`build_model`: a built-in name or
'package.module:factory'); its classifier, the last `nn.Linear` it registers, is then replaced by
an identity, so the backbone outputs what that classifier saw (the penultimate features: the
ReLU of the MLP's or the CNN's last hidden layer, the ResNets' pooled features). A network without
a Linear layer is used whole. The weights come from `model.backbone`, loaded with weights_only=True:

- a file written by `unlearn pretrain`: {"format": FORMAT, "state_dict": the backbone's weights,
  "model": the model settings that build it, "input_shape", "num_classes", "classifier": the name
  of the removed layer, "public": digest and count of the samples it was trained on, "recipe"};
- or a user's own state dict of model.name's network, with or without its classifier's weights
  (they are ignored, whatever number of classes it had).

The file's sha256 is bound into the run's fingerprint, so a run never opens with another backbone.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestration.config import ModelConfig
from orchestration.models import build_model

FORMAT = "unlearn-backbone-1"
_ARCHITECTURE = ("name", "hidden", "channels")
"""The model settings that build a backbone's network."""


@dataclass(frozen=True)
class Backbone:
    """A loaded frozen backbone."""

    module: nn.Module
    """The network without its classifier, in eval mode, gradients off."""
    sha256: str
    """Of the file it was loaded from (or of its weights, for one rebuilt from an exported model)."""
    feature_shape: tuple[int, ...]
    """Shape of the features it outputs for one sample."""
    num_classes: int
    """The number of classes its network was built with (its classifier's, before removal)."""
    public_sha256: str | None = None
    """Digest of the public samples `unlearn pretrain` trained it on; None for a user's own weights."""


def strip_classifier(model: nn.Module) -> str:
    """Replace the model's last nn.Linear (in registration order) by an identity, in place; returns its name ('' if none)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        return ""
    parent_name, _, leaf = names[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, nn.Identity())
    return names[-1]


def network(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, str]:
    """A freshly built backbone network (model.name, classifier removed) and the removed layer's name."""
    model = build_model(config, input_shape, num_classes)
    return model, strip_classifier(model)


def _frozen(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    module.requires_grad_(False)
    module.eval()
    with torch.no_grad():
        probe = module(torch.zeros(2, *input_shape))  # (2, *features)
    if probe.dim() < 2:
        raise ValueError(f"the backbone outputs shape {tuple(probe.shape)} for a batch of 2; it must output (batch, ...)")
    return module, tuple(probe.shape[1:])


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], classifier: str, where: str) -> None:
    skip = f"{classifier}." if classifier else None
    state = {k: v for k, v in state.items() if not (skip and (k + ".").startswith(skip))}
    expected = set(module.state_dict())
    lacking, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if lacking or extra:
        raise ValueError(f"{where} does not fit the network of model.name: it lacks {lacking[:4]} and has "
                         f"unexpected {extra[:4]}; set model.name (and model.hidden, model.channels) to the "
                         "network the weights belong to")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{where} does not fit the network of model.name: {str(err).splitlines()[-1].strip()}") from None


def read_file(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The contents of a backbone file (loaded with weights_only=True) and its bytes."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model.backbone {path} does not exist or is not a file; write one with "
                         "`unlearn pretrain --out FILE` or give your own weights")
    data = path.read_bytes()
    try:
        content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one clear line
        raise ValueError(f"model.backbone {path} is not a weights file torch can load with weights_only=True "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(content, dict):
        raise ValueError(f"model.backbone {path} holds a {type(content).__name__}; expected a state dict or a file "
                         "written by `unlearn pretrain`")
    return content, data


def load_backbone(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> Backbone:
    """The frozen backbone of `config.backbone` for samples of `input_shape`.

    Raises:
        ValueError: the file is missing or unreadable, or holds another network or input shape than the run's.
    """
    content, data = read_file(config.backbone)
    where = f"model.backbone {config.backbone}"
    public = None
    if content.get("format") == FORMAT:
        built = {k: getattr(config, k) for k in _ARCHITECTURE}
        if content["model"] != built:
            wanted = " ".join(f"model.{k}={v}" for k, v in content["model"].items())
            raise ValueError(f"{where} holds the backbone of {content['model']}, but the run builds {built}; set {wanted}")
        if tuple(content["input_shape"]) != tuple(input_shape):
            raise ValueError(f"{where} was trained on samples of shape {tuple(content['input_shape'])}, but this data "
                             f"set's samples have shape {tuple(input_shape)}")
        num_classes, state, public = int(content["num_classes"]), content["state_dict"], content["public"]["sha256"]
    elif all(isinstance(v, torch.Tensor) for v in content.values()):
        state = content
    else:
        raise ValueError(f"{where} is neither a state dict (tensors only) nor a file written by `unlearn pretrain`")
    module, classifier = network(config, input_shape, num_classes)
    _load_state(module, state, classifier, where)
    module, features = _frozen(module, input_shape)
    return Backbone(module, hashlib.sha256(data).hexdigest(), features, num_classes, public)


def backbone_from_state(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int,
                        state: dict[str, torch.Tensor]) -> Backbone:
    """A backbone rebuilt from its weights alone (as an exported model holds them)."""
    module, classifier = network(config, input_shape, num_classes)
    _load_state(module, state, classifier, "the exported backbone")
    module, features = _frozen(module, input_shape)
    digest = hashlib.sha256(b"".join(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                                     for v in state.values())).hexdigest()
    return Backbone(module, digest, features, num_classes)


def write_backbone(path: Path, model: nn.Module, classifier: str, config: ModelConfig, input_shape: tuple[int, ...],
                   num_classes: int, public: dict[str, Any], recipe: dict[str, Any]) -> str:
    """Write a backbone file (model with its classifier already removed) atomically; returns its sha256."""
    content = {"format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "model": {k: v for k, v in asdict(config).items() if k in _ARCHITECTURE},
               "input_shape": list(input_shape), "num_classes": num_classes, "classifier": classifier,
               "public": public, "recipe": recipe}
    buffer = io.BytesIO()
    torch.save(content, buffer)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return hashlib.sha256(buffer.getvalue()).hexdigest()
