"""`unlearn serve` refuses in one line, before starting anything, what cannot work."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from orchestration.cli import main
from sisa.lock import run_lock
from tests.orchestration.test_cli import FAST, run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("launch") / "run"
    assert main(["train", "--run-dir", str(run_dir), *FAST]) == 0
    return str(run_dir)


def _refused(capsys, *argv: str) -> str:
    code, _, err = run_cli(capsys, "serve", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_serve_without_a_token_is_refused(trained, capsys, monkeypatch):
    monkeypatch.delenv("UNLEARN_TOKEN", raising=False)
    assert "need a bearer token: set $UNLEARN_TOKEN" in _refused(capsys, "--run-dir", trained)
    missing = _refused(capsys, "--run-dir", trained, "--set", f"serve.token_file={trained}/no-such-file")
    assert "serve.token_file" in missing and "No such file" in missing


def test_serve_refuses_a_run_in_use_a_busy_port_and_a_missing_run(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNLEARN_TOKEN", "t")
    with run_lock(Path(trained) / "lock"):  # another command holds the run
        assert "another command or service is working on" in _refused(capsys, "--run-dir", trained)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in _refused(capsys, "--run-dir", trained, "--port", str(port))
    assert "is not a run directory" in _refused(capsys, "--run-dir", str(tmp_path / "nothing"))
    assert "serve.port must be between 1 and 65535" in _refused(capsys, "--run-dir", trained, "--port", "70000")
