"""The deletion worker: the one replica that changes the run while the service lives.

It opens the run once (data, warm shard actors) and holds the run's lock for its whole life, so
the ledger, the store and the versions change only here; other commands on the run wait. Requests
are recorded in the ledger when they arrive (`SisaRun.submit`, which holds the ledger's lock only,
so a request is accepted while a batch retrains) and served oldest first by one thread, in batches
the policy chooses. After each batch the new version goes to every prediction replica; a request
is `done` once the ledger says so and every replica has acknowledged that version. With tracking
on, the version's test accuracy is measured and its MLflow version registered after that, as
`unlearn forget` registers one, before the next batch is served: that batch's purge must find
every registered version that saw its ids. With tracking off, measuring the test accuracy waits
until no request does and gives way to one that arrives (a forward pass over the test split costs
about what retraining a few slices does), so back-to-back requests do not queue behind it; only
the newest version is measured.

A client waiting for a request to end asks once with a wait (`settled`, a long poll): the
deletion thread wakes every such wait when a version is served or a request fails, so waiting
clients cost nothing while the shard retrains.

On start it serves whatever the ledger left pending (a service killed during a deletion), before
it answers anything.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestration import commands
from orchestration.cluster import RayExecutor
from orchestration.config import RunConfig
from orchestration.outputs_cache import EvaluationInterrupted
from orchestration.requests import describe_request, ids_from_list
from orchestration.runs import open_run
from orchestration.serve import policy
from orchestration.status import accuracies, describe
from orchestration.tracking import make_tracker
from sisa import DeletionReport, InvalidRequestError
from sisa.ledger import Request, ids_digest_hex
from sisa.unlearning import retraining_cost

log = logging.getLogger(__name__)

SETTLED = ("done", "failed")
"""States a long poll (`DeletionWorker.settled`) returns at: the request ended, or must be looked at."""


def _configure_logging() -> None:
    """A replica's own process: our progress lines at INFO (Ray forwards them to the service's console)."""
    logger = logging.getLogger("orchestration")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class DeletionWorker:
    """Accepts deletion requests and serves them; made a Serve deployment (one replica) by launch.py."""

    def __init__(self, run_dir: str, config: RunConfig, board: Any) -> None:
        _configure_logging()
        torch.set_num_threads(config.ray.command_threads())
        self.config, self.board, self.settings = config, board, config.serve
        self.session = open_run(Path(run_dir), config)
        self.run = self.session.run
        self._state = threading.Lock()  # guards the fields below, read by request threads
        self._served = -1  # number of the version every replica acknowledged
        self._keys: dict[int, str] = {}  # that version's shard -> final checkpoint key
        self._running: list[str] = []
        self._failed: dict[str, str] = {}
        self._arrived: dict[str, float] = {}
        self._versions: dict[int, dict[str, Any]] = {}  # number -> test accuracy, model URI
        self._unevaluated: int | None = None  # the served version whose accuracy waits (deletion thread only)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()  # long polls (`settled`)
        self._wake, self._started = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="deletions", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    # -- the deletion thread -------------------------------------------------------------------
    def _main(self) -> None:
        try:
            with self.run.locked():  # for the service's life: nothing else changes the run
                self._start()
                self._started.set()
                while True:
                    self._step()
        except BaseException as err:  # noqa: BLE001 - reported by __init__ or by check_health
            self._error = err
            if not self._started.is_set():
                self._started.set()
            else:
                log.exception("the deletion worker stopped")

    def _start(self) -> None:
        began = time.perf_counter()
        if isinstance(self.run.executor, RayExecutor):
            size = self.run.executor.warm_up()
            log.info("deletion worker: %d warm shard actor(s)", size)
        report = self.run.serve_pending()  # requests a stopped service left pending
        done = sum(1 for r in self.run.ledger.requests() if r.done is not None)
        self._publish(done, self.run.final_keys(), [] if report is None else report.request_ids)
        if report is not None:
            log.info("finished request(s) %s left pending by an earlier service", ", ".join(report.request_ids))
        self._after(report, began)

    def _step(self) -> None:
        pending = self.run.ledger.pending()
        if not pending:
            if self._unevaluated is not None:
                self._wake.clear()  # from here on, a request that arrives (submit sets it) interrupts
                if not self.run.ledger.pending():
                    self._evaluate()
                return
            self._wake.wait()
            self._wake.clear()
            return
        ids = np.concatenate([r.sample_ids for r in pending])
        plan = self.run.plan()
        cost = retraining_cost(plan, self.run.dirty(ids), self.run.config)
        full = retraining_cost(plan, dict.fromkeys(range(plan.num_shards), 0), self.run.config)
        with self._state:  # a request first seen here (before submit noted it) arrived now
            waited = time.monotonic() - self._arrived.setdefault(pending[0].request_id, time.monotonic())
        batch = policy.decide(self.settings, len(pending), waited, cost, full)
        if batch is None:
            self._wake.wait(max(0.0, self.settings.batch_window_s - waited))
            self._wake.clear()
            return
        self._serve(pending[: batch.requests], batch.reason)

    def _serve(self, batch: list[Request], reason: str) -> None:
        names = [r.request_id for r in batch]
        log.info("serving %s (%s)", ", ".join(names), reason)
        with self._state:
            self._running = names
            for name in names:  # a request that failed stays `failed` (with its error) until it is done
                self._arrived.pop(name, None)
        began = time.perf_counter()
        try:
            report = self.run.serve_pending(max_requests=len(batch))
        except Exception as err:  # noqa: BLE001 - the requests stay pending in the ledger and are retried
            with self._state:
                self._running = []
            self._failure(names, err)
            return
        assert report is not None and report.request_ids == names  # nothing else serves this run
        served = time.perf_counter()
        keys = {s: k for s, k in {**self._keys, **report.final_keys}.items()
                if s not in report.dirty or s in report.final_keys}  # emptied shards drop out
        while True:  # the ledger says done: the swap must happen before anything else does
            try:
                self._publish(self._served + len(names), keys, names)
                break
            except Exception as err:  # noqa: BLE001 - the replicas keep the old version until it succeeds
                self._failure(names, err)
        # Shards retrain in parallel on the actors, so their seconds are summed, not subtracted from the wall time.
        training = sum(shard.seconds for shard in report.shards)
        log.info("done %s: retrained %s, %d samples x epochs, %.2f s (served in %.2f s, shard training %.2f s summed "
                 "over shards; swap to every replica %.2f s)", ", ".join(names), report.retrained or "nothing",
                 report.samples_epochs, time.perf_counter() - began, served - began, training,
                 time.perf_counter() - served)
        self._after(report, began)

    def _failure(self, names: list[str], err: Exception) -> None:
        log.exception("serving %s failed; retrying in %g s", ", ".join(names), self.settings.retry_after_s)
        first_line = str(err).splitlines()[0] if str(err) else ""
        with self._state:
            self._failed.update(dict.fromkeys(names, f"{type(err).__name__}: {first_line}"))
        self._notify()
        time.sleep(self.settings.retry_after_s)

    def _publish(self, number: int, keys: Mapping[int, str], served: list[str]) -> None:
        """Make version `number` (`keys`) the one every replica answers with; returns once all have."""
        import ray

        # Only the constituents the board does not hold yet travel (those the batch retrained), loaded
        # and verified from the store: the board holds the last version this worker published, whose
        # keys `_keys` are (none after the worker starts, so everything travels then). No keys:
        # every training sample was deleted, and the replicas answer that there is no model.
        changed = {shard: key for shard, key in keys.items() if self._keys.get(shard) != key}
        weights = {shard: model.state_dict() for shard, model in self.run.constituents(changed)} if changed else {}
        info = {"number": number, "constituents": len(keys), "keys": dict(keys), "served": served,
                "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ray.get(self.board.publish.remote(info, weights))
        while True:
            missing = ray.get(self.board.unacknowledged.remote(number, self.settings.swap_timeout_s))
            if not missing:
                break
            log.warning("version %d: waiting for replica(s) %s to acknowledge it", number, ", ".join(missing))
        with self._state:
            self._served, self._keys, self._running = number, dict(keys), []
            for name in served:
                self._failed.pop(name, None)
        self._notify()

    def _notify(self) -> None:
        """Wake every long poll: a version was served or a request failed (deletion thread)."""
        with self._state:
            waiters = list(self._waiters)
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that poll's event loop has closed: nobody waits there any more
                pass

    def _entry(self, number: int) -> dict[str, Any]:
        with self._state:
            for old in [n for n in self._versions if n < number - 100]:
                del self._versions[old]  # keep memory bounded on a long-lived service
            return self._versions.setdefault(number, {})

    def _after(self, report: DeletionReport | None, began: float) -> None:
        """What follows a version: with tracking on (and requests served), its test accuracy (only
        retrained constituents run) and its MLflow model version, now; otherwise its accuracy, once
        no request waits (`_evaluate`). Failures here are logged, the requests stay done."""
        if report is None or not self.config.tracking.enabled:
            self._unevaluated = self._served
            return
        number, keys = self._served, dict(self._keys)
        entry, self._unevaluated = self._entry(number), None
        try:
            accuracy = {k: round(v, 4) for k, v in accuracies(self.session, keys).items()}
            with self._state:
                entry["test_accuracy"] = accuracy
            tracker = make_tracker(self.config.tracking)
            _, uri = commands.track_deletion(self.session, tracker, report, began, keys,
                                             {"command": "forget", "served_by": "unlearn serve"})
            with self._state:
                entry["model_uri"] = uri
        except Exception:  # noqa: BLE001 - the deletion is complete; what it publishes is not
            log.exception("version %d: evaluation or MLflow registration failed", number)

    def _evaluate(self) -> None:
        """The served version's test accuracy, giving way to a request that arrives meanwhile (the
        constituents already run are kept, so the next try resumes); a newer version replaces it."""
        number, keys = self._served, dict(self._keys)
        try:
            accuracy = accuracies(self.session, keys, interrupt=self._wake.is_set)
        except EvaluationInterrupted:
            return  # the request is served first; `_unevaluated` then names the newest version
        except Exception:  # noqa: BLE001 - the versions stay served; only their accuracy is missing
            log.exception("version %d: evaluation failed", number)
        else:
            entry = self._entry(number)
            with self._state:
                entry["test_accuracy"] = {k: round(v, 4) for k, v in accuracy.items()}
        self._unevaluated = None

    # -- what request threads call -----------------------------------------------------------------
    def submit(self, ids: list[Any], reason: str) -> dict[str, str]:
        """Record a deletion request (pending) and wake the deletion thread; {"error": ...} when invalid."""
        arrived = time.monotonic()
        try:
            sample_ids = ids_from_list(ids, self.run.table, self.run.ledger.requests())
            request_id = self.run.submit(sample_ids, reason)
        except InvalidRequestError as err:
            return {"error": str(err)}
        with self._state:
            self._arrived[request_id] = min(arrived, self._arrived.get(request_id, arrived))
        self._wake.set()
        return {"request_id": request_id}

    def request(self, request_id: str) -> dict[str, Any] | None:
        """What the service knows of one request, or None for an unknown id."""
        requests = self.run.ledger.requests()
        index = next((i for i, r in enumerate(requests, 1) if r.request_id == request_id), None)
        if index is None:
            return None
        r = requests[index - 1]
        with self._state:
            served, running, failed = self._served, list(self._running), self._failed.get(request_id)
            # A batch's version is the number of requests done once its last request was.
            batch = (r.done or {}).get("batch") or [request_id]
            number = max(i for i, q in enumerate(requests, 1) if q.request_id in batch)
            version = self._versions.get(number, {})
        if r.done is not None and index <= served:
            state = "done"
        elif failed:
            state = "failed"
        elif request_id in running or r.done is not None:
            state = "running"
        else:
            state = "pending"
        done = r.done or {}
        kinds: dict[str, int] = {}
        for item in r.destroyed:
            kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
        answer = {"request_id": request_id, "state": state, "num_ids": int(len(r.sample_ids)), "ids": describe_request(r),
                  "ids_sha256": ids_digest_hex(r.sample_ids), "reason": r.reason, "recorded": r.time,
                  "finished": done.get("time") if state == "done" else None,
                  "batch": batch if r.done is not None else None,
                  "retrained": done.get("retrained"), "samples_epochs": done.get("samples_epochs"),
                  "retrain_seconds": done.get("seconds"), "destroyed": kinds,
                  "version": number if state == "done" else None,
                  "model_uri": (r.versions or [None])[-1] or version.get("model_uri")}
        if state == "failed":
            answer["error"] = f"{failed}; retried every {self.settings.retry_after_s:g} s"
        return answer

    async def settled(self, request_id: str, wait: float) -> dict[str, Any] | None:
        """`request`, once the request is done or failed or after `wait` seconds, whichever is first."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._state:  # registered before the first look: a change after it is never missed
            self._waiters.add(waiter)
        try:
            deadline = time.monotonic() + wait
            while True:
                answer = await asyncio.to_thread(self.request, request_id)  # reads the ledger: off the loop
                left = deadline - time.monotonic()
                if answer is None or answer["state"] in SETTLED or left <= 0:
                    return answer
                try:
                    await asyncio.wait_for(waiter[1].wait(), left)
                except TimeoutError:
                    pass
                waiter[1].clear()
        finally:
            with self._state:
                self._waiters.discard(waiter)

    def status(self) -> dict[str, Any]:
        """What `unlearn status` shows, with the served version's accuracy and the service's state."""
        info = describe(self.session, accuracy=False)
        with self._state:
            served, running = self._served, list(self._running)
            info["test_accuracy"] = self._versions.get(served, {}).get("test_accuracy")
        pending = [r.request_id for r in self.run.ledger.pending()]
        info["service"] = {"version": served, "running": running, "pending": pending,
                           "settings": {k: v for k, v in asdict(self.settings).items() if k != "token_file"}}
        return info

    def health(self) -> dict[str, Any]:
        """The served version and how many requests wait."""
        with self._state:
            served = self._served
        return {"version": served, "pending": len(self.run.ledger.pending()), "worker": self._thread.is_alive()}

    def check_health(self) -> None:
        """Serve's health check: a worker whose deletion thread died is restarted (and finishes what is pending)."""
        if not self._thread.is_alive():
            raise RuntimeError(f"the deletion thread stopped: {self._error!r}")
