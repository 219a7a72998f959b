"""`unlearn tune` on Ray Tune: a quick tune whose configs the bench reads, disjoint from what it reports,
tracked in MLflow; a search that survives killed trials; bad input refused in one line.

The quick tune and the killed trials take minutes on 2 cores (Ray Tune starts a worker per trial
attempt), so they are `slow`: CI runs them after the default run."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from ray import tune as ray_tune

from approx.space import Budget, Choice, resolve
from orchestration.bench import tuned
from orchestration.bench.search import domains, search
from orchestration.cli import main
from orchestration.config import load_config
from sisa.plan import ids_digest

SETTING = ["data.train_limit=200", "sisa.epochs=10", "sisa.batch_size=16"]
TUNE = ["tune", "--method", "finetune,gradient_ascent", "--quick", "--trials", "3"]


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _sets(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


@pytest.fixture(scope="module")
def tuned_then_benched(ray_cluster, tmp_path_factory):
    """`unlearn tune --quick` on two methods (3 trials each), then `unlearn bench --quick --tuned` on three."""
    root = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        tuned_run = _cli(*TUNE, "--tracking-uri", uri, *_sets(SETTING))
        benched = _cli("bench", "--quick", "--tuned", "--engine", "local", "--no-track",
                       *_sets([*SETTING, "bench.methods=finetune,gradient_ascent,l1_sparse", "bench.sisa=false"]))
    return root, uri, tuned_run, benched


@pytest.mark.ray
@pytest.mark.slow
def test_quick_tune_writes_tuned_configs_saying_how_they_were_found_and_the_bench_runs_them(tuned_then_benched):
    root, _, (code, out, err), (bench_code, bench_out, bench_err) = tuned_then_benched
    assert code == 0, err
    assert "objective (lower is better): floor" in out and "finetune" in out and "gradient_ascent" in out
    folder = root / "configs/tuned/digits-mlp-random"
    assert sorted(p.name for p in folder.iterdir()) == ["finetune.toml", "gradient_ascent.toml"]
    text = (folder / "finetune.toml").read_text()
    assert text.splitlines()[1] == "#   unlearn " + " ".join([*TUNE, "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
                                                             *_sets(SETTING)])
    record = tuned.read(folder / "finetune.toml")
    assert record.tuning["trials"] == 3 and record.tuning["finished"] + record.tuning["failed"] == 3
    assert set(record.params) >= {"lr", "weight_decay", "batch_size", "epochs"}
    assert record.tuning["space"]["epochs"] == "IntUniform(low=1, high=2)"  # up to 20% of the original's 10 epochs
    # trial 0, the method's own 10 epochs, runs past that budget: measured, never chosen
    assert record.tuning["default_over_budget"] == ["epochs=10 > 2"] and "so not a candidate" in text
    assert record.tuning["best_trial"] in (1, 2) and record.params["epochs"] in (1, 2)
    assert bench_code == 0, bench_err
    assert "tuned hyperparameters from configs/tuned/digits-mlp-random: finetune (3 trials), gradient_ascent (3 trials)" \
        in bench_out
    assert "no tuned file in configs/tuned/digits-mlp-random, defaults for: l1_sparse" in bench_out
    used = load_config(root / "runs/bench/config.toml").bench.params
    assert used == {"finetune": record.params, "gradient_ascent": tuned.read(folder / "gradient_ascent.toml").params}
    assert "tuned hyperparameters from" in (root / "runs/bench/results.md").read_text()


@pytest.mark.ray
@pytest.mark.slow
def test_tuner_never_trains_or_scores_on_the_reported_forget_or_test_samples_or_seeds(tuned_then_benched):
    root = tuned_then_benched[0]
    reported = json.loads((root / "runs/bench/protocol.json").read_text())  # what the bench reported on
    recorded = json.loads((root / "runs/tune/tune_protocol.json").read_text())
    tuning = recorded["tuning"]
    for key in ("forget", "test", "test_class", "validation", "seeds"):
        assert recorded["reported"][key] == reported[key], key  # the tuner kept away from this very bench
    reported_seeds = {s for seeds in reported["seeds"].values() for s in seeds}
    reported_test = set(reported["test"]) | set(reported["test_class"])
    assert not set(tuning["data"]) & set(reported["forget"])
    assert not (set(tuning["test"]) | set(tuning["test_class"])) & reported_test
    assert not {s for seeds in tuning["seeds"].values() for s in seeds} & reported_seeds
    ids = {name: tuning[name] for name in ("forget", "retain", "test", "test_class")}
    trials = [json.loads(line) for line in (root / "runs/tune/trials.jsonl").read_text().splitlines()]
    assert sorted((t["method"], t["trial"]) for t in trials) == [(m, n) for m in ("finetune", "gradient_ascent")
                                                                 for n in range(3)]
    for trial in trials:
        saw = trial["saw"]
        assert saw["trained_on"]["original"]["sha256"] == ids_digest(np.array(tuning["data"]))
        assert saw["trained_on"]["oracle"]["sha256"] == ids_digest(np.array(tuning["retain"]))
        assert saw["unlearned"]["forget"]["sha256"] == ids_digest(np.array(tuning["forget"]))
        for split, seen in saw["scored_on"].items():
            assert seen["sha256"] == ids_digest(np.array(ids[split])), split
            assert seen["table"] == ("test" if split.startswith("test") else "train")
        assert saw["seeds"] == {role: tuning["seeds"][role] for role in ("original", "oracle", "unlearn")}
        assert not {s for seeds in saw["seeds"].values() for s in seeds} & reported_seeds


@pytest.mark.ray
@pytest.mark.slow
def test_every_trial_is_an_mlflow_run_under_its_method_under_the_tune_run(tuned_then_benched):
    _, uri, _, _ = tuned_then_benched
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["unlearn"], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("command") == "tune"]
    methods = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(methods) == {"finetune", "gradient_ascent"}
    client = mlflow.MlflowClient()
    for name, method in methods.items():
        trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == method.info.run_id]
        assert sorted(r.info.run_name for r in trials) == [f"{name}-trial-{n:03d}" for n in range(3)]
        assert all("objective" in r.data.metrics and "ulira/acc" in r.data.metrics for r in trials)
        assert "saw.json" in {a.path for a in client.list_artifacts(trials[0].info.run_id)}
        assert method.data.metrics["objective/best"] == min(r.data.metrics["objective"] for r in trials)
        assert f"{name}.toml" in {a.path for a in client.list_artifacts(method.info.run_id)}


# --- A search that survives killed trials -------------------------------------------------------------


def dies_at_first_point_or_once(params: dict, marker: str) -> dict:
    """The first point (x = 0.5) kills its worker every time; the first other trial to get here kills
    its worker once (the marker remembers); everything else scores |x - 0.3|."""
    if params["x"] == 0.5:
        os._exit(1)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return {"objective": abs(params["x"] - 0.3)}
    os._exit(1)


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_trial_is_retried_one_that_keeps_dying_is_reported_and_the_search_returns_its_best(
        ray_cluster, tmp_path):
    heard = []
    result = search("killed", {"x": ray_tune.uniform(0, 1)}, dies_at_first_point_or_once, str(tmp_path / "marker"),
                    trials=3, storage=tmp_path / "ray", seed=0, first={"x": 0.5}, retries=1, on_trial=heard.append)
    assert sorted(t.number for t in heard) == [0, 1, 2]  # each trial heard once, as it ended
    by_number = {t.number: t for t in result.trials}
    assert by_number[0].error and not by_number[0].result and by_number[0].failures == 2  # tried, retried, reported
    assert len(result.finished) == 2 and sorted(t.failures for t in result.finished) == [0, 1]
    assert result.best is not None and result.best.objective == min(abs(t.params["x"] - 0.3) for t in result.finished)
    assert Path(tmp_path / "marker").exists()


def batch_times_iterations(params: dict, context: None) -> dict:
    return {"objective": params["iterations"] * params["batch_size"]}


@pytest.mark.ray
def test_a_sample_budget_holds_in_every_drawn_trial_and_the_draws_repeat(ray_cluster, tmp_path):
    """SFR-on's kind of budget on Ray Tune: iterations drawn after the batch size, within 4,000 samples."""
    space = domains(resolve({"batch_size": Choice((64, 256)), "iterations": Budget(1, 0.2, "samples", per="batch_size")},
                            {"samples": 20_000}))
    runs = [search(f"quota{n}", space, batch_times_iterations, None, trials=6, storage=tmp_path / "ray", seed=3,
                   first={"batch_size": 256, "iterations": 100}) for n in range(2)]
    assert runs[0].trials[0].params == {"batch_size": 256, "iterations": 100}  # preset, though over the budget
    drawn = [[t.params for t in r.trials if t.number > 0] for r in runs]
    assert drawn[0] == drawn[1] and len(drawn[0]) == 5  # seeded: the same five configurations both times
    assert all(1 <= p["iterations"] <= 4000 // p["batch_size"] for p in drawn[0])
    assert len({p["iterations"] for p in drawn[0]}) > 1


# --- Bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--method", "nosuch"], "unknown method 'nosuch'; valid: bad_teacher, "),
    (["--method", " , "], "--method ' , ' names no method; give a method, several comma-separated, or 'all'"),
    (["--method", "finetune", "--trials", "0"], "tune.trials must be at least 1, got 0"),
    (["--method", "finetune", "--time-budget", "-5"], "tune.time_budget_s must be >= 0 (0 = no limit), got -5.0"),
    (["--method", "finetune", "--set", "tune.models=4"], "tune.models must be at least 8"),
    (["--method", "finetune", "--set", "bench.params.finetune.nosuch=1"], "method 'finetune' has no parameter(s)"),
    (["--method", "finetune", "--set", "bench.params.fintune.lr=0.1"], "bench.params names unknown method(s) ['fintune']"),
    (["--method", "finetune", "--set", "bench.params.ssd.nosuch=1"], "method 'ssd' has no parameter(s)"),
    (["--method", "finetune", "--config", "."], "config file . cannot be read (Is a directory); give a TOML file"),
    (["--method", "finetune", "--address", "ray://head:10001"], "a Ray Client address (ray://head:10001) cannot do"),
])
def test_tune_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli("tune", *argv)
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert list(tmp_path.iterdir()) == []
