"""Frozen backbones: heads on stored features and adapters inside a frozen part, exact like full training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from sisa import Frozen, InvalidRequestError, SampleTable, SisaRun, encode
from sisa.encoding import ENCODE_BATCH, encode_inputs
from sisa.frozen import frozen_keys, trainable_state
from sisa.seeding import seeded
from sisa.unlearning import audit
from tests.conftest import SMALL, assert_bit_identical, make_table


def _backbone() -> nn.Module:
    """A 'pretrained' backbone: fixed weights, batch norm with non-trivial statistics, dropout."""
    with seeded(99, "backbone"):
        net = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, 8))
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


BACKBONE = _backbone()


def _head() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


class LowRank(nn.Module):
    """A test adapter: base(x) + B(A(x)), B starting at zero (the LoRA form), around a frozen layer."""

    def __init__(self, base: nn.Linear, rank: int = 2) -> None:
        super().__init__()
        self.base, self.a, self.b = base, nn.Linear(base.in_features, rank, bias=False), nn.Linear(rank, base.out_features,
                                                                                                   bias=False)
        nn.init.zeros_(self.b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.b(self.a(x))


def _adapted() -> nn.Module:
    """The shared backbone's weights in a frozen part, a low-rank adapter on its last layer, and a head."""
    backbone = Frozen(_backbone())
    backbone.module[4] = LowRank(backbone.module[4])
    return nn.Sequential(backbone, nn.ReLU(), nn.Linear(8, 3))


HEAD = dataclasses.replace(SMALL, trainable="head", optimizer="adamw", lr=0.01)
ADAPTER = dataclasses.replace(SMALL, trainable="adapter", optimizer="adamw", lr=0.01, lr_schedule="cosine")


def _forget_ids(run: SisaRun) -> np.ndarray:
    plan = run.plan()
    return np.array([plan.slice_ids(0)[1][0], plan.slice_ids(0)[2][1], plan.slice_ids(2)[0][3]])


def test_encoder_features_of_a_sample_do_not_depend_on_the_other_samples():
    """Features are a pure function of the sample: extracting from a subset, a permutation or one
    sample gives the same bits as extracting from everything (fixed, padded batches)."""
    table = make_table(n=ENCODE_BATCH + 40)
    everything = encode(BACKBONE, table)
    subset = table.ids[3::7]
    assert torch.equal(everything.take(subset).tensors()[0], encode(BACKBONE, table, subset).tensors()[0])
    x = table.tensors()[0]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    assert torch.equal(encode_inputs(BACKBONE, x)[order], encode_inputs(BACKBONE, x[order]))
    assert torch.equal(encode_inputs(BACKBONE, x[5:6])[0], everything.tensors()[0][5])
    assert everything.sample_shape == (8,)


def test_head_mode_forget_is_bit_identical_to_training_heads_from_scratch(tmp_path, table):
    run = SisaRun(tmp_path / "run", table, _head, HEAD, seed=7, fingerprint="head", encoder=BACKBONE)
    run.train()
    forget = _forget_ids(run)

    report = run.forget(forget)

    scratch = SisaRun(tmp_path / "scratch", table.without(forget), _head, HEAD, seed=7, fingerprint="head",
                      encoder=BACKBONE, secret=run.secret)
    scratch.train()
    assert report.retrained == {0: [1, 2], 2: [0, 1, 2]}
    for (_, a), (_, b) in zip(run.constituents(), scratch.constituents(), strict=True):
        assert_bit_identical(a, b)
    assert audit(run.store, forget) == []


def test_head_mode_predicts_with_one_encoder_pass_and_the_heads(tmp_path, table):
    run = SisaRun(tmp_path / "run", table, _head, HEAD, seed=7, fingerprint="head", encoder=BACKBONE)
    run.train()
    calls = []
    hook = BACKBONE.register_forward_hook(lambda *args: calls.append(1))
    x = table.tensors()[0][:100]
    try:
        logits = run.logits(x)
    finally:
        hook.remove()
    assert len(calls) == 1, "one backbone batch for 100 samples and three heads"
    features = encode_inputs(BACKBONE, x, fixed_batches=False)
    assert torch.equal(logits, torch.stack([m(features) for _, m in run.constituents()]))
    entry = run.store.entries()[0]
    assert set(run.store.load(entry.shard, entry.slice, entry.key)["model"]) == set(_head().state_dict())


