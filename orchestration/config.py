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
    """Data set: digits (embedded), mnist, fashion-mnist, cifar10 (from files in root) or synthetic."""
    root: str = ""
    """Directory holding the data set's files (mnist, fashion-mnist, cifar10)."""
    cache_dir: str = ""
    """Where decoded data is cached as Parquet; empty means ~/.cache/unlearn."""
    train_limit: int = 0
    """Use only the training samples with the smallest sample_ids, this many (0 = all)."""
    test_fraction: float = 0.2
    """Share held out as the test split for data sets without one (digits, synthetic)."""
    synthetic_samples: int = 1000
    """Samples in the synthetic data set."""
    synthetic_features: int = 16
    """Features per synthetic sample."""
    synthetic_classes: int = 4
    """Classes in the synthetic data set."""

    def __post_init__(self) -> None:
        if self.train_limit < 0:
            raise ValueError(f"data.train_limit must be >= 0 (0 = all samples), got {self.train_limit!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of each constituent model."""

    name: str = "mlp"
    """Architecture: mlp, cnn, resnet18 (CIFAR variant) or resnet20."""
    hidden: int = 128
    """Hidden units of the MLP."""
    channels: int = 32
    """Channels of the first convolution of the small CNN."""

    def __post_init__(self) -> None:
        for name in ("hidden", "channels"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")


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
    """Most shard actors at once; 0 means as many as the cluster's CPUs allow, at most one per shard."""
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


SCENARIOS = ("random", "class", "stream")
TARGETS = ("single", "ensemble")


@dataclass(frozen=True)
class BenchConfig:
    """What `unlearn bench` compares: which samples are forgotten, by which methods, over which seeds."""

    scenario: str = "random"
    """'random' (forget_fraction of the training samples), 'class' (every sample of forget_class) or
    'stream' (stream_requests single-sample requests, served one after another)."""
    forget_fraction: float = 0.1
    """Share of the training samples forgotten in the 'random' scenario."""
    forget_class: int = 0
    """Label whose samples are forgotten in the 'class' scenario."""
    stream_requests: int = 5
    """Requests in the 'stream' scenario."""
    forget_seed: int = 0
    """Seed of the forget-set draw, the same for every model seed so forget quality compares the same samples."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Model seeds; every metric is reported as mean and std over them, and forget quality uses one model per seed."""
    methods: tuple[str, ...] = ()
    """Approximate methods to run (see `unlearn methods`); empty means all."""
    targets: tuple[str, ...] = TARGETS
    """Run approximate methods on the 'single' model, the SISA 'ensemble' (affected constituents), or both."""
    cost_requests: int = 8
    """Single-sample requests a copy of the first seed's ensemble serves for the cost-vs-requests curve (0 skips it)."""
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Method hyperparameters replacing the defaults, e.g. [bench.params.gradient_ascent] lr = 1e-3."""

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"bench.scenario must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        if not 0 < self.forget_fraction < 1:
            raise ValueError(f"bench.forget_fraction must be between 0 and 1 (exclusive), got {self.forget_fraction}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"bench.seeds must be distinct and at least one, got {list(self.seeds)}")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets:
            raise ValueError(f"bench.targets must be a non-empty subset of {list(TARGETS)}, got {list(self.targets)}")
        if self.stream_requests < 1 or self.cost_requests < 0:
            raise ValueError("bench.stream_requests must be >= 1 and bench.cost_requests >= 0")


NON_TRAINING = ("store", "data.root", "data.cache_dir", "sisa.aggregation", "sisa.checkpoint_every", "ray.", "tracking.",
                "bench.", "serve.")
"""Settings that never change trained weights: a run may change them between commands."""


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
    serve: ServeConfig = field(default_factory=ServeConfig)
    """The model service."""

    def training_settings(self) -> dict[str, Any]:
        """Dotted key -> value of every setting that changes trained weights."""
        return {k: v for k, v in self.flat().items() if not k.startswith(NON_TRAINING)}

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
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"config file {path} is not valid TOML: {err}") from None
    values = _merge(values, parse_overrides(overrides or []))
    return _build(RunConfig, values, "")


def differing_training_keys(a: RunConfig, b: RunConfig) -> list[str]:
    """Dotted keys of training settings whose values differ between two configs."""
    fa, fb = a.training_settings(), b.training_settings()
    return sorted(k for k in fa if fa[k] != fb[k])
