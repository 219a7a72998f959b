"""MLflow tracking of train + forget: parent and child runs, metrics, artifacts, model versions."""

from __future__ import annotations

import numpy as np
import pytest

from orchestration import commands
from orchestration.cli import main
from orchestration.runs import open_session
from orchestration.tracking import MemoryTracker


def test_train_and_forget_are_tracked_in_mlflow_and_the_model_loads(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = str(tmp_path / "run")
    settings = ["--engine", "local", "--tracking-uri", uri, "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=2",
                "--set", "sisa.epochs=4"]
    assert main(["train", "--run-dir", run_dir, *settings]) == 0
    assert main(["forget", "--run-dir", run_dir, "--ids", "5,6", "--reason", "test", "--tracking-uri", uri]) == 0

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("unlearn")
    runs = client.search_runs([experiment.experiment_id])
    parents = {r.data.tags["command"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"train", "forget"}
    train = parents["train"]
    assert train.data.params["sisa.num_shards"] == "2" and train.data.params["data.name"] == "digits"
    assert train.data.metrics["test/acc"] > 0.5 and train.data.metrics["cost/samples_epochs"] > 0
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == train.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["shard-000", "shard-001"]
    history = client.get_metric_history(children[0].info.run_id, "slice/loss")
    assert [m.step for m in history] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {"config.toml", "plan.json"} <= artifacts
    forget_artifacts = {a.path for a in client.list_artifacts(parents["forget"].info.run_id, "requests")}
    assert forget_artifacts == {"requests/r-0001.json"}

    versions = sorted(client.search_model_versions("name='unlearn-run'"), key=lambda v: int(v.version))
    assert [int(v.version) for v in versions] == [1, 2]
    assert versions[1].tags["request_id"] == "r-0001"
    model = mlflow.pyfunc.load_model("models:/unlearn-run/2")
    session = open_session(run_dir)
    x, _ = session.test.tensors()
    predicted = model.predict(x.reshape(len(x), -1).numpy())
    assert np.array_equal(np.asarray(predicted), session.run.predict(x).numpy())


def test_memory_tracker_records_parent_child_runs_and_artifacts(tmp_path):
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--engine", "local", "--no-track",
                 "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=2", "--set", "sisa.epochs=2"]) == 0
    session = open_session(tmp_path / "run")
    tracker = MemoryTracker()
    reports, _ = commands.forget(session, tracker, [7])
    names = [(r.name, r.parent) for r in tracker.runs]
    assert names[0] == ("forget", None) and all(parent == "forget" for _, parent in names[1:])
    parent = tracker.runs[0]
    assert "requests/r-0001.json" in parent.artifacts and parent.artifacts["model"] == [
        "config.toml", "example.npy", "meta.json", "shard-000.pt", "shard-001.pt"]
    assert parent.metrics["time/unlearn_s"][0][1] == pytest.approx(reports[0].seconds)
