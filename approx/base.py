"""The method protocol: hyperparameters as dataclass fields, a step pattern, loss terms and hooks.

A method is a dataclass of its hyperparameters. It tells the shared loop (loop.py) what each epoch
does as a list of `Phase`s (which set a step iterates, which sets ride along, how many steps),
returns named loss terms for one step, and may act in hooks around the steps (saliency masks,
weight surgery, convergence). Three bases:

- `UnlearningMethod`: the protocol. A method that takes no optimizer step (SSD: its whole work is
  in `prepare`) derives from it directly.
- `TrainingMethod`: adds the optimizer, its per-epoch learning-rate schedule and clipping.
- `EpochMethod`: a TrainingMethod whose length is counted in epochs (every trained method but
  SFR-on, which counts iterations).

Each class also declares `space`, its hyperparameters' search space (see space.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from approx.space import Budget, Choice, Domain, LogUniform

Pair = tuple[torch.Tensor, torch.Tensor]
SETS = ("forget", "retain", "both")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "warmup_decay")


@dataclass(frozen=True)
class Phase:
    """A run of steps inside an epoch whose batches are all drawn the same way.

    Attributes:
        name: handed to the method as `progress.phase` (e.g. 'forget', 'retain', 'max').
        over: the set the phase iterates: 'forget', 'retain', or 'both' (their shuffled union;
            each batch is split back into its forget and retain parts).
        cycled: sets that also give one batch per step, drawn endlessly (a fresh permutation
            on every pass), like `zip(loader, cycle(other_loader))` in the reference codes.
        steps: None for one pass over `over` (every sample exactly once); k for k batches of
            `over`, drawn endlessly like a cycled set (iteration-counted methods).
        batch_size: this phase's batch size; None for the method's `batch_size`.
        clip: whether the method's gradient clipping applies to this phase's steps.
    """

    name: str
    over: str
    cycled: tuple[str, ...] = ()
    steps: int | None = None
    batch_size: int | None = None
    clip: bool = True

    def __post_init__(self) -> None:
        assert self.over in SETS and set(self.cycled) <= {"forget", "retain"}, self
        assert self.steps is None or self.steps >= 1, self


@dataclass(frozen=True)
class Progress:
    """Where the loop is. Steps are optimizer steps counted from 0; epochs count from 0 too."""

    step: int
    total_steps: int
    epoch: int
    epochs: int
    phase: str = ""
    """Name of the current Phase ('' outside one, e.g. at the end of an epoch)."""

    @property
    def fraction(self) -> float:
        """step / total_steps, in [0, 1)."""
        return self.step / self.total_steps

    @property
    def epoch_fraction(self) -> float:
        """epoch / epochs, in [0, 1): the position that per-epoch schedules use."""
        return self.epoch / self.epochs


def cosine(fraction: float) -> float:
    """Cosine decay 0.5 * (1 + cos(pi * fraction)): 1 at 0, 0.5 at 1/2, towards 0 at 1."""
    return 0.5 * (1 + math.cos(math.pi * fraction))


@dataclass
class UnlearnBatch:
    """One step's data: a forget batch and a retain batch (either may be empty) and a generator."""

    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    num_classes: int
    rng: torch.Generator
    """For random draws inside a step (e.g. random labels), seeded per step by the loop (CPU)."""


