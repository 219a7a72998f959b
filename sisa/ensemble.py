"""SisaRun: a SISA ensemble living in a run directory, trained and unlearned exactly.

    run_dir/run.json       fingerprint, seed and SISA config the run was made with
    run_dir/ledger.jsonl   deletion requests (see ledger.py)
    run_dir/lock           held while a command changes the run
    run_dir/checkpoints/   the default checkpoint store (see store.py)

Every command that changes the run first finishes pending requests, so a crash between a
ledger entry and the end of its retraining is completed by whatever command runs next.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sisa.aggregation import aggregate
from sisa.config import SisaConfig
from sisa.data import SampleTable
from sisa.errors import CheckpointMissingError, ConfigMismatchError, PendingRequestError, SisaError
from sisa.ledger import Ledger
from sisa.lock import run_lock
from sisa.plan import ShardPlan, slice_keys
from sisa.store import CheckpointStore
from sisa.training import ModelFactory, ShardJob, ShardReport, ShardTrainer, SliceReport
from sisa.unlearning import DeletionReport, purge_stale, validate_request

log = logging.getLogger(__name__)

OnSlice = Callable[[SliceReport], None] | None
Executor = Callable[[list[ShardJob], OnSlice], list[ShardReport]]
"""Runs shard jobs (in-process, or on a cluster) and returns one report per job."""


class SisaRun:
    """Trains, unlearns and predicts with the SISA ensemble stored in `run_dir`."""

    def __init__(
        self,
        run_dir: str | Path,
        table: SampleTable,
        model_factory: ModelFactory,
        config: SisaConfig,
        seed: int,
        fingerprint: str,
        store_uri: str | None = None,
        executor: Executor | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        """Open or create a run.

        Args:
            run_dir: local directory for the manifest, ledger and lock.
            table: the full training data, deleted samples included (the ledger masks them).
            model_factory: builds a fresh constituent model.
            config: SISA recipe.
            seed: the run's seed.
            fingerprint: hash of everything that determines training (see config.fingerprint).
            store_uri: checkpoint store location; default `run_dir/checkpoints`.
            executor: runs shard jobs; default trains them one after another in this process.
            lock_timeout: seconds to wait for another command on the run; None waits.

        Raises:
            ConfigMismatchError: run_dir was made with another fingerprint.
        """
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.table, self.config, self.seed, self.fingerprint = table, config, seed, fingerprint
        self._check_manifest(store_uri)
        self.store = CheckpointStore(store_uri or str(self.run_dir / "checkpoints"))
        self.ledger = Ledger(self.run_dir / "ledger.jsonl")
        self.trainer = ShardTrainer(table, model_factory, config, self.store, fingerprint, seed)
        self.executor = executor or self._run_here
        self.lock_timeout = lock_timeout

    def _check_manifest(self, store_uri: str | None) -> None:
        path = self.run_dir / "run.json"
        if path.exists():
            made = json.loads(path.read_text())
            if made["fingerprint"] != self.fingerprint:
                raise ConfigMismatchError(
                    f"{self.run_dir} was made with another configuration (fingerprint "
                    f"{made['fingerprint'][:12]}, given {self.fingerprint[:12]}); use the config it "
                    "was made with, or a new run directory"
                )
            return
        manifest = {"fingerprint": self.fingerprint, "seed": self.seed, "sisa": asdict(self.config),
                    "store": store_uri}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        tmp.replace(path)

    def _run_here(self, jobs: list[ShardJob], on_slice: OnSlice) -> list[ShardReport]:
        return [self.trainer.train(job, on_slice) for job in jobs]

    def _lock(self):  # noqa: ANN202 - a context manager
        return run_lock(self.run_dir / "lock", self.lock_timeout)

    def plan(self) -> ShardPlan:
        """The shard plan of the retained data: all ids minus every requested deletion."""
        retained = np.setdiff1d(self.table.ids, self.ledger.deleted_ids(), assume_unique=True)
        return ShardPlan.build(retained, self.config.num_shards, self.config.num_slices, self.seed)

    def jobs(self, plan: ShardPlan, shards: Sequence[int] | None = None) -> list[ShardJob]:
        """Jobs for `shards` (default all) that still hold samples; empty shards drop out."""
        chosen = range(plan.num_shards) if shards is None else shards
        jobs = [ShardJob(s, plan.slice_ids(s)) for s in chosen]
        return [job for job in jobs if job.num_samples]

    def train(self, on_slice: OnSlice = None) -> list[ShardReport]:
        """Train every shard up to its last slice, resuming from valid checkpoints."""
        with self._lock():
            self._finish_pending(on_slice)
            plan = self.plan()
            reports = self.executor(self.jobs(plan), on_slice)
            purge_stale(self.store, plan, self.fingerprint, list(range(plan.num_shards)))
            return reports

    def forget(self, sample_ids: Sequence[int] | np.ndarray, reason: str = "",
               on_slice: OnSlice = None) -> DeletionReport:
        """Exactly unlearn `sample_ids`: record, retrain what saw them, purge their checkpoints.

        Raises:
            InvalidRequestError: the request is invalid; nothing was recorded or changed.
        """
        with self._lock():
            self._finish_pending(on_slice)
            plan = self.plan()
            ids = validate_request(sample_ids, self.table.ids, self.ledger.requests())
            dirty = plan.earliest_slices(ids)
            request_id = self.ledger.record_request(ids, reason)
            report = DeletionReport(request_id, ids, dirty)
            self._serve(report, list(dirty), on_slice)
            return report

    def finish_pending(self, on_slice: OnSlice = None) -> list[DeletionReport]:
        """Finish requests recorded but interrupted before their retraining ended."""
        with self._lock():
            return self._finish_pending(on_slice)

    def _finish_pending(self, on_slice: OnSlice) -> list[DeletionReport]:
        reports = []
        for request in self.ledger.pending():
            log.warning("finishing interrupted deletion request %s", request.request_id)
            report = DeletionReport(request.request_id, request.sample_ids, dirty={})
            # Which shards the interrupted run had reached is unknown: every shard resumes from
            # its deepest valid checkpoint, so finished shards cost only a checksum check.
            self._serve(report, list(range(self.config.num_shards)), on_slice)
            reports.append(report)
        return reports

    def _serve(self, report: DeletionReport, shards: list[int], on_slice: OnSlice) -> None:
        began = time.perf_counter()
        plan = self.plan()
        report.shards = self.executor(self.jobs(plan, shards), on_slice)
        report.purged = len(purge_stale(self.store, plan, self.fingerprint, shards))
        report.seconds = time.perf_counter() - began
        self.ledger.record_done(report.request_id, report.retrained, report.samples_epochs, report.seconds)

    def constituents(self) -> list[tuple[int, nn.Module]]:
        """(shard, model) of every non-empty shard, loaded from verified final checkpoints.

        Raises:
            PendingRequestError: a deletion is unfinished, so some models may have seen its ids.
            SisaError: a shard has no trained model, or its checkpoint fails verification.
        """
        pending = self.ledger.pending()
        if pending:
            raise PendingRequestError(
                f"deletion request {pending[0].request_id} is not finished; some models may still "
                "have seen its samples. Finish it first (train, forget or finish_pending)."
            )
        plan, models = self.plan(), []
        for job in self.jobs(plan):
            key = slice_keys(self.fingerprint, job.shard, job.slice_ids)[-1]
            try:
                state = self.store.load(job.shard, plan.num_slices - 1, key)
            except CheckpointMissingError:
                raise SisaError(f"shard {job.shard} has no trained model yet; train the run first") from None
            model = self.trainer.new_model(job.shard)
            model.load_state_dict(state["model"])
            models.append((job.shard, model.eval()))
        if not models:
            raise SisaError("the ensemble has no constituent left: every training sample was deleted")
        return models

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Constituent outputs for inputs x, shape (models, samples, classes)."""
        models = [m for _, m in self.constituents()]
        return torch.stack([torch.cat([m(b) for b in x.split(batch_size)]) for m in models])

    def predict(self, x: torch.Tensor, how: str | None = None) -> torch.Tensor:
        """Ensemble labels (samples,) by `how` ('vote' or 'mean'; default the config's)."""
        return aggregate(self.logits(x), how or self.config.aggregation)
