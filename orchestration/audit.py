"""`unlearn audit`: the deletion certificate of a run.

It looks everywhere the project keeps something derived from the training data (the checkpoint
store, the backbone features stored in the run directory, the derived models and the cached
test-set outputs in the run directory, the decoded data cache, the MLflow model versions the run
published)
for anything that saw a deleted sample, and lists per request what was retrained and what was
destroyed. Opening the run already verified its ledger (the MAC chain and the store's anchor)
and its data digest. Optionally it trains the run again from scratch on the retained data with
the same secret and checks that every constituent is bit-identical: the proof that deletions
were exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestration.datasets.cache import cached_ids, train_cache
from orchestration.derived import stale_derived
from orchestration.frozen.features import feature_files, feature_findings
from orchestration.outputs_cache import stale_outputs
from orchestration.registry import live_versions, published, readable_artifacts
from orchestration.runs import Session, open_run
from sisa.ledger import Request, ids_digest_hex
from sisa.unlearning import audit as store_audit


def _request_entry(request: Request) -> dict[str, Any]:
    done = request.done or {}
    return {"request_id": request.request_id, "recorded": request.time, "reason": request.reason,
            "num_ids": int(len(request.sample_ids)), "ids_sha256": ids_digest_hex(request.sample_ids),
            "state": "done" if request.done else "pending", "finished": done.get("time"),
            "retrained": done.get("retrained"), "samples_epochs": done.get("samples_epochs"),
            "seconds": done.get("seconds"), "destroyed": request.destroyed, "replaced_by": request.versions}


def _store_findings(session: Session, deleted: np.ndarray) -> list[str]:
    return [f"store: checkpoint shard {e.shard} slice {e.slice} ({e.key}) saw a deleted sample"
            for e in store_audit(session.run.store, deleted)]


def _cache_findings(session: Session, deleted: np.ndarray) -> list[str]:
    path = train_cache(session.config.data)
    if path is None or not deleted.size:
        return []
    held = np.intersect1d(cached_ids(path), deleted)
    return [f"cache: {path} holds {len(held)} deleted sample(s)"] if held.size else []


def _mlflow_findings(session: Session) -> list[str]:
    entries = published(session.run.run_dir)
    if not entries:
        return []
    try:
        live = {(e["name"], e["version"]): e for e in live_versions(session.run)}
    except Exception as err:  # noqa: BLE001 - unverifiable is a finding, not a crash
        return [f"mlflow: cannot check the published versions ({type(err).__name__}: {str(err).splitlines()[0]})"]
    findings = []
    for entry in entries:
        key = (entry["name"], entry["version"])
        if key in live and live[key]["stale"]:
            findings.append(f"mlflow: model version {entry['name']}/{entry['version']} predates a deletion and is live")
        elif key not in live and readable_artifacts(entry):
            findings.append(f"mlflow: model version {entry['name']}/{entry['version']} is marked destroyed but its "
                            f"artifacts remain at {entry['artifact_uri']}")
    return findings


def retrain_check(session: Session, scratch_dir: Path, on_slice: Callable | None = None) -> list[str]:
    """Train the retained data from scratch (same recipe, seed, secret, engine) and compare bit for bit."""
    run = session.run
    # The scratch run extracts its own features of the retained samples (head mode): a sample's
    # features do not depend on the others extracted with it, so they match the run's bit for bit.
    scratch = open_run(scratch_dir, session.config, data=(run.table.take(run.retained_ids()), session.test),
                       secret=run.secret)
    scratch.run.train(on_slice)
    ours, theirs = run.constituents(), scratch.run.constituents()
    if [s for s, _ in ours] != [s for s, _ in theirs]:
        return [f"retrain: the ensemble has constituents {[s for s, _ in ours]}, a retraining from scratch "
                f"{[s for s, _ in theirs]}"]
    findings = []
    for (shard, a), (_, b) in zip(ours, theirs):
        sa, sb = a.state_dict(), b.state_dict()
        differing = [k for k in sa if not torch.equal(sa[k], sb[k])]
        if differing:
            findings.append(f"retrain: constituent of shard {shard} differs from its retraining from scratch "
                            f"({len(differing)} tensors, e.g. {differing[0]})")
    return findings


def certificate(session: Session, request_id: str | None = None, retrain_dir: Path | None = None) -> dict[str, Any]:
    """What the audit found and, per request, what serving it did.

    Raises:
        ValueError: `request_id` names no request of the run.
    """
    run = session.run
    requests = run.ledger.requests()
    if request_id is not None and request_id not in {r.request_id for r in requests}:
        raise ValueError(f"run has no request {request_id!r}; its requests: {[r.request_id for r in requests] or 'none'}")
    deleted = run.ledger.deleted_ids()
    findings = [f"ledger: request {r.request_id} is pending; finish it with `unlearn forget --resume`"
                for r in run.ledger.pending()]
    findings += _store_findings(session, deleted)
    findings += feature_findings(run.run_dir, deleted)
    findings += [f"run dir: derived model {path} was built before a deletion" for path in stale_derived(run)]
    findings += [f"outputs cache: {path} holds test-set outputs of a model that is no longer a constituent (it saw "
                 "a deleted sample)" for path in stale_outputs(run)]
    findings += _cache_findings(session, deleted)
    findings += _mlflow_findings(session)
    if retrain_dir is not None:
        findings += retrain_check(session, retrain_dir)
    shown = [r for r in requests if request_id is None or r.request_id == request_id]
    return {
        "run": str(run.run_dir.resolve()), "run_id": run.run_id,
        "audited": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ledger": {"records": run.ledger.verify(), "head": run.ledger.head, "verified": True},
        "data_digest": run.ledger.data_digest(), "deleted_ids": int(len(deleted)),
        "checked": ["ledger", "store"] + (["features"] if feature_files(run.run_dir) else [])
        + ["run dir", "outputs cache", "data cache", "mlflow"] + (["retrain"] if retrain_dir is not None else []),
        "clean": not findings, "findings": findings, "requests": [_request_entry(r) for r in shown],
    }
