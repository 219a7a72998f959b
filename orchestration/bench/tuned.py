"""Tuned hyperparameters on disk, and `unlearn bench --tuned` reading them.

One file per method and setting: `<dir>/<data>-<model>-<scenario>/<method>.toml` (`dir` defaults
to `configs/tuned`). The model is in the name because one data set has several settings (the
CIFAR-10 small CNN and ResNet-18) whose tunings differ; the file records everything else it was
tuned for, and the bench uses it only where that matches:

    # finetune tuned by `unlearn tune` ... (how it was found: trials, budget, objective, date, command)
    method = "finetune"
    [params]            the parameters `bench --tuned` passes to the method
    [tuning]            trials, objective values, date, command, search, seed
    [tuning.recipe]     the single model's training settings it was tuned for (must match)
    [tuning.protocol]   the bench settings that decide the forget set, the test/validation split
                        and its models' seeds (must match: the tuner kept away from exactly those)

`apply` merges the matching files into `bench.params` (values set there explicitly win) and says,
method by method, what runs tuned and what runs its defaults, and why.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from orchestration.bench.protocol import create_methods
from orchestration.config import RunConfig

TUNED_DIR = Path("configs/tuned")
PROTOCOL_KEYS = {
    "random": ("forget_fraction",), "hard": ("forget_fraction",), "class": ("forget_class",),
    "stream": ("stream_requests",),
}
"""Per scenario, the bench settings beyond the scenario itself that decide its forget set."""
SPLIT_KEYS = ("scenario", "forget_seed", "test_samples", "validation_fraction")
"""Bench settings that decide the test/validation split (and the scenario's draw)."""


def setting(config: RunConfig) -> str:
    """The folder name of a setting: `<data>-<model>-<scenario>`, e.g. fashion-mnist-cnn-random."""
    model = re.sub(r"[^A-Za-z0-9_]+", "_", config.model.name).strip("_")
    return f"{config.data.name}-{model}-{config.bench.scenario}"


def path_of(tuned_dir: Path, config: RunConfig, method: str) -> Path:
    """Where the tuned configuration of `method` in this setting lives."""
    return Path(tuned_dir) / setting(config) / f"{method}.toml"


def recipe(config: RunConfig) -> dict[str, Any]:
    """The single model's training settings (without the seed and the device): what tuned values fit."""
    settings = config.training_settings()
    settings.update({"sisa.num_shards": 1, "sisa.num_slices": 1})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items() if k not in ("seed", "sisa.device")}


def protocol_settings(config: RunConfig) -> dict[str, Any]:
    """The bench settings that decide its forget set, its test and validation split and its seeds.

    The models' base seed is not among them: the tuner's seeds come from another stage (see
    protocol.Protocol.seeds), apart from the bench's whatever its seed.
    """
    bench = config.bench
    keys = SPLIT_KEYS + PROTOCOL_KEYS[bench.scenario]
    return {f"bench.{k}": getattr(bench, k) for k in keys}


def write(path: Path, method: str, params: dict[str, Any], tuning: dict[str, Any], header: list[str]) -> Path:
    """Write a tuned configuration (a header of comment lines, then TOML) through a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = tomli_w.dumps({"method": method, "params": params, "tuning": tuning})
    text = "".join(f"# {line}".rstrip() + "\n" for line in header) + body
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Tuned:
    """A tuned configuration read back."""

    path: Path
    method: str
    params: dict[str, Any]
    tuning: dict[str, Any]


def read(path: Path) -> Tuned:
    """Read a tuned configuration; a file that is not one is refused in one line."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    if not isinstance(data.get("method"), str) or not isinstance(data.get("params"), dict) \
            or not isinstance(data.get("tuning"), dict):
        raise ValueError(f"{path} is not a tuned configuration (it needs method, [params] and [tuning]); "
                         "write one with `unlearn tune`")
    return Tuned(Path(path), data["method"], data["params"], data["tuning"])


def _differences(wanted: dict[str, Any], found: dict[str, Any]) -> list[str]:
    keys = sorted(set(wanted) | set(found))
    return [f"{k} {found.get(k, '-')!r} -> {wanted.get(k, '-')!r}" for k in keys if wanted.get(k) != found.get(k)]


def apply(config: RunConfig, tuned_dir: Path) -> tuple[RunConfig, list[str]]:
    """`config` with the tuned parameters of every method the bench runs, and what it did, in lines.

    A method runs tuned when `<tuned_dir>/<setting>/<method>.toml` exists and was tuned for this
    recipe and protocol; otherwise it runs its defaults (or what bench.params sets), and a line
    says why. Parameters set in bench.params win over tuned ones, and a line names them.
    """
    tuned_dir = Path(tuned_dir)
    folder = tuned_dir / setting(config)
    params = {name: dict(values) for name, values in config.bench.params.items()}
    used, missing, other, overridden = [], [], [], []
    for method in create_methods(config.bench):
        path = path_of(tuned_dir, config, method.name)
        if not path.exists():
            missing.append(method.name)
            continue
        tuned = read(path)
        if tuned.method != method.name:
            raise ValueError(f"{path} holds the tuned configuration of {tuned.method!r}, not {method.name!r}")
        changed = (_differences(recipe(config), tuned.tuning.get("recipe", {}))
                   + _differences(protocol_settings(config), tuned.tuning.get("protocol", {})))
        if changed:
            other.append(f"{method.name} ({', '.join(changed)})")
            continue
        explicit = params.get(method.name, {})
        overridden += [f"{method.name}.{k}" for k in explicit if k in tuned.params]
        params[method.name] = {**tuned.params, **explicit}
        used.append(f"{method.name} ({tuned.tuning.get('trials', '?')} trials)")
    notes = []
    if used:
        notes.append(f"tuned hyperparameters from {folder}: {', '.join(used)}")
    if missing:
        notes.append(f"no tuned file in {folder}, defaults for: {', '.join(missing)}")
    if other:
        notes.append(f"tuned for other settings, defaults for: {'; '.join(other)}")
    if overridden:
        notes.append(f"bench.params set here win over the tuned values of: {', '.join(overridden)}")
    return dataclasses.replace(config, bench=dataclasses.replace(config.bench, params=params)), notes
