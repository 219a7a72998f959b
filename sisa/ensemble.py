"""SisaRun: a SISA ensemble living in a run directory, trained and unlearned exactly.

    run_dir/run.json       run id, fingerprint, seed, SISA config and store the run was made with
    run_dir/secret         the run's secret key (shard assignment, ledger MACs); never published
    run_dir/ledger.jsonl   the tamper-evident record of the run and its requests (see ledger.py)
    run_dir/lock           held while a command changes the run
    run_dir/checkpoints/   the default checkpoint store (see store.py)

A run is bound to what it was made from, and refuses anything else: its store (which names the
run in RUN.json), its data (the digest of the data that remains after every request is in the
ledger) and its ledger (whose head is anchored in the store, so truncating it is detected). A
missing or broken ledger stops every command: training without it would learn deleted samples
again.

Every command that changes the run first finishes pending requests, so a crash between a
ledger entry and the end of its retraining is completed by whatever command runs next.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sisa.aggregation import aggregate
from sisa.config import SisaConfig
from sisa.data import SampleTable
from sisa.encoding import encode, encode_inputs
from sisa.errors import (
    CheckpointMissingError,
    ConfigMismatchError,
    InvalidRequestError,
    LedgerError,
    PendingRequestError,
    RunBindingError,
    SisaError,
)
from sisa.inference import PREDICT_BATCH, for_inference, outputs
from sisa.ledger import Ledger, Request
from sisa.lock import run_lock
from sisa.plan import ShardPlan, assignment_hashes, slice_keys
from sisa.store import CheckpointStore
from sisa.training import ModelFactory, ShardJob, ShardReport, ShardTrainer, SliceReport
from sisa.unlearning import DeletionReport, purge_stale, validate_request

log = logging.getLogger(__name__)

OnSlice = Callable[[SliceReport], None] | None
Executor = Callable[[list[ShardJob], OnSlice], list[ShardReport]]
"""Runs shard jobs (in-process, or on a cluster) and returns one report per job."""
Inputs = Callable[[np.ndarray], SampleTable]
"""What the constituents train on, for sorted sample ids: e.g. a frozen backbone's stored features of them."""
Purger = Callable[["SisaRun", list[Request]], list[dict[str, Any]]]
"""Destroys what was derived from the ids of requests being served (together) outside the
checkpoint store (derived models, published model versions, cached rows) and returns one record
per thing destroyed. Runs before the requests are marked done; must be idempotent (a crashed
request is served again)."""

RUN_FORMAT = 2
MANIFEST = "run.json"
"""The run's manifest in its directory; written last when a run is made, so a run exists once it does."""
SECRET_BYTES = 32


