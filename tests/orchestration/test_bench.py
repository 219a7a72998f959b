"""`unlearn bench`: forget sets per scenario, method checks, and end-to-end runs on digits."""

from __future__ import annotations

import copy

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

import approx
from orchestration import commands
from orchestration.approximate import unlearn_constituents
from orchestration.bench import create_methods, forget_requests
from orchestration.config import BenchConfig, ModelConfig, load_config
from orchestration.models import build_model
from orchestration.tracking import MemoryTracker
from tests.conftest import assert_bit_identical, make_table, open_run, weights
from tests.orchestration.test_cli import run_cli

TINY = ["data.train_limit=400", "sisa.epochs=2", "sisa.num_shards=2", "sisa.num_slices=2", "bench.seeds=0,1",
        "bench.cost_requests=2", "bench.methods=finetune,gradient_ascent"]


def test_random_scenario_forgets_the_fraction_with_the_same_ids_for_every_model_seed():
    table = make_table(200)
    requests = forget_requests(BenchConfig(forget_fraction=0.1), table)
    assert len(requests) == 1 and len(requests[0]) == 20 and len(np.unique(requests[0])) == 20
    assert np.array_equal(requests[0], forget_requests(BenchConfig(forget_fraction=0.1, seeds=(5, 6)), table)[0])
    assert not np.array_equal(requests[0], forget_requests(BenchConfig(forget_fraction=0.1, forget_seed=1), table)[0])


def test_class_scenario_forgets_every_sample_of_the_class():
    table = make_table(200)
    (ids,) = forget_requests(BenchConfig(scenario="class", forget_class=2), table)
    labels = table.table.column("label").to_numpy()
    assert np.array_equal(ids, table.ids[labels == 2])


def test_class_scenario_rejects_a_label_without_samples():
    with pytest.raises(ValueError, match=r"labels present: \[0, 1, 2\]"):
        forget_requests(BenchConfig(scenario="class", forget_class=7), make_table(200))


def test_stream_scenario_is_a_sequence_of_single_sample_requests():
    requests = forget_requests(BenchConfig(scenario="stream", stream_requests=4), make_table(200))
    assert [len(r) for r in requests] == [1, 1, 1, 1]
    assert len(np.unique(np.concatenate(requests))) == 4


def test_bench_config_rejects_bad_settings_listing_valid_ones():
    with pytest.raises(ValueError, match="random, class, stream"):
        load_config(None, ["bench.scenario=everything"])
    with pytest.raises(ValueError, match="subset of"):
        load_config(None, ["bench.targets=cluster"])
    with pytest.raises(ValueError, match="unknown method 'nope'; valid:"):
        create_methods(BenchConfig(methods=("nope",)))
    with pytest.raises(ValueError, match="has no parameter"):
        create_methods(BenchConfig(params={"finetune": {"alpha": 1}}))
    with pytest.raises(ValueError, match="does not run"):
        create_methods(BenchConfig(methods=("finetune",), params={"salun": {"lr": 1}}))


def test_bench_leaves_out_methods_the_model_cannot_run_unless_they_are_named():
    mlp = build_model(ModelConfig(name="mlp"), (1, 8, 8), 10)
    cnn = build_model(ModelConfig(name="cnn"), (1, 8, 8), 10)
    on_mlp = [m.name for m in create_methods(BenchConfig(), mlp)]
    assert on_mlp == [n for n in approx.available() if n not in ("conv_transpose", "masked_small_gradients")]
    assert [m.name for m in create_methods(BenchConfig(), cnn)] == approx.available()
    with pytest.raises(ValueError, match="conv_transpose needs a model with Conv2d layers"):
        create_methods(BenchConfig(methods=("finetune", "conv_transpose")), mlp)


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


