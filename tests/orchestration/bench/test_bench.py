"""`unlearn bench` end to end: populations, floors and ceilings, SISA at its floor, the cache, Ray, MLflow."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pyarrow.csv as pcsv
import pytest

import approx
from orchestration.bench import populations
from orchestration.bench.fanout import InProcess, RayTasks
from orchestration.bench.run import run_bench
from orchestration.bench.scoring import floor_verdict
from orchestration.cli import quick
from orchestration.config import load_config
from orchestration.tracking import MemoryTracker
from sisa.training import ShardTrainer
from tests.orchestration.test_cli import run_cli

TINY = ["data.train_limit=150", "sisa.epochs=4", "sisa.num_shards=2", "sisa.num_slices=2", "bench.models=4",
        "bench.methods=finetune,gradient_ascent", "bench.cost_requests=2", "ray.engine=local", "tracking.enabled=false"]
COSTS = ("seconds", "cpu_share", "peak_mb", "speedup", "samples_epochs", "cpu_seconds")


def _sets(*settings: str) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


def test_quick_bench_puts_sisa_at_the_floor_of_its_oracles_between_floor_and_ceiling(tmp_path, capsys, monkeypatch):
    """Class-wise forgetting: originals are told apart from the oracles (ceiling), SISA's deletions are not."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out, err = run_cli(capsys, "bench", "--quick", "--engine", "local", "--tracking-uri", uri, *_sets(
        "bench.scenario=class", "data.train_limit=200", "sisa.epochs=10", "sisa.num_shards=2", "sisa.num_slices=2",
        "bench.methods=finetune,gradient_ascent"))
    assert code == 0, err
    rows = {(r["method"], r["target"]): r for r in pcsv.read_csv(tmp_path / "runs/bench/results.csv").to_pylist()}
    single = {(m, "single") for m in ("retrain", "original", "finetune", "gradient_ascent")}
    assert set(rows) == single | {("retrain", "ensemble"), ("original", "ensemble"), ("sisa", "ensemble")}
    floor, ceiling, sisa = rows[("retrain", "ensemble")], rows[("original", "ensemble")], rows[("sisa", "ensemble")]
    assert ceiling["ulira"] > 0.9  # the originals saw the class: an attack tells them from the oracles
    assert floor_verdict(sisa, floor, ceiling) == "at the floor"
    assert "SISA's exact deletions against SISA oracles" in out and ": at the floor" in out
    assert rows[("retrain", "single")]["ua"] == 100.0 and rows[("original", "single")]["ua"] < 10
    table = out[out.index("single model:") : out.index("full tables")]
    assert max(map(len, table.splitlines())) <= 120
    for name in ("results.md", "results.csv", "results.parquet", "protocol.json", "klom_vs_time.png", "metrics_single.png",
                 "metrics_ensemble.png", "margins_single.png", "margins_ensemble.png", "sisa_cost.png",
                 "examples/ensemble-sisa.npz"):
        assert (tmp_path / "runs/bench" / name).stat().st_size > 0, name
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["unlearn"], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("command") == "bench"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(rows)
    finetune = next(r for r in children if r.info.run_name == "finetune-single")
    assert {"klom/forget_p95", "klom/forget_median", "ulira/acc", "fq/score", "test/acc", "mia/efficacy",
            "time/unlearn_s"} <= set(finetune.data.metrics)
    assert finetune.data.params["method.lr"] == str(approx.create("finetune").lr)
    client = mlflow.MlflowClient()
    assert "single-finetune.npz" in {a.path for a in client.list_artifacts(finetune.info.run_id)}
    assert {"results.md", "protocol.json", "klom_vs_time.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_bench_with_a_bad_forget_set_says_so_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    code, _, err = run_cli(capsys, "bench", "--engine", "local", *_sets("bench.scenario=class", "bench.forget_class=42"))
    assert code == 2 and err.strip().splitlines() == [
        "error: bench.forget_class 42 must be a label with some but not all samples; labels present: "
        "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    assert list(tmp_path.iterdir()) == []


def test_floor_verdict_fails_a_population_that_forgot_nothing():
    floor = {"ulira": 0.52, "ulira_lo": 0.48, "ulira_hi": 0.56}
    ceiling = {"ulira": 0.97, "ulira_lo": 0.95, "ulira_hi": 0.99}
    assert floor_verdict({"ulira": 0.55}, floor, ceiling) == "at the floor"
    assert floor_verdict(ceiling, floor, ceiling) == "not at the floor"
    assert floor_verdict({"ulira": 0.55}, floor, {"ulira": 0.6, "ulira_lo": 0.55, "ulira_hi": 0.65}) == "undecided"


def _count_work(monkeypatch) -> dict[str, int]:
    counts = {"trainings": 0, "unlearnings": 0}
    train, unlearn = ShardTrainer.train, populations.approx.unlearn

    def counted_train(self, *args, **kwargs):
        counts["trainings"] += 1
        return train(self, *args, **kwargs)

    def counted_unlearn(*args, **kwargs):
        counts["unlearnings"] += 1
        return unlearn(*args, **kwargs)

    monkeypatch.setattr(ShardTrainer, "train", counted_train)
    monkeypatch.setattr(populations.approx, "unlearn", counted_unlearn)
    return counts


def test_second_bench_reuses_every_cached_model_and_another_method_trains_only_its_own_runs(tmp_path, monkeypatch):
    counts = _count_work(monkeypatch)
    config = load_config(None, [*TINY, "bench.methods=finetune", "bench.sisa=false"])
    first = run_bench(config, tmp_path / "out", MemoryTracker(), InProcess())
    # 4 originals + 4 oracles, one shard each; finetune from each original and 3 more runs from the first
    assert counts == {"trainings": 8, "unlearnings": 7} and (first.made, first.reused) == (15, 0)
    again = run_bench(config, tmp_path / "out", MemoryTracker(), InProcess())
    assert counts == {"trainings": 8, "unlearnings": 7} and (again.made, again.reused) == (0, 15)
    assert again.rows[2].scores.summary == first.rows[2].scores.summary
    more = run_bench(load_config(None, [*TINY, "bench.sisa=false"]), tmp_path / "out", MemoryTracker(), InProcess())
    assert counts == {"trainings": 8, "unlearnings": 14} and (more.made, more.reused) == (7, 15)


def test_rerun_after_a_crash_keeps_every_model_finished_before_it(tmp_path, monkeypatch):
    counts = _count_work(monkeypatch)
    config = load_config(None, [*TINY, "bench.methods=finetune", "bench.sisa=false"])
    unlearn = populations.approx.unlearn

    def crash_on_the_fourth(*args, **kwargs):
        if counts["unlearnings"] == 4:
            raise KeyboardInterrupt
        return unlearn(*args, **kwargs)

    monkeypatch.setattr(populations.approx, "unlearn", crash_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_bench(config, tmp_path / "out", MemoryTracker(), InProcess())
    assert counts == {"trainings": 8, "unlearnings": 4}  # the fifth unlearning run crashed
    monkeypatch.setattr(populations.approx, "unlearn", unlearn)
    result = run_bench(config, tmp_path / "out", MemoryTracker(), InProcess())
    assert counts == {"trainings": 8, "unlearnings": 7} and (result.made, result.reused) == (3, 12)


@pytest.mark.ray
def test_bench_on_ray_gives_the_same_scores_as_in_process(tmp_path, ray_cluster):
    config = load_config(None, [*TINY, "bench.models=8", "bench.methods=gradient_ascent", "bench.targets=single,ensemble"])
    local = run_bench(config, tmp_path / "local", MemoryTracker(), InProcess())
    remote = run_bench(config, tmp_path / "ray", MemoryTracker(), RayTasks())
    assert [(r.method, r.target) for r in local.rows] == [(r.method, r.target) for r in remote.rows]
    for a, b in zip(local.rows, remote.rows):
        same = {k: v for k, v in a.scores.summary.items() if not k.startswith(COSTS)}
        assert same == {k: v for k, v in b.scores.summary.items() if not k.startswith(COSTS)}, a.method
        for split, margins in a.population.margins.items():
            assert np.array_equal(margins, b.population.margins[split]), (a.method, split)
    assert not np.isnan(local.rows[0].scores.summary["ulira"])


def test_a_method_that_cannot_run_on_the_model_is_skipped_with_its_reason(tmp_path, monkeypatch):
    unlearn = populations.approx.unlearn

    def refuse_finetune(model, method, *args, **kwargs):
        if method.name == "finetune":
            raise ValueError("finetune needs Conv2d layers; the model has none")
        return unlearn(model, method, *args, **kwargs)

    monkeypatch.setattr(populations.approx, "unlearn", refuse_finetune)
    result = run_bench(load_config(None, [*TINY, "bench.sisa=false"]), tmp_path / "out", MemoryTracker(), InProcess())
    assert "finetune on the single target skipped: finetune needs Conv2d layers; the model has none" in result.header
    assert "finetune                  skipped: finetune needs Conv2d layers" in result.table
    assert next(r for r in result.rows if r.method == "gradient_ascent").scores is not None


def test_stream_and_hard_scenarios_run_end_to_end(tmp_path):
    stream = run_bench(load_config(None, [*TINY, "bench.scenario=stream", "bench.stream_requests=2"]), tmp_path / "s",
                       MemoryTracker(), InProcess())
    assert len(stream.protocol.requests) == 2 and len(stream.protocol.forget) == 2
    sisa = next(r for r in stream.rows if r.method == "sisa")
    assert all(c.samples_epochs > 0 for c in sisa.population.costs)
    run_bench(load_config(None, [*TINY, "bench.scenario=hard", "bench.hard_fraction=0.5", "bench.sisa=false"]),
              tmp_path / "h", MemoryTracker(), InProcess())
    recorded = json.loads((tmp_path / "h/protocol.json").read_text())
    assert recorded["scenario"] == "hard" and len(recorded["forget"]) == round(0.5 * round(0.1 * 150)) == 8


def test_quick_shrinks_any_bench_to_ci_size():
    config = quick(load_config(None, ["data.train_limit=5000", "bench.models=32", "bench.cost_requests=8"]))
    assert (config.data.train_limit, config.bench.models, config.bench.cost_requests) == (500, 8, 2)
    assert quick(load_config(None, [])).data.train_limit == 500


@pytest.mark.slow
@pytest.mark.ray
def test_bench_with_no_arguments_runs_the_default_digits_bench(tmp_path, capsys, monkeypatch, ray_cluster):
    monkeypatch.chdir(tmp_path)  # the README's main command, as a user runs it
    code, out, err = run_cli(capsys, "bench")
    assert code == 0, err
    assert out.startswith("digits, mlp, scenario random: 144 of 1438 training samples forgotten in 1 request(s); "
                          "16 models a side")
    names = (*approx.available(), "retrain", "original", "sisa")
    words = [line.split() for line in out.splitlines()]
    table = [" ".join(w) for w in words if w and w[0] in names and w[1:2] != ["on"]]  # not "X on the Y target: ...".
    assert len(table) == 2 + 3 + len(approx.available())  # floor and ceiling of each target, SISA, every method
    # CT transposes Conv2d kernels and MSG re-initialises them: on the default MLP both are reported as
    # skipped, and make no model
    skipped = {line.split()[0] for line in table if "skipped: " in line}
    assert skipped == {"conv_transpose", "masked_small_gradients"}
    applicable = len(approx.available()) - len(skipped)
    assert (tmp_path / "runs/bench/klom_vs_time.png").exists() and (tmp_path / "runs/bench/sisa_cost.png").exists()
    # 16 originals and 16 oracles of each target, 16 deletions, 31 runs per method, one cost-curve copy
    made = 2 * 32 + 16 + 31 * applicable + 1
    assert f"models: {made} made, 0 reused" in out
    assert len(list((tmp_path / "runs/bench/models").iterdir())) == made  # not in the Ray workers' directory
