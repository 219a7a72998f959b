"""Frozen backbones through the command line: pretrain on public data, train heads or adapters, forget, audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from orchestration.config import ModelConfig, RunConfig, load_config
from orchestration.frozen.backbone import FORMAT, strip_classifier
from orchestration.frozen.features import feature_files
from orchestration.models import build_model
from orchestration.runs import open_session
from sisa.ledger import ids_digest_hex
from sisa.unlearning import audit
from tests.orchestration.test_cli import run_cli
from tests.orchestration.test_sources import image_table

PUBLIC = ["--set", "data.public_fraction=0.3", "--set", "model.hidden=32"]
PRETRAIN = [*PUBLIC, "--set", "pretrain.epochs=10", "--no-track"]
FAST = ["--set", "sisa.epochs=4", "--set", "sisa.num_shards=3", "--set", "sisa.num_slices=2", "--set",
        "sisa.optimizer=adamw", "--set", "sisa.lr=0.02", "--engine", "local", "--no-track"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    """An MLP backbone pretrained on the public 30% of digits (hidden 32), shared by this module's tests."""
    from orchestration.cli import main

    path = tmp_path_factory.mktemp("backbone") / "backbone.pt"
    assert main(["pretrain", "--out", str(path), *PRETRAIN]) == 0
    return path


def _frozen(backbone: Path, trainable: str) -> list[str]:
    return [*PUBLIC, "--set", f"model.backbone={backbone}", "--set", f"sisa.trainable={trainable}", *FAST]


def _public_and_private(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    run = open_session(run_dir).run
    return run.non_deletable, np.setdiff1d(run.table.ids, run.non_deletable)


def test_pretrain_writes_the_backbone_of_the_public_samples_without_its_classifier(backbone, tmp_path, capsys):
    content = torch.load(backbone, weights_only=True)
    config = load_config(None, ["data.public_fraction=0.3", "model.hidden=32"])
    from orchestration.datasets import load_dataset
    from orchestration.frozen.public import public_ids

    public = public_ids(config.data, load_dataset(config.data)[0])
    assert content["format"] == FORMAT and content["classifier"] == "net.5"
    assert content["public"]["sha256"] == ids_digest_hex(public) and content["public"]["samples"] == len(public)
    assert 0.25 < len(public) / 1438 < 0.35, "about 30% of digits' 1438 training samples"
    network = build_model(ModelConfig(hidden=32), (1, 8, 8), 10)
    strip_classifier(network)
    assert set(content["state_dict"]) == set(network.state_dict()), "the classifier's weights are not in the file"

    code, _, err = run_cli(capsys, "pretrain", "--out", str(backbone), *PRETRAIN)
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "pretrain", "--out", str(tmp_path / "b.pt"), "--no-track")
    assert code == 2 and "set data.public_fraction or data.public_ids" in err and not (tmp_path / "b.pt").exists()


def test_head_mode_train_forget_status_predict_and_audit(backbone, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    code, out, err = run_cli(capsys, "train", "--run-dir", run_dir, *_frozen(backbone, "head"))
    assert code == 0 and "trained 6 slice(s) over 3 shard(s)" in out, err
    (store,) = feature_files(Path(run_dir))
    assert pq.read_metadata(store).num_rows == 1438, "features of every training sample, public ones included"
    _, private = _public_and_private(run_dir)
    forget = private[[0, 5, 50, -1]]
    assert audit(open_session(run_dir).run.store, forget)

    code, out, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", ",".join(map(str, forget)), "--engine",
                             "local", "--no-track")
    assert code == 0 and "4 sample(s) forgotten" in out, err

    stored = pq.read_table(store)
    assert len(stored) == 1434 and not np.isin(stored.column("sample_id").to_numpy(), forget).any()
    session = open_session(run_dir)
    assert audit(session.run.store, forget) == []
    destroyed = session.run.ledger.requests()[0].destroyed
    assert {"kind": "feature-rows", "path": f"features/{store.name}", "rows_removed": 4, "rows_left": 1434,
            "sha256": __import__("hashlib").sha256(store.read_bytes()).hexdigest()} in destroyed
    for entry in session.run.store.entries():  # a checkpoint holds a head: Flatten then Linear(32 features, 10)
        assert set(session.run.store.load(entry.shard, entry.slice, entry.key)["model"]) == {"1.weight", "1.bias"}

    info = json.loads(run_cli(capsys, "status", "--run-dir", run_dir, "--json")[1])
    assert info["sisa"]["trainable"] == "head" and info["backbone"]["feature_shape"] == [32]
    assert info["features"]["rows"] == 1434 and info["public"]["samples"] == len(session.run.non_deletable)
    assert info["test_accuracy"]["vote"] > 0.7
    code, out, _ = run_cli(capsys, "predict", "--run-dir", run_dir, "--no-track")
    assert code == 0 and "test accuracy (vote)" in out
    code, out, _ = run_cli(capsys, "audit", "--run-dir", run_dir, "--retrain", str(tmp_path / "scratch"), "--no-track",
                             "--engine", "local")
    assert code == 0 and "audit: clean" in out, out
    assert "checked ledger, store, features, run dir, outputs cache, data cache, mlflow, retrain" in out


