"""`unlearn serve`: check the run, start or join Ray, deploy the service, wait, stop.

The service is one Serve application: `serve.replicas` Gateway replicas (HTTP, predictions) and one
DeletionWorker replica (deletions, on warm shard actors), plus a VersionBoard actor they share.
Everything is checked before anything starts, so a missing token, a busy port or a run another
command is using is one line, not a stack of Serve logs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.cluster import ensure_ray
from orchestration.config import RunConfig, ServeConfig
from orchestration.datasets import cache_dir
from orchestration.runs import open_run
from sisa.errors import RunLockedError, SisaError
from sisa.lock import run_lock

log = logging.getLogger(__name__)

TOKEN_ENV = "UNLEARN_TOKEN"


class ServiceError(SisaError):
    """The service could not be deployed."""


_QUIET = {"log_level": "WARNING", "enable_access_log": False}


def read_token(settings: ServeConfig) -> str:
    """The bearer token of the deletion endpoints: `serve.token_file`'s content, else $UNLEARN_TOKEN.

    Raises:
        ValueError: no token is set, or the file cannot be read.
    """
    if settings.token_file:
        try:
            token = Path(settings.token_file).read_text().strip()
        except OSError as err:
            raise ValueError(f"serve.token_file {settings.token_file}: {err.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(f"the deletion endpoints need a bearer token: set ${TOKEN_ENV}, or serve.token_file to a file "
                         "holding it (e.g. `export UNLEARN_TOKEN=$(openssl rand -hex 24)`)")
    return token


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port or --host") from None


def resolved(config: RunConfig) -> RunConfig:
    """The config with what replicas on other processes (or nodes) must not resolve for themselves
    made explicit: the data cache and the MLflow tracking URI."""
    data = dataclasses.replace(config.data, cache_dir=str(cache_dir(config.data)))
    uri = config.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    return dataclasses.replace(config, data=data, tracking=dataclasses.replace(config.tracking, uri=uri))


@dataclass
class Service:
    """A deployed service."""

    url: str
    app: str
    run_id: str
    board: Any

    def stop(self) -> None:
        """Delete the application (its replicas and shard actors stop; the run's lock is released)."""
        from ray import serve

        serve.delete(self.app)


def deploy(run_dir: Path, config: RunConfig, token: str) -> Service:
    """Check the run, then deploy the service on the connected (or a new local) Ray cluster.

    Returns once the deletion worker has finished requests left pending and every replica can
    answer. Raises ValueError (or a SisaError) with one line when something is wrong.
    """
    run_dir, config = run_dir.resolve(), resolved(config)
    settings = config.serve
    if config.sisa.trainable != "all":
        # Replicas rebuild whole networks from shipped weights; a frozen backbone would have to run
        # once per request ahead of the heads, which the replicas do not do.
        raise ValueError(f"unlearn serve serves full-network runs (sisa.trainable = 'all'); this run trains "
                         f"{config.sisa.trainable}s on a frozen backbone: use `unlearn predict`, `unlearn forget` "
                         "or its registered MLflow model")
    try:
        with run_lock(run_dir / "lock", timeout=0):
            pass
    except RunLockedError:
        raise RunLockedError(f"another command or service is working on {run_dir}; stop it first") from None
    # Open the run here (in-process engine: no actors) so that a bad run fails in one line.
    session = open_run(run_dir, dataclasses.replace(config, ray=dataclasses.replace(config.ray, engine="local")),
                       lock_timeout=0)
    if not session.run.ledger.pending():
        session.run.constituents()  # a run that is not trained yet is refused here
    _check_port(settings.host, settings.port)
    ray = ensure_ray(config.ray.address)
    from ray import serve

    from orchestration.serve.app import Gateway
    from orchestration.serve.versions import VersionBoard
    from orchestration.serve.worker import DeletionWorker

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines repeat what this command says
    serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=_QUIET)
    board = ray.remote(VersionBoard).options(num_cpus=0).remote()
    # A replica whose constructor fails (a run that cannot be opened) is not retried for long.
    # Long polls of a request's state hold a slot of the worker and of a gateway replica while they
    # wait, so both take many; what computes is bounded elsewhere (the worker's one deletion thread,
    # a replica's thread pool for predictions).
    worker = serve.deployment(DeletionWorker).options(
        name="DeletionWorker", num_replicas=1, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0},
        max_constructor_retry_count=2,
    ).bind(str(run_dir), config, board)
    gateway = serve.deployment(Gateway).options(
        name="Gateway", num_replicas=settings.replicas, max_ongoing_requests=256,
        ray_actor_options={"num_cpus": settings.replica_cpus}, max_constructor_retry_count=2,
    ).bind(config, session.run.table.sample_shape, session.num_classes, hashlib.sha256(token.encode()).hexdigest(),
           board, worker, session.run.table.class_names)
    run_id = session.run.run_id
    del session  # the worker opens the run itself
    app = f"unlearn-{run_id[:8]}"
    try:
        serve.run(gateway, name=app, route_prefix="/", logging_config=_QUIET)
    except Exception as err:  # noqa: BLE001 - Serve wraps the replica's error in its own
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ServiceError(f"the service did not start: {lines[-1] if lines else type(err).__name__} "
                           "(Ray's logs: /tmp/ray/session_latest/logs/serve)") from None
    _wait_replicas(ray, board, settings.replicas)
    return Service(f"http://{settings.host}:{settings.port}", app, run_id, board)


def _wait_replicas(ray: Any, board: Any, count: int, timeout: float = 600.0) -> None:
    """Wait until `count` replicas answer with the current version (Serve says a replica is up once
    constructed; it loads its first version just after)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        current = ray.get(board.current.remote())
        acked = ray.get(board.replicas.remote())
        if current is not None and sum(number == current["number"] for number in acked.values()) >= count:
            return
        time.sleep(0.2)
    raise ServiceError(f"the prediction replicas did not load the ensemble within {timeout:.0f} s")


def serve_forever(run_dir: Path, config: RunConfig) -> int:
    """Deploy the service, say where it listens, and keep it until SIGINT or SIGTERM; returns 0."""
    token = read_token(config.serve)
    started_here = not (config.ray.address or os.environ.get("RAY_ADDRESS"))
    service = deploy(run_dir, config, token)
    import ray

    info = ray.get(service.board.current.remote())
    log.info("serving %s at %s (ensemble version %s): POST /predict, POST /forget, GET /requests/<id>, GET /status, "
             "GET /health; Ctrl-C stops", run_dir, service.url, info["number"])
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    while not stop.wait(1.0):  # a timed wait lets the signal handlers run
        pass
    log.info("stopping the service")
    service.stop()
    if started_here:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return 0
