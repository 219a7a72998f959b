"""Bench models: cache keys, one training per model, SISA deletion as exact as retraining, skipped methods."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import approx
from orchestration.approximate import unlearn_constituents
from orchestration.bench import populations
from orchestration.bench.jobs import Delete, Train, Unlearn, Workspace, folder_name, key
from orchestration.bench.populations import run_job
from orchestration.config import load_config
from tests.conftest import assert_bit_identical, make_table, open_run, weights

SETTINGS = ["model.hidden=16", "sisa.epochs=2", "sisa.num_shards=2", "sisa.num_slices=2", "sisa.batch_size=16"]


def workspace(tmp_path: Path, *overrides: str) -> Workspace:
    train, test = make_table(120), make_table(40, seed=1)
    forget = train.ids[:12]
    splits = {"forget": ("train", forget), "retain": ("train", train.ids[12:]), "test": ("test", test.ids)}
    return Workspace(load_config(None, SETTINGS + list(overrides)), train, test, 3, splits, tmp_path / "models")


def test_cache_key_follows_what_determines_a_model(tmp_path):
    ws = workspace(tmp_path)
    ids = ws.train.ids
    base = key(Train("single", 1, ids), ws.config)
    assert key(Train("single", 1, ids.copy(), keep_run=True), ws.config) == base  # how it is kept is not what it is
    assert key(Train("single", 2, ids), ws.config) != base
    assert key(Train("single", 1, ids[1:]), ws.config) != base
    assert key(Train("sisa", 1, ids), ws.config) != base
    assert key(Train("single", 1, ids), workspace(tmp_path, "sisa.lr=0.01").config) != base
    for unrelated in ("bench.models=4", "bench.methods=finetune", "tracking.enabled=false", "ray.engine=local", "seed=9"):
        assert key(Train("single", 1, ids), workspace(tmp_path, unrelated).config) == base, unrelated
    original = Train("single", 1, ids)
    unlearned = key(Unlearn(original, approx.create("finetune"), (ids[:3],), 0), ws.config)
    assert key(Unlearn(original, approx.create("finetune", lr=0.1), (ids[:3],), 0), ws.config) != unlearned
    assert key(Unlearn(original, approx.create("finetune"), (ids[:3],), 1), ws.config) != unlearned
    assert key(Unlearn(original, approx.create("finetune"), (ids[:4],), 0), ws.config) != unlearned


def test_run_job_trains_once_then_reads_weights_only_files_from_the_cache(tmp_path):
    ws = workspace(tmp_path)
    job = Train("single", 5, ws.train.ids)
    first = run_job(job, ws)
    again = run_job(Train("single", 5, ws.train.ids), ws)
    assert first.fresh and not again.fresh
    assert again.cost == first.cost  # the cost measured when the model was made
    for split in ("forget", "retain", "test"):
        assert np.array_equal(first.outputs.margins[split], again.outputs.margins[split])
    folder = ws.cache / f"single-{key(job, ws.config)}"
    state = torch.load(folder / "model.pt", weights_only=True)
    assert state["shards"] == [0] and {"meta.json", "model.pt"} <= {p.name for p in folder.iterdir()}


def test_outputs_on_new_splits_come_from_the_cached_model_without_training(tmp_path):
    ws = workspace(tmp_path)
    run_job(Train("single", 5, ws.train.ids), ws)
    other = dataclasses.replace(ws, splits={**ws.splits, "forget": ("train", ws.train.ids[:20])})
    result = run_job(Train("single", 5, ws.train.ids), other)
    assert not result.fresh and len(result.outputs.margins["forget"]) == 20


def test_sisa_deletion_in_the_bench_equals_the_ensemble_trained_without_the_forget_set(tmp_path):
    ws = workspace(tmp_path)
    forget = ws.splits["forget"][1]
    original = Train("sisa", 3, ws.train.ids, keep_run=True)
    run_job(original, ws)
    deleted = run_job(Delete(original, (forget[:5], forget[5:])), ws)
    retrained = run_job(Train("sisa", 3, np.setdiff1d(ws.train.ids, forget)), ws)
    for split in ("forget", "retain", "test"):
        assert np.array_equal(deleted.outputs.margins[split], retrained.outputs.margins[split]), split
    assert len(deleted.request_costs) == 2 and deleted.cost.samples_epochs > 0


def test_unlearn_job_that_the_method_cannot_run_is_skipped_with_the_reason(tmp_path, monkeypatch):
    ws = workspace(tmp_path)
    original = Train("single", 5, ws.train.ids)
    run_job(original, ws)

    def refuse(*args, **kwargs):
        raise ValueError("conv_transpose needs Conv2d layers; this model has none\nsecond line")

    monkeypatch.setattr(populations.approx, "unlearn", refuse)
    job = Unlearn(original, approx.create("finetune"), (ws.splits["forget"][1],), 0)
    result = run_job(job, ws)
    assert result.skipped == "conv_transpose needs Conv2d layers; this model has none" and result.outputs is None
    assert not (ws.cache / folder_name(job, ws.config)).exists()


def test_an_unlearned_model_whose_outputs_overflow_is_a_failed_run_not_a_score(tmp_path, monkeypatch):
    """Finite weights whose logits overflow (gradient ascent at a large lr): no metric is defined on
    NaN margins, so the run is skipped with the reason, as a non-finite loss is, and nothing is kept."""
    ws = workspace(tmp_path)
    original = Train("single", 5, ws.train.ids)
    run_job(original, ws)
    real = approx.unlearn

    def overflow(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(1e30)  # finite, but a layer's sums pass float32's 3.4e38
        return result

    monkeypatch.setattr(populations.approx, "unlearn", overflow)
    job = Unlearn(original, approx.create("finetune"), (ws.splits["forget"][1],), 0)
    result = run_job(job, ws)
    assert result.skipped == "finetune: its outputs became non-finite (inf or NaN logits); lower lr"
    assert result.outputs is None and not (ws.cache / folder_name(job, ws.config)).exists()


def test_unlearn_constituents_changes_only_shards_holding_the_ids_and_never_retrains_on_forgotten_ids(tmp_path):
    table = make_table()
    run = open_run(tmp_path / "run", table)
    run.train()
    plan = run.plan()
    models = dict(run.constituents())
    before = {s: copy.deepcopy(m) for s, m in models.items()}
    ids = plan.sample_ids[plan.shard == 1][:3]
    samples = unlearn_constituents(models, plan, table, ids, approx.create("finetune", epochs=1), 3, 0, "cpu",
                                   forgotten=plan.sample_ids[plan.shard == 1][3:10])
    assert any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(weights(models[1]).values(),
                                                                          weights(before[1]).values()))
    for shard in (0, 2):
        assert_bit_identical(models[shard], before[shard])
    # finetune passes once over the shard's retain set: the shard minus the request and the 7 forgotten ids
    assert samples == int((plan.shard == 1).sum()) - 3 - 7


def test_deletion_without_the_original_checkpoints_says_what_is_missing(tmp_path):
    ws = workspace(tmp_path)
    original = Train("sisa", 3, ws.train.ids)  # trained without keeping its slice checkpoints
    run_job(original, ws)
    with pytest.raises(RuntimeError, match="no slice checkpoints"):
        run_job(Delete(original, (ws.splits["forget"][1],)), ws)
