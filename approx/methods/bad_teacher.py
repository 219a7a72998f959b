"""Bad teacher: distil from the original model on the retain set and from an incompetent one on the forget set.

Chundawat et al., AAAI 2023, "Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks
using an Incompetent Teacher" (vikram2000b/bad-teaching-unlearning, unlearn.py
blindspot_unlearner; the same recipe in if-loops/selective-synaptic-dampening's `blindspot`).
The student starts as the original model. One pass goes over the shuffled union of the forget set
and a random `retain_fraction` of the retain set; each sample's target is the softmax at
temperature T of the original model (retain samples) or of a randomly initialised copy of the
architecture (forget samples), and the loss is the reference's F.kl_div(log_softmax(student/T),
target) with its default 'mean' reduction (the per-sample KL divided by the number of classes).
Defaults from the reference notebook: Adam lr 1e-4 (no weight decay), T 1, 1 epoch, 30% of the
retain set, batch 256. The random teacher is the model's own architecture with every module's
`reset_parameters()` called under a seed drawn from the run's generator; a model with parameters
outside such modules is refused, since they could not be re-initialised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from approx.base import EpochMethod, Pair, Phase, Progress, UnlearnBatch
from approx.registry import register
from approx.space import Domain, Uniform


def check_resettable(model: nn.Module) -> None:
    """Refuse a model with parameters in a module that has no reset_parameters()."""
    stuck = [name or type(model).__name__ for name, m in model.named_modules()
             if any(True for _ in m.parameters(recurse=False)) and not hasattr(m, "reset_parameters")]
    if stuck:
        raise ValueError(f"bad_teacher re-initialises every layer through reset_parameters(), which {', '.join(stuck)} "
                         "lack(s); give those modules a reset_parameters() or use another method, e.g. scrub")


def random_teacher(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with freshly initialised weights (its own init rules), frozen, in eval mode."""
    check_resettable(model)
    device = next(model.parameters()).device
    teacher = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):  # draw on CPU from `seed`, leave the global generator as it was
        torch.default_generator.manual_seed(seed)
        for module in teacher.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return teacher.to(device).eval().requires_grad_(False)


def bad_teacher_loss(student: torch.Tensor, forget_teacher: torch.Tensor, retain_teacher: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """kl_div(log_softmax(student / T), softmax(teacher / T), 'mean'), the student's rows forget then retain.

    Args:
        student: (N_f + N_r, K) student logits, the forget samples first.
        forget_teacher: (N_f, K) logits of the incompetent teacher on the forget samples.
        retain_teacher: (N_r, K) logits of the original model on the retain samples.
        temperature: T.
    """
    target = F.softmax(torch.cat([forget_teacher, retain_teacher]) / temperature, dim=1)
    # 'mean' spelled out (sum / elements): torch warns on every call that 'mean' is not 'batchmean'
    return F.kl_div(F.log_softmax(student / temperature, dim=1), target, reduction="sum") / target.numel()


@register
@dataclass
class BadTeacher(EpochMethod):
    """Distillation from a competent teacher on retain and an incompetent one on forget."""

    name = "bad_teacher"
    summary = "Bad teacher: distil from the original on retain and from a random-init model on forget"
    reference = "Chundawat et al., AAAI 2023; code: vikram2000b/bad-teaching-unlearning unlearn.py"
    space: ClassVar[dict[str, Domain]] = {
        **EpochMethod.space,
        "temperature": Uniform(1.0, 4.0),
        "retain_fraction": Uniform(0.1, 1.0),
    }
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 1
    temperature: float = 1.0
    """Softmax temperature T of the KL between student and teachers."""
    retain_fraction: float = 0.3
    """Share of the retain set (a random subset, at least one sample) the pass sees."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.retain_fraction <= 1 or self.temperature <= 0:
            raise ValueError(f"bad_teacher: retain_fraction must be in (0, 1] and temperature > 0; got "
                             f"{self.retain_fraction}, {self.temperature}")
        self.teachers: tuple[nn.Module, nn.Module] | None = None

    def retain_limit(self, num_forget: int, num_retain: int) -> int | None:
        return max(1, int(self.retain_fraction * num_retain))

    def check_model(self, model: nn.Module) -> None:
        check_resettable(model)

    def phases(self, epoch: int) -> list[Phase]:
        return [Phase("mixed", "both")]

    def prepare(self, model: nn.Module, forget: Pair, retain: Pair, generator: torch.Generator) -> int:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        self.teachers = (copy.deepcopy(model).eval().requires_grad_(False), random_teacher(model, seed))
        return 0

    def loss_terms(self, model: nn.Module, batch: UnlearnBatch, progress: Progress) -> dict[str, torch.Tensor]:
        assert self.teachers is not None, "prepare() makes the teachers"
        competent, incompetent = self.teachers
        with torch.no_grad():
            forget_teacher, retain_teacher = incompetent(batch.forget_x), competent(batch.retain_x)
        student = model(torch.cat([batch.forget_x, batch.retain_x]))
        return {"distill_kl": bad_teacher_loss(student, forget_teacher, retain_teacher, self.temperature)}
