"""The models the bench compares, each made once and cached by what determines it.

`run_job` does one job (see jobs.py: train, delete exactly, unlearn approximately) in whatever
process the fan-out gives it, evaluates the model on the protocol's splits and returns the
per-example outputs and the cost. Everything lands in the cache (by default `<out>/models`), one
folder per model named by kind and key:

    single-<key>/            a single model           model.pt, meta.json, outputs-<splits>.npz
    sisa-<key>/              a SISA ensemble          ... and run/ (slice checkpoints) for originals
    deletion-<key>/          an ensemble after SISA deletion
    <method>-<single|sisa>-<key>/   an original after an approximate method

The key hashes what determines the model: the resolved training settings, the seed and the digest
of the training ids; for deletions and unlearned models also the original's key, the requests and
the method's parameters and seed. `model.pt` holds weights only (loaded with weights_only=True),
`meta.json` what the key was made of and the measured cost, `outputs-*.npz` the per-example outputs
on one set of splits. A second bench with other methods, or a rerun after a crash, finds every
finished model there and trains nothing twice. The cache does not see code changes: delete the
folder after changing how models are trained or unlearned. The slice checkpoints in `run/` are the
largest files; `rm -r <out>/models` frees everything.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import approx
from orchestration.approximate import unlearn_constituents
from orchestration.bench.jobs import (
    Delete,
    Job,
    JobResult,
    ModelOutputs,
    Train,
    Unlearn,
    Workspace,
    atomic_write,
    folder_name,
    key,
)
from orchestration.bench.measure import Cost, measure
from orchestration.evaluation import outputs
from sisa import SampleTable, SisaConfig, SisaRun

# --- SisaRun: every ensemble of the bench is opened here ------------------------------------------


def sisa_run(run_dir: Path, table: SampleTable, model_factory: Callable[[], nn.Module], config: SisaConfig, seed: int,
             fingerprint: str, lock_timeout: float | None = None, secret: bytes | None = None) -> SisaRun:
    """The SisaRun of a bench model in `run_dir`, trained in this process.

    Every ensemble the bench makes or copies is opened through this one function, so what a run
    is made from (the seed, and anything derived from it) is decided in one place. Its shard
    assignment's secret is derived from the seed: a bench model must be reproducible from its
    cache key, and a bench publishes nothing an adversary could exploit (a real run's secret is
    random, see sisa/ensemble.py).
    """
    secret = secret or hashlib.sha256(f"unlearn-bench-secret:{seed}".encode()).digest()
    return SisaRun(run_dir, table, model_factory, config, seed, fingerprint, lock_timeout=lock_timeout, secret=secret)


def clone(run: SisaRun, run_dir: Path) -> SisaRun:
    """A copy of `run` (its directory and default checkpoint store) that can be changed on its own."""
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(run.run_dir, run_dir, ignore=shutil.ignore_patterns("lock", "single"))
    return sisa_run(run_dir, run.table, run.trainer.model_factory, run.config, run.seed, run.fingerprint,
                    run.lock_timeout, secret=run.secret)


# --- Doing a job ----------------------------------------------------------------------------------------


def run_job(job: Job, ws: Workspace) -> JobResult:
    """Make (or find in the cache) the job's model and return its outputs on the splits and its cost."""
    folder = ws.cache / folder_name(job, ws.config)
    family = job.family if isinstance(job, Train) else "sisa" if isinstance(job, Delete) else job.original.family
    meta = folder / "meta.json"
    fresh = not meta.exists() or (isinstance(job, Train) and job.keep_run and not (folder / "run").exists())
    if fresh:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            models, cost, request_costs = _make(job, ws, folder)
        except (ValueError, FloatingPointError) as err:
            if not isinstance(job, Unlearn):
                raise
            shutil.rmtree(folder, ignore_errors=True)
            return JobResult(job, None, Cost(), True, skipped=str(err).splitlines()[0])
        _save_models(folder / "model.pt", models)
        record = {"job": job.label(), "parts": job.parts(ws.config), "cost": dataclasses.asdict(cost),
                  "requests": [dataclasses.asdict(c) for c in request_costs]}
        atomic_write(meta, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1, default=str)))
    record = json.loads(meta.read_text())
    cost, request_costs = Cost(**record["cost"]), [Cost(**c) for c in record["requests"]]
    if isinstance(job, Delete) and not job.evaluate:
        return JobResult(job, None, cost, fresh, request_costs)
    path = ws.outputs_file(folder, family)
    if not path.exists():
        evaluate(_load_models(folder / "model.pt", ws), ws.aggregation(family), ws).save(path)
    result = ModelOutputs.load(path)
    if isinstance(job, Unlearn) and not result.finite():
        # Finite weights can still overflow the logits (gradient ascent with a large lr): no score is
        # defined on such outputs, so the run is a failed configuration, like a non-finite loss.
        shutil.rmtree(folder, ignore_errors=True)
        return JobResult(job, None, cost, True, skipped=f"{job.method.name}: its outputs became non-finite "
                                                        "(inf or NaN logits); lower lr")
    return JobResult(job, result, cost, fresh, request_costs)


