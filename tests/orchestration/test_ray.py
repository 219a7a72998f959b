"""The Ray engine: same ensemble as in-process, fault tolerance, clear failure."""

from __future__ import annotations

import pytest
import torch

from orchestration.actors import FaultSpec
from orchestration.cluster import ShardFailedError
from orchestration.runs import open_session
from sisa.unlearning import audit
from tests.conftest import assert_bit_identical

pytestmark = pytest.mark.ray
SETTINGS = ["sisa.num_shards=3", "sisa.num_slices=3", "sisa.epochs=6", "tracking.enabled=false"]


def _session(path, engine, fault=None, extra=(), secret=None):
    return open_session(path, overrides=[*SETTINGS, f"ray.engine={engine}", *extra], create=True, fault=fault,
                        secret=secret)


def test_ray_engine_gives_the_same_ensemble_as_the_local_engine(tmp_path, ray_cluster):
    local = _session(tmp_path / "local", "local")
    remote = _session(tmp_path / "ray", "ray", secret=local.run.secret)  # the same shard assignment
    threads = torch.get_num_threads()
    # The commands run the in-process engine at the actors' thread count (1 per CPU a shard
    # reserves), so both engines sum in the same order: weights agree bit for bit.
    torch.set_num_threads(local.config.ray.command_threads())
    try:
        for session in (local, remote):
            session.run.train()
            session.run.forget([3, 17, 42, 500])
    finally:
        torch.set_num_threads(threads)
    x, _ = local.test.tensors()
    assert torch.equal(local.run.predict(x), remote.run.predict(x))
    assert torch.equal(local.run.predict(x, "mean"), remote.run.predict(x, "mean"))
    for (_, a), (_, b) in zip(local.run.constituents(), remote.run.constituents()):
        assert_bit_identical(a, b)
    remote.run.executor.close()


def test_killed_actor_is_restarted_and_resumes_from_its_last_slice_checkpoint(tmp_path, ray_cluster):
    marker = tmp_path / "killed-once"
    fault = FaultSpec(shard=1, slice=2, epoch=1, marker=str(marker))
    session = _session(tmp_path / "ray", "ray", fault)
    reports = session.run.train()
    assert marker.exists(), "the worker of shard 1 was killed in the middle of slice 2"
    by_shard = {r.shard: r for r in reports}
    assert (by_shard[1].resumed_from, by_shard[1].retrained_slices) == (1, [2])
    assert [by_shard[s].retrained_slices for s in (0, 2)] == [[0, 1, 2], [0, 1, 2]]
    session.run.executor.close()  # its actors hold the cluster's CPUs
    reference = _session(tmp_path / "undisturbed", "ray", secret=session.run.secret)
    reference.run.train()
    for (_, a), (_, b) in zip(reference.run.constituents(), session.run.constituents()):
        assert_bit_identical(a, b)
    reference.run.executor.close()


def test_shard_that_keeps_failing_names_the_shard_and_a_rerun_completes(tmp_path, ray_cluster):
    session = _session(tmp_path / "ray", "local")
    session.run.train()
    failing = _session(tmp_path / "ray", "ray", FaultSpec(shard=0, slice=0, epoch=0), ["ray.max_retries=1"])
    forget = failing.run.plan().slice_ids(0)[0][:2]
    with pytest.raises(ShardFailedError, match="shard 0 failed after 1 retries"):
        failing.run.forget(forget)
    failing.run.executor.close()
    assert [r.request_id for r in failing.run.ledger.pending()] == ["r-0001"]

    rerun = _session(tmp_path / "ray", "ray")
    finished = rerun.run.serve_pending()
    assert finished.request_ids == ["r-0001"] and rerun.run.ledger.pending() == []
    assert audit(rerun.run.store, forget) == []
    rerun.run.executor.close()
