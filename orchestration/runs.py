"""Open a run directory: resolve its config, load its data, and build the SisaRun on top.

The SisaRun gets the purgers of everything the application derives from the training data
outside the checkpoint store (derived models in the run dir, cached test-set outputs, published
MLflow model versions, the rows of the project's decoded cache the command read the data from),
so every deletion destroys them too, whichever command serves it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestration.actors import FaultSpec
from orchestration.cluster import RayExecutor
from orchestration.config import RunConfig, differing_training_keys, load_config
from orchestration.datasets import load_dataset
from orchestration.datasets.cache import bypassed, purge_rows, purged_rows, train_cache_file
from orchestration.derived import destroy_derived_models
from orchestration.memory import check_fits
from orchestration.models import build_model
from orchestration.outputs_cache import destroy_stale_outputs
from orchestration.registry import destroy_published_versions
from orchestration.timings import phase
from sisa import SampleTable, SisaRun
from sisa.ensemble import resolve_store
from sisa.errors import ConfigMismatchError, RunBindingError
from sisa.ledger import Request

CONFIG_FILE = "config.toml"
log = logging.getLogger(__name__)


@dataclass
class Session:
    """A run opened for one command: its resolved config, SISA ensemble and test split."""

    config: RunConfig
    run: SisaRun
    test: SampleTable
    num_classes: int
    """Classes the constituent models output (the larger of the train and test splits' counts)."""


def resolve_config(run_dir: Path, config_path: str | None, overrides: list[str], create: bool,
                   flags: list[str] | None = None) -> tuple[RunConfig, RunConfig]:
    """The config of `run_dir` for this command, and the config the run keeps (saved at creation).

    A new run takes defaults + file + overrides. An existing run keeps the config it was made
    with; `--config` and `--set` may only repeat it or change settings that do not affect
    training (data locations, aggregation). `flags` (the CLI's --engine, --address,
    --tracking-uri, --no-track) apply to this command only and are never saved with the run.
    """
    saved = run_dir / CONFIG_FILE
    if not saved.exists():
        if not create:
            raise ValueError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); create one with "
                             f"`unlearn train --run-dir {run_dir}`")
        kept = load_config(config_path, overrides)
        return load_config(config_path, overrides + (flags or [])), kept
    stored = load_config(saved)
    base = None if config_path else stored.to_dict()
    given = load_config(config_path, overrides + (flags or []), base=base)
    keys = differing_training_keys(stored, given)
    if keys:
        flat_s, flat_g = stored.flat(), given.flat()
        changes = ", ".join(f"{k}: {flat_s[k]!r} -> {flat_g[k]!r}" for k in keys)
        raise ConfigMismatchError(f"{run_dir} was made with another config ({changes}); "
                                  "use a new --run-dir for a new config")
    return given, stored


def open_session(run_dir: str | Path, config_path: str | None = None, overrides: list[str] | None = None,
                 create: bool = False, lock_timeout: float | None = None, fault: FaultSpec | None = None,
                 flags: list[str] | None = None, secret: bytes | None = None, trains: bool = True) -> Session:
    """Open (or, with `create`, make) the run in `run_dir`; see resolve_config and open_run for the arguments."""
    run_dir = Path(run_dir)
    config, kept = resolve_config(run_dir, config_path, overrides or [], create, flags)
    return open_run(run_dir, config, lock_timeout=lock_timeout, fault=fault, kept=kept, secret=secret, trains=trains)


def open_run(run_dir: str | Path, config: RunConfig, data: tuple[SampleTable, SampleTable] | None = None,
             lock_timeout: float | None = None, fault: FaultSpec | None = None, kept: RunConfig | None = None,
             secret: bytes | None = None, trains: bool = True) -> Session:
    """Open the run in `run_dir` with an already resolved config.

    Bad data, a model that does not build, a recipe that does not fit the data, or (when the command
    `trains`) shards too large for memory are refused here, before anything is written.

    Args:
        run_dir: the run directory.
        config: the resolved config of this command.
        data: (train, test) if already loaded.
        lock_timeout: seconds to wait for another command on the run; None waits.
        fault: a fault to inject into Ray shard workers (tests).
        kept: the config saved with a new run (default `config`).
        secret: for a new run only, the secret of another run to reproduce its shard
            assignment (an exactness audit, disaster recovery); default a fresh one.
        trains: whether the command trains (False: status, predict, audit skip the memory check).
    """
    run_dir = Path(run_dir)
    _check_device(config)
    if data is None:
        with phase("data load"):
            data = load_dataset(config.data)
        # Only data this command read from the project's cache ties the run to that cache file.
        cache_file = train_cache_file(config.data)
    else:
        cache_file = None
    train, test = data
    purgers = [_timed(destroy_derived_models, "purge"), _timed(destroy_stale_outputs, "purge"),
               _timed(destroy_published_versions, "mlflow")]
    if cache_file is not None:
        purgers.append(_timed(functools.partial(purge_cached_rows, cache_file), "purge"))
    try:
        run, num_classes = _sisa_run(run_dir, config, train, test, lock_timeout, fault, secret, trains, purgers)
    except RunBindingError:
        if cache_file is None or not purged_rows(cache_file):
            raise
        # The cached copy lacks rows another run's deletions purged, rows this run still holds.
        log.info("the cached copy of %s lacks rows deleted by another run; reading the source files instead",
                 config.data.name)
        with bypassed(), phase("data load"):
            train, test = load_dataset(config.data)
        run, num_classes = _sisa_run(run_dir, config, train, test, lock_timeout, fault, secret, trains, purgers)
    if not (run_dir / CONFIG_FILE).exists():
        (kept or config).save(run_dir / CONFIG_FILE)
    return Session(config, run, test, num_classes)


def _sisa_run(run_dir: Path, config: RunConfig, train: SampleTable, test: SampleTable, lock_timeout: float | None,
              fault: FaultSpec | None, secret: bytes | None, trains: bool, purgers: list) -> tuple[SisaRun, int]:
    num_classes = max(train.num_classes, test.num_classes)
    factory = functools.partial(build_model, config.model, train.sample_shape, num_classes)
    factory()
    config.sisa.check_sample_shape(train.sample_shape)
    if trains:
        check_fits(train, config)
    store_uri = resolve_store(run_dir, config.store or None)
    executor = RayExecutor(config, store_uri, fault, train, num_classes) if config.ray.engine == "ray" else None
    run = SisaRun(run_dir, train, factory, config.sisa, config.seed, config.fingerprint(),
                  store_uri=config.store or None, executor=executor, lock_timeout=lock_timeout, secret=secret,
                  purgers=purgers)
    if executor is None:
        run.executor = _timed(run.executor, "retraining")
    return run, num_classes


def purge_cached_rows(cache_file: Path, run: SisaRun, requests: list[Request]) -> list[dict[str, Any]]:
    """Purger: remove the requests' rows from the project's decoded copy of the data set."""
    ids = np.unique(np.concatenate([r.sample_ids for r in requests]))
    record = purge_rows(cache_file, ids) if cache_file.exists() else None
    return [record] if record else []


def _timed(work: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`work`, its calls counted as phase `name` of the command's timings."""

    @functools.wraps(work)
    def timed(*args: Any, **kwargs: Any) -> Any:
        with phase(name):
            return work(*args, **kwargs)

    return timed


def _check_device(config: RunConfig) -> None:
    device = torch.device(config.sisa.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"sisa.device is {config.sisa.device!r} but this torch sees no CUDA device; use 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"sisa.device is {config.sisa.device!r} but MPS is not available here; use 'cpu'")
