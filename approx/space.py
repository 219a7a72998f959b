"""Search-space domains for tuning a method's hyperparameters.

Each method declares its space next to its dataclass (`UnlearningMethod.space`): field name ->
domain. The domains are plain frozen dataclasses so that any tuner can translate them (Ray Tune:
LogUniform -> tune.loguniform, IntUniform -> tune.randint(low, high + 1), Choice -> tune.choice,
...). `Budget` is the one domain a tuner must resolve first: its upper bound is a share of the
original training's cost, which only the tuner knows (the Deep Unlearn protocol searches epochs
up to 20% of the original training). `sample` draws a configuration with the standard library, for
tests and simple random search. No tuner is imported here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BUDGET_UNITS = ("epochs", "steps")


@dataclass(frozen=True)
class LogUniform:
    """A float whose logarithm is uniform on [log low, log high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"LogUniform needs 0 < low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class Uniform:
    """A float uniform on [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"Uniform needs low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class IntUniform:
    """An integer uniform on [low, high], both included."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"IntUniform needs low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)


@dataclass(frozen=True)
class Choice:
    """One of a fixed tuple of values, each equally likely."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Choice needs at least one value")

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)


@dataclass(frozen=True)
class Budget:
    """An integer count from `low` up to `share` of the original training's `unit` count.

    The tuner knows the original recipe and resolves the bound (`resolve`): `unit` 'epochs' for
    methods counted in passes over a set, 'steps' for methods counted in iterations (SFR-on).
    """

    low: int = 1
    share: float = 0.2
    unit: str = "epochs"

    def __post_init__(self) -> None:
        if self.low < 1 or self.share <= 0 or self.unit not in BUDGET_UNITS:
            raise ValueError(f"Budget needs low >= 1, share > 0 and unit in {BUDGET_UNITS}; got {self}")

    def resolve(self, original: int) -> IntUniform:
        """IntUniform(low, max(low, floor(share * original)))."""
        return IntUniform(self.low, max(self.low, math.floor(self.share * original)))


Domain = LogUniform | Uniform | IntUniform | Choice | Budget


def resolve(space: Mapping[str, Domain], budget: Mapping[str, int]) -> dict[str, Domain]:
    """`space` with every Budget replaced by its IntUniform, given the original training's counts.

    Args:
        space: field name -> domain.
        budget: the original training's count per unit, e.g. {"epochs": 20, "steps": 3140}.
    """
    missing = sorted({d.unit for d in space.values() if isinstance(d, Budget)} - set(budget))
    if missing:
        raise ValueError(f"the space has budgets in {missing}; give the original training's count for each")
    return {name: d.resolve(budget[d.unit]) if isinstance(d, Budget) else d for name, d in space.items()}


def sample(space: Mapping[str, Domain], rng: random.Random, budget: Mapping[str, int]) -> dict[str, Any]:
    """One configuration drawn from `space` (Budgets resolved against `budget` first)."""
    return {name: domain.sample(rng) for name, domain in resolve(space, budget).items()}
