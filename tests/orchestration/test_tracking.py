"""MLflow tracking of train + forget: runs, metrics, artifacts, model versions and their destruction."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from orchestration import commands
from orchestration.audit import certificate
from orchestration.cli import main
from orchestration.registry import DESTROYED_TAG, published
from orchestration.runs import open_session
from orchestration.tracking import MemoryTracker
from tests.conftest import LOCAL

mlflow = pytest.importorskip("mlflow")
SETTINGS = ["--engine", "local", "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=2", "--set", "sisa.epochs=4"]
CHECKOUT = Path(__file__).resolve().parents[2]


def _load_without_the_checkout(uri: str, model_uri: str, x: np.ndarray, tmp_path: Path) -> list[int]:
    """Predict with a registered model in a fresh interpreter that cannot import this checkout."""
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import sys
        sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
        sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
        sys.path[:] = [p for p in sys.path if p not in ("", ".", {str(CHECKOUT)!r})]
        sys.path_importer_cache.clear()
        try:
            import orchestration  # noqa: F401
            raise SystemExit("the checkout is importable")
        except ModuleNotFoundError:
            pass
        import mlflow, numpy as np
        mlflow.set_tracking_uri({uri!r})
        print(mlflow.pyfunc.load_model({model_uri!r}).predict(np.load({str(tmp_path / 'x.npy')!r})).tolist())
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A run trained and then asked to forget 5 and 6, tracked; shared by this module's tests, the
    ones that change it last."""
    tmp_path = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = str(tmp_path / "run")
    assert main(["train", "--run-dir", run_dir, "--tracking-uri", uri, *SETTINGS]) == 0
    assert main(["forget", "--run-dir", run_dir, "--ids", "5,6", "--reason", "test", "--tracking-uri", uri,
                 "--engine", "local"]) == 0
    return uri, run_dir, mlflow.MlflowClient(tracking_uri=uri)


def test_train_and_forget_are_tracked_and_the_new_version_loads_without_the_checkout(tracked_run, tmp_path):
    uri, run_dir, client = tracked_run
    runs = client.search_runs([client.get_experiment_by_name("unlearn").experiment_id])
    parents = {r.data.tags["command"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"train", "forget"}
    train = parents["train"]
    assert train.data.params["sisa.num_shards"] == "2" and train.data.params["data.name"] == "digits"
    assert train.data.metrics["test/acc"] > 0.5 and train.data.metrics["cost/samples_epochs"] > 0
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == train.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["shard-000", "shard-001"]
    assert [m.step for m in client.get_metric_history(children[0].info.run_id, "slice/loss")] == [0, 1]
    assert {"config.toml", "plan.json"} <= {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {a.path for a in client.list_artifacts(parents["forget"].info.run_id, "requests")} == {"requests/r-0001.json"}

    session = open_session(run_dir)
    name = published(session.run.run_dir)[0]["name"]
    assert name == f"unlearn-run-{session.run.run_id[:8]}"
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    assert [int(v.version) for v in versions] == [1, 2] and versions[1].tags["request_id"] == "r-0001"
    x, _ = session.test.tensors()
    predicted = _load_without_the_checkout(uri, f"models:/{name}/2", x.reshape(len(x), -1).numpy(), tmp_path)
    assert predicted == session.run.predict(x).tolist()
    assert session.run.ledger.requests()[0].versions == [f"models:/{name}/2"]


def test_a_local_database_keeps_its_artifacts_beside_it_whatever_the_working_directory(tracked_run):
    uri, _, client = tracked_run  # the commands ran in the checkout, not beside the database
    beside = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.artifact_uri.startswith(beside) for r in runs), [r.info.artifact_uri for r in runs]
    assert all(e["artifact_uri"].startswith(beside) for e in published(Path(tracked_run[1])))


def test_after_forget_no_version_or_logged_model_that_saw_the_ids_can_be_loaded(tracked_run):
    uri, run_dir, client = tracked_run
    session = open_session(run_dir)
    first, second = published(session.run.run_dir)
    old = client.get_model_version(first["name"], first["version"])
    assert old.tags[DESTROYED_TAG] == "r-0001" and "destroyed" in old.description
    mlflow.set_tracking_uri(uri)
    for model_uri in (f"models:/{first['name']}/1", f"models:/{first['model_id']}"):
        with pytest.raises(Exception):  # noqa: B017 - MLflow raises various errors for missing artifacts
            mlflow.pyfunc.load_model(model_uri)
    assert not client.get_model_version(second["name"], second["version"]).tags.get(DESTROYED_TAG)
    destroyed = session.run.ledger.requests()[0].destroyed
    assert {"kind": "mlflow-model-version", "model": first["name"], "version": "1", "model_id": first["model_id"],
            "artifact_uri": first["artifact_uri"]} in destroyed
    report = certificate(session)
    assert report["clean"], report["findings"]


def test_nothing_published_holds_the_secret_or_a_sample_to_shard_mapping(tracked_run, tmp_path):
    uri, run_dir, client = tracked_run
    session = open_session(run_dir)
    secret = session.run.secret.hex()
    texts = []
    for run in client.search_runs([client.get_experiment_by_name("unlearn").experiment_id]):
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags)]
        folder = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / run.info.run_id))
        texts += [p.read_text(errors="ignore") for p in Path(folder).rglob("*") if p.is_file()]
    model = mlflow.artifacts.download_artifacts(published(session.run.run_dir)[1]["artifact_uri"],
                                                dst_path=str(tmp_path / "model"))
    texts += [p.read_text(errors="ignore") for p in Path(model).rglob("*") if p.is_file()]
    assert texts and not any(secret in t for t in texts)
    request = json.loads(next(t for t in texts if '"request_ids"' in t))
    assert not {"sample_ids", "retrained", "dirty"} & set(request)
    meta = json.loads(next(p for p in Path(model).rglob("meta.json")).read_text())
    assert "shards" not in meta


