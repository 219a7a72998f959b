"""Approximate unlearning methods (GA, FT, RL, l1-sparse, SalUn, UGradSL, UGradSL+, SFR-on).

A pure PyTorch library: it never imports ray, mlflow or `sisa`. Methods are dataclasses of their
hyperparameters, registered by name, that return named loss terms; one shared loop runs them.
"""

from approx import methods as _methods  # noqa: F401  (registers every method)
from approx.base import Progress, UnlearnBatch, UnlearningMethod
from approx.loop import UnlearnResult, unlearn
from approx.registry import available, create, describe

__all__ = ["Progress", "UnlearnBatch", "UnlearnResult", "UnlearningMethod", "available", "create", "describe", "unlearn"]