def test_head_mode_runs_the_backbone_over_the_test_set_once_and_keeps_its_features_through_deletions(
        backbone, tmp_path, capsys, monkeypatch):
    import orchestration.outputs_cache as outputs_cache
    from orchestration.status import accuracies

    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", "--run-dir", str(run_dir), *_frozen(backbone, "head"))[0] == 0
    (features,) = (run_dir / outputs_cache.FEATURES).iterdir()
    passes = []
    original = outputs_cache.encode_inputs
    monkeypatch.setattr(outputs_cache, "encode_inputs", lambda *a, **k: passes.append(len(a[1])) or original(*a, **k))
    _, private = _public_and_private(str(run_dir))
    code, out, err = run_cli(capsys, "forget", "--run-dir", str(run_dir), "--ids", str(private[0]), "--engine", "local",
                             "--no-track")
    assert code == 0 and "test accuracy" in out, err
    assert passes == [], "the retrained head was scored on the stored test features, not a new backbone pass"
    assert features.exists() and run_cli(capsys, "audit", "--run-dir", str(run_dir), "--no-track")[0] == 0

    session = open_session(run_dir, overrides=["ray.engine=local"])
    expected = accuracies(session)
    features.write_bytes(b"not a tensor file")  # unreadable: the backbone runs again, the scores do not change
    for entry in (run_dir / outputs_cache.FOLDER).iterdir():
        entry.unlink()
    assert accuracies(session) == expected and passes == [len(session.test)]


