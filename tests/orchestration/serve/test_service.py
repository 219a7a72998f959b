"""The service over real HTTP on 127.0.0.1: request lifecycle, whole versions, bad input, auth, audit.

One service (digits, 2 shards x 2 slices, 2 prediction replicas, MLflow on) runs on the session's
Ray cluster for the whole module; tests that delete go in order, and the last one stops it and
audits the run.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time

import numpy as np
import pytest
import requests
import torch

from orchestration.audit import certificate
from orchestration.cli import main
from orchestration.config import load_config
from orchestration.registry import DESTROYED_TAG, published
from orchestration.runs import open_session
from orchestration.serve.launch import deploy

pytestmark = pytest.mark.ray
TOKEN = "test-token-3f9a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Enough epochs that a deletion from a shard's first slice retrains for a few seconds: long
# enough to see predictions answered while it runs.
SETTINGS = ["sisa.num_shards=2", "sisa.num_slices=2", "sisa.epochs=60", "serve.batch_window_s=0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory, ray_cluster):
    folder = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("UNLEARN_CACHE", str(folder / "cache"))
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        run_dir = folder / "run"
        settings = [arg for setting in SETTINGS for arg in ("--set", setting)]
        assert main(["train", "--run-dir", str(run_dir), "--engine", "local", *settings]) == 0
        session = open_session(run_dir)
        plan, x = session.run.plan(), session.test.tensors()[0]
        del session  # the service opens the run and holds its lock
        # Two prediction replicas: "every replica acknowledged the new version" is about more than one.
        config = load_config(run_dir / "config.toml", [f"serve.port={_free_port()}", "serve.replicas=2",
                                                       "serve.retry_after_s=1"])
        running = deploy(run_dir, config, TOKEN)
        yield {"url": running.url, "run_dir": run_dir, "plan": plan, "x": x.reshape(len(x), -1)[:40].numpy(),
               "service": running}
        try:
            running.stop()
        finally:
            from ray import serve

            serve.shutdown()


def _predict(service, rows=None) -> requests.Response:
    rows = service["x"] if rows is None else rows
    return requests.post(f"{service['url']}/predict", json={"inputs": rows.tolist()}, timeout=60)


def _forget(service, ids, token=TOKEN) -> requests.Response:
    return requests.post(f"{service['url']}/forget", json={"ids": ids, "reason": "test"},
                         headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _state(service, request_id, wait=None) -> dict:
    answer = requests.get(f"{service['url']}/requests/{request_id}", headers=AUTH, timeout=120,
                          params=None if wait is None else {"wait": wait})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _until_done(service, request_id, timeout=300) -> tuple[dict, set[str]]:
    seen, began = set(), time.monotonic()
    while time.monotonic() - began < timeout:
        state = _state(service, request_id)
        seen.add(state["state"])
        if state["state"] == "done":
            return state, seen
        assert state["state"] in ("pending", "running"), state
        time.sleep(0.05)
    raise AssertionError(f"{request_id} not done after {timeout} s")


def _requests_recorded(service) -> int:
    return len(requests.get(f"{service['url']}/status", headers=AUTH, timeout=60).json()["requests"])


def test_service_answers_health_and_predictions_from_version_zero(service):
    assert requests.get(f"{service['url']}/health", timeout=30).json() == {"status": "ok", "version": 0}
    answer = _predict(service).json()
    assert answer["version"] == 0 and len(answer["labels"]) == 40
    probabilities = np.asarray(answer["probabilities"])
    assert probabilities.shape == (40, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)


def test_deletion_request_goes_from_pending_to_done_with_its_cost_and_new_version(service):
    sample = int(service["plan"].slice_ids(1)[1][0])  # shard 1, last slice: retrains one slice
    accepted = _forget(service, [sample])
    assert accepted.status_code == 202, accepted.text
    request_id = accepted.json()["request_id"]
    assert request_id == "r-0001" and accepted.headers["Location"] == "/requests/r-0001"

    state, seen = _until_done(service, request_id)

    assert seen <= {"pending", "running", "done"}
    assert state["retrained"] == {"1": [1]} and state["samples_epochs"] > 0 and state["num_ids"] == 1
    assert state["version"] == 1 and state["destroyed"]["checkpoint"] == 1
    assert _predict(service).json()["version"] == 1
    began = time.monotonic()  # the MLflow version is registered right after the request is done
    while _state(service, request_id)["model_uri"] is None and time.monotonic() - began < 120:
        time.sleep(0.2)
    assert _state(service, request_id)["model_uri"].startswith("models:/unlearn-run-")


def test_predictions_answer_during_a_deletion_each_from_one_whole_version_then_only_from_the_new(service):
    before = _predict(service).json()
    sample = int(service["plan"].slice_ids(0)[0][0])  # shard 0, first slice: retrains the whole shard
    answers: list[tuple[float, dict]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = _predict(service)
            assert response.status_code == 200, response.text
            answers.append((sent, response.json()))

    client = threading.Thread(target=ask)
    client.start()
    submitted = time.monotonic()
    request_id = _forget(service, [sample]).json()["request_id"]
    _, seen = _until_done(service, request_id)
    done_seen = time.monotonic()
    time.sleep(1.0)
    stop.set()
    client.join(60)
    after = _predict(service).json()

    assert (before["version"], after["version"]) == (1, 2)
    reference = {1: np.asarray(before["probabilities"]), 2: np.asarray(after["probabilities"])}
    assert np.abs(reference[1] - reference[2]).max() > 1e-4, "the retrained constituent changes the outputs"
    assert "running" in seen
    during = [a for sent, a in answers if submitted <= sent and sent < done_seen]
    assert len(during) >= 2, "predictions kept answering while the request was served"
    for _, answer in answers:
        # A mix of old and new constituents would match neither version's outputs.
        assert np.allclose(answer["probabilities"], reference[answer["version"]], atol=1e-6, rtol=0)
        assert answer["labels"] == (before if answer["version"] == 1 else after)["labels"]
    assert all(a["version"] == 2 for sent, a in answers if sent > done_seen)


def test_two_requests_arriving_together_are_served_by_one_retraining(service):
    plan = service["plan"]
    first, second = int(plan.slice_ids(0)[1][1]), int(plan.slice_ids(1)[1][2])
    ids = [_forget(service, [sample]).json()["request_id"] for sample in (first, second)]
    states = [_until_done(service, request_id)[0] for request_id in ids]
    # Both were pending when the worker looked (window 0: it serves whatever is pending); at
    # worst the first was alone, and then each is its own batch.
    if states[0]["batch"] == ids:
        assert states[1]["batch"] == ids and states[0]["version"] == states[1]["version"] == 4
    else:
        assert [s["version"] for s in states] == [3, 4]


@pytest.mark.parametrize(("body", "message"), [
    ("{broken", "not valid JSON"),
    ('{"ids": []}', "names no sample ids"),
    ('{"ids": [100000]}', "not in the training data"),
    ('{"ids": [3, 3]}', "more than once"),
    ('{"ids": ["3"]}', "must be integers"),
    ('{"ids": 3}', "'ids' must be a list"),
    ('{"ids": [3], "when": "now"}', "unknown field(s)"),
])
def test_a_bad_deletion_request_gets_400_naming_the_problem_and_records_nothing(service, body, message):
    before = _requests_recorded(service)
    answer = requests.post(f"{service['url']}/forget", data=body, headers=AUTH, timeout=60)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert _requests_recorded(service) == before


def test_already_deleted_ids_get_400_naming_the_request_that_deleted_them(service):
    sample = int(service["plan"].slice_ids(1)[1][0])  # deleted by r-0001
    answer = _forget(service, [sample])
    assert answer.status_code == 400 and "already deleted by request r-0001" in answer.json()["error"]


@pytest.mark.parametrize(("rows", "message"), [
    (np.zeros((2, 3)), "64 values (1 x 8 x 8); got an array of shape (2, 3)"),
    (np.zeros((0, 64)), "no inputs"),
    (np.full((1, 64), np.nan), "finite numbers"),
])
def test_bad_prediction_inputs_get_400_naming_the_problem(service, rows, message):
    body = io.BytesIO()
    np.save(body, rows)
    answer = requests.post(f"{service['url']}/predict", data=body.getvalue(), headers={"Content-Type": "application/x-npy"},
                           timeout=60)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_deletion_endpoints_need_the_token_and_predictions_do_not(service):
    before = _requests_recorded(service)
    url = service["url"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for answer in (requests.post(f"{url}/forget", json={"ids": [5]}, headers=headers, timeout=60),
                       requests.get(f"{url}/requests/r-0001", headers=headers, timeout=60),
                       requests.get(f"{url}/status", headers=headers, timeout=60)):
            assert answer.status_code == 401 and "Bearer" in answer.json()["error"]
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert _requests_recorded(service) == before
    assert _predict(service).status_code == 200
    assert requests.get(f"{url}/requests/r-0999", headers=AUTH, timeout=60).status_code == 404


def test_status_shows_the_run_the_served_version_and_its_accuracy(service):
    began = time.monotonic()  # the served version's accuracy is measured right after its requests are done
    while (info := requests.get(f"{service['url']}/status", headers=AUTH, timeout=60).json())["test_accuracy"] is None:
        assert time.monotonic() - began < 120
        time.sleep(0.2)
    assert info["data"]["name"] == "digits" and info["sisa"]["num_shards"] == 2
    assert info["service"]["version"] == len(info["requests"]) and info["service"]["pending"] == []
    assert info["test_accuracy"]["vote"] > 0.5 and "token_file" not in info["service"]["settings"]


def test_a_request_whose_serving_fails_is_reported_failed_and_retried_until_done(service):
    began = time.monotonic()  # the last batch's MLflow version is registered (and recorded) first
    while _state(service, "r-0004")["model_uri"] is None:
        assert time.monotonic() - began < 120
        time.sleep(0.2)
    record = service["run_dir"] / "published.jsonl"
    intact = record.read_text()
    # A published version the deletion must destroy but cannot reach: the request must not be done.
    unreachable = {"tracking_uri": "sqlite:////proc/no-such-dir/mlflow.db", "name": "m", "version": "1",
                   "model_id": None, "artifact_uri": "/proc/no-such-dir", "requests": 0}
    record.write_text(intact + json.dumps(unreachable) + "\n")
    request_id = _forget(service, [int(service["plan"].slice_ids(1)[1][3])]).json()["request_id"]
    began = time.monotonic()
    while (state := _state(service, request_id))["state"] != "failed":
        assert state["state"] in ("pending", "running") and time.monotonic() - began < 120, state
        time.sleep(0.05)
    assert "RegistryError" in state["error"] and "retried every 1 s" in state["error"]
    assert _predict(service).json()["version"] == 4, "the old version is served while the request is not done"
    record.write_text(intact)
    while (state := _state(service, request_id))["state"] != "done":  # failed until a retry succeeds
        assert state["state"] in ("failed", "running") and time.monotonic() - began < 240, state
        time.sleep(0.05)
    assert "error" not in state and state["version"] == 5 == _predict(service).json()["version"]


def test_a_long_poll_answers_once_the_request_is_done_and_a_short_one_with_the_state_it_has_then(service):
    sample = int(service["plan"].slice_ids(0)[0][1])  # shard 0, first slice: retrains the whole shard (seconds)
    request_id = _forget(service, [sample]).json()["request_id"]

    assert _state(service, request_id, wait=0.1)["state"] in ("pending", "running")
    state = _state(service, request_id, wait=60)  # one question: the answer comes when it is done

    assert state["state"] == "done" and state["version"] == _predict(service).json()["version"]
    assert _state(service, request_id, wait=60)["state"] == "done"  # already done: answered as it is
    url = f"{service['url']}/requests/{request_id}"
    for bad in ("soon", "-1", "61", "nan"):
        answer = requests.get(url, params={"wait": bad}, headers=AUTH, timeout=60)
        assert answer.status_code == 400 and "'wait' must be a number of seconds from 0 to 60" in answer.json()["error"]
    assert requests.get(f"{service['url']}/requests/r-0999", params={"wait": 1}, headers=AUTH,
                        timeout=60).status_code == 404


# Last: stops the service.
def test_after_the_service_stops_its_last_answer_is_the_run_itself_and_the_audit_is_clean(service):
    last = _predict(service).json()
    service["service"].stop()
    session = open_session(service["run_dir"])  # the service released the run's lock
    x = service["x"].reshape(-1, 1, 8, 8)
    with torch.no_grad():
        logits = session.run.logits(torch.from_numpy(x))
    assert last["version"] == len(session.run.ledger.requests())
    assert np.allclose(logits.softmax(-1).mean(0).numpy(), last["probabilities"], atol=1e-6)
    report = certificate(session)
    assert report["clean"], report["findings"]
    # One version registered by `train` (MLflow was on), then one per batch the service served.
    entries = published(service["run_dir"])
    assert len(entries) == 1 + sum(1 for r in session.run.ledger.requests() if r.versions)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=entries[0]["tracking_uri"])
    live = [e for e in entries if not client.get_model_version(e["name"], e["version"]).tags.get(DESTROYED_TAG)]
    assert live == entries[-1:]
