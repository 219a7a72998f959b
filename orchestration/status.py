"""What `unlearn status` reports about a run, as plain data."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from orchestration.frozen.public import describe_public
from orchestration.outputs_cache import ensemble_logits
from orchestration.requests import describe_request
from orchestration.runs import Session
from sisa import SisaError, aggregate
from sisa.config import AGGREGATIONS
from sisa.plan import slice_keys


def accuracies(session: Session, keys: Mapping[int, str] | None = None,
               interrupt: Callable[[], bool] | None = None) -> dict[str, float]:
    """Test accuracy of an ensemble version (default the current one) under each aggregation.

    Each constituent's test outputs are computed once and cached by its checkpoint, so after a
    deletion only the retrained constituents run. `interrupt`: as `ensemble_logits` takes it.
    """
    x, labels = session.test.tensors()
    logits = ensemble_logits(session.run, x, session.test.digest(), keys, interrupt)
    return {how: (aggregate(logits, how) == labels).double().mean().item() for how in AGGREGATIONS}


def describe(session: Session, accuracy: bool = True) -> dict[str, Any]:
    """Config, shards with their checkpoints, requests, store size and (with `accuracy`) test accuracy."""
    run, config = session.run, session.config
    plan = run.plan()
    present = {(e.shard, e.slice, e.key) for e in run.store.entries()}
    shards = []
    for shard, size in enumerate(plan.shard_sizes().tolist()):
        keys = slice_keys(run.fingerprint, shard, plan.slice_ids(shard)) if size else []
        stored = [(shard, r, k) in present for r, k in enumerate(keys)]
        shards.append({"shard": shard, "samples": size, "checkpoints": stored})
    requests = [
        {"request_id": r.request_id, "time": r.time, "num_ids": len(r.sample_ids),
         "ids": describe_request(r), "reason": r.reason,
         "state": "pending" if r.done is None else "done",
         "retrained": None if r.done is None else {int(k): v for k, v in r.done["retrained"].items()},
         "samples_epochs": None if r.done is None else r.done["samples_epochs"],
         "destroyed": len(r.destroyed), "versions": r.versions}
        for r in run.ledger.requests()
    ]
    s = config.sisa
    info: dict[str, Any] = {
        "run": str(run.run_dir), "run_id": run.run_id,
        "data": {"name": config.data.name, "train": len(run.table), "retained": len(plan), "test": len(session.test)},
        "model": config.model.name,
        "seed": config.seed,
        "sisa": {"num_shards": s.num_shards, "num_slices": s.num_slices, "epochs": s.epochs,
                 "slice_epochs": s.slice_epochs, "optimizer": s.optimizer, "lr": s.lr, "lr_schedule": s.lr_schedule,
                 "augment": s.augment, "aggregation": s.aggregation, "trainable": s.trainable},
        "backbone": _backbone(session),
        "features": session.features.stats() if session.features is not None else None,
        "public": {"samples": int(len(run.non_deletable)), "declared_by": describe_public(config.data)},
        "classes": run.table.class_names,
        "store": {"uri": run.store.uri, "checkpoints": len(present), "bytes": run.store.nbytes()},
        "shards": shards,
        "requests": requests,
        "test_accuracy": None,
    }
    if not accuracy:
        return info
    try:
        info["test_accuracy"] = {how: round(value, 4) for how, value in accuracies(session).items()}
    except SisaError as err:
        info["test_accuracy_unavailable"] = str(err)
    return info


def _backbone(session: Session) -> dict[str, Any] | None:
    """The frozen backbone and what each shard trains on it, or None for full-network runs."""
    if session.backbone is None:
        return None
    m = session.config.model
    trains = f"a {m.head} head" if session.config.sisa.trainable == "head" else (
        f"LoRA adapters (rank {m.adapter_rank}, {'every' if not m.adapter_layers else f'last {m.adapter_layers}'} "
        f"layer(s)) and a {m.head} head")
    return {"path": m.backbone, "sha256": session.backbone.sha256, "feature_shape": list(session.backbone.feature_shape),
            "pretrained_on_public_data": session.backbone.public_sha256 is not None, "each_shard_trains": trains}
