"""What `unlearn status` reports about a run, as plain data."""

from __future__ import annotations

from typing import Any

from orchestration.requests import describe_ids
from orchestration.runs import Session
from sisa import SisaError, aggregate
from sisa.config import AGGREGATIONS
from sisa.plan import slice_keys


def accuracies(session: Session) -> dict[str, float]:
    """Test accuracy of the ensemble under each aggregation; constituents are loaded and run once."""
    x, labels = session.test.tensors()
    logits = session.run.logits(x)
    return {how: (aggregate(logits, how) == labels).double().mean().item() for how in AGGREGATIONS}


def describe(session: Session) -> dict[str, Any]:
    """Config, shards with their checkpoints, requests, store size and test accuracy."""
    run, config = session.run, session.config
    plan = run.plan()
    present = {(e.shard, e.slice, e.key) for e in run.store.entries()}
    shards = []
    for shard, size in enumerate(plan.shard_sizes().tolist()):
        keys = slice_keys(run.fingerprint, shard, plan.slice_ids(shard)) if size else []
        marks = "".join("+" if (shard, r, k) in present else "." for r, k in enumerate(keys))
        shards.append({"shard": shard, "samples": size, "checkpoints": marks or "(empty shard)"})
    requests = [
        {"request_id": r.request_id, "time": r.time, "num_ids": len(r.sample_ids),
         "ids": describe_ids(run.table, r.sample_ids), "reason": r.reason,
         "state": "pending" if r.done is None else f"done, retrained {r.done['retrained']}"}
        for r in run.ledger.requests()
    ]
    s = config.sisa
    info: dict[str, Any] = {
        "run": str(run.run_dir),
        "data": f"{config.data.name}: {len(run.table)} training samples ({len(plan)} retained), "
                f"{len(session.test)} test",
        "model": config.model.name,
        "seed": config.seed,
        "sisa": f"{s.num_shards} shards x {s.num_slices} slices, {s.epochs} epochs "
                f"({s.slice_epochs} per slice), {s.optimizer} lr {s.lr} {s.lr_schedule}"
                f"{', augmented' if s.augment else ''}, aggregation {s.aggregation}",
        **({"classes": ", ".join(run.table.class_names)} if run.table.class_names is not None else {}),
        "store": f"{run.store.uri}: {len(present)} checkpoints, {run.store.nbytes() / 1e6:.2f} MB",
        "shards": shards,
        "requests": requests,
    }
    try:
        info["test accuracy"] = {how: round(value, 4) for how, value in accuracies(session).items()}
    except SisaError as err:
        info["test accuracy"] = f"unavailable: {err}"
    return info
