"""Single-deletion latency through the service vs the `unlearn forget` command vs retraining, and
prediction throughput and latency with and without a deletion in flight.

Everything runs as a user runs it, each command a new process:

- monolithic: `unlearn train` of one model (S = R = 1) on the same data, model and epochs, from scratch;
- command:    `unlearn forget --ids <id> --timings` on a fresh copy of the trained ensemble, with the
              default engine (`ray`, which trains a deletion touching one shard in the command's
              process rather than start a cluster for it) and with the in-process engine at 1 and 2
              torch threads; the
              `--timings` line gives where the time went (startup, data load, Ray start, actor start,
              retraining, purge, evaluation, MLflow);
- service:    `unlearn serve` on another copy (its own local Ray cluster, warm shard actors); each id
              is POST /forget, then GET /requests/<id>?wait=60 (a long poll: answered as soon as the
              request is done) until `done`: request to done, as a client waiting for it sees it.

The ids are the same for the command and the service (random, one per request, `--seed`; a longer
run's ids start with a shorter one's), and each request is served alone (window 0), so both do the
same retraining. A deletion's cost depends on which slice its id sits in (the first of 8 retrains the
whole shard, the last one slice), so there are more deletions (`--deletions`) than trainings of the
monolithic model (`--repeats`), which cost the same every time. Predictions: `--clients` threads
send POST /predict with `--batch` test samples for `--load-s` seconds with nothing else running,
then while deletions are served back to back (only answers sent while one was in flight count).
Medians throughout. MLflow is off everywhere unless `--track` (its cost is then a phase of the
command's breakdown).

    python -m benchmarks.service           # MNIST (6,000 samples), small CNN, S=16, R=8, e=10: 15 deletions
    python -m benchmarks.service --quick   # digits, MLP, S=4, R=2: checks every path (CI)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks.common import SHARED_MNIST, copy_run_dir, median, remove_run_copy, write_results
from orchestration.datasets.cache import train_cache

CHECKOUT = Path(__file__).resolve().parents[1]
TOKEN = "benchmark-token"
FULL = {"settings": ["data.name=mnist", f"data.root={SHARED_MNIST.resolve()}", "data.train_limit=6000",
                     "model.name=cnn", "sisa.num_shards=16", "sisa.num_slices=8", "sisa.epochs=10"],
        "repeats": 5, "deletions": 15, "load_s": 30.0, "clients": 4, "batch": 64}
QUICK = {"settings": ["data.name=digits", "model.name=mlp", "sisa.num_shards=4", "sisa.num_slices=2", "sisa.epochs=4"],
         "repeats": 1, "deletions": 2, "load_s": 3.0, "clients": 2, "batch": 16}
_TIMINGS = re.compile(r"^timings: (.*); total ([\d.]+) s$")


def _cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 3600) -> tuple[float, str]:
    """Run `unlearn ARGS` in a new process; returns its wall seconds and stderr."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"unlearn {' '.join(args[:3])} failed: {done.stderr[-2000:]}")
    return seconds, done.stderr


def parse_timings(stderr: str) -> dict[str, float]:
    """The `--timings` line of a command's stderr as phase -> seconds (with `total`)."""
    for line in reversed(stderr.splitlines()):
        match = _TIMINGS.match(line.strip())
        if match:
            phases = {name: float(value) for name, value in
                      (part.rsplit(" ", 2)[:2] for part in match[1].split(", "))}
            return {**phases, "total": float(match[2])}
    raise ValueError(f"no timings line in: {stderr[-500:]}")


_DONE = re.compile(r"done (r-\d+): .*, ([\d.]+) s \(served in ([\d.]+) s, shard training ([\d.]+) s summed over "
                   r"shards; swap to every replica ([\d.]+) s\)")


def parse_done(lines: list[str], request_id: str) -> dict[str, float]:
    """The service's own account of one request (its `done` log line): seconds in the worker, of which
    serving the request (retraining and purging) and the swap to every replica, and the shards' training
    summed over shards."""
    for line in reversed(lines):
        match = _DONE.search(line)
        if match and match[1] == request_id:
            return {"worker_s": float(match[2]), "served_s": float(match[3]), "shard_training_s": float(match[4]),
                    "swap_s": float(match[5])}
    raise ValueError(f"no done line for {request_id} in: {''.join(lines)[-500:]}")


def _worker_account(lines: list[str], request_id: str) -> dict[str, float] | None:
    try:
        return parse_done(lines, request_id)
    except ValueError:  # the replica's log did not reach the service's stderr: the breakdown is missing, not wrong
        return None


