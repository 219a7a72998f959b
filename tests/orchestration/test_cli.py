"""The `unlearn` command end to end: train, forget, status, predict."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

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
    assert info["data"] == {"name": "digits", "train": 1438, "retained": 1435, "test": 359}
    assert all(s["checkpoints"] == [True, True] for s in info["shards"])
    assert info["requests"][0]["state"] == "done" and info["requests"][0]["destroyed"] > 0
    assert isinstance(info["store"]["bytes"], int) and info["test_accuracy"]["vote"] > 0.5

    code, out, _ = run_cli(capsys, "predict", "--run-dir", digits_run, "--output", str(tmp_path / "p.csv"))
    assert code == 0 and "test accuracy (vote)" in out
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == '"sample_id","label","predicted"'
    code, out, _ = run_cli(capsys, "predict", "--run-dir", digits_run, "--split", "train")
    assert code == 0 and "on 1435 samples (3 deleted sample(s) excluded; name them with --ids to score them)" in out


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
def test_forget_with_bad_ids_exits_2_with_a_clear_message_and_records_nothing(digits_run, tmp_path, capsys, ids,
                                                                              message):
    store = tmp_path / "tracking.db"  # tracking on: a refused request must not even create the MLflow store
    code, _, err = run_cli(capsys, "forget", "--run-dir", digits_run, "--ids", ids,
                           "--tracking-uri", f"sqlite:///{store}")
    assert code == 2 and message in err
    assert open_session(digits_run).run.ledger.requests() == []
    assert not store.exists()


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


BAD_SETTINGS = [
    ("sisa.lr=nan", "sisa.lr must be a finite number"),
    ("sisa.lr=inf", "sisa.lr must be a finite number"),
    ("sisa.weight_decay=nan", "sisa.weight_decay must be a finite number"),
    ("model.hidden=0", "model.hidden must be a positive integer"),
    ("data.train_limit=-1", "data.train_limit must be >= 0"),
    ("sisa.device=banana", "sisa.device must be a torch device"),
    ("sisa.device=cuda", "sees no CUDA device"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_SETTINGS)
def test_train_with_a_bad_setting_says_so_in_one_line_and_writes_nothing(tmp_path, capsys, setting, message):
    if setting == "sisa.device=cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out, err = run_cli(capsys, "train", "--run-dir", str(tmp_path / "run"), "--set", setting, *FAST)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_bad_paths_are_refused_in_one_line_with_nothing_written(digits_run, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["train", "--run-dir", str(tmp_path / "a-file"), *FAST], "is a file"),
        (["train", "--run-dir", str(tmp_path / "a-file" / "run"), *FAST], "cannot create run directory"),
        (["forget", "--run-dir", digits_run, "--ids-file", str(tmp_path)], "is not a file"),
        (["predict", "--run-dir", digits_run, "--output", str(tmp_path / "missing" / "p.csv")], "does not exist"),
        (["forget", "--run-dir", digits_run, "--ids", str(2**63)], "64-bit signed integers"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "missing").exists() and open_session(digits_run).run.ledger.requests() == []


def test_a_pending_request_names_the_command_that_finishes_it(digits_run, capsys):
    session = open_session(digits_run)
    session.run.executor = lambda jobs, on_slice: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        session.run.forget([11])
    code, _, err = run_cli(capsys, "predict", "--run-dir", digits_run)
    assert code == 2 and f"unlearn forget --run-dir {digits_run} --resume" in err
    code, out, _ = run_cli(capsys, "forget", "--run-dir", digits_run, "--resume", "--engine", "local", "--no-track")
    assert code == 0 and "request r-0001: 1 sample(s) forgotten" in out


def test_ctrl_c_prints_one_line_not_a_traceback(digits_run, capsys, monkeypatch):
    from orchestration import commands

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "forget", interrupted)
    code, _, err = run_cli(capsys, "forget", "--run-dir", digits_run, "--ids", "3", "--no-track")
    assert code == 130 and "Traceback" not in err and "interrupted" in err and len(err.strip().splitlines()) == 1


def test_a_run_dir_with_a_colon_is_tracked_under_a_valid_model_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "train", "--run-dir", str(tmp_path / "team:a"),
                           *[a for a in FAST if a != "--no-track"])
    assert code == 0, err
    from orchestration.registry import published

    assert published(tmp_path / "team:a")[0]["name"].startswith("unlearn-team-a-")


def test_commands_write_only_their_own_lines_to_stderr(tmp_path):
    """Train (Ray engine, MLflow on) and forget as a user runs them: no warnings, no tracebacks, no
    library chatter; the lines say where the shards trained and what was registered. A deletion
    from one shard trains in the command's process (a new cluster would only add its start-up),
    one from two shards on a local cluster, and both are exact (the audit retrains from scratch)."""
    import subprocess
    import sys

    from orchestration.audit import certificate

    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    run_dir = str(tmp_path / "run")
    cluster = "ray: started a local cluster ("
    alone = "ray: one shard to train and no cluster running: trained in this process"

    def unlearn(*argv: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "orchestration.cli", *argv], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stderr.strip().splitlines()

    lines = unlearn("train", "--run-dir", run_dir, "--set", "sisa.epochs=2", "--set", "sisa.num_shards=2")
    assert lines[0].startswith(cluster) and lines[1].startswith("registered models:/unlearn-run-") and len(lines) == 2, lines
    plan = open_session(run_dir, flags=["ray.engine=local"]).run.plan()
    one, two = plan.slice_ids(0)[1][:1], [plan.slice_ids(0)[1][1], plan.slice_ids(1)[1][0]]
    for ids, first in ((two, cluster), (one, alone)):  # shard 0's final model is then the in-process one
        lines = unlearn("forget", "--run-dir", run_dir, "--ids", ",".join(str(int(i)) for i in ids))
        assert lines[0].startswith(first), lines
        assert lines[1].startswith("registered models:/unlearn-run-") and len(lines) == 2, lines
    session = open_session(run_dir, flags=["ray.engine=local", "tracking.enabled=false"])
    threads = torch.get_num_threads()
    torch.set_num_threads(session.config.ray.command_threads())  # the commands' count: the same bits
    try:
        report = certificate(session, retrain_dir=tmp_path / "scratch")
    finally:
        torch.set_num_threads(threads)
    assert report["clean"] and "retrain" in report["checked"], report["findings"]


def test_the_console_script_returns_the_commands_status_with_the_survivors_frozen_for_a_cheap_exit(tmp_path):
    """`script` is what `unlearn` and `python -m orchestration.cli` run: main's exit status, and every
    live object moved out of the collector's reach, so the interpreter's last collection skips them."""
    probe = ("import gc, sys; from orchestration.cli import script; sys.argv = ['unlearn', *sys.argv[1:]]; "
             "code = script(); print(code, gc.get_freeze_count() > 0, file=sys.stderr)")
    for argv, expected in ((["methods"], "0 True"), (["status", "--run-dir", str(tmp_path / "none")], "2 True")):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert done.stderr.strip().splitlines()[-1] == expected, done.stderr[-500:]
    # In this process `main` leaves the collector alone: a test session or a notebook keeps collecting.
    before = gc.get_freeze_count()
    assert main(["methods"]) == 0 and gc.get_freeze_count() == before