def test_head_mode_trains_on_given_inputs_that_must_cover_the_retained_ids(tmp_path, table):
    features = encode(BACKBONE, table)
    given = []

    def inputs(ids: np.ndarray) -> SampleTable:
        given.append(ids)
        return features.take(ids[1:])  # one retained sample short

    with pytest.raises(Exception, match="lack 1 retained sample"):
        SisaRun(tmp_path / "run", table, _head, HEAD, seed=7, fingerprint="head", encoder=BACKBONE, inputs=inputs)
    assert np.array_equal(given[0], table.ids) and not (tmp_path / "run").exists()


def test_adapter_mode_forget_is_bit_identical_and_checkpoints_hold_no_frozen_weight(tmp_path, table):
    run = SisaRun(tmp_path / "run", table, _adapted, ADAPTER, seed=7, fingerprint="adapter")
    run.train()
    forget = _forget_ids(run)

    report = run.forget(forget)

    scratch = SisaRun(tmp_path / "scratch", table.without(forget), _adapted, ADAPTER, seed=7, fingerprint="adapter",
                      secret=run.secret)
    scratch.train()
    assert report.retrained == {0: [1, 2], 2: [0, 1, 2]}
    for (_, a), (_, b) in zip(run.constituents(), scratch.constituents(), strict=True):
        assert_bit_identical(a, b)
    model = _adapted()
    assert frozen_keys(model) == {f"0.module.{k}" for k in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                                            "1.running_var", "1.num_batches_tracked", "4.base.weight",
                                                            "4.base.bias")}
    trained = {"0.module.4.a.weight", "0.module.4.b.weight", "2.weight", "2.bias"}
    for entry in run.store.entries():
        assert set(run.store.load(entry.shard, entry.slice, entry.key)["model"]) == trained


def test_adapter_training_moves_the_adapters_and_never_the_frozen_weights_or_statistics(tmp_path, table):
    run = SisaRun(tmp_path / "run", table, _adapted, ADAPTER, seed=7, fingerprint="adapter")
    run.train()
    reference = _backbone().state_dict()
    for _, model in run.constituents():
        frozen = model[0].module.state_dict()
        assert torch.equal(frozen["4.base.weight"], reference["4.weight"])
        for key in ("0.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"):
            assert torch.equal(frozen[key], reference[key]), key
        assert model[0].module[4].b.weight.abs().sum() > 0, "the adapter trained (it starts at zero)"
    model = _adapted()
    model.train()
    assert not model[0].training and not model[0].module[1].training, "a frozen part stays in eval mode"


def test_trainable_state_of_a_model_without_frozen_parts_is_its_whole_state_dict():
    model = _head()
    assert list(trainable_state(model)) == list(model.state_dict())


def test_a_constituent_that_does_not_match_sisa_trainable_is_refused(tmp_path, table):
    with pytest.raises(ValueError, match="needs constituents with a frozen backbone"):
        SisaRun(tmp_path / "a", table, _head_on_raw, ADAPTER, seed=7, fingerprint="x").train()
    with pytest.raises(ValueError, match="use sisa.trainable='adapter'"):
        SisaRun(tmp_path / "b", table, _adapted, SMALL, seed=7, fingerprint="x").train()
    with pytest.raises(ValueError, match="sisa.augment cannot apply with sisa.trainable='head'"):
        dataclasses.replace(HEAD, augment=True)


def _head_on_raw() -> nn.Module:
    return nn.Linear(6, 3)


def test_a_request_naming_a_non_deletable_id_is_refused_whole_and_records_nothing(tmp_path):
    keys = np.array([f"user-{i:03d}" for i in range(240)])
    source = make_table()
    table = SampleTable.from_numpy(source.tensors()[0].numpy(), source.labels, keys=keys)
    public = table.lookup(["user-005", "user-007"])
    run = SisaRun(tmp_path / "run", table, _head, HEAD, seed=7, fingerprint="head", encoder=BACKBONE,
                  non_deletable=public, non_deletable_reason="the backbone was trained on them")
    run.train()
    before = {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != "lock"}

    with pytest.raises(InvalidRequestError, match=r"\['user-007'\] cannot be deleted: the backbone was trained on them"):
        run.forget(table.lookup(["user-001", "user-007"]))

    assert run.ledger.requests() == []
    assert {p: p.read_bytes() for p in run.run_dir.rglob("*") if p.is_file() and p.name != "lock"} == before
