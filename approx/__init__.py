"""Approximate unlearning: FT, GA, RL, l1-sparse, SalUn, UGradSL(+), SFR-on, NegGrad+, SCRUB, SSD, CT, MSG, bad teacher.

A pure PyTorch library: it never imports ray, mlflow or `sisa`. Methods are dataclasses of their
hyperparameters, registered by name, that declare their step pattern and search space and return
named loss terms; one shared loop runs them.
"""

from approx import methods as _methods  # noqa: F401  (registers every method)
from approx.base import EpochMethod, Phase, Progress, TrainingMethod, UnlearnBatch, UnlearningMethod
from approx.loop import UnlearnResult, planned_steps, unlearn
from approx.registry import available, create, describe

__all__ = ["EpochMethod", "Phase", "Progress", "TrainingMethod", "UnlearnBatch", "UnlearnResult", "UnlearningMethod",
           "available", "create", "describe", "planned_steps", "unlearn"]