def resolve_store(run_dir: str | Path, store_uri: str | None) -> str:
    """Where a run's checkpoints live: a URI as given, a relative path against the run dir, default
    `run_dir/checkpoints`."""
    if not store_uri:
        store_uri = "checkpoints"
    if "://" in store_uri or Path(store_uri).is_absolute():
        return store_uri
    return str(Path(run_dir).resolve() / store_uri)


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
        secret: bytes | None = None,
        purgers: Sequence[Purger] = (),
        encoder: nn.Module | None = None,
        inputs: Inputs | None = None,
        non_deletable: np.ndarray | None = None,
        non_deletable_reason: str = "",
    ) -> None:
        """Open or create a run.

        Args:
            run_dir: local directory for the manifest, secret, ledger and lock.
            table: the full training data; deleted samples may be included (the ledger masks them).
            model_factory: builds a fresh constituent model.
            config: SISA recipe.
            seed: the run's seed (initialisation, batch orders, dropout).
            fingerprint: hash of everything that determines training (see config.fingerprint).
            store_uri: checkpoint store: a pyarrow.fs URI, or a path (relative paths are taken
                from run_dir); default `run_dir/checkpoints`.
            executor: runs shard jobs; default trains them one after another in this process.
            lock_timeout: seconds to wait for another command on the run; None waits.
            secret: the key of the shard assignment, for a new run only; default a fresh random
                key. Give the secret of another run to reproduce its assignment (an exactness
                check, disaster recovery); an existing run refuses a different one.
            purgers: destroy what lives outside the store and saw a request's ids (see Purger).
            encoder: a frozen module (a pretrained backbone, `sisa.trainable = "head"`) whose outputs
                for a sample are what the constituents take; prediction runs it once for all of them.
            inputs: what the constituents train on for the retained ids (see Inputs), when it is not
                `table` itself; default: `table`, or with an encoder its features, computed in memory.
                Asked once the run is open; it must hold every retained id, with its label.
            non_deletable: ids a request may never name (e.g. the public data a frozen backbone was
                trained on: deleting them would need a new backbone); such a request is refused whole.
            non_deletable_reason: why they cannot be deleted, for the refusal.

        Raises:
            ConfigMismatchError: run_dir was made with another fingerprint.
            RunBindingError: the store, data or secret is not the run's own.
            LedgerError: the ledger is missing, corrupt or was tampered with.
        """
        self.run_dir = Path(run_dir)
        self.table, self.config, self.seed, self.fingerprint = table, config, seed, fingerprint
        self.lock_timeout = lock_timeout
        self.purgers = list(purgers)
        self._thread_lock, self._lock_depth = threading.RLock(), 0
        self.encoder = encoder.eval() if encoder is not None else None
        self._inputs = inputs
        self.non_deletable = np.unique(np.asarray(non_deletable if non_deletable is not None else [], np.int64))
        self.non_deletable_reason = non_deletable_reason
        new_dir = not self.run_dir.exists()
        _prepare_dir(self.run_dir)
        try:
            with self.locked():
                manifest, self._secret = self._open_or_create(store_uri, secret)
                self.run_id: str = manifest["run_id"]
                self.store = CheckpointStore(resolve_store(self.run_dir, manifest["store"]))
                self.ledger = Ledger(self.run_dir / "ledger.jsonl", self._secret, self.run_id)
                self._check_bindings()
                # Under the lock: the inputs may be extracted and stored (a backbone's features).
                training_inputs = self._training_inputs()
        except BaseException:
            if new_dir:  # a run that could not be made leaves nothing behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        self._hashes = assignment_hashes(table.ids, self._secret)  # (n,) keyed hash of every table id
        self.trainer = ShardTrainer(training_inputs, model_factory, config, self.store, fingerprint, seed)
        self.executor = executor or self._run_here

    def _training_inputs(self) -> SampleTable:
        """What the constituents train on: `table`, or the encoded (e.g. backbone features of the) retained samples."""
        if self._inputs is None and self.encoder is None:
            return self.table
        retained = self.retained_ids()
        inputs = self._inputs(retained) if self._inputs is not None else encode(self.encoder, self.table, retained)
        missing = np.setdiff1d(retained, inputs.ids, assume_unique=True)
        if missing.size:
            raise SisaError(f"the training inputs lack {missing.size} retained sample(s), e.g. {missing[:5].tolist()}")
        if not np.array_equal(inputs.labels[inputs.positions(retained)], self.table.labels[self.table.positions(retained)]):
            raise SisaError("the training inputs' labels differ from the training data's")
        return inputs

    # -- creation and binding ----------------------------------------------------------------
    def _open_or_create(self, store_uri: str | None, secret: bytes | None) -> tuple[dict[str, Any], bytes]:
        path = self.run_dir / MANIFEST
        if not path.exists():
            return self._create(store_uri, secret)
        made = json.loads(path.read_text())
        if made.get("format") != RUN_FORMAT:
            raise RunBindingError(f"{self.run_dir} was made by an older version of this library (run format "
                                  f"{made.get('format', 1)}, this one reads {RUN_FORMAT}); train a new run")
        if made["fingerprint"] != self.fingerprint:
            raise ConfigMismatchError(
                f"{self.run_dir} was made with another configuration (fingerprint "
                f"{made['fingerprint'][:12]}, given {self.fingerprint[:12]}); use the config it "
                "was made with, or a new run directory"
            )
        try:
            own = bytes.fromhex((self.run_dir / "secret").read_text().strip())
        except (FileNotFoundError, ValueError):
            raise RunBindingError(f"{self.run_dir}/secret is missing or unreadable; without it the run's shard "
                                  "assignment and ledger cannot be verified. Restore it from a backup") from None
        if secret is not None and secret != own:
            raise RunBindingError(f"{self.run_dir} exists with another secret than the one given")
        if store_uri is not None and resolve_store(self.run_dir, store_uri) != resolve_store(self.run_dir, made["store"]):
            made = self._move_store(path, made, store_uri)
        return made, own

    def _create(self, store_uri: str | None, secret: bytes | None) -> tuple[dict[str, Any], bytes]:
        if (self.run_dir / "ledger.jsonl").exists():
            raise LedgerError(f"{self.run_dir} has a ledger but no run.json; the run's manifest was lost. "
                              "Restore run.json from a backup; creating a new run here would forget its deletions")
        store = CheckpointStore(resolve_store(self.run_dir, store_uri))
        owner = store.owner()
        if owner is not None or store.entries():
            raise RunBindingError(f"store {store.uri} already belongs to run {owner and owner.get('run_id')}; "
                                  "give the new run its own store")
        secret = secret if secret is not None else os.urandom(SECRET_BYTES)
        run_id = uuid.uuid4().hex
        _write_private(self.run_dir / "secret", secret.hex())
        Ledger(self.run_dir / "ledger.jsonl", secret, run_id).create(self.table.digest())
        store.claim(run_id)
        manifest = {"format": RUN_FORMAT, "run_id": run_id, "fingerprint": self.fingerprint, "seed": self.seed,
                    "sisa": asdict(self.config), "store": store_uri or None,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_atomic(self.run_dir / MANIFEST, json.dumps(manifest, indent=2))  # last: the run now exists
        return manifest, secret

    def _move_store(self, path: Path, made: dict[str, Any], store_uri: str) -> dict[str, Any]:
        old = CheckpointStore(resolve_store(self.run_dir, made["store"]), create=False)
        if old.exists() and (old.entries() or old.owner()):
            raise RunBindingError(
                f"{self.run_dir} keeps its checkpoints in {old.uri}, not {resolve_store(self.run_dir, store_uri)}: "
                "changing the store would leave the old checkpoints behind, unpurged. Move the old store's files "
                "(RUN.json included) to the new place and delete the old one, or keep the old store setting")
        log.info("run %s: store moves to %s (the old one is gone or empty)", self.run_dir, store_uri)
        made = {**made, "store": store_uri}
        _write_atomic(path, json.dumps(made, indent=2))
        return made

    def _check_bindings(self) -> None:
        if not self.ledger.exists():
            raise LedgerError(f"{self.run_dir}/ledger.jsonl is missing: the record of this run's deletions is lost, "
                              "and training without it would learn deleted samples again. Restore it from a backup")
        created = self.ledger.created()  # reading verifies the whole chain
        if created is None or created["run_id"] != self.run_id:
            raise LedgerError(f"{self.run_dir}/ledger.jsonl does not belong to run {self.run_id}")
        owner = self.store.owner()
        if owner is None:
            self.store.claim(self.run_id)  # an emptied store: training rebuilds it
        elif owner.get("run_id") != self.run_id:
            raise RunBindingError(f"store {self.store.uri} belongs to run {owner.get('run_id')}, not to "
                                  f"{self.run_dir} (run {self.run_id}); give each run its own store")
        elif owner.get("ledger_head") and owner["ledger_head"] not in self.ledger.macs():
            raise LedgerError(f"{self.run_dir}/ledger.jsonl lacks records the store saw (it was truncated or "
                              "replaced); restore the ledger from a backup")
        expected = self.ledger.data_digest()
        actual = self.table.without(self.ledger.deleted_ids()).digest()
        if actual != expected:
            raise RunBindingError(
                f"the training data given to {self.run_dir} differs from the data the run was made with "
                f"(digest {actual[:12]}, the run's {str(expected)[:12]}): a changed file, another data set, or "
                "other settings; point the data settings back at the run's own data")

    @property
    def secret(self) -> bytes:
        """The run's secret key (shard assignment, ledger MACs). Keep it private: never log or publish it."""
        return self._secret

    def _anchor(self) -> None:
        self.store.set_anchor(self.run_id, self.ledger.head)

    # -- locking ---------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock for a block; reentrant within a thread, exclusive across threads and processes.

        Commands that change the run and then report on it (log its model, read its status)
        hold the lock across both, so another command cannot slip in between.
        """
        with self._thread_lock:
            if self._lock_depth:
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with run_lock(self.run_dir / "lock", self.lock_timeout):
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0

    # -- the plan ------------------------------------------------------------------------------
    def _run_here(self, jobs: list[ShardJob], on_slice: OnSlice) -> list[ShardReport]:
        return [self.trainer.train(job, on_slice) for job in jobs]

    def retained_ids(self) -> np.ndarray:
        """Sorted ids of the training data less every requested deletion (pending ones included)."""
        return np.setdiff1d(self.table.ids, self.ledger.deleted_ids(), assume_unique=True)

    def plan(self) -> ShardPlan:
        """The shard plan of the retained data."""
        retained = self.retained_ids()
        hashes = self._hashes[np.searchsorted(self.table.ids, retained)]
        return ShardPlan.from_hashes(retained, hashes, self.config.num_shards, self.config.num_slices)

    def jobs(self, plan: ShardPlan, shards: Sequence[int] | None = None) -> list[ShardJob]:
        """Jobs for `shards` (default all) that still hold samples; empty shards drop out."""
        chosen = range(plan.num_shards) if shards is None else shards
        jobs = [ShardJob(s, plan.slice_ids(s)) for s in chosen]
        return [job for job in jobs if job.num_samples]

    # -- training and deletion -------------------------------------------------------------------
    def train(self, on_slice: OnSlice = None) -> list[ShardReport]:
        """Train every shard up to its last slice, resuming from valid checkpoints."""
        with self.locked():
            self.serve_pending(on_slice)
            plan = self.plan()
            reports = self.executor(self.jobs(plan), on_slice)
            purge_stale(self.store, plan, self.fingerprint, list(range(plan.num_shards)))
            return reports

    def validate(self, sample_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Check a request without recording it; returns its ids sorted.

        Raises:
            InvalidRequestError: empty, non-integer, negative, duplicate, unknown, already deleted or
                non-deletable ids.
        """
        ids = validate_request(sample_ids, self.table.ids, self.ledger.requests())
        refused = np.intersect1d(ids, self.non_deletable, assume_unique=True)
        if refused.size:
            shown = self.table.keys_of(refused[:10]).to_pylist()
            more = f" and {refused.size - 10} more" if refused.size > 10 else ""
            raise InvalidRequestError(f"id(s) {shown}{more} cannot be deleted: "
                                      f"{self.non_deletable_reason or 'the run declares them non-deletable'}")
        return ids

    def submit(self, sample_ids: Sequence[int] | np.ndarray, reason: str = "") -> str:
        """Validate a request and record it in the ledger, pending, without serving it; returns its id.

        From then on its ids are excluded from all training, and no model that saw them is served
        (`constituents` refuses while it is pending). It holds the ledger's lock, not the run's, so
        a service can accept requests while an earlier batch is being retrained.

        Args:
            sample_ids: the ids to delete.
            reason: why (kept in the ledger, with the data set's own ids of the samples when the
                table has them).

        Raises:
            InvalidRequestError: the request is invalid; nothing was recorded.
        """
        with self.ledger.locked():
            ids = self.validate(sample_ids)
            remaining = self.table.without(np.union1d(self.ledger.deleted_ids(), ids)).digest()
            keys = None if self.table.keys is None else self.table.keys_of(ids).to_pylist()
            request_id = self.ledger.record_request(ids, reason, remaining, keys)
            self._anchor()
        return request_id

    def dirty(self, sample_ids: np.ndarray) -> dict[int, int]:
        """Shard -> earliest slice holding one of `sample_ids` (ids of the training data, deleted ones included)."""
        # Where an id sits depends on the id alone, so the plan of every id locates deleted ones too.
        everything = ShardPlan.from_hashes(self.table.ids, self._hashes, self.config.num_shards, self.config.num_slices)
        return everything.earliest_slices(np.asarray(sample_ids, np.int64))

    def serve_pending(self, on_slice: OnSlice = None, max_requests: int | None = None) -> DeletionReport | None:
        """Serve pending requests together: one retraining of the shards that held their ids.

        Also finishes requests a crash interrupted: shards already retrained resume from their
        last checkpoint and cost only a checksum check. Returns None when nothing was pending.

        Args:
            on_slice: called after every slice trained.
            max_requests: serve only the first this many pending requests, in the order they were
                recorded (the others stay pending; their ids are excluded from training all the
                same); default all of them.
        """
        with self.locked():
            pending = self.ledger.pending()[:max_requests]
            if not pending:
                return None
            ids = np.unique(np.concatenate([r.sample_ids for r in pending]))
            report = DeletionReport([r.request_id for r in pending], ids, self.dirty(ids))
            self._serve(report, pending, on_slice)
            return report

    def forget(self, sample_ids: Sequence[int] | np.ndarray, reason: str = "", on_slice: OnSlice = None) -> DeletionReport:
        """Exactly unlearn `sample_ids`: record, retrain what saw them, destroy what saw them.

        Requests left pending earlier are served first, on their own. See `submit` for the arguments.

        Raises:
            InvalidRequestError: the request is invalid; nothing was recorded or changed.
        """
        with self.locked():
            self.serve_pending(on_slice)
            self.submit(sample_ids, reason)
            report = self.serve_pending(on_slice)
            assert report is not None  # the request just submitted is pending
            return report

    def _serve(self, report: DeletionReport, requests: list[Request], on_slice: OnSlice) -> None:
        began = time.perf_counter()
        plan = self.plan()
        jobs = self.jobs(plan, list(report.dirty))
        report.shards = self.executor(jobs, on_slice)
        report.final_keys = {job.shard: slice_keys(self.fingerprint, job.shard, job.slice_ids)[-1] for job in jobs}
        report.destroyed = purge_stale(self.store, plan, self.fingerprint, list(report.dirty))
        for purger in self.purgers:
            report.destroyed += purger(self, requests)
        report.seconds = time.perf_counter() - began
        # Each request of a batch gets the whole record: it is what was destroyed while serving it.
        for request in requests:
            self.ledger.record_destroyed(request.request_id, report.destroyed)
            self.ledger.record_done(request.request_id, report.retrained, report.samples_epochs, report.seconds,
                                    batch=report.request_ids)
        self._anchor()

    def record_version(self, request_id: str, uri: str) -> None:
        """Record in the ledger the model version published after `request_id`."""
        with self.locked():
            self.ledger.record_version(request_id, uri)
            self._anchor()

    # -- models ------------------------------------------------------------------------------------
    def require_no_pending(self) -> None:
        """Refuse to go on while a deletion is unfinished (some models may still have seen its ids).

        Raises:
            PendingRequestError: naming the first unfinished request.
        """
        pending = self.ledger.pending()
        if pending:
            raise PendingRequestError(
                f"deletion request {pending[0].request_id} is not finished; some models may still "
                "have seen its samples. Finish it first (SisaRun.serve_pending, or any training command)."
            )

    def final_keys(self) -> dict[int, str]:
        """Shard -> key of its final checkpoint under the current plan, for every non-empty shard.

        While a request is pending its ids are already out of the plan, so the keys of the shards
        holding them name checkpoints that do not exist yet.
        """
        return {job.shard: slice_keys(self.fingerprint, job.shard, job.slice_ids)[-1] for job in self.jobs(self.plan())}

    def constituents(self, keys: Mapping[int, str] | None = None) -> list[tuple[int, nn.Module]]:
        """(shard, model) of every non-empty shard, loaded from verified final checkpoints.

        Args:
            keys: the ensemble version to load, shard -> final checkpoint key (a service keeps the
                version it serves this way while later requests are pending); default the current
                ensemble, refused while a request is pending.

        Raises:
            PendingRequestError: no keys were given and a deletion is unfinished.
            SisaError: a shard has no trained model, or its checkpoint fails verification.
        """
        if keys is None:
            self.require_no_pending()
            keys = self.final_keys()
        models = []
        for shard, key in sorted(keys.items()):
            try:
                state = self.store.load(shard, self.config.num_slices - 1, key)
            except CheckpointMissingError:
                raise SisaError(f"shard {shard} has no trained model yet; train the run first") from None
            models.append((shard, self.trainer.load_model(shard, state).eval()))
        if not models:
            raise SisaError("the ensemble has no constituent left: every training sample was deleted")
        return models

    def predictor(self, batch_size: int = PREDICT_BATCH) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function of inputs x giving the constituent outputs (models, samples, classes), with the
        constituents loaded (and verified) once: what a service keeps between requests.

        With an encoder it runs once on x and every constituent on its outputs. It holds the ensemble
        as it is now: make a new one after a deletion.
        """
        models = [for_inference(m) for _, m in self.constituents()]
        encoder = self.encoder

        @torch.no_grad()
        def logits(x: torch.Tensor) -> torch.Tensor:
            if encoder is not None:
                x = encode_inputs(encoder, x, fixed_batches=False)  # (samples, *features): one backbone pass
            return torch.stack([outputs(m, x, batch_size) for m in models])

        return logits

    def logits(self, x: torch.Tensor, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
        """Constituent outputs for inputs x, shape (models, samples, classes); see `predictor`."""
        return self.predictor(batch_size)(x)

    def predict(self, x: torch.Tensor, how: str | None = None) -> torch.Tensor:
        """Ensemble labels (samples,) by `how` ('vote' or 'mean'; default the config's)."""
        return aggregate(self.logits(x), how or self.config.aggregation)

    def from_scratch(self, run_dir: str | Path, executor: Executor | None = None) -> SisaRun:
        """A new run on this run's retained data with the same recipe, seed and secret.

        Training it from scratch must give constituents bit-identical (CPU) to this run's: the
        check an auditor runs to see that deletions were exact.
        """
        retained = self.table.take(self.retained_ids())
        return SisaRun(run_dir, retained, self.trainer.model_factory, self.config, self.seed, self.fingerprint,
                       executor=executor, lock_timeout=self.lock_timeout, secret=self._secret, encoder=self.encoder,
                       non_deletable=self.non_deletable, non_deletable_reason=self.non_deletable_reason)


def _prepare_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunBindingError(f"run directory {run_dir} is a file; give a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunBindingError(f"cannot create run directory {run_dir}: {err.strerror}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunBindingError(f"run directory {run_dir} is not writable")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (the run's secret)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
