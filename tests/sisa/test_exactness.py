"""The SISA exactness and compliance invariants (DESIGN.md section 2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from sisa import SampleTable, SisaRun
from sisa.unlearning import audit
from tests.conftest import SMALL, assert_bit_identical, make_table, open_run, scratch_of, tiny_model


def _file_stamps(run) -> dict[str, tuple[int, bytes]]:
    stamps = {}
    for path in sorted(run.run_dir.joinpath("checkpoints").rglob("*")):
        if path.is_file():
            stamps[str(path)] = (path.stat().st_mtime_ns, path.read_bytes())
    return stamps


def test_forget_is_bit_identical_to_training_from_scratch_without_the_ids(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    run.train()
    plan = run.plan()
    forget = np.array([plan.slice_ids(0)[1][0], plan.slice_ids(0)[2][0], plan.slice_ids(2)[0][3]])
    before = _file_stamps(run)

    report = run.forget(forget)

    scratch = scratch_of(run, tmp_path / "scratch", table.without(forget))
    ours, theirs = run.constituents(), scratch.constituents()
    assert [s for s, _ in ours] == [s for s, _ in theirs] == [0, 1, 2]
    for (_, a), (_, b) in zip(ours, theirs):
        assert_bit_identical(a, b)
    assert report.retrained == {0: [1, 2], 2: [0, 1, 2]}
    after = _file_stamps(run)
    untouched = {p: v for p, v in before.items() if "/shard-001/" in p}
    assert untouched and all(after[p] == v for p, v in untouched.items()), "shard 1 was not affected"
    assert torch.equal(run.logits(table.tensors()[0]), scratch.logits(table.tensors()[0]))


def test_forget_leaves_no_checkpoint_whose_manifest_lists_a_deleted_id(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    run.train()
    forget = np.arange(0, 240, 7)
    assert audit(run.store, forget), "before the deletion, checkpoints saw the ids"

    report = run.forget(forget)

    assert audit(run.store, forget) == []
    assert report.purged > 0
    manifests = [run.store.read_manifest(e) for e in run.store.entries()]
    assert len(manifests) == 9 and not np.isin(np.concatenate([m["sample_ids"] for m in manifests]), forget).any()


def test_forget_batch_retrains_each_affected_shard_once_from_its_earliest_slice(tmp_path, table):
    calls: list[int] = []
    run = open_run(tmp_path / "run", table)
    run.train()
    plan = run.plan()
    forget = np.concatenate([plan.slice_ids(1)[2][:3], plan.slice_ids(1)[1][:1], plan.slice_ids(2)[2][:2]])
    inner = run.executor

    def counting(jobs, on_slice):
        calls.extend(job.shard for job in jobs)
        return inner(jobs, on_slice)

    run.executor = counting
    report = run.forget(forget)

    assert calls == [1, 2]
    assert report.dirty == {1: 1, 2: 2}
    assert report.retrained == {1: [1, 2], 2: [2]}
    sizes = [len(np.concatenate(run.plan().slice_ids(1)[: r + 1])) for r in (1, 2)]
    assert report.samples_epochs == (sizes[0] + sizes[1] + len(run.plan().slice_ids(2)[0])
                                     + len(run.plan().slice_ids(2)[1]) + len(run.plan().slice_ids(2)[2])) * 2


def test_training_twice_in_a_row_trains_nothing_the_second_time(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    assert sum(len(r.slices) for r in run.train()) == 9
    assert all(r.resumed_from == 2 and not r.slices for r in run.train())


def test_forget_with_sparse_checkpoints_resumes_further_back_and_stays_bit_identical(tmp_path, table):
    config = dataclasses.replace(SMALL, num_slices=4, checkpoint_every=2)
    run = open_run(tmp_path / "run", table, config)
    run.train()
    assert sorted({e.slice for e in run.store.entries()}) == [1, 3], "only every 2nd slice and the last are kept"
    plan = run.plan()
    forget = np.array([plan.slice_ids(0)[3][0]])  # slice 3 of shard 0: resumes from slice 1's checkpoint

    report = run.forget(forget)

    assert report.retrained == {0: [2, 3]}
    scratch = scratch_of(run, tmp_path / "scratch", table.without(forget), config)
    for (_, a), (_, b) in zip(run.constituents(), scratch.constituents()):
        assert_bit_identical(a, b)


def test_only_checkpoints_that_training_resumes_from_carry_the_optimizer_state(tmp_path, table):
    run = open_run(tmp_path / "run", table)
    run.train()
    for entry in run.store.entries():
        state = run.store.load(entry.shard, entry.slice, entry.key)
        assert ("optimizer" in state) == (entry.slice < SMALL.num_slices - 1)


def _tiny_cnn() -> nn.Module:
    """Conv, batch norm, dropout: every kind of state and randomness, on (1, 8, 8) images."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