def test_bench_end_to_end_scores_every_method_against_retraining(tmp_path):
    config = load_config(None, TINY + ["bench.scenario=stream", "bench.stream_requests=2"])
    planned, steps = [], []
    result = commands.bench(config, tmp_path / "out", MemoryTracker(), steps.append, planned.append)
    assert planned == [len(steps)] == [2 * (4 + 2 * 2)]  # per seed: originals x2, retrain, sisa, 2 methods x 2 targets
    names = {(r.method, r.target) for r in result.rows}
    assert names == {("retrain", "single"), ("sisa", "ensemble"), ("original", "single"), ("original", "ensemble"),
                     *((m, t) for m in ("finetune", "gradient_ascent") for t in ("single", "ensemble"))}
    assert len(result.rows) == 2 * len(names)
    retrain = [r for r in result.rows if r.method == "retrain"]
    assert all(r.metrics["gap"] == 0 and r.metrics["KL"] == 0 for r in retrain)
    # each request retrains the single model from scratch on what is left: (400-1)*2 + (400-2)*2
    assert all(r.metrics["samples_epochs"] == 399 * 2 + 398 * 2 for r in retrain)
    summary = {(e["method"], e["target"]): e for e in result.summary}
    assert summary[("retrain", "single")]["FQ"] == 1.0 and summary[("sisa", "ensemble")]["FQ"] == 1.0
    finetune, retrain = summary[("finetune", "single")], summary[("retrain", "single")]
    # the score (at most 1) times the RA and TA ratios to retraining, which pass 1 where FT beats retraining
    assert 0 <= finetune["FQ"] <= finetune["RA"] / retrain["RA"] * finetune["TA"] / retrain["TA"] + 1e-9
    assert [p["request"] for p in result.curve] == [1, 2]
    assert {p.name for p in result.files} == {"results.md", "results.csv", "rows.parquet", "gap_vs_time.png",
                                              "metrics.png", "sisa_cost.png"}
    assert pq.read_table(tmp_path / "out" / "rows.parquet").num_rows == len(result.rows)


def test_bench_cli_prints_the_table_writes_plots_and_logs_parent_and_child_runs_to_mlflow(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_cli(capsys, "bench", "--quick", "--tracking-uri", uri, *sum((["--set", s] for s in TINY), []))
    assert code == 0, err
    assert "| retrain | single | " in out and "| sisa | ensemble | " in out and "| gradient_ascent | ensemble |" in out
    for name in ("results.md", "results.csv", "gap_vs_time.png", "metrics.png", "sisa_cost.png"):
        assert (tmp_path / "runs" / "bench" / name).stat().st_size > 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["unlearn"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("command") == "bench"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 * 8  # 2 seeds x (original x2, retrain, sisa, 2 methods x 2 targets)
    assert {"gap/avg", "mia/efficacy", "forget/UA", "time/unlearn_s"} <= set(children[0].data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id)}
    assert {"results.md", "results.csv", "gap_vs_time.png", "metrics.png", "sisa_cost.png"} <= artifacts


def test_quick_shrinks_the_bench():
    from orchestration.cli import quick

    config = quick(load_config(None, []))
    assert config.bench.seeds == (0, 1) and config.sisa.epochs == 5 and config.data.train_limit == 2000


def test_bench_with_no_arguments_runs_the_default_digits_bench(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's main command, as a user runs it
    code, out, err = run_cli(capsys, "bench")
    assert code == 0, err
    assert "digits, mlp, scenario random, 144 sample(s) forgotten, seeds [0, 1, 2, 3, 4]" in out
    table_lines = [line for line in out.splitlines() if line.startswith("| ")]
    fitting = create_methods(BenchConfig(), build_model(ModelConfig(name="mlp"), (1, 8, 8), 10))  # CT, MSG need convs
    assert len(fitting) == len(approx.available()) - 2
    assert len(table_lines) == 1 + 4 + 2 * len(fitting)  # header, original x2, retrain, sisa, methods
    assert "| conv_transpose |" not in out
    assert (tmp_path / "runs" / "bench" / "sisa_cost.png").exists()