def evaluate(models: list[nn.Module], how: str, ws: Workspace) -> ModelOutputs:
    """Per-example outputs of a model (or ensemble) on the workspace's splits."""
    sets = {name: (ws.train if table == "train" else ws.test).tensors(ids) for name, (table, ids) in ws.splits.items()}
    out = outputs(models, how, sets)
    return ModelOutputs({s: out.margins(s) for s in sets}, {s: out.predicted[s].numpy().astype(np.int16) for s in sets},
                        out.log_probs["forget"].numpy())


def _make(job: Job, ws: Workspace, folder: Path) -> tuple[dict[int, nn.Module], Cost, list[Cost]]:
    """Train, delete or unlearn; returns the constituents by shard, the cost and per-request costs."""
    if isinstance(job, Train):
        return _train(job, ws, folder)
    original = ws.cache / folder_name(job.original, ws.config)
    if isinstance(job, Delete):
        return _delete(job, ws, original, folder)
    return _unlearn(job, ws, original)


def _train(job: Train, ws: Workspace, folder: Path) -> tuple[dict[int, nn.Module], Cost, list[Cost]]:
    scratch = folder / f"run.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    run = sisa_run(scratch, ws.table(job.ids), ws.factory(), ws.sisa_config(job.family), job.seed, key(job, ws.config))
    with measure() as cost:
        reports = run.train()
    cost.samples_epochs = sum(r.samples_epochs for r in reports)
    models = dict(run.constituents())
    if job.keep_run:
        shutil.rmtree(folder / "run", ignore_errors=True)
        scratch.rename(folder / "run")
    else:
        shutil.rmtree(scratch)
    return models, cost, []


def _open_original(job: Train, ws: Workspace, original: Path) -> SisaRun:
    if not (original / "run").exists():
        raise RuntimeError(f"{job.label()}: no slice checkpoints in {original / 'run'}; train the original first")
    return sisa_run(original / "run", ws.table(job.ids), ws.factory(), ws.sisa_config(job.family), job.seed,
                    key(job, ws.config))


def _delete(job: Delete, ws: Workspace, original: Path, folder: Path) -> tuple[dict[int, nn.Module], Cost, list[Cost]]:
    run = clone(_open_original(job.original, ws, original), folder / f"run.tmp-{os.getpid()}")
    request_costs = []
    with measure() as cost:
        for request in job.requests:
            with measure() as one:
                report = run.forget(request, reason="bench")
            one.samples_epochs = report.samples_epochs
            request_costs.append(one)
    cost.samples_epochs = sum(c.samples_epochs for c in request_costs)
    models = dict(run.constituents())
    shutil.rmtree(run.run_dir)
    return models, cost, request_costs


def _unlearn(job: Unlearn, ws: Workspace, original: Path) -> tuple[dict[int, nn.Module], Cost, list[Cost]]:
    device, classes = ws.config.sisa.device, ws.num_classes
    if job.original.family == "sisa":
        run = _open_original(job.original, ws, original)
        plan, models = run.plan(), dict(run.constituents())
    else:
        models = _load_models(original / "model.pt", ws, as_dict=True)
    forgotten, samples = np.empty(0, np.int64), 0
    with measure() as cost:
        for request in job.requests:
            if job.original.family == "sisa":
                samples += unlearn_constituents(models, plan, ws.train, request, job.method, classes, job.seed, device,
                                                forgotten)
            else:
                retain = np.setdiff1d(job.original.ids, np.union1d(forgotten, request))
                samples += approx.unlearn(models[0], copy.deepcopy(job.method), ws.train.tensors(request),
                                          ws.train.tensors(retain), classes, seed=job.seed, device=device).samples
            forgotten = np.union1d(forgotten, request)
    cost.samples_epochs = samples
    return models, cost, []


# --- Weights on disk -------------------------------------------------------------------------------


def _save_models(path: Path, models: dict[int, nn.Module]) -> None:
    state = {"shards": list(models), "states": [{k: v.detach().cpu() for k, v in m.state_dict().items()}
                                               for m in models.values()]}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_models(path: Path, ws: Workspace, as_dict: bool = False) -> Any:
    state = torch.load(path, weights_only=True)
    models = {}
    for shard, weights in zip(state["shards"], state["states"]):
        model = ws.factory()()
        model.load_state_dict(weights)
        models[shard] = model.to(ws.config.sisa.device).eval()
    return models if as_dict else list(models.values())
