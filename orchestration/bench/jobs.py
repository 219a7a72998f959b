"""What the bench's jobs are, what determines the model each makes, and what they give back.

A job is a small frozen description that travels to any process (a Ray worker or this one):

- `Train`: a single model or a SISA ensemble trained on some ids with a seed (originals on all the
  training data, oracles without the forget set);
- `Delete`: SISA's exact deletion of the requests from an original ensemble;
- `Unlearn`: an approximate method run on an original (a single model, or the constituents of an
  ensemble whose shards hold the forget samples), with its own seed.

Its `key` hashes what determines the model it makes, and names the model's folder in the cache;
`populations.run_job` does the work.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

import approx
from orchestration.bench.measure import Cost
from orchestration.config import RunConfig
from orchestration.models import build_model
from sisa import SampleTable, SisaConfig
from sisa.plan import ids_digest


@dataclass(frozen=True, eq=False)
class Train:
    """Train a single model or a SISA ensemble on `ids` with `seed`."""

    family: str
    """'single' (one network on all its data) or 'sisa' (an ensemble)."""
    seed: int
    ids: np.ndarray
    keep_run: bool = False
    """Keep the SISA run directory (slice checkpoints) so that deletions can start from it."""

    def parts(self, config: RunConfig) -> dict[str, Any]:
        settings = {k: v for k, v in config.training_settings().items() if k != "seed"}
        if self.family == "single":
            settings.update({"sisa.num_shards": 1, "sisa.num_slices": 1})
        return {"job": "train", "family": self.family, "settings": settings, "seed": self.seed,
                "ids": ids_digest(self.ids)}

    def label(self) -> str:
        return f"train {self.family} (seed {self.seed})"


@dataclass(frozen=True, eq=False)
class Delete:
    """Serve `requests`, in order, on a copy of an original SISA ensemble."""

    original: Train
    requests: tuple[np.ndarray, ...]
    evaluate: bool = True
    """Score the result (False for runs that only measure the cost per request)."""

    def parts(self, config: RunConfig) -> dict[str, Any]:
        return {"job": "delete", "original": key(self.original, config), "requests": [ids_digest(r) for r in self.requests]}

    def label(self) -> str:
        return f"SISA deletion (seed {self.original.seed})"


@dataclass(frozen=True, eq=False)
class Unlearn:
    """Run an approximate method on an original, serving `requests` in order, with `seed`."""

    original: Train
    method: approx.UnlearningMethod
    requests: tuple[np.ndarray, ...]
    seed: int

    def parts(self, config: RunConfig) -> dict[str, Any]:
        return {"job": "unlearn", "original": key(self.original, config), "method": self.method.name,
                "params": dataclasses.asdict(self.method), "requests": [ids_digest(r) for r in self.requests],
                "seed": self.seed}

    def label(self) -> str:
        return f"{self.method.name} on {self.original.family} (seed {self.original.seed}, run {self.seed})"


Job = Train | Delete | Unlearn


def key(job: Job, config: RunConfig) -> str:
    """The cache key of the model a job makes: a hash of what determines it."""
    return hashlib.sha256(json.dumps(job.parts(config), sort_keys=True, default=str).encode()).hexdigest()[:24]


def folder_name(job: Job, config: RunConfig) -> str:
    """The job's folder in the cache, e.g. `finetune-single-<key>`."""
    if isinstance(job, Train):
        kind = job.family
    elif isinstance(job, Delete):
        kind = "deletion"
    else:
        kind = f"{job.method.name}-{job.original.family}"
    return f"{kind}-{key(job, config)}"


# --- What a job returns -----------------------------------------------------------------------------


@dataclass
class ModelOutputs:
    """One model's per-example outputs on the protocol's splits."""

    margins: dict[str, np.ndarray]
    """Split -> (samples,) log p_y - log(1 - p_y), float64."""
    predicted: dict[str, np.ndarray]
    """Split -> (samples,) predicted labels."""
    forget_log_probs: np.ndarray
    """(forget samples, classes) log output distribution on the forget set."""

    def save(self, path: Path) -> None:
        arrays = {f"margins/{s}": v for s, v in self.margins.items()}
        arrays.update({f"predicted/{s}": v for s, v in self.predicted.items()})
        atomic_write(path, lambda tmp: np.savez_compressed(tmp, forget_log_probs=self.forget_log_probs, **arrays))

    def finite(self) -> bool:
        """Whether every margin is finite: one model's are unless its logits overflowed to inf or NaN."""
        return all(bool(np.isfinite(m).all()) for m in self.margins.values())

    @classmethod
    def load(cls, path: Path) -> ModelOutputs:
        with np.load(path) as data:
            groups: dict[str, dict[str, np.ndarray]] = {"margins": {}, "predicted": {}}
            for name in data.files:
                if "/" in name:
                    group, split = name.split("/")
                    groups[group][split] = data[name]
            return cls(groups["margins"], groups["predicted"], data["forget_log_probs"])


@dataclass
class JobResult:
    """A finished job: the model's outputs (None when skipped or not evaluated) and its cost."""

    job: Job
    outputs: ModelOutputs | None
    cost: Cost
    fresh: bool
    """Made by this call; False when the model came from the cache."""
    request_costs: list[Cost] = field(default_factory=list)
    """Deletions: the cost of each request."""
    skipped: str = ""
    """Why the method could not run on this model (e.g. it needs convolutions), else empty."""


@dataclass(frozen=True, eq=False)
class Workspace:
    """What every job of a bench shares: config, data, the splits models are scored on, the cache."""

    config: RunConfig
    train: SampleTable
    test: SampleTable
    num_classes: int
    splits: dict[str, tuple[str, np.ndarray]]
    """Split name -> ('train' or 'test', sample_ids); see Protocol.splits."""
    cache: Path

    def table(self, ids: np.ndarray) -> SampleTable:
        """The training table restricted to `ids`."""
        return self.train if len(ids) == len(self.train) else self.train.take(ids)

    def factory(self) -> Callable[[], nn.Module]:
        return functools.partial(build_model, self.config.model, self.train.sample_shape, self.num_classes)

    def sisa_config(self, family: str) -> SisaConfig:
        sisa = self.config.sisa
        return sisa if family == "sisa" else dataclasses.replace(sisa, num_shards=1, num_slices=1)

    def aggregation(self, family: str) -> str:
        return self.config.sisa.aggregation if family == "sisa" else "vote"

    def outputs_file(self, folder: Path, family: str) -> Path:
        """Outputs are cached per set of splits (and aggregation, which decides the predicted labels)."""
        parts = [self.aggregation(family)] + [f"{n}:{t}:{ids_digest(i)}" for n, (t, i) in sorted(self.splits.items())]
        return folder / f"outputs-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}.npz"


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file renamed into place, so a crash never leaves half a file."""
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    write(str(tmp))
    tmp.replace(path)