def test_head_mode_audit_finds_feature_rows_of_deleted_samples(backbone, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run_cli(capsys, "train", "--run-dir", run_dir, *_frozen(backbone, "head"))[0] == 0
    session = open_session(run_dir, overrides=["ray.engine=local"])
    (store,) = feature_files(Path(run_dir))
    before = pq.read_table(store)
    _, private = _public_and_private(run_dir)
    session.run.purgers = []  # a deletion served by software that left the features behind
    session.run.forget(private[:2])
    assert pq.read_table(store).equals(before)
    code, out, _ = run_cli(capsys, "audit", "--run-dir", run_dir, "--no-track")
    assert code == 1 and f"FOUND features: features/{store.name} holds 2 row(s) of deleted samples" in out


def test_adapter_mode_forget_is_bit_identical_to_training_from_scratch(backbone, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run_cli(capsys, "train", "--run-dir", run_dir, *_frozen(backbone, "adapter"))[0] == 0
    assert feature_files(Path(run_dir)) == [], "adapters run the backbone on the samples: nothing to store"
    _, private = _public_and_private(run_dir)
    code, out, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", f"{private[3]},{private[-2]}",
                             "--engine", "local", "--no-track")
    assert code == 0, err
    session = open_session(run_dir)
    entry = session.run.store.entries()[0]
    saved = set(session.run.store.load(entry.shard, entry.slice, entry.key)["model"])
    adapters = {f"backbone.module.net.{i}.{part}.weight" for i in (1, 3) for part in ("down", "up")}
    assert saved == adapters | {"head.1.weight", "head.1.bias"}, "LoRA of the last 2 layers and the head, nothing frozen"
    info = json.loads(run_cli(capsys, "status", "--run-dir", run_dir, "--json")[1])
    assert info["sisa"]["trainable"] == "adapter" and info["features"] is None
    assert info["backbone"]["each_shard_trains"] == "LoRA adapters (rank 4, last 2 layer(s)) and a linear head"
    assert info["test_accuracy"]["vote"] > 0.7
    code, out, _ = run_cli(capsys, "predict", "--run-dir", run_dir, "--no-track")
    assert code == 0 and "test accuracy (vote)" in out
    code, out, _ = run_cli(capsys, "audit", "--run-dir", run_dir, "--retrain", str(tmp_path / "scratch"), "--no-track",
                             "--engine", "local")
    assert code == 0 and "audit: clean" in out, out


def test_deleting_a_public_id_is_refused_with_the_reason_and_records_nothing(backbone, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run_cli(capsys, "train", "--run-dir", run_dir, *_frozen(backbone, "head"))[0] == 0
    public, private = _public_and_private(run_dir)
    files = {p: p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file() and p.name != "lock"}

    code, _, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", f"{private[0]},{public[0]}", "--no-track")

    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"id(s) [{public[0]}] cannot be deleted: they are public data (data.public_fraction = 0.3)" in err
    assert open_session(run_dir).run.ledger.requests() == []
    assert {p: p.read_bytes() for p in Path(run_dir).rglob("*") if p.is_file() and p.name != "lock"} == files


def test_serve_refuses_a_frozen_backbone_run_in_one_line(backbone, tmp_path, capsys, monkeypatch):
    run_dir = str(tmp_path / "run")
    assert run_cli(capsys, "train", "--run-dir", run_dir, *_frozen(backbone, "head"))[0] == 0
    monkeypatch.setenv("UNLEARN_TOKEN", "t")
    code, _, err = run_cli(capsys, "serve", "--run-dir", run_dir)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "unlearn serve serves full-network runs" in err and "this run trains heads on a frozen backbone" in err


@pytest.mark.parametrize(("settings", "message"), [
    (["--set", "data.public_fraction=0.2"], "was pretrained on other samples than the run declares public"),
    (["--set", "data.public_fraction=0"], "was pretrained on public data, but the run declares none"),
    (["--set", "model.hidden=16"], "set model.name=mlp model.hidden=32 model.channels=32"),
    (["--set", "sisa.trainable=all"], "model.backbone is a frozen backbone: set sisa.trainable"),
    (["--set", "model.backbone=", "--set", "sisa.trainable=head"], "trains on a frozen backbone: set model.backbone"),
    (["--set", "model.backbone=missing.pt"], "model.backbone missing.pt does not exist"),
    (["--set", "sisa.augment=true"], "sisa.augment cannot apply with sisa.trainable='head'"),
])
def test_a_backbone_that_does_not_fit_the_run_is_refused_in_one_line_with_nothing_written(
        backbone, tmp_path, capsys, settings, message):
    code, _, err = run_cli(capsys, "train", "--run-dir", str(tmp_path / "run"), *_frozen(backbone, "head"), *settings)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_users_own_weights_of_model_name_are_a_backbone_and_bound_to_the_run(tmp_path, capsys):
    network = build_model(ModelConfig(hidden=32), (1, 8, 8), 1000)  # a classifier of another task: ignored
    torch.save(network.state_dict(), tmp_path / "mine.pt")
    run_dir = str(tmp_path / "run")
    settings = ["--set", f"model.backbone={tmp_path / 'mine.pt'}", "--set", "model.hidden=32",
                "--set", "sisa.trainable=head", *FAST]
    code, out, err = run_cli(capsys, "train", "--run-dir", run_dir, *settings)
    assert code == 0, err
    assert not open_session(run_dir).run.non_deletable.size
    network.net[1].weight.data += 1  # the file changes: the run refuses it
    torch.save(network.state_dict(), tmp_path / "mine.pt")
    code, _, err = run_cli(capsys, "status", "--run-dir", run_dir)
    assert code == 2 and "the backbone file" in err and "made with another configuration" in err


def test_string_ids_public_ids_file_cnn_adapters_and_augmentation(tmp_path, capsys):
    pq.write_table(image_table(150, "user-", 0), tmp_path / "train.parquet")
    pq.write_table(image_table(30, "test-", 1), tmp_path / "test.parquet")
    (tmp_path / "public.txt").write_text("\n".join(f"user-{i}" for i in range(0, 150, 3)) + "\n")
    data = ["--set", "data.name=parquet", "--set", f"data.path={tmp_path / 'train.parquet'}",
            "--set", f"data.test_path={tmp_path / 'test.parquet'}", "--set", "data.id_column=user_id",
            "--set", f"data.public_ids={tmp_path / 'public.txt'}", "--set", "model.name=cnn", "--set", "model.channels=4"]
    assert run_cli(capsys, "pretrain", "--out", str(tmp_path / "cnn.pt"), *data, "--no-track")[0] == 0
    run_dir = str(tmp_path / "run")
    frozen = [*data, "--set", f"model.backbone={tmp_path / 'cnn.pt'}", "--set", "sisa.trainable=adapter",
              "--set", "sisa.augment=true", "--set", "sisa.augment_padding=1", "--set", "model.adapter_layers=0", *FAST]
    code, out, err = run_cli(capsys, "train", "--run-dir", run_dir, *frozen)
    assert code == 0, err
    code, _, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", "user-1,user-3", "--no-track")
    assert code == 2 and "['user-3'] cannot be deleted: they are public data (data.public_ids" in err
    code, out, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", "user-1,user-4", "--no-track",
                             "--engine", "local")
    assert code == 0 and "2 sample(s) forgotten (user-1, user-4)" in out, err
    session = open_session(run_dir)
    entry = session.run.store.entries()[0]
    saved = set(session.run.store.load(entry.shard, entry.slice, entry.key)["model"])
    assert {k.split(".")[-2] for k in saved if k.startswith("backbone.")} == {"down", "up"}
    assert len([k for k in saved if k.startswith("backbone.")]) == 2 * 3, "both convs and the hidden Linear adapted"


def test_approximate_methods_and_the_bench_refuse_frozen_backbone_runs(backbone, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run_cli(capsys, "train", "--run-dir", run_dir, *_frozen(backbone, "head"))[0] == 0
    _, private = _public_and_private(run_dir)
    code, _, err = run_cli(capsys, "approx", "--run-dir", run_dir, "--method", "finetune", "--ids", str(private[0]),
                           "--no-track")
    assert code == 2 and "approximate methods unlearn full networks" in err
    code, _, err = run_cli(capsys, "bench", "--out", str(tmp_path / "bench"), "--no-track", *PUBLIC,
                           "--set", f"model.backbone={backbone}", "--set", "sisa.trainable=head")
    assert code == 2 and "python -m benchmarks.frozen" in err and not (tmp_path / "bench").exists()


def test_full_network_runs_keep_the_fingerprint_they_had_before_frozen_backbones():
    """Values computed before sisa.trainable, model.backbone, model.head*, model.adapter_*, data.public_* and
    [pretrain] existed: an existing run dir still opens, and its checkpoint keys are unchanged."""
    assert RunConfig().fingerprint() == "47f5f51cbb8d2556cf9a6b2ada355f6694fcc675207458204d2a39a7fce1a8ed"
    mnist = load_config(Path(__file__).resolve().parents[2] / "configs" / "mnist.toml")
    assert mnist.fingerprint() == "dd92f994d064a1212b21d16cf2edd35adbabe37aa39bf309ff6df405b28b475d"
    assert load_config(None, ["model.head=mlp", "model.adapter_rank=8"]).fingerprint() == RunConfig().fingerprint()


@pytest.mark.ray
@pytest.mark.parametrize("trainable", ["head", "adapter"])
def test_ray_engine_trains_and_forgets_frozen_backbone_runs_as_the_local_engine_does(backbone, tmp_path, ray_cluster,
                                                                                    trainable):
    settings = ["data.public_fraction=0.3", "model.hidden=32", f"model.backbone={backbone}", f"sisa.trainable={trainable}",
                "sisa.epochs=4", "sisa.num_shards=3", "sisa.num_slices=2", "tracking.enabled=false"]
    local = open_session(tmp_path / "local", overrides=[*settings, "ray.engine=local"], create=True)
    remote = open_session(tmp_path / "ray", overrides=[*settings, "ray.engine=ray"], create=True,
                          secret=local.run.secret)
    forget = np.setdiff1d(local.run.table.ids, local.run.non_deletable)[[2, 40, 400]]
    for session in (local, remote):
        session.run.train()
        report = session.run.forget(forget)
        assert report.retrained
    assert audit(remote.run.store, forget) == []
    x, _ = local.test.tensors()
    assert torch.equal(local.run.predict(x), remote.run.predict(x))
    for (_, a), (_, b) in zip(local.run.constituents(), remote.run.constituents(), strict=True):
        for key, value in a.state_dict().items():  # one torch thread per actor: equal to float precision
            assert torch.allclose(value, b.state_dict()[key], atol=1e-5), key
    remote.run.executor.close()


@pytest.mark.parametrize("trainable", ["head", pytest.param("adapter", marks=pytest.mark.slow)])
def test_the_registered_model_runs_the_backbone_and_loads_without_the_checkout(backbone, tmp_path, capsys, trainable):
    pytest.importorskip("mlflow")
    from orchestration.registry import published
    from tests.orchestration.test_tracking import _load_without_the_checkout

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = str(tmp_path / "run")
    settings = [a for a in _frozen(backbone, trainable) if a != "--no-track"]
    assert run_cli(capsys, "train", "--run-dir", run_dir, *settings, "--tracking-uri", uri)[0] == 0
    session = open_session(run_dir)
    entry = published(Path(run_dir))[0]
    files = {p.name for p in Path(entry["artifact_uri"].removeprefix("file://")).rglob("*.pt")}
    assert "backbone.pt" in files and len([f for f in files if f.startswith("constituent-")]) == 3
    x, _ = session.test.tensors()
    predicted = _load_without_the_checkout(uri, entry["uri"], x.reshape(len(x), -1).numpy(), tmp_path)
    assert predicted == session.run.predict(x).tolist()
