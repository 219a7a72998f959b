"""Ray: start or join a cluster, run shard jobs on ShardWorker actors, turn failures into own errors.

Actors are created when the first job needs them (or by `warm_up`, for a service) and reused for
every shard they are given while the executor lives; a shard job whose actor dies is retried on
the restarted actor and resumes from its last slice checkpoint.

A new local cluster starts Ray's own processes, whatever the command uses: the GCS, the raylet
with its dashboard and runtime-env agents, the log monitor, the autoscaler monitor and the API
server (which Ray starts even with the dashboard UI off; `ray.init` has no switch for it).
Joining a running cluster (`--address`) starts none of them. So a command with one shard to train
(a deletion that touches one shard, a monolithic model) and no cluster to join trains it in its own
process instead: a new cluster would run that one job on one actor at the same thread count, the same
bits, after seconds of start-up.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections import deque
from collections.abc import Callable

import torch

from orchestration.actors import FaultSpec, ShardWorker
from orchestration.config import RunConfig
from orchestration.datasets import cache_dir
from orchestration.frozen.backbone import Backbone
from orchestration.timings import phase
from sisa import SampleTable, ShardJob, ShardReport, SisaError
from sisa.ensemble import OnSlice

log = logging.getLogger(__name__)


class ShardFailedError(SisaError):
    """A shard kept failing after all retries; rerunning the command finishes the work."""


def ensure_ray(address: str = "", num_cpus: int | None = None):  # noqa: ANN201 - the ray module
    """Import ray and connect: to `address` or $RAY_ADDRESS if set, else start a new local cluster.

    A new local cluster is the default even when a `ray start` cluster runs on this machine (Ray
    itself would join the most recent one): joining a cluster is asked for, never guessed. The
    dashboard UI is off (Ray still starts its API server process). Says in one log line which
    cluster the command uses.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, single-user cluster needs no token
    import ray

    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or ""
        with phase("ray start"):
            try:
                ray.init(address=target or "local", num_cpus=None if target else num_cpus, include_dashboard=False,
                         log_to_driver=True, logging_level=logging.WARNING)
            except ConnectionError as err:
                raise ValueError(f"cannot join the Ray cluster at {target}: {str(err).strip().splitlines()[0]}; give "
                                 "the address of a running cluster (`ray start --head` prints it), or none for a "
                                 "local one") from None
        cpus = int(ray.cluster_resources().get("CPU", 0))
        log.info("ray: %s (%d CPUs)", f"joined the cluster at {target}" if target else "started a local cluster", cpus)
    return ray