_RECIPE = dataclasses.replace(SMALL, optimizer="adamw", lr=0.01, lr_schedule="cosine", lr_min=0.001,
                              label_smoothing=0.1)
_CASES = {
    "table": (lambda x: x, tiny_model, _RECIPE),
    "images": (lambda x: x.reshape(len(x), 1, 8, 8), _tiny_cnn, dataclasses.replace(_RECIPE, augment=True,
                                                                                       augment_padding=2)),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_forget_by_string_ids_with_adamw_cosine_and_augmentation_is_bit_identical_to_scratch(tmp_path, case):
    """String ids, AdamW, a cosine schedule, label smoothing and (for images) crops and flips: a deletion
    leaves the same constituents as training from scratch on the data set rebuilt without the ids."""
    shape, factory, config = _CASES[case]
    source = make_table(n=150 if case == "images" else 240, features=64 if case == "images" else 6)
    x, labels = shape(source.tensors()[0].numpy()), source.labels
    keys = np.array([f"user-{i:03d}" for i in range(len(x))])
    table = SampleTable.from_numpy(x, labels, keys=keys)
    run = SisaRun(tmp_path / "run", table, factory, config, seed=7, fingerprint="keyed")
    run.train()
    plan = run.plan()
    forget = table.keys_of(np.concatenate([plan.slice_ids(0)[1][:2], plan.slice_ids(2)[2][:1]])).to_pylist()

    report = run.forget(table.lookup(forget))

    keep = ~np.isin(keys, forget)
    rebuilt = SampleTable.from_numpy(x[keep], labels[keep], keys=keys[keep])  # the data set re-read without them
    scratch = SisaRun(tmp_path / "scratch", rebuilt, factory, config, seed=7, fingerprint="keyed", secret=run.secret)
    scratch.train()
    assert report.retrained == {0: [1, 2], 2: [2]}
    for (_, a), (_, b) in zip(run.constituents(), scratch.constituents(), strict=True):
        assert_bit_identical(a, b)
    assert audit(run.store, table.lookup(forget)) == []
    states = [run.store.load(e.shard, e.slice, e.key) for e in run.store.entries() if e.slice < config.num_slices - 1]
    assert all("exp_avg_sq" in next(iter(s["optimizer"]["state"].values())) for s in states), "AdamW state is kept"


def test_augmentation_changes_training(tmp_path):
    """Guards the exactness test above against vacuity: crops and flips do reach the model."""
    source = make_table(n=64, features=64)
    table = SampleTable.from_numpy(source.tensors()[0].numpy().reshape(-1, 1, 8, 8), source.labels)
    config = dataclasses.replace(_CASES["images"][2], num_shards=1, num_slices=1, epochs=1)
    models = []
    for augment in (True, False):
        run = SisaRun(tmp_path / str(augment), table, _tiny_cnn, dataclasses.replace(config, augment=augment), seed=7,
                      fingerprint="aug")
        run.train()
        models.append(run.constituents()[0][1])
    assert not torch.equal(models[0][0].weight, models[1][0].weight)
