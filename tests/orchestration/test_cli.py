"""The `unlearn` command end to end: train, forget, status, predict."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestration.cli import main
from orchestration.runs import open_session
from sisa import CheckpointStore
from sisa.unlearning import audit
from tests.conftest import shared_data

FAST = ["--set", "sisa.epochs=4", "--set", "sisa.num_shards=3", "--set", "sisa.num_slices=2", "--engine", "local",
        "--no-track"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def digits_run(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    code, out, _ = run_cli(capsys, "train", "--run-dir", run_dir, *FAST)
    assert code == 0 and "trained 6 slice(s) over 3 shard(s)" in out
    return run_dir


def test_train_forget_status_predict_on_digits(digits_run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "forget", "--run-dir", digits_run, "--ids", "3,17,42", "--reason", "gdpr")
    assert code == 0 and "request r-0001: 3 sample(s) forgotten" in out
    assert audit(CheckpointStore(f"{digits_run}/checkpoints"), np.array([3, 17, 42])) == []

    code, out, _ = run_cli(capsys, "status", "--run-dir", digits_run, "--json")
    info = json.loads(out)
    assert code == 0 and info["requests"][0]["reason"] == "gdpr" and info["requests"][0]["num_ids"] == 3
    assert "1435 retained" in info["data"] and all(s["checkpoints"] == "++" for s in info["shards"])
    assert info["test accuracy"]["vote"] > 0.5

    code, out, _ = run_cli(capsys, "predict", "--run-dir", digits_run, "--output", str(tmp_path / "p.csv"))
    assert code == 0 and "test accuracy (vote)" in out
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == '"sample_id","label","predicted"'


def test_forget_reads_ids_from_text_and_parquet_files(digits_run, tmp_path, capsys):
    (tmp_path / "ids.txt").write_text("# requests of 2026-11-24\n5\n6\n\n7\n")
    pq.write_table(pa.table({"sample_id": pa.array([8, 9], pa.int64())}), tmp_path / "ids.parquet")
    assert run_cli(capsys, "forget", "--run-dir", digits_run, "--ids-file", str(tmp_path / "ids.txt"))[0] == 0
    assert run_cli(capsys, "forget", "--run-dir", digits_run, "--ids-file", str(tmp_path / "ids.parquet"))[0] == 0
    info = json.loads(run_cli(capsys, "status", "--run-dir", digits_run, "--json")[1])
    assert [r["num_ids"] for r in info["requests"]] == [3, 2]


@pytest.mark.parametrize(
    ("ids", "message"),
    [("3,x", "must be integers"), ("", "names no sample ids"), ("5000", "not in the training data"),
     ("-4", ">= 0"), ("3,3", "more than once")],
)
def test_forget_with_bad_ids_exits_2_with_a_clear_message_and_records_nothing(digits_run, capsys, ids, message):
    code, _, err = run_cli(capsys, "forget", "--run-dir", digits_run, "--ids", ids)
    assert code == 2 and message in err
    assert not (tmp := __import__("pathlib").Path(digits_run) / "ledger.jsonl").exists() or tmp.read_text() == ""


def test_existing_run_dir_refuses_another_training_config(digits_run, capsys):
    code, _, err = run_cli(capsys, "train", "--run-dir", digits_run, "--set", "sisa.epochs=9")
    assert code == 2 and "made with another config (sisa.epochs: 4 -> 9)" in err
    code, _, err = run_cli(capsys, "status", "--run-dir", digits_run + "-missing")
    assert code == 2 and "is not a run directory" in err


def test_train_and_forget_on_mnist_from_shared_data(tmp_path, capsys):
    root = shared_data("mnist")
    run_dir = str(tmp_path / "mnist")
    settings = ["--engine", "local", "--no-track", "--set", "data.name=mnist", "--set", f"data.root={root}",
                "--set", "data.train_limit=3000",
                "--set", "model.name=mlp", "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=2",
                "--set", "sisa.epochs=4"]
    code, out, _ = run_cli(capsys, "train", "--run-dir", run_dir, *settings)
    assert code == 0 and "trained 4 slice(s)" in out
    ids = open_session(run_dir).run.table.ids[[0, 1, -1]]
    code, out, _ = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", ",".join(map(str, ids)))
    assert code == 0 and "3 sample(s) forgotten" in out
    accuracy = float(out.rsplit("test accuracy: ", 1)[1])
    assert accuracy > 0.75
