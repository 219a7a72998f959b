"""Approximate unlearning on a run: on a single model, or on the affected constituents of the ensemble.

Approximate results never replace the exact SISA checkpoints: the unlearned models are written
beside them, under `run_dir/approx/`, so exact deletion stays available and comparable.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import approx
from orchestration.derived import mark_derived
from orchestration.evaluation import outputs
from orchestration.runs import Session
from sisa import SampleTable, SisaRun
from sisa.ensemble import MANIFEST
from sisa.plan import ShardPlan


@dataclass
class ApproxReport:
    """Accuracies before and after an approximate unlearning run, and its cost."""

    method: str
    target: str
    forget_ids: np.ndarray
    shards: list[int]
    """Constituents the method ran on (the one model, shard 0, for target 'single')."""
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    samples: int = 0
    saved_to: str = ""
    trained_single: tuple[int, float] | None = None
    """(samples x epochs, seconds) spent training the single model first, when it had to be trained."""


def single_model_run(session: Session) -> SisaRun:
    """The run's monolithic model (one shard, one slice, same recipe) on the data the run retains.

    It lives in run_dir/single as a derived model (see derived.py): trained once, destroyed by
    the next deletion, and trained again on what remains when next needed.
    """
    run = session.run
    folder = run.run_dir / "single"
    if not (folder / MANIFEST).exists():
        mark_derived(folder, run, "single")
    config = dataclasses.replace(session.config.sisa, num_shards=1, num_slices=1)
    return SisaRun(folder, run.table.take(run.retained_ids()), run.trainer.model_factory, config,
                   session.config.seed, run.fingerprint + ":single", lock_timeout=run.lock_timeout)


def _accuracies(models: list[nn.Module], how: str, sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    out = outputs(models, how, sets)
    return {f"{split}/acc": out.accuracy(split) for split in sets}


def run_approx(session: Session, method: approx.UnlearningMethod, sample_ids: list[int] | np.ndarray,
               target: str = "ensemble") -> ApproxReport:
    """Run `method` to forget `sample_ids` on the ensemble's affected constituents or on the single model."""
    if target not in ("ensemble", "single"):
        raise ValueError(f"target must be 'ensemble' or 'single', got {target!r}")
    trainable = session.config.sisa.trainable
    if trainable != "all":
        raise ValueError(f"approximate methods unlearn full networks; this run trains {trainable}s on a frozen backbone "
                         f"(sisa.trainable = {trainable}), whose exact deletion already retrains only those: use "
                         "`unlearn forget`")
    run = session.run
    with run.locked():  # no deletion may change the run while a method reads it
        ids = run.validate(sample_ids)
        method.check_model(run.trainer.model_factory())  # e.g. CT on a model without convolutions, before any work
        base = single_model_run(session) if target == "single" else run
        trained = base.train() if target == "single" else []
        plan = base.plan()
        constituents = base.constituents()
        models = [copy.deepcopy(m) for _, m in constituents]
        retained = np.setdiff1d(plan.sample_ids, ids)
        how = "vote" if target == "single" else session.config.sisa.aggregation
        sets = {"forget": run.table.tensors(ids), "retain": run.table.tensors(retained), "test": session.test.tensors()}
        report = ApproxReport(method.name, target, ids, shards=sorted(set(plan.locate(ids)[0].tolist())))
        if any(r.slices for r in trained):
            report.trained_single = (sum(r.samples_epochs for r in trained), sum(r.seconds for r in trained))
        report.before = _accuracies(models, how, sets)
        began = time.perf_counter()
        report.samples = unlearn_constituents({s: m for (s, _), m in zip(constituents, models)}, plan, run.table, ids,
                                              method, session.num_classes, session.config.seed,
                                              session.config.sisa.device)
        report.seconds = time.perf_counter() - began
        report.after = _accuracies(models, how, sets)
        report.saved_to = str(_save(run, report, models, [s for s, _ in constituents]))
    return report


def unlearn_constituents(models: dict[int, nn.Module], plan: ShardPlan, table: SampleTable, ids: np.ndarray,
                         method: approx.UnlearningMethod, num_classes: int, seed: int, device: str,
                         forgotten: np.ndarray | None = None) -> int:
    """Run `method` in place on the constituent of every shard holding some of `ids`; returns samples processed.

    A shard's forget set is its share of `ids`; its retain set is the rest of the shard, less
    `forgotten` (ids unlearned by earlier requests, which must not be trained on again).
    """
    shards = np.unique(plan.locate(ids)[0])
    samples = 0
    for shard in shards.tolist():
        in_shard = plan.sample_ids[plan.shard == shard]
        forget = np.intersect1d(in_shard, ids)
        retain = np.setdiff1d(np.setdiff1d(in_shard, ids), forgotten if forgotten is not None else [])
        result = approx.unlearn(models[shard], copy.deepcopy(method), table.tensors(forget), table.tensors(retain),
                                num_classes=num_classes, seed=seed, device=device)
        samples += result.samples
    return samples


def _save(run: SisaRun, report: ApproxReport, models: list[nn.Module], shards: list[int]) -> Path:
    folder = run.run_dir / "approx" / f"{report.method}-{report.target}-{time.strftime('%Y%m%dT%H%M%S')}"
    mark_derived(folder, run, f"approx:{report.method}:{report.target}")
    for shard, model in zip(shards, models):
        if shard in report.shards:
            tmp = folder / f"shard-{shard:03d}.pt.tmp"
            torch.save(model.state_dict(), tmp)
            tmp.replace(folder / f"shard-{shard:03d}.pt")
    return folder
