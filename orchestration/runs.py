"""Open a run directory: resolve its config, load its data, and build the SisaRun on top."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from orchestration.actors import FaultSpec
from orchestration.cluster import RayExecutor
from orchestration.config import RunConfig, differing_training_keys, load_config
from orchestration.datasets import load_dataset
from orchestration.memory import check_fits
from orchestration.models import build_model
from sisa import SampleTable, SisaRun
from sisa.errors import ConfigMismatchError

CONFIG_FILE = "config.toml"


@dataclass
class Session:
    """A run opened for one command: its resolved config, SISA ensemble and test split."""

    config: RunConfig
    run: SisaRun
    test: SampleTable
    num_classes: int
    """Classes the constituent models output (the larger of the train and test splits' counts)."""


def resolve_config(run_dir: Path, config_path: str | None, overrides: list[str], create: bool) -> RunConfig:
    """The config of `run_dir`, checked against what the command was given.

    A new run takes defaults + file + overrides. An existing run keeps the config it was made
    with; `--config` and `--set` may only repeat it or change settings that do not affect
    training (data locations, aggregation).
    """
    saved = run_dir / CONFIG_FILE
    if not saved.exists():
        if not create:
            raise ValueError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); create one with "
                             f"`unlearn train --run-dir {run_dir}`")
        return load_config(config_path, overrides)
    stored = load_config(saved)
    given = load_config(config_path, overrides, base=None if config_path else stored.to_dict())
    keys = differing_training_keys(stored, given)
    if keys:
        flat_s, flat_g = stored.flat(), given.flat()
        changes = ", ".join(f"{k}: {flat_s[k]!r} -> {flat_g[k]!r}" for k in keys)
        raise ConfigMismatchError(f"{run_dir} was made with another config ({changes}); "
                                  "use a new --run-dir for a new config")
    return given


def open_session(run_dir: str | Path, config_path: str | None = None, overrides: list[str] | None = None,
                 create: bool = False, lock_timeout: float | None = None, fault: FaultSpec | None = None,
                 trains: bool = True) -> Session:
    """Open (or, with `create`, make) the run in `run_dir`; `trains=False` for commands that only read it."""
    run_dir = Path(run_dir)
    config = resolve_config(run_dir, config_path, overrides or [], create)
    return open_run(run_dir, config, lock_timeout=lock_timeout, fault=fault, trains=trains)


def open_run(run_dir: str | Path, config: RunConfig, data: tuple[SampleTable, SampleTable] | None = None,
             lock_timeout: float | None = None, fault: FaultSpec | None = None, trains: bool = True) -> Session:
    """Open the run in `run_dir` with an already resolved config; `data` = (train, test) if already loaded.

    Bad data, a model that does not build, a recipe that does not fit the data, or (when the command
    `trains`) shards too large for memory are refused here, before anything is written.
    """
    run_dir = Path(run_dir)
    train, test = data or load_dataset(config.data)
    num_classes = max(train.num_classes, test.num_classes)
    factory = functools.partial(build_model, config.model, train.sample_shape, num_classes)
    factory()
    config.sisa.check_sample_shape(train.sample_shape)
    if trains:
        check_fits(train, config)
    store_uri = config.store or str(run_dir.resolve() / "checkpoints")
    executor = RayExecutor(config, store_uri, fault, train, num_classes) if config.ray.engine == "ray" else None
    run = SisaRun(run_dir, train, factory, config.sisa, config.seed, config.fingerprint(), store_uri=store_uri,
                  executor=executor, lock_timeout=lock_timeout)
    if not (run_dir / CONFIG_FILE).exists():
        config.save(run_dir / CONFIG_FILE)
    return Session(config, run, test, num_classes)
