"""Open a run directory: resolve its config, load its data, and build the SisaRun on top.

The SisaRun gets the purgers of everything the application derives from the training data
outside the checkpoint store (stored backbone features, derived models in the run dir, cached
test-set outputs, published MLflow model versions, the rows of the project's decoded cache the
command read the data from), so every deletion destroys them too, whichever command serves it.

With a frozen backbone (`model.backbone`, `sisa.trainable = head | adapter`) the run is also bound
to the backbone file (its sha256) and to its public data (the digest of the ids declared public),
both hashed into its fingerprint; a backbone that `unlearn pretrain` wrote must have been trained
on exactly the run's public samples.
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
from orchestration.datasets.cache import bypassed, purge_rows, purged_rows, train_cache
from orchestration.derived import destroy_derived_models
from orchestration.frozen.backbone import Backbone, load_backbone
from orchestration.frozen.constituents import constituent_factory
from orchestration.frozen.features import FeatureStore, destroy_feature_rows
from orchestration.frozen.public import describe_public, public_ids, refusal_reason
from orchestration.memory import check_fits
from orchestration.outputs_cache import destroy_stale_outputs
from orchestration.registry import destroy_published_versions
from orchestration.timings import phase
from sisa import SampleTable, SisaRun
from sisa.config import fingerprint
from sisa.ensemble import MANIFEST, resolve_store
from sisa.errors import ConfigMismatchError, RunBindingError
from sisa.ledger import Request, ids_digest_hex

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
    backbone: Backbone | None = None
    """The frozen backbone (sisa.trainable head or adapter)."""
    features: FeatureStore | None = None
    """Where the backbone's features of the training data are stored (head mode)."""


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
        cache = train_cache(config.data)
        if cache is not None and purged_rows(cache) and not (run_dir / MANIFEST).exists():
            # A new run trains on the data set its source files hold; the cached copy lacks the
            # rows other runs' deletions purged from it (and is not written back: they stay out).
            log.info("the cached copy of %s lacks rows deleted by another run; a new run reads the source files",
                     config.data.name)
            with bypassed(), phase("data load"):
                data = load_dataset(config.data)
    else:
        cache = None
    train, test = data
    purgers = [_timed(destroy_derived_models, "purge"), _timed(destroy_stale_outputs, "purge"),
               _timed(destroy_published_versions, "mlflow")]
    if cache is not None:
        purgers.append(_timed(functools.partial(purge_cached_rows, cache), "purge"))
    try:
        session = _session(run_dir, config, train, test, lock_timeout, fault, secret, trains, purgers)
    except (RunBindingError, ConfigMismatchError, ValueError) as err:
        if cache is None or not purged_rows(cache):
            raise
        # The public ids are computed from the data (their digest is in the fingerprint, and a
        # pretrained backbone names them), so a cached copy that lacks one of them shows as a
        # changed config or a mismatched backbone rather than as other data.
        if not isinstance(err, RunBindingError) and not declares_public(config):
            raise
        # The cached copy lacks rows another run's deletions purged, rows this run still holds.
        log.info("the cached copy of %s lacks rows deleted by another run; reading the source files instead",
                 config.data.name)
        with bypassed(), phase("data load"):
            train, test = load_dataset(config.data)
        session = _session(run_dir, config, train, test, lock_timeout, fault, secret, trains, purgers)
    if not (run_dir / CONFIG_FILE).exists():
        (kept or config).save(run_dir / CONFIG_FILE)
    return session


def _session(run_dir: Path, config: RunConfig, train: SampleTable, test: SampleTable, lock_timeout: float | None,
             fault: FaultSpec | None, secret: bytes | None, trains: bool, purgers: list) -> Session:
    num_classes = max(train.num_classes, test.num_classes)
    trainable = config.sisa.trainable
    backbone = load_backbone(config.model, train.sample_shape, num_classes) if config.model.backbone else None
    public = public_ids(config.data, train)
    _check_public(config, backbone, public)
    shape = backbone.feature_shape if trainable == "head" else train.sample_shape  # what constituents take
    factory = constituent_factory(config.model, trainable, shape, num_classes, backbone)
    factory()
    config.sisa.check_sample_shape(shape)
    if trains:
        check_fits(train, config, backbone.feature_shape if trainable == "head" else None)
    store_uri = resolve_store(run_dir, config.store or None)
    features = FeatureStore(run_dir, backbone, train) if trainable == "head" else None
    # Feature rows first: they are the derived data closest to the checkpoints.
    purgers = ([_timed(destroy_feature_rows, "purge")] if features else []) + purgers
    try:
        run = SisaRun(run_dir, train, factory, config.sisa, config.seed, run_fingerprint(config, backbone, public),
                      store_uri=config.store or None, lock_timeout=lock_timeout, secret=secret, purgers=purgers,
                      encoder=backbone.module if features else None, inputs=features.inputs if features else None,
                      non_deletable=public, non_deletable_reason=refusal_reason(config.data))
    except ConfigMismatchError as err:
        if backbone is None and not public.size:
            raise
        raise ConfigMismatchError(f"{err} (the backbone file {config.model.backbone or '-'} and the public ids "
                                  "are part of it: the run was made with other contents)") from None
    if config.ray.engine == "ray":
        # Head mode: the workers get the stored features, never the backbone; adapter mode: the
        # samples and the backbone, which each constituent wraps.
        run.executor = RayExecutor(config, store_uri, fault, run.trainer.table, num_classes, run.fingerprint,
                                   backbone if trainable == "adapter" else None, _timed(run.executor, "retraining"))
    else:
        run.executor = _timed(run.executor, "retraining")
    return Session(config, run, test, num_classes, backbone, features)


def declares_public(config: RunConfig) -> bool:
    """Whether the run declares public (non-deletable) training data."""
    return bool(config.data.public_fraction or config.data.public_ids)


def run_fingerprint(config: RunConfig, backbone: Backbone | None, public: np.ndarray) -> str:
    """The run's fingerprint: its training settings, and the contents behind the backbone and public-ids paths.

    Without a backbone or public data it is `config.fingerprint()`, as it always was.
    """
    settings = config.training_settings()
    if backbone is not None:
        settings["model.backbone.sha256"] = backbone.sha256
    if public.size:
        settings["data.public.sha256"] = ids_digest_hex(public)
    return fingerprint(settings)


def _check_public(config: RunConfig, backbone: Backbone | None, public: np.ndarray) -> None:
    """A backbone `unlearn pretrain` wrote must have learnt from exactly the samples the run declares public."""
    if backbone is None or backbone.public_sha256 is None:
        return
    if not public.size:
        raise ValueError(f"model.backbone {config.model.backbone} was pretrained on public data, but the run declares "
                         "none; set data.public_fraction or data.public_ids as they were for `unlearn pretrain`, so "
                         "that the samples the backbone learnt from cannot be deleted")
    if ids_digest_hex(public) != backbone.public_sha256:
        raise ValueError(f"model.backbone {config.model.backbone} was pretrained on other samples than the run declares "
                         f"public ({describe_public(config.data)}, {public.size} samples): a deletable sample may be in "
                         "the backbone; use the public-data settings it was pretrained with")


def purge_cached_rows(cache: Path, run: SisaRun, requests: list[Request]) -> list[dict[str, Any]]:
    """Purger: remove the requests' rows from the project's decoded copy of the data set."""
    ids = np.unique(np.concatenate([r.sample_ids for r in requests]))
    record = purge_rows(cache, ids) if cache.is_dir() else None
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
