"""The service's HTTP door: the Gateway deployment (FastAPI on Ray Serve).

    POST /predict               inputs -> labels (and class names) and probabilities, from one whole version (open)
    POST /forget                {"ids": [...], "reason": "..."} -> 202 {"request_id"} once it is in the ledger
    GET  /requests/{request_id} the request's state (pending | running | done | failed), cost and version;
                                with ?wait=S, answered once it is done or failed or after S seconds (S <= 60)
    GET  /status                what `unlearn status` shows, and the service's state
    GET  /health                200 once the replica answers with a version (open)

Deletion endpoints and /status need `Authorization: Bearer <token>`: 401 without it or with a
wrong one. Bad input gets 400 with one line saying what is wrong ({"error": ...}) and records
nothing. Each replica predicts with the ensemble the version board names (see versions.py).
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request)
# as objects once Serve has rebound the methods, and strings would no longer resolve.
import asyncio
import hashlib
import hmac
import logging
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from orchestration.config import RunConfig
from orchestration.models import build_model
from orchestration.serve.inputs import InputError, deletion_request, prediction_inputs, wait_seconds
from orchestration.serve.versions import Follower, NoVersionError, ServedEnsemble
from sisa.inference import for_inference

log = logging.getLogger(__name__)

api = FastAPI(title="unlearn", description="Predictions and exact deletion requests for a SISA ensemble.")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@serve.ingress(api)  # here, not in launch.py: every replica process must import the routes bound to the class
class Gateway:
    """Answers HTTP requests; made a Serve deployment (`serve.replicas` replicas) by launch.py."""

    def __init__(self, config: RunConfig, sample_shape: tuple[int, ...], num_classes: int, token_sha256: str,
                 board: Any, worker: Any, class_names: list[str] | None = None) -> None:
        """Args: the resolved config, the model input shape and class count, the sha256 of the bearer
        token (the token itself never leaves the process that read it), the version board, a
        handle to the deletion worker and the data set's class names (None when it has none)."""
        torch.set_num_threads(max(1, round(config.serve.replica_cpus)))
        self.config, self.sample_shape, self.num_classes = config, tuple(sample_shape), num_classes
        self.class_names = class_names
        self.token_sha256, self.worker = bytes.fromhex(token_sha256), worker
        replica = serve.get_replica_context().replica_id.unique_id
        self.follower = Follower(board, self._build, self._ensemble, replica)

    def _build(self, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        model = build_model(self.config.model, self.sample_shape, self.num_classes)
        model.load_state_dict(state)
        return for_inference(model)

    def _ensemble(self, info: dict[str, Any], models: dict[int, torch.nn.Module]) -> ServedEnsemble:
        return ServedEnsemble(info, models, self.sample_shape, self.config.sisa.aggregation, self.class_names)

    def _denied(self, request: Request) -> JSONResponse | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not token.strip() or not hmac.compare_digest(given, self.token_sha256):
            return _error(401, "this endpoint needs 'Authorization: Bearer <token>' with the service's token",
                          {"WWW-Authenticate": "Bearer"})
        return None

    def _predict(self, x: np.ndarray) -> dict[str, Any]:
        with self.follower.using() as ensemble:
            return ensemble.predict(x)

    async def _ask_worker(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.worker, method).remote(*args)
        except Exception as err:  # noqa: BLE001 - any failure reaching the worker is a 503
            log.warning("deletion worker unavailable: %r", err)
            return _error(503, "the deletion worker is unavailable (starting or restarting); retry shortly")

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        """Labels and mean posterior probabilities of one ensemble version, named in the answer."""
        body = await request.body()
        try:
            x = prediction_inputs(body, request.headers.get("content-type", ""), self.sample_shape,
                                  self.config.serve.max_inputs)
        except InputError as err:
            return _error(400, str(err))
        try:
            return JSONResponse(await asyncio.to_thread(self._predict, x))
        except NoVersionError as err:
            return _error(503, str(err))

    @api.post("/forget")
    async def forget(self, request: Request) -> JSONResponse:
        """Record a deletion request; 202 once it is in the ledger (it is served in the background)."""
        if denied := self._denied(request):
            return denied
        try:
            ids, reason = deletion_request(await request.body())
        except InputError as err:
            return _error(400, str(err))
        answer = await self._ask_worker("submit", ids, reason)
        if isinstance(answer, JSONResponse):
            return answer
        if "error" in answer:
            return _error(400, answer["error"])
        location = f"/requests/{answer['request_id']}"
        return JSONResponse({"request_id": answer["request_id"], "state": "pending", "location": location},
                            status_code=202, headers={"Location": location})

    @api.get("/requests/{request_id}")
    async def request_state(self, request_id: str, request: Request) -> JSONResponse:
        """A deletion request's state, what serving it retrained and cost, and the version without its ids.

        `?wait=S` makes it a long poll: the answer comes as soon as the request is done or failed,
        or after S seconds with its state then, so a client hears of the end at once without asking
        again and again (each question costs the service CPU that retraining would use).
        """
        if denied := self._denied(request):
            return denied
        try:
            wait = wait_seconds(request.query_params.get("wait"))
        except InputError as err:
            return _error(400, str(err))
        answer = await self._ask_worker("settled", request_id, wait)
        if isinstance(answer, JSONResponse):
            return answer
        if answer is None:
            return _error(404, f"no request {request_id!r}; request ids look like r-0001")
        return JSONResponse(answer)

    @api.get("/status")
    async def status(self, request: Request) -> JSONResponse:
        """What `unlearn status --json` shows, the served version's accuracy and the service's state."""
        if denied := self._denied(request):
            return denied
        answer = await self._ask_worker("status")
        return answer if isinstance(answer, JSONResponse) else JSONResponse(answer)

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 with the version this replica answers with; 503 while it has none."""
        version = self.follower.version
        if version is None:
            return _error(503, "starting: no ensemble version loaded yet")
        return JSONResponse({"status": "ok", "version": version})
