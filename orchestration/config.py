"""Run configuration: frozen dataclasses loaded from TOML, with `--set dotted.key=value` overrides."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from sisa import SisaConfig
from sisa.config import fingerprint


@dataclass(frozen=True)
class DataConfig:
    """Which data set to train on and where to find it."""

    name: str = "digits"
    """digits, synthetic (embedded), mnist, fashion-mnist, cifar10 (files in root), or parquet, csv, imagefolder (path)."""
    root: str = ""
    """Directory holding the data set's files (mnist, fashion-mnist, cifar10)."""
    path: str = ""
    """The training data of parquet, csv and imagefolder: a file, a directory of files, or a pyarrow.fs URI."""
    test_path: str = ""
    """The test data in the same layout as path; empty: a seeded test_fraction of the ids is held out."""
    id_column: str = "sample_id"
    """Column of the sample ids: integers (>= 0, used as they are) or strings (user ids, record keys)."""
    label_column: str = "label"
    """Column of the labels: integers (classes 0, 1, ...) or strings (class names, sorted into classes)."""
    feature_columns: tuple[str, ...] = ()
    """Feature columns; empty means every column but the id and the label."""
    shape: tuple[int, ...] = ()
    """Shape of one sample's features, e.g. 1,28,28 for a flat column of pixels; empty keeps them flat."""
    cache_dir: str = ""
    """Where decoded data is cached as Parquet; empty means ~/.cache/unlearn."""
    train_limit: int = 0
    """Train on a stratified subset of this many samples, drawn with subset_seed (0 = all)."""
    subset_seed: int = 0
    """Seed of the train_limit subset and the hold-out of file data sets: part of the data set, not of the model."""
    test_fraction: float = 0.2
    """Share held out as the test split when there is none (digits, synthetic, files without test_path)."""
    synthetic_samples: int = 1000
    """Samples in the synthetic data set."""
    synthetic_features: int = 16
    """Features per synthetic sample."""
    synthetic_classes: int = 4
    """Classes in the synthetic data set."""
    public_fraction: float = 0.0
    """Share of the training data declared public, chosen by a hash of (subset_seed, id): `unlearn pretrain`
    trains the frozen backbone on it, and requests to delete it are refused (0 = none)."""
    public_ids: str = ""
    """A file naming more public training samples (text, one id per line, or Parquet with an id column), as
    public_fraction; its contents are bound to the run."""

    def __post_init__(self) -> None:
        if not 0 <= self.public_fraction < 1:
            raise ValueError(f"data.public_fraction must be in [0, 1), got {self.public_fraction!r}")
        if self.train_limit < 0:
            raise ValueError(f"data.train_limit must be >= 0 (0 = all samples), got {self.train_limit!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if any(d < 1 for d in self.shape):
            raise ValueError(f"data.shape must hold positive sizes, e.g. 1,28,28; got {list(self.shape)}")


HEADS = ("linear", "mlp")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of each constituent model."""

    name: str = "mlp"
    """mlp, cnn, resnet18 (CIFAR variant), resnet20, or 'package.module:factory' (imported and run: trusted input);
    with model.backbone, the backbone's network, whose last Linear layer (its classifier) is removed."""
    hidden: int = 128
    """Hidden units of the MLP."""
    channels: int = 32
    """Channels of the first convolution of the small CNN."""
    backbone: str = ""
    """Frozen backbone weights (tensors only, loaded with weights_only=True): a file written by `unlearn pretrain`,
    or a state dict of model.name's network; needs sisa.trainable = head or adapter. Its sha256 is bound to the run."""
    head: str = "linear"
    """Each shard's head on the backbone's features: 'linear', or 'mlp' (one hidden layer of head_hidden units)."""
    head_hidden: int = 128
    """Hidden units of the 'mlp' head."""
    adapter_rank: int = 4
    """Rank r of the LoRA adapters (sisa.trainable = adapter): an adapted layer computes W x + B A x, A of rank r."""
    adapter_layers: int = 2
    """Adapt the backbone's last N Linear and Conv2d layers (0 = all of them)."""

    def __post_init__(self) -> None:
        for name in ("hidden", "channels", "head_hidden", "adapter_rank"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.adapter_layers < 0:
            raise ValueError(f"model.adapter_layers must be >= 0 (0 = every layer), got {self.adapter_layers!r}")
        if self.head not in HEADS:
            raise ValueError(f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}")


@dataclass(frozen=True)
class RayConfig:
    """Where and how shards are trained: in this process, or on a Ray cluster."""

    engine: str = "ray"
    """'ray' (shard actors on a local or existing cluster) or 'local' (one after another in-process)."""
    address: str = ""
    """Cluster to join, e.g. 'ray://head:10001' or 'auto'; empty means $RAY_ADDRESS or a new local cluster."""
    num_cpus_per_shard: float = 1.0
    """CPUs each shard actor reserves (fractions allowed); also its torch thread count (at least 1)."""
    num_gpus_per_shard: float = 0.0
    """GPUs each shard actor reserves (fractions allowed)."""
    max_workers: int = 0
    """Most shard actors (or `unlearn tune` trials) at once; 0 means as many as the cluster's CPUs allow
    (and at most one actor per shard)."""
    max_retries: int = 3
    """Times a shard is retried (its actor restarted) before the command fails."""
    driver_threads: int = 0
    """Torch threads of a command's own process (the in-process engine, evaluation, approximate methods);
    0 means the shard actors' count, round(num_cpus_per_shard) and at least 1, so both engines train
    bit-identical weights and neither oversubscribes cores another process is using."""

    def __post_init__(self) -> None:
        if self.engine not in ("ray", "local"):
            raise ValueError(f"ray.engine must be 'ray' or 'local', got {self.engine!r}")
        if min(self.num_cpus_per_shard, self.num_gpus_per_shard, self.max_retries, self.max_workers,
               self.driver_threads) < 0:
            raise ValueError("ray.num_cpus_per_shard, num_gpus_per_shard, max_workers, max_retries and driver_threads "
                             "must be >= 0")

    def shard_threads(self) -> int:
        """Torch threads of one shard's training: one per CPU it reserves, at least 1."""
        return max(1, round(self.num_cpus_per_shard))

    def command_threads(self) -> int:
        """Torch threads of a command's own process (see driver_threads)."""
        return self.driver_threads or self.shard_threads()


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking of every command (only the driver logs)."""

    enabled: bool = True
    """Log runs to MLflow."""
    uri: str = ""
    """Tracking URI; empty means $MLFLOW_TRACKING_URI or sqlite:///<working dir>/mlflow.db."""
    experiment: str = "unlearn"
    """MLflow experiment name."""
    model_name: str = ""
    """Registered model name of the ensemble; empty means 'unlearn-<run dir name>'."""


@dataclass(frozen=True)
class ServeConfig:
    """The deletion-ready model service (`unlearn serve`): where it listens and how it batches deletions."""

    host: str = "127.0.0.1"
    """Interface the HTTP endpoint binds to; the default answers this machine only."""
    port: int = 8000
    """HTTP port."""
    token_file: str = ""
    """File holding the bearer token the deletion endpoints require; empty means $UNLEARN_TOKEN."""
    replicas: int = 1
    """Prediction replicas (each holds the whole ensemble)."""
    replica_cpus: float = 0.0
    """CPUs each prediction replica reserves; 0 leaves every reserved CPU to the shard actors, which retrain."""
    max_inputs: int = 10000
    """Most samples one prediction request may carry."""
    batch_window_s: float = 0.5
    """Seconds a deletion request waits, when the worker is idle, for others to share its retraining (0: none)."""
    batch_max_requests: int = 0
    """Most requests one retraining serves, oldest first (0: no limit); see full_cost_fraction."""
    full_cost_fraction: float = 0.8
    """When the pending requests together cost at least this share of retraining every shard, they are all
    served at once: the window closes and batch_max_requests no longer applies."""
    swap_timeout_s: float = 30.0
    """Seconds between checks for replicas that have not acknowledged a new version (dead ones are dropped)."""
    retry_after_s: float = 30.0
    """Seconds before a failed retraining (a shard or MLflow that failed) is tried again."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"serve.port must be between 1 and 65535, got {self.port!r}")
        if self.replicas < 1 or self.max_inputs < 1:
            raise ValueError("serve.replicas and serve.max_inputs must be >= 1")
        if self.batch_max_requests < 0 or self.replica_cpus < 0 or self.batch_window_s < 0:
            raise ValueError("serve.batch_max_requests, replica_cpus and batch_window_s must be >= 0")
        if not 0 < self.full_cost_fraction <= 1:
            raise ValueError(f"serve.full_cost_fraction must be in (0, 1], got {self.full_cost_fraction!r}")
        if not (self.swap_timeout_s > 0 and self.retry_after_s > 0):
            raise ValueError("serve.swap_timeout_s and serve.retry_after_s must be > 0")


SCENARIOS = ("random", "class", "stream", "hard")
TARGETS = ("single", "ensemble")


@dataclass(frozen=True)
class BenchConfig:
    """What `unlearn bench` compares: which samples are forgotten, by which methods, with how many models."""

    scenario: str = "random"
    """'random' (forget_fraction of the training samples), 'class' (every sample of forget_class),
    'stream' (stream_requests single-sample requests, served one after another) or 'hard' (the
    hard_fraction most memorised samples of the random forget set)."""
    forget_fraction: float = 0.1
    """Share of the training samples forgotten in the 'random' scenario (the pool of 'hard')."""
    forget_class: int = 0
    """Label whose samples are forgotten in the 'class' scenario."""
    stream_requests: int = 5
    """Requests in the 'stream' scenario."""
    hard_fraction: float = 0.1
    """Share of the random forget set kept in the 'hard' scenario: its most memorised samples."""
    forget_seed: int = 0
    """Seed of the forget-set draw and of the validation split; never a model seed."""
    test_samples: int = 2000
    """Test-split samples every model is scored on (a seeded stratified subset; 0 = all): scoring every
    model on 10,000 test images would cost more than some of the unlearning it measures."""
    validation_fraction: float = 0.2
    """Share of those test samples (stratified) held out for tuning; the bench reports on the rest."""
    models: int = 16
    """Models a side: N originals, N oracles and N unlearning runs per method (scores compare N/2 a side).
    U-LiRA needs 8, forget quality 6."""
    methods: tuple[str, ...] = ()
    """Approximate methods to run (see `unlearn methods`); empty means all."""
    targets: tuple[str, ...] = ("single",)
    """Where the approximate methods run: on 'single' models, and/or on the affected constituents of SISA
    'ensemble's (each target gets its own originals, oracles, floor and ceiling)."""
    sisa: bool = True
    """Build SISA ensembles (originals, oracles) and score SISA's exact deletions against them."""
    cost_requests: int = 8
    """Single-sample requests a copy of the first original ensemble serves for the cost curve (0 skips it)."""
    cache_dir: str = ""
    """Where trained and unlearned models are cached; empty means <out>/models."""
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Method hyperparameters replacing the defaults, e.g. [bench.params.gradient_ascent] lr = 1e-3."""

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"bench.scenario must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        for name in ("forget_fraction", "hard_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"bench.{name} must be between 0 and 1 (exclusive), got {getattr(self, name)}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"bench.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.models < 2:
            raise ValueError(f"bench.models must be at least 2 (scores compare halves), got {self.models}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ValueError(f"bench.targets must be a non-empty subset of {list(TARGETS)}, got {list(self.targets)}")
        if self.test_samples < 0:
            raise ValueError(f"bench.test_samples must be >= 0 (0 = the whole test split), got {self.test_samples}")
        if self.stream_requests < 1 or self.cost_requests < 0:
            raise ValueError("bench.stream_requests must be >= 1 and bench.cost_requests >= 0")


SEARCHES = ("random",)
"""Random search only: with the 20 trials a method gets, a model-based search (Optuna's TPE starts
with 10 random trials) would have little to learn from, and random draws, independent of results,
let every trial run at once on the cluster."""


@dataclass(frozen=True)
class TuneConfig:
    """How `unlearn tune` searches each method's hyperparameters against retraining (orchestration/bench/tuning.py)."""

    trials: int = 20
    """Configurations tried per method; the first is the method's configured values (its defaults)."""
    time_budget_s: float = 0.0
    """Wall-clock limit of each method's search in seconds (trials still running then are stopped); 0 = none."""
    models: int = 8
    """Models a side in the tuning populations: originals, oracles, and unlearning runs per trial (U-LiRA needs 8)."""
    search: str = "random"
    """Search algorithm: 'random' (Ray Tune's random search, seeded)."""

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"tune.trials must be at least 1, got {self.trials}")
        if self.time_budget_s < 0:
            raise ValueError(f"tune.time_budget_s must be >= 0 (0 = no limit), got {self.time_budget_s}")
        if self.models < 8:
            raise ValueError(f"tune.models must be at least 8 (the objective's U-LiRA needs 8 a side), got {self.models}")
        if self.search not in SEARCHES:
            raise ValueError(f"tune.search must be one of {', '.join(SEARCHES)}, got {self.search!r}")


NON_TRAINING = ("store", "data.root", "data.path", "data.test_path", "data.cache_dir", "data.public_ids",
                "model.backbone", "sisa.aggregation", "sisa.checkpoint_every", "ray.", "tracking.", "bench.", "tune.",
                "pretrain.", "serve.")
"""Settings that never change trained weights: a run may change them between commands. (The contents behind
data.public_ids and model.backbone do, and are bound to the run by their digests instead: see runs.py.)"""
HEAD_SETTINGS = ("model.head", "model.head_hidden")
ADAPTER_SETTINGS = ("model.adapter_rank", "model.adapter_layers")
UNSET = {"sisa.trainable": "all", "data.public_fraction": 0.0}
"""Settings that did not exist when the first runs were made, at the values that keep those runs' training."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is made of; saved resolved as `config.toml` in the run directory."""

    seed: int = 0
    """Seed every random draw derives from."""
    store: str = ""
    """Checkpoint store: a local path or a pyarrow.fs URI (file://, s3://, gs://); empty means <run dir>/checkpoints."""
    data: DataConfig = field(default_factory=DataConfig)
    """The data set."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The constituent architecture."""
    sisa: SisaConfig = field(default_factory=lambda: SisaConfig(epochs=20))
    """The SISA recipe."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Execution engine."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking."""
    bench: BenchConfig = field(default_factory=BenchConfig)
    """What `unlearn bench` compares."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """How `unlearn tune` searches each method's hyperparameters."""
    pretrain: SisaConfig = field(default_factory=lambda: SisaConfig(num_shards=1, num_slices=1, epochs=10))
    """The recipe `unlearn pretrain` trains the backbone with on the public data (one shard of one slice)."""
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The model service."""

    def __post_init__(self) -> None:
        trainable = self.sisa.trainable
        if trainable != "all" and not self.model.backbone:
            raise ValueError(f"sisa.trainable={trainable!r} trains on a frozen backbone: set model.backbone to a file "
                             "written by `unlearn pretrain` (or your own model.name weights)")
        if self.model.backbone and trainable == "all":
            raise ValueError("model.backbone is a frozen backbone: set sisa.trainable to 'head' or 'adapter' "
                             "(the default 'all' trains every weight from scratch)")
        p = self.pretrain
        if (p.num_shards, p.num_slices, p.trainable) != (1, 1, "all"):
            raise ValueError("pretrain trains one network on the public data: pretrain.num_shards and "
                             "pretrain.num_slices must be 1 and pretrain.trainable 'all'")

    def training_settings(self) -> dict[str, Any]:
        """Dotted key -> value of every setting that changes trained weights.

        Head and adapter settings change weights only in their modes and are left out otherwise;
        settings at their UNSET values are left out too: a full-network run keeps the fingerprint
        (and so every checkpoint key) it had before frozen backbones existed.
        """
        unused = {"all": HEAD_SETTINGS + ADAPTER_SETTINGS, "head": ADAPTER_SETTINGS, "adapter": ()}[self.sisa.trainable]
        return {k: v for k, v in self.flat().items()
                if not k.startswith(NON_TRAINING) and k not in unused and UNSET.get(k, object()) != v}

    def fingerprint(self) -> str:
        """Hash of every setting that changes trained weights (not paths, engine or aggregation)."""
        return fingerprint(self.training_settings())

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict of every setting."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value of every setting."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def save(self, path: Path) -> None:
        """Write as TOML via a temporary file renamed into place."""
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(tomli_w.dumps(self.to_dict()).encode())
        tmp.replace(path)


def _build(cls: type, values: dict[str, Any], where: str, default: Any = None) -> Any:
    """An instance of `cls` from `default` (or cls()) with `values` replaced, checked and coerced."""
    default = cls() if default is None else default
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(f'{where}{k}' for k in unknown)}; "
                         f"valid in {where or 'the top level'}: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{where}{name} is a section; give it as [{where}{name}]")
            kwargs[name] = _build(hint, value, f"{where}{name}.", getattr(default, name))
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return dataclasses.replace(default, **kwargs)


_KIND = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:  # a list: from TOML, or "a,b" from --set
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(hint)[0], f"{key}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} is a table; give it as [{key}.NAME] or --set {key}.NAME.KEY=VALUE")
        return value
    if isinstance(value, str) and hint is not str:
        text = value.strip()
        try:
            if hint is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            value = hint(text)
            if hint is float and not math.isfinite(value):
                raise ValueError
            return value
        except ValueError:
            raise ValueError(f"{key} must be {_KIND[hint]}, got {value!r}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be {_KIND[hint]}, got {value!r}")
    return value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['sisa.num_shards=8', 'seed=3'] into a nested dict (values still strings)."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value (e.g. sisa.num_shards=8), got {pair!r}")
        *sections, leaf = key.strip().split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key} conflicts with another --set")
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> RunConfig:
    """Resolve a RunConfig from defaults, `base`, a TOML file, then `--set` overrides."""
    values = dict(base or {})
    if path is not None:
        try:
            with open(path, "rb") as f:
                values = _merge(values, tomllib.load(f))
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except OSError as err:  # a folder, a file this user cannot read
            raise ValueError(f"config file {path} cannot be read ({err.strerror}); give a TOML file") from None
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from None
    values = _merge(values, parse_overrides(overrides or []))
    return _build(RunConfig, values, "")


def differing_training_keys(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys of training settings whose values differ between two configs."""
    fa, fb = a.training_settings(), b.training_settings()
    return sorted(k for k in fa if fa[k] != fb[k])
