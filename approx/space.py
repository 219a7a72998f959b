"""Search-space domains for tuning a method's hyperparameters.

Each method declares its space next to its dataclass (`UnlearningMethod.space`): field name ->
domain. The domains are plain frozen dataclasses so that any tuner can translate them (Ray Tune:
LogUniform -> tune.loguniform, IntUniform -> tune.randint(low, high + 1), Choice -> tune.choice,
...). `Budget` is the one domain a tuner must resolve first: its upper bound is a share of the
original training's cost, which only the tuner knows (the Deep Unlearn protocol searches epochs
up to 20% of the original training). A budget in samples resolves to a `Quota`, whose bound also
depends on another field drawn beside it (iterations within a sample budget, given the batch size).
`sample` draws a configuration with the standard library, for tests and simple random search;
`over_budget` says which values of a configuration exceed their budget. No tuner is imported here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BUDGET_UNITS = ("epochs", "samples")
"""'epochs': passes over a set (methods counted in epochs); 'samples': samples drawn, a batch per
iteration (methods counted in iterations, whose cost grows with their batch size)."""


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
class Quota:
    """An integer from `low` up to floor(total / params[per]): a count of iterations that each draw
    params[per] samples (a batch), all of them together at most `total` samples.

    Its bound depends on another field of the configuration, so it is drawn after that field.
    """

    low: int
    total: int
    per: str

    def high(self, params: Mapping[str, Any]) -> int:
        """The largest count within `total` samples, given the configuration's `per` (at least `low`)."""
        return max(self.low, self.total // int(params[self.per]))

    def sample(self, rng: random.Random, params: Mapping[str, Any]) -> int:
        return rng.randint(self.low, self.high(params))


@dataclass(frozen=True)
class Budget:
    """An integer count from `low` up to `share` of the original training's cost in `unit`.

    The tuner knows the original recipe and resolves the bound (`resolve`). Unit 'epochs' (a method
    counted in passes over a set): up to share x the original's epochs. Unit 'samples' (a method
    counted in iterations of one batch each): the count times the configuration's `per` field (its
    batch size) stays within share x the samples the original training drew (epochs x training
    samples), so a larger batch buys fewer iterations, as one epoch of a larger batch takes fewer steps.
    """

    low: int = 1
    share: float = 0.2
    unit: str = "epochs"
    per: str = ""
    """With unit 'samples': the field holding the samples each counted iteration draws."""

    def __post_init__(self) -> None:
        if self.low < 1 or self.share <= 0 or self.unit not in BUDGET_UNITS or (self.unit == "samples") != bool(self.per):
            raise ValueError(f"Budget needs low >= 1, share > 0, unit in {BUDGET_UNITS}, and `per` (the batch size "
                             f"field) exactly when the unit is 'samples'; got {self}")

    def resolve(self, original: int) -> IntUniform | Quota:
        """'epochs': IntUniform(low, max(low, floor(share * original))); 'samples': the Quota of
        floor(share * original) samples."""
        if self.unit == "samples":
            return Quota(self.low, math.floor(self.share * original), self.per)
        return IntUniform(self.low, max(self.low, math.floor(self.share * original)))


Domain = LogUniform | Uniform | IntUniform | Choice | Budget | Quota


def resolve(space: Mapping[str, Domain], budget: Mapping[str, int]) -> dict[str, Domain]:
    """`space` with every Budget resolved (an IntUniform, or a Quota), given the original training's costs.

    Args:
        space: field name -> domain.
        budget: the original training's cost per unit, e.g. {"epochs": 20, "samples": 20_000}.
    """
    missing = sorted({d.unit for d in space.values() if isinstance(d, Budget)} - set(budget))
    if missing:
        raise ValueError(f"the space has budgets in {missing}; give the original training's cost in each")
    resolved = {name: d.resolve(budget[d.unit]) if isinstance(d, Budget) else d for name, d in space.items()}
    for name, d in resolved.items():
        if isinstance(d, Quota) and not isinstance(resolved.get(d.per), Choice | IntUniform):
            raise ValueError(f"{name}: its budget is per {d.per!r}, which the space must draw as a Choice or IntUniform")
    return resolved


def sample(space: Mapping[str, Domain], rng: random.Random, budget: Mapping[str, int]) -> dict[str, Any]:
    """One configuration drawn from `space` (Budgets resolved against `budget` first; a Quota after
    the field it depends on)."""
    resolved = resolve(space, budget)
    params = {name: d.sample(rng) for name, d in resolved.items() if not isinstance(d, Quota)}
    params.update({name: d.sample(rng, params) for name, d in resolved.items() if isinstance(d, Quota)})
    return {name: params[name] for name in resolved}


def over_budget(space: Mapping[str, Domain], budget: Mapping[str, int], params: Mapping[str, Any]) -> list[str]:
    """The budgeted fields whose value in `params` exceeds its budget, each as 'name=value > limit'.

    A configuration from `sample` never does; a method's own values may (a reference recipe that
    runs longer than the share of the original training that the search allows).
    """
    over = []
    for name, d in resolve(space, budget).items():
        if not isinstance(space[name], Budget) or name not in params:
            continue
        limit = d.high(params) if isinstance(d, Quota) else d.high
        if params[name] > limit:
            over.append(f"{name}={params[name]} > {limit}")
    return over