def test_a_refused_request_opens_no_mlflow_run(tracked_run, capsys):
    uri, run_dir, client = tracked_run
    before = len(client.search_runs([client.get_experiment_by_name("unlearn").experiment_id]))
    assert main(["forget", "--run-dir", run_dir, "--ids", "5", "--tracking-uri", uri]) == 2
    assert "already deleted" in capsys.readouterr().err
    assert len(client.search_runs([client.get_experiment_by_name("unlearn").experiment_id])) == before


def test_training_a_finished_run_again_registers_no_new_version(tracked_run):
    uri, run_dir, client = tracked_run
    assert main(["train", "--run-dir", run_dir, "--tracking-uri", uri, "--engine", "local"]) == 0
    assert len(published(Path(run_dir))) == 2


def test_two_runs_in_folders_of_the_same_name_get_their_own_models(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for parent in ("a", "b"):
        assert main(["train", "--run-dir", str(tmp_path / parent / "digits"), "--tracking-uri", uri, *SETTINGS]) == 0
    names = {published(tmp_path / parent / "digits")[0]["name"] for parent in ("a", "b")}
    assert len(names) == 2 and all(n.startswith("unlearn-digits-") for n in names)


def test_memory_tracker_records_parent_child_runs_and_artifacts(tmp_path):
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--engine", "local", "--no-track",
                 "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=2", "--set", "sisa.epochs=2"]) == 0
    session = open_session(tmp_path / "run", flags=LOCAL)
    tracker = MemoryTracker()
    reports, _ = commands.forget(session, tracker, [7])
    names = [(r.name, r.parent) for r in tracker.runs]
    assert names[0] == ("forget", None) and all(parent == "forget" for _, parent in names[1:])
    parent = tracker.runs[0]
    assert "requests/r-0001.json" in parent.artifacts and parent.artifacts["model"] == [
        "config.toml", "constituent-000.pt", "constituent-001.pt", "example.npy", "meta.json"]
    assert parent.metrics["time/unlearn_s"][0][1] == pytest.approx(reports[0].seconds)


def test_no_track_applies_to_the_command_only(tmp_path):
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--no-track", *SETTINGS]) == 0
    assert open_session(tmp_path / "run").config.tracking.enabled


# The tests below change the shared run: keep them last.
def test_concurrent_forgets_with_tracking_each_register_their_version(tracked_run):
    uri, run_dir, client = tracked_run
    codes = []
    threads = [threading.Thread(target=lambda ids=ids: codes.append(
        main(["forget", "--run-dir", run_dir, "--ids", ids, "--tracking-uri", uri, "--engine", "local"])))
        for ids in ("11", "12")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert codes == [0, 0]
    requests = open_session(run_dir).run.ledger.requests()
    assert [r.request_id for r in requests] == ["r-0001", "r-0002", "r-0003"]
    assert [len(r.versions) for r in requests] == [1, 1, 1]


def test_a_live_version_that_predates_a_deletion_is_an_audit_finding(tracked_run, capsys):
    uri, run_dir, client = tracked_run
    latest = published(Path(run_dir))[-1]
    # Simulate a deletion served by a version of this software that did not destroy versions.
    session = open_session(run_dir, flags=LOCAL)
    session.run.purgers = []
    session.run.forget([7])
    code = main(["audit", "--run-dir", run_dir, "--json", str(Path(run_dir).parent / "cert.json")])
    out = capsys.readouterr().out
    assert code == 1 and f"model version {latest['name']}/{latest['version']} predates a deletion" in out
    assert json.loads((Path(run_dir).parent / "cert.json").read_text())["clean"] is False