@dataclass
class UnlearningMethod:
    """Base of every method: its name, reference and search space, and the hooks the loop calls.

    Subclasses set `name`, `summary` and `reference`, and override what they need: `phases`
    and `loss_terms` to take steps, `prepare` for work before them (or instead of them).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    """One line: what the method does."""
    reference: ClassVar[str] = ""
    """One line: the paper and the reference code the defaults come from."""
    uses: ClassVar[tuple[str, ...]] = ("forget", "retain")
    """The sets the method reads; the loop refuses to run it on an empty one."""
    space: ClassVar[dict[str, Domain]] = {}
    """Search space for tuning: field name -> domain (see space.py)."""

    batch_size: int = 256
    """Samples per batch (of each set a step draws from)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"{self.name}.batch_size must be >= 1, got {self.batch_size}")

    @property
    def num_epochs(self) -> int:
        """How many epochs (or iterations) the loop runs; 0 for a method that takes no steps."""
        return 0

    def phases(self, epoch: int) -> list[Phase]:
        """What epoch `epoch` (from 0) does, in order."""
        return []

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError, saying why and what to use instead, if the method cannot run on `model`."""

    def retain_limit(self, num_forget: int, num_retain: int) -> int | None:
        """Size of a random retain subset the whole run sees; None for the whole retain set."""
        return None

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        """Work before the first step (masks, Fisher information, teachers, weight surgery).

        Args:
            model: the model, already on the loop's device.
            forget: the forget set, on the model's device.
            retain: the retain set (after `retain_limit`), on the model's device.
            generator: the run's seeded CPU generator, for random draws.

        Returns:
            The number of samples processed (forward and backward), counted in the run's cost.
        """
        return 0

    def make_optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer of the run's steps."""
        raise NotImplementedError(f"{self.name} takes no optimizer steps")

    def learning_rate(self, progress: Progress) -> float:
        """The optimizer's learning rate at `progress`."""
        raise NotImplementedError(f"{self.name} takes no optimizer steps")

    def clip_norm(self, phase: Phase) -> float:
        """Gradient-norm clip of a step of `phase`; 0 disables clipping."""
        return 0.0

    def train_mode(self, model: nn.Module) -> None:
        """Put `model` in the mode its steps run in."""
        model.train()

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        """Named scalar loss terms of one step; their sum is minimised (a term to ascend is negated)."""
        raise NotImplementedError(f"{self.name} takes no optimizer steps")

    def after_backward(self, model: nn.Module, progress: Progress) -> None:
        """Hook between backward and the optimizer step (gradient surgery)."""

    def after_step(self, model: nn.Module, progress: Progress) -> None:
        """Hook after the optimizer step (weight surgery)."""

    def end_epoch(self, model: nn.Module, progress: Progress) -> None:
        """Hook after the last step of an epoch (outer updates, per-epoch statistics)."""

    def converged(self, progress: Progress) -> bool:
        """Checked after every step and every epoch: True ends the run early."""
        return False


@dataclass
class TrainingMethod(UnlearningMethod):
    """A method that takes optimizer steps: the shared optimizer, schedule and clipping knobs."""

    space: ClassVar[dict[str, Domain]] = {
        # The Deep Unlearn tuning protocol's shared ranges (see UNLEARNING.md, Tuning).
        "lr": LogUniform(1e-5, 1e-1),
        "weight_decay": LogUniform(1e-5, 1e-1),
        "batch_size": Choice((64, 128, 256)),
    }

    lr: float = 0.01
    """Base learning rate."""
    momentum: float = 0.9
    """SGD momentum (unused by Adam)."""
    weight_decay: float = 5e-4
    """L2 weight decay of the optimizer."""
    optimizer: str = "sgd"
    """'sgd' or 'adam'."""
    schedule: str = "constant"
    """Per-epoch learning-rate factor: 'constant', 'cosine' or 'warmup_decay' (linear up, then down)."""
    grad_clip: float = 0.0
    """Clip the gradient norm of a step to this value; 0 disables clipping."""
    bn_eval: bool = False
    """Keep batch-norm layers in eval mode (running statistics frozen) during the steps."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0:
            raise ValueError(f"{self.name}.lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"{self.name}.optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{self.name}.schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")

    def make_optimizer(self, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def learning_rate(self, progress: Progress) -> float:
        return self.lr * self.lr_factor(progress)

    def lr_factor(self, progress: Progress) -> float:
        """The schedule's factor in epoch e of E (stepped per epoch, as torch schedulers in the references).

        'cosine': 0.5 (1 + cos(pi e / E)), torch's CosineAnnealingLR(T_max=E) stepped every epoch.
        'warmup_decay': with W = (E + 1) // 2 and k = e + 1, k / W while k <= W, then
        (E + 1 - k) / (E + 1 - W): the linear warm-up and decay of the MSG reference.
        """
        e, epochs = progress.epoch, progress.epochs
        if self.schedule == "cosine":
            return cosine(e / epochs)
        if self.schedule == "warmup_decay":
            warm, k = (epochs + 1) // 2, e + 1
            return k / warm if k <= warm else (epochs + 1 - k) / (epochs + 1 - warm)
        return 1.0

    def clip_norm(self, phase: Phase) -> float:
        return self.grad_clip if phase.clip else 0.0

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.bn_eval:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()


@dataclass
class EpochMethod(TrainingMethod):
    """A TrainingMethod that runs `epochs` epochs."""

    space: ClassVar[dict[str, Domain]] = {**TrainingMethod.space, "epochs": Budget(1, 0.2, "epochs")}

    epochs: int = 10
    """Epochs to run (each as the method's phases say)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:
            raise ValueError(f"{self.name}.epochs must be >= 1, got {self.epochs}")

    @property
    def num_epochs(self) -> int:
        return self.epochs
