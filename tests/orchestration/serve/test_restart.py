"""A service killed during a deletion and started again completes it: done, audited clean, bit-exact.

`unlearn serve` runs as a user runs it, a process with its own Ray cluster; the test kills it and
every process under it, Ray's workers included (SIGKILL: no cleanup of any kind), while the request
is being served.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

from orchestration.audit import certificate
from orchestration.cli import main
from orchestration.runs import open_session

pytestmark = [pytest.mark.slow, pytest.mark.ray]
TOKEN = "restart-token"
# One shard, so a deletion from its first slice retrains everything: several seconds, time to
# kill the service in the middle of it.
SETTINGS = ["--set", "sisa.num_shards=1", "--set", "sisa.num_slices=2", "--set", "sisa.epochs=100"]
CHECKOUT = Path(__file__).resolve().parents[3]


class Service:
    """`unlearn serve` in its own process group, its stderr collected."""

    def __init__(self, run_dir: Path, port: int, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestration.cli", "serve", "--run-dir", str(run_dir), "--port", str(port),
             "--no-track"], cwd=run_dir.parent, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True).start()

    def wait_serving(self, timeout: float = 400) -> None:
        began = time.monotonic()
        while not any(line.startswith("serving ") for line in self.lines):
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() - began < timeout, "".join(self.lines)
            time.sleep(0.2)

    def kill(self) -> None:
        """Power loss: freeze every process of the service, Ray's included, then kill them all.

        Ray starts each worker in a process group of its own, so killing the command's group
        leaves the replicas running (and finishing the deletion) until they notice their raylet
        is gone. Frozen first, no process makes progress while the others are being killed.
        """
        os.killpg(self.process.pid, signal.SIGSTOP)  # the raylet stops too: no new workers start
        frozen: set[int] = set()
        while tree := _descendants(self.process.pid) - frozen:
            for pid in tree:
                _signal(pid, signal.SIGSTOP)
            frozen |= tree
        os.killpg(self.process.pid, signal.SIGKILL)
        for pid in frozen:
            _signal(pid, signal.SIGKILL)
        self.process.wait(60)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)  # what Ctrl-C sends
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.kill()
            raise


def _descendants(root: int) -> set[int]:
    """Every process below `root`, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
            text = stat.read_text()
        except OSError:
            continue  # the process ended
        children.setdefault(int(text[text.rindex(")") + 2:].split()[1]), []).append(int(text.split(" ", 1)[0]))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _state(service: Service, request_id: str) -> dict:
    return requests.get(f"{service.url}/requests/{request_id}", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=60).json()


def test_a_service_killed_during_a_deletion_completes_it_on_restart_and_the_audit_is_clean(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), "--engine", "local", "--no-track", *SETTINGS]) == 0
    capsys.readouterr()
    sample = int(open_session(run_dir).run.plan().slice_ids(0)[0][0])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "UNLEARN_TOKEN": TOKEN, "PYTHONPATH": str(CHECKOUT), "RAY_ADDRESS": ""}

    first = Service(run_dir, port, env)
    try:
        first.wait_serving()
        answer = requests.post(f"{first.url}/forget", json={"ids": [sample], "reason": "restart"},
                               headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        assert answer.status_code == 202 and answer.json()["request_id"] == "r-0001"
        while (state := _state(first, "r-0001")["state"]) == "pending":
            time.sleep(0.02)
        assert state == "running"
    finally:
        first.kill()
    interrupted = open_session(run_dir, flags=["ray.engine=local"])
    assert [r.request_id for r in interrupted.run.ledger.pending()] == ["r-0001"], "killed before the request was done"
    del interrupted

    second = Service(run_dir, port, env)
    try:
        second.wait_serving()  # a restarted service finishes what is pending before it answers
        state = _state(second, "r-0001")
        prediction = requests.post(f"{second.url}/predict", json={"inputs": [[0.0] * 64]}, timeout=60).json()
        # Tracking off: the served version's accuracy is measured once no request waits.
        began = time.monotonic()
        while (accuracy := requests.get(f"{second.url}/status", headers={"Authorization": f"Bearer {TOKEN}"},
                                        timeout=60).json()["test_accuracy"]) is None:
            assert time.monotonic() - began < 120
            time.sleep(0.2)
    finally:
        second.stop()
    # Slices checkpointed before the kill are not trained again: the restart resumed where it died.
    assert state["state"] == "done" and state["version"] == 1 and state["retrained"]["0"][-1] == 1
    assert prediction["version"] == 1 and accuracy["vote"] > 0.5
    assert any("finished request(s) r-0001 left pending" in line for line in second.lines), "".join(second.lines)

    # The audit, with a retraining from scratch at the command path's thread count: every
    # constituent bit-identical (the run was trained in-process, the deletion on Ray actors).
    session = open_session(run_dir, flags=["ray.engine=local", "tracking.enabled=false"])
    threads = torch.get_num_threads()
    torch.set_num_threads(session.config.ray.command_threads())
    try:
        report = certificate(session, retrain_dir=tmp_path / "scratch")
    finally:
        torch.set_num_threads(threads)
    assert report["clean"], report["findings"]
    assert "retrain" in report["checked"] and report["requests"][0]["state"] == "done"
