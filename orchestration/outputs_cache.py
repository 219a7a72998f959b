"""Each constituent's test-set outputs, cached by its final checkpoint, so evaluation reruns only what changed.

    run_dir/cache/outputs/shard-003-<key>.pt   {"sha256": the checkpoint's checksum, "test": test-set digest,
                                                "logits": (test samples, classes) float32}

A deletion retrains a few shards: their final checkpoints get new keys, so only their outputs are
computed again, and every other shard's are read back (an entry is used only while its checkpoint
checksum and the test set are the ones it was computed from).

Compliance: an entry holds tensors computed by a model, and the model of a purged checkpoint saw a
deleted sample. So entries go with their checkpoints: the purger destroys every entry whose key is
no longer a shard's final key (recording each in the ledger), entries are written only under the
run's lock while their key is still final (a deletion in another process cannot slip between), and
`unlearn audit` reports any entry left behind.

A head-mode run (a frozen backbone, `sisa.trainable = "head"`) also keeps the backbone's features
of the test set, so that evaluating a retrained head does not run the backbone over the whole test
set again:

    run_dir/cache/test-features/<fingerprint, 16 hex>-<test digest, 16 hex>.pt   {"fingerprint", "test", "features"}

They are outputs of the backbone (trained on non-deletable data, and bound into the fingerprint) on
test samples, which no deletion removes, so no request ever needs to destroy them.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from orchestration.timings import phase
from sisa import SisaRun
from sisa.encoding import encode_inputs
from sisa.inference import Interrupted, for_inference, outputs
from sisa.ledger import Request

FOLDER = Path("cache") / "outputs"
FEATURES = Path("cache") / "test-features"
_NAME = re.compile(r"^shard-(\d+)-(\w+)\.pt$")


class EvaluationInterrupted(Exception):
    """`ensemble_logits` gave way to more urgent work (its `interrupt` said so)."""


def _folder(run: SisaRun) -> Path:
    return run.run_dir / FOLDER


def _path(run: SisaRun, shard: int, key: str) -> Path:
    return _folder(run) / f"shard-{shard:03d}-{key}.pt"


def _checksum(run: SisaRun, shard: int, key: str) -> str | None:
    try:
        return run.store.read_manifest(run.store.entry(shard, run.config.num_slices - 1, key)).get("sha256")
    except (OSError, ValueError):
        return None


def _read(path: Path, checksum: str | None, test_digest: str) -> torch.Tensor | None:
    try:
        entry = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None
    if checksum is None or entry.get("sha256") != checksum or entry.get("test") != test_digest:
        return None
    return entry["logits"]


@torch.no_grad()
def ensemble_logits(run: SisaRun, x: torch.Tensor, test_digest: str, keys: Mapping[int, str] | None = None,
                    interrupt: Callable[[], bool] | None = None) -> torch.Tensor:
    """Outputs of every constituent of an ensemble version on the test inputs `x`, (models, samples, classes).

    Args:
        run: the run.
        x: the test set's model inputs; `test_digest` names them (SampleTable.digest()).
        test_digest: digest of the test set, part of what an entry must match.
        keys: the version, shard -> final checkpoint key; default the current ensemble (refused
            while a request is pending, as `SisaRun.constituents` refuses).
        interrupt: asked before each batch of a constituent that runs; True stops the evaluation
            with EvaluationInterrupted (the service gives way to a deletion request), keeping the
            outputs of the constituents that had finished.
    """
    if keys is None:
        run.require_no_pending()
        keys = run.final_keys()
    cached = {shard: _read(_path(run, shard, key), _checksum(run, shard, key), test_digest) for shard, key in keys.items()}
    missing = {shard: key for shard, key in keys.items() if cached[shard] is None}
    if missing:
        computed: dict[int, str] = {}
        try:
            with phase("evaluation"):
                if run.encoder is not None:  # a frozen backbone: its features of x (one pass, once), the heads run on them
                    x = _test_features(run, x, test_digest)
                for shard, model in run.constituents(missing):
                    try:
                        cached[shard] = outputs(for_inference(model), x, interrupt=interrupt)
                    except Interrupted:
                        raise EvaluationInterrupted from None
                    computed[shard] = missing[shard]
        finally:  # what was computed is kept, also when interrupted: the next evaluation starts from it
            _store(run, computed, cached, test_digest)
    if not cached:
        run.constituents(keys)  # raises the run's own error for an ensemble with no constituent
    return torch.stack([cached[shard] for shard in sorted(cached)])


def _test_features(run: SisaRun, x: torch.Tensor, test_digest: str) -> torch.Tensor:
    """The frozen backbone's features of the test inputs `x`: read back, or computed once and kept."""
    path = run.run_dir / FEATURES / f"{run.fingerprint[:16]}-{test_digest[:16]}.pt"
    try:
        entry = torch.load(path, weights_only=True)
        if entry.get("fingerprint") == run.fingerprint and entry.get("test") == test_digest:
            return entry["features"]
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        pass  # missing or unreadable: computed again below
    features = encode_inputs(run.encoder, x, fixed_batches=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"fingerprint": run.fingerprint, "test": test_digest, "features": features}, tmp)
    tmp.replace(path)
    return features


def _store(run: SisaRun, computed: Mapping[int, str], logits: Mapping[int, torch.Tensor], test_digest: str) -> None:
    # Under the run's lock and only while the key is still final: a deletion (this process or
    # another) either purged before this check, so nothing is written, or purges after it.
    with run.locked():
        final = run.final_keys()
        _folder(run).mkdir(parents=True, exist_ok=True)
        for shard, key in computed.items():
            checksum = _checksum(run, shard, key)
            if final.get(shard) != key or checksum is None:
                continue
            path = _path(run, shard, key)
            tmp = path.with_name(path.name + ".tmp")
            torch.save({"sha256": checksum, "test": test_digest, "logits": logits[shard]}, tmp)
            tmp.replace(path)


def entries(run: SisaRun) -> list[tuple[int, str, Path]]:
    """(shard, key, path) of every cached entry (and leftovers of interrupted writes, key '')."""
    folder = _folder(run)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        match = _NAME.match(path.name)
        found.append((int(match[1]), match[2], path) if match else (-1, "", path))
    return found


def stale_outputs(run: SisaRun) -> list[str]:
    """Cached entries whose model is no longer a final checkpoint of the run, as run-dir-relative paths."""
    final = run.final_keys()
    return [str(path.relative_to(run.run_dir)) for shard, key, path in entries(run) if final.get(shard) != key]


def destroy_stale_outputs(run: SisaRun, requests: list[Request]) -> list[dict[str, Any]]:
    """Purger: delete every cached entry whose model is not a current final checkpoint; one record each."""
    final, records = run.final_keys(), []
    for shard, key, path in entries(run):
        if final.get(shard) == key:
            continue
        data = path.read_bytes()
        records.append({"kind": "cached-outputs", "path": str(path.relative_to(run.run_dir)),
                        "sha256": hashlib.sha256(data).hexdigest(), "nbytes": len(data)})
        path.unlink()
    return records