def _sets(settings: list[str]) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def monolithic(work: Path, env: dict[str, str], settings: list[str], repeats: int, track: list[str]) -> list[float]:
    """Wall seconds of `unlearn train` of the monolithic model, from scratch each time."""
    mono = [s for s in settings if not s.startswith(("sisa.num_shards", "sisa.num_slices"))]
    mono += ["sisa.num_shards=1", "sisa.num_slices=1"]
    seconds = []
    for repeat in range(repeats):
        target = work / f"mono-{repeat}"
        seconds.append(_cli(["train", "--run-dir", str(target), *track, *_sets(mono)], work, env)[0])
        shutil.rmtree(target)
    return seconds


def command(work: Path, env: dict[str, str], trained: Path, data_cache: Path | None, ids: list[int],
            flags: list[str]) -> list[dict[str, float]]:
    """`unlearn forget --ids <id> --timings` on a fresh copy per id (its own data cache): wall seconds and the breakdown."""
    results = []
    for number, sample in enumerate(ids):
        target = work / f"forget-{number}"
        own = copy_run_dir(trained, target, data_cache)
        seconds, stderr = _cli(["forget", "--run-dir", str(target), "--ids", str(sample), "--timings", *flags, *own],
                               work, env)
        results.append({"wall_s": seconds, **parse_timings(stderr)})
        remove_run_copy(target)
    return results


class Service:
    """`unlearn serve` in its own process group."""

    def __init__(self, run_dir: Path, env: dict[str, str], flags: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestration.cli", "serve", "--run-dir", str(run_dir), "--port", str(self.port),
             "--set", "serve.batch_window_s=0", *flags], cwd=run_dir.parent, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True).start()
        began = time.perf_counter()
        while not any(line.startswith("serving ") for line in self.lines):
            if self.process.poll() is not None or time.perf_counter() - began > 900:
                self.stop()
                raise RuntimeError("unlearn serve did not start: " + "".join(self.lines)[-2000:])
            time.sleep(0.2)
        self.start_s = time.perf_counter() - began

    def forget(self, sample: int) -> tuple[float, str]:
        """Seconds from POST /forget to GET /requests/<id> saying done, and the request's id."""
        auth = {"Authorization": f"Bearer {TOKEN}"}
        began = time.perf_counter()
        answer = requests.post(f"{self.url}/forget", json={"ids": [sample]}, headers=auth, timeout=600)
        answer.raise_for_status()
        location = f"{self.url}{answer.json()['location']}"
        while (state := requests.get(location, headers=auth, params={"wait": 60}, timeout=600).json())["state"] != "done":
            if state["state"] == "failed":
                raise RuntimeError(f"request {state['request_id']} failed: {state.get('error')}")
        return time.perf_counter() - began, answer.json()["request_id"]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(60)