class RayExecutor:
    """Runs shard jobs on a pool of ShardWorker actors (at most one per shard)."""

    def __init__(self, config: RunConfig, store_uri: str, fault: FaultSpec | None = None,
                 train: SampleTable | None = None, num_classes: int | None = None, fingerprint: str | None = None,
                 backbone: Backbone | None = None,
                 local: Callable[[list[ShardJob], OnSlice], list[ShardReport]] | None = None) -> None:
        """Prepare the pool; Ray is started or joined, and the data shared, on the first job.

        Args:
            config: the run's config.
            store_uri: the checkpoint store every worker reaches.
            fault: a fault to inject into workers (tests).
            train: what the constituents train on (the samples, or a frozen backbone's features of them).
            num_classes: classes the constituents output.
            fingerprint: the run's fingerprint (default: the config's own; a backbone's hash is part of it).
            backbone: the frozen backbone adapter-mode constituents are built around.
            local: the in-process engine, for a single job when no cluster runs or is named (`_alone`).
        """
        self.ray = None
        self.train, self.num_classes, self._data_ref = train, num_classes, None
        self.fingerprint = fingerprint or config.fingerprint()
        self.backbone, self._backbone_put = backbone, None
        data = dataclasses.replace(config.data, cache_dir=str(cache_dir(config.data)))
        self.config = dataclasses.replace(config, data=data)
        self.store_uri, self.fault, self.local = store_uri, fault, local
        self._actors: list = []

    def pool_size(self) -> int:
        """Actors to use: max_workers, or as many as the cluster's CPUs hold, at most one per shard."""
        self.ray = self.ray or ensure_ray(self.config.ray.address)
        r = self.config.ray
        if r.max_workers:
            size = r.max_workers
        elif r.num_cpus_per_shard > 0:
            size = int(self.ray.cluster_resources().get("CPU", 1) // r.num_cpus_per_shard)
        else:
            size = self.config.sisa.num_shards
        return max(1, min(size, self.config.sisa.num_shards))

    def close(self) -> None:
        """Stop the pool's actors (they also stop when the executor is garbage-collected)."""
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors.clear()

    def _start_actors(self, count: int) -> None:
        """Have `count` actors running (started ones are kept), and wait until the new ones are up."""
        if len(self._actors) >= count:
            return
        with phase("actor start"):
            r = self.config.ray
            remote = self.ray.remote(ShardWorker).options(
                num_cpus=r.num_cpus_per_shard, num_gpus=r.num_gpus_per_shard, max_restarts=r.max_retries,
                max_task_retries=r.max_retries,
            )
            new = [remote.remote(self.config, self.store_uri, self.fault, self.num_classes, self.fingerprint)
                   for _ in range(count - len(self._actors))]
            self._actors += new
            self.ray.get([actor.ready.remote() for actor in new])

    def warm_up(self) -> int:
        """Start the whole pool now and run one throwaway training step on every actor, so that
        later jobs pay neither actor start nor torch's lazy first-step imports; returns the pool size."""
        size = self.pool_size()
        self._start_actors(size)
        with phase("actor start"):
            self.ray.get([actor.warm_up.remote(self._train_ref(), self._backbone_ref()) for actor in self._actors])
        return size

    def _train_ref(self):  # noqa: ANN202 - an ObjectRef
        # Put once; every job names it, so every actor maps the same copy. It travels with each
        # task rather than the actor's constructor: Ray cannot promise a restarted actor its
        # constructor's object-store arguments, while a retried task gets its arguments again.
        if self._data_ref is None and self.train is not None:
            self._data_ref = self.ray.put(self.train)
        return self._data_ref

    def _backbone_ref(self):  # noqa: ANN202 - an ObjectRef, or None
        # The frozen weights travel once through the object store, like the data, whichever node trains.
        if self._backbone_put is None and self.backbone is not None:
            self._backbone_put = self.ray.put(self.backbone)
        return self._backbone_put

    def __call__(self, jobs: list[ShardJob], on_slice: OnSlice = None) -> list[ShardReport]:
        """Train `jobs` in parallel, collecting results as shards finish.

        A job whose actor dies is retried by Ray on the restarted actor (max_restarts and
        max_task_retries are both `ray.max_retries`) and resumes from its last slice checkpoint.
        """
        if not jobs:
            return []  # nothing to train: no cluster to start
        if self._alone(jobs):
            log.info("ray: one shard to train and no cluster running: trained in this process")
            return self.local(jobs, on_slice)
        pending, idle = deque(jobs), list(range(min(self.pool_size(), len(jobs))))
        self._start_actors(len(idle))
        with phase("retraining"):
            return self._run(pending, idle, on_slice)

    def _alone(self, jobs: list[ShardJob]) -> bool:
        """Whether `jobs` would start a new local cluster for one job that this process trains alike:
        no cluster named or joined, no GPU or injected fault for an actor, and this process's torch
        thread count the actors' (so the weights are the same bits)."""
        r = self.config.ray
        joined = self.ray is not None or ("ray" in sys.modules and sys.modules["ray"].is_initialized())
        return (len(jobs) == 1 and self.local is not None and not joined and not r.address
                and not os.environ.get("RAY_ADDRESS") and not r.num_gpus_per_shard and self.fault is None
                and torch.get_num_threads() == r.shard_threads())

    def _run(self, pending: deque, idle: list[int], on_slice: OnSlice) -> list[ShardReport]:
        from ray.exceptions import RayActorError, RayTaskError

        order = [job.shard for job in pending]
        in_flight: dict = {}
        reports: dict[int, ShardReport] = {}
        failed: tuple[int, BaseException] | None = None
        while in_flight or (pending and failed is None):
            while pending and idle and failed is None:
                index, job = idle.pop(), pending.popleft()
                ref = self._actors[index].train.remote(job, self._train_ref(), self._backbone_ref())
                in_flight[ref] = (index, job)
            [ref], _ = self.ray.wait(list(in_flight), num_returns=1)
            index, job = in_flight.pop(ref)
            try:
                report = self.ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                # Let the other shards finish (their checkpoints are kept) before failing.
                failed = failed or (job.shard, err)
                continue
            idle.append(index)
            reports[job.shard] = report
            for result in report.slices:
                if on_slice is not None:
                    on_slice(result)
        if failed is not None:
            shard, err = failed
            raise ShardFailedError(
                f"shard {shard} failed after {self.config.ray.max_retries} retries: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}. Its finished slices are checkpointed and any "
                "request stays pending in the ledger: rerun the command to complete the work."
            )
        return [reports[shard] for shard in order]