def prediction_load(service: Service, rows: list[list[float]], clients: int, seconds: float,
                    deleting: list[int] | None = None) -> dict[str, Any]:
    """Throughput and latency of POST /predict for `seconds`; with `deleting`, deletions of those
    ids are served one after another meanwhile, and only answers sent while one ran count."""
    answers: list[tuple[float, float]] = []  # (sent, latency)
    in_flight: list[tuple[float, float]] = []  # (submitted, done) of each deletion
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            sent = time.perf_counter()
            session.post(f"{service.url}/predict", json={"inputs": rows}, timeout=600).raise_for_status()
            answers.append((sent, time.perf_counter() - sent))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    if deleting:
        for sample in deleting:
            if time.perf_counter() - began > seconds and in_flight:
                break
            submitted = time.perf_counter()
            service.forget(sample)
            in_flight.append((submitted, time.perf_counter()))
    else:
        time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(600)
    if deleting:
        counted = [latency for sent, latency in answers if any(a <= sent and sent + latency <= b for a, b in in_flight)]
        window = sum(b - a for a, b in in_flight)
    else:
        counted, window = [latency for _, latency in answers], time.perf_counter() - began
    latencies = np.asarray(counted) * 1000
    return {"answers": len(counted), "seconds": window, "per_s": len(counted) / window if window else 0.0,
            "samples_per_s": len(counted) * len(rows) / window if window else 0.0,
            "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None}


def _test_rows(settings: list[str], count: int) -> list[list[float]]:
    from orchestration.config import load_config
    from orchestration.datasets import load_dataset

    _, test = load_dataset(load_config(None, settings).data)
    x, _ = test.tensors(test.ids[:count])
    return x.reshape(len(x), -1).tolist()


def run(spec: dict[str, Any], work: Path, repeats: int, deletions: int, seed: int, track: bool) -> dict[str, Any]:
    """Train the ensemble once, then time every variant; returns the results."""
    env = {**os.environ, "UNLEARN_TOKEN": TOKEN, "PYTHONPATH": str(CHECKOUT), "RAY_ADDRESS": "",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    tracking = [] if track else ["--no-track"]
    trained = work / "ensemble"
    _cli(["train", "--run-dir", str(trained), *tracking, *_sets(spec["settings"])], work, env)
    from orchestration.runs import open_session

    session = open_session(trained)
    retained, data_cache = session.run.retained_ids(), train_cache(session.config.data)
    del session
    # One random order of the ids: the timed deletions first, then a pool for those served under prediction load.
    ids = np.random.default_rng(seed).permutation(retained)[: deletions + 100].tolist()
    results: dict[str, Any] = {"workload": {"settings": spec["settings"], "repeats": repeats, "deletions": deletions,
                                            "ids": ids[:deletions],
                                            "tracking": track}}
    results["monolithic_s"] = monolithic(work, env, spec["settings"], repeats, tracking)
    results["command"] = {
        "ray": command(work, env, trained, data_cache, ids[:deletions], tracking),
        "local-1t": command(work, env, trained, data_cache, ids[:deletions], [*tracking, "--engine", "local"]),
        "local-2t": command(work, env, trained, data_cache, ids[:deletions],
                            [*tracking, "--engine", "local", "--set", "ray.driver_threads=2"]),
    }
    own = copy_run_dir(trained, work / "service", data_cache)
    service = Service(work / "service", env, [*tracking, *own])
    try:
        served = [service.forget(sample) for sample in ids[:deletions]]
        time.sleep(1)  # the done lines reach the log through Ray's log forwarding
        results["service"] = {"start_s": service.start_s, "done_s": [seconds for seconds, _ in served],
                              "worker": [_worker_account(service.lines, request) for _, request in served]}
        rows = _test_rows(spec["settings"], spec["batch"])
        results["predictions"] = {
            "idle": prediction_load(service, rows, spec["clients"], spec["load_s"]),
            "deleting": prediction_load(service, rows, spec["clients"], spec["load_s"], ids[deletions:]),
        }
    finally:
        service.stop()
    return summarize(results)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Medians, the command's median breakdown per phase, and speedups over the monolithic retraining."""
    mono = median(results["monolithic_s"])
    summary: dict[str, Any] = {"monolithic_median_s": mono, "command": {}}
    for variant, runs in results["command"].items():
        phases = {name for entry in runs for name in entry}
        breakdown = {name: statistics.median(entry.get(name, 0.0) for entry in runs) for name in sorted(phases)}
        summary["command"][variant] = {"median_s": breakdown["wall_s"], "speedup": mono / breakdown["wall_s"],
                                       "breakdown_median_s": breakdown}
    done = median(results["service"]["done_s"])
    accounts = [entry for entry in results["service"]["worker"] if entry]
    worker = {name: statistics.median(entry[name] for entry in accounts) for name in (accounts[0] if accounts else {})}
    summary["service"] = {"median_s": done, "speedup": mono / done, "worker_median_s": worker}
    return {**results, "summary": summary}


def report(results: dict[str, Any]) -> str:
    """The result table as text."""
    s = results["summary"]
    lines = [f"monolithic `unlearn train`: median {s['monolithic_median_s']:.2f} s",
             *(f"`unlearn forget` ({variant}): median {v['median_s']:.2f} s, {v['speedup']:.1f}x; breakdown " +
               ", ".join(f"{k} {t:.2f}" for k, t in v["breakdown_median_s"].items() if k not in ("wall_s", "total"))
               for variant, v in s["command"].items()),
             f"service, request to done: median {s['service']['median_s']:.2f} s, {s['service']['speedup']:.1f}x "
             f"(service start {results['service']['start_s']:.1f} s, once); in the worker (medians): " +
             ", ".join(f"{k.removesuffix('_s')} {t:.2f}" for k, t in s["service"]["worker_median_s"].items())]
    for case, p in results["predictions"].items():
        latency = (f"p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms" if p["answers"] else "no answer counted")
        lines.append(f"predictions ({case}): {p['per_s']:.1f}/s ({p['samples_per_s']:.0f} samples/s), "
                     f"{latency} over {p['answers']} answers")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, MLP, small: checks every path")
    parser.add_argument("--repeats", type=int, help="trainings of the monolithic model (median)")
    parser.add_argument("--deletions", type=int, help="deletions per command variant and through the service (medians)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deleted ids")
    parser.add_argument("--track", action="store_true", help="MLflow on (its cost shows in the command's breakdown)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="where the JSON goes")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    try:
        results = run(spec, work, args.repeats or spec["repeats"], args.deletions or spec["deletions"], args.seed,
                      args.track)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results("service-quick" if args.quick else "service", results, Path(args.out))
    print(report(results))
    return results


if __name__ == "__main__":
    main()
