"""Checkpoint storage of a SISA run over shards S and slices R, and what each saving option costs.

Per (S, R): bytes of the model checkpoints and of their JSON manifests (which list the ids each
checkpoint saw, for compliance audits), per slice and in total, and:
- final checkpoints without optimizer state (the default): the bytes saved, measured as the size
  of the SGD momentum buffers they would otherwise hold; exact.
- `sisa.checkpoint_every = k`: bytes kept, and the samples x epochs single deletions then retrain,
  measured over random requests against the analytic expectation; exact.
- bf16 / fp16 serving copies of the final models: bytes and the test accuracy they give (vote and
  mean) against float32; not exact, so never a substitute for the checkpoints.

    python -m benchmarks.storage                  # MNIST, small CNN, about 5 minutes on 2 cores
    python -m benchmarks.storage --quick          # digits, MLP, seconds (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import SHARED_MNIST, write_results
from orchestration.bench.populations import clone
from orchestration.config import DataConfig, ModelConfig
from orchestration.datasets import load_dataset
from orchestration.models import build_model
from sisa import SampleTable, SisaConfig, SisaRun, aggregate

FULL = {"data": DataConfig(name="mnist", root=str(SHARED_MNIST), train_limit=6000), "model": ModelConfig(name="cnn"),
        "grid": ((1, 1), (4, 4), (4, 8), (16, 8)), "every": (1, 2, 4), "epochs": 4, "requests": 5}
QUICK = {"data": DataConfig(name="digits"), "model": ModelConfig(name="mlp"), "grid": ((1, 1), (2, 4)),
         "every": (1, 2), "epochs": 2, "requests": 2}


def _nbytes(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return len(buffer.getvalue())


def expected_single_deletion(n: int, shards: int, slices: int, slice_epochs: int, every: int) -> float:
    """Expected samples x epochs retrained for one uniformly random id when every k-th slice is stored.

    An id in slice k (0-based) resumes after the deepest stored slice j < k (or from scratch) and
    retrains slices j+1..R-1, each holding (r+1)/R of the shard's n/S samples for e' epochs.
    """
    stored = [r for r in range(slices) if r == slices - 1 or (r + 1) % every == 0]
    total = 0.0
    for k in range(slices):
        start = max([j for j in stored if j < k], default=-1) + 1
        total += sum((r + 1) / slices * (n / shards) * slice_epochs for r in range(start, slices))
    return total / slices


def serving_copies(run: SisaRun, test: SampleTable) -> dict[str, Any]:
    """Bytes and test accuracy of the final models in float32, bfloat16 and float16."""
    x, labels = test.tensors()
    out: dict[str, Any] = {}
    models = [m for _, m in run.constituents()]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        copies = [{k: v.to(dtype) if v.is_floating_point() else v for k, v in m.state_dict().items()} for m in models]
        logits = []
        for state in copies:
            served = run.trainer.new_model(0)
            served.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            with torch.no_grad():
                logits.append(served.eval()(x))
        stacked = torch.stack(logits)
        out[str(dtype).removeprefix("torch.")] = {
            "bytes": sum(_nbytes(s) for s in copies),
            **{f"acc_{how}": (aggregate(stacked, how) == labels).double().mean().item() for how in ("vote", "mean")}}
    return out


def measure(root: Path, table: SampleTable, test: SampleTable, spec: dict[str, Any], shards: int, slices: int,
            rng: np.random.Generator) -> dict[str, Any]:
    """Storage and the cost of each option at one (S, R)."""
    factory = functools.partial(build_model, spec["model"], table.sample_shape, max(table.num_classes, test.num_classes))
    point: dict[str, Any] = {"shards": shards, "slices": slices, "every": {}}
    for every in spec["every"]:
        if every > slices or (every > 1 and slices == 1):
            continue
        config = SisaConfig(num_shards=shards, num_slices=slices, epochs=spec["epochs"], checkpoint_every=every)
        run = SisaRun(root / f"s{shards}-r{slices}-k{every}", table, factory, config, seed=0, fingerprint="storage")
        run.train()
        entry = {"checkpoints": len(run.store.entries()), "total_bytes": run.store.nbytes(),
                 "model_bytes": run.store.nbytes(".pt"), "manifest_bytes": run.store.nbytes(".json"),
                 "expected_single_deletion": expected_single_deletion(len(table), shards, slices, config.slice_epochs,
                                                                      every), "single_deletions": []}
        entry["bytes_per_checkpoint"] = entry["total_bytes"] / entry["checkpoints"]
        if every == 1:
            finals = [run.trainer.new_model(s) for s, _ in run.constituents()]
            momentum = [{"momentum_buffer": torch.zeros_like(p)} for p in finals[0].parameters()]
            entry["optimizer_bytes_saved"] = len(finals) * _nbytes({"state": dict(enumerate(momentum))})
            point["serving"] = serving_copies(run, test)
        for repeat in range(spec["requests"]):
            forked = clone(run, root / f"copy-{repeat}")
            entry["single_deletions"].append(forked.forget(rng.choice(table.ids, 1)).samples_epochs)
            shutil.rmtree(forked.run_dir)
        point["every"][str(every)] = entry
        shutil.rmtree(run.run_dir)
    return point


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, MLP (CI)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    table, test = load_dataset(spec["data"])
    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    try:
        rng = np.random.default_rng(0)
        points = [measure(root, table, test, spec, s, r, rng) for s, r in spec["grid"]]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = {"workload": {"data": dataclasses.asdict(spec["data"]), "model": spec["model"].name,
                            "samples": len(table), "epochs": spec["epochs"]}, "points": points}
    write_results("storage-quick" if args.quick else "storage", results, Path(args.out))
    for p in points:
        for every, e in p["every"].items():
            print(f"S={p['shards']} R={p['slices']} k={every}: {e['checkpoints']} checkpoints, "
                  f"{e['total_bytes'] / 1e6:.2f} MB ({e['manifest_bytes'] / 1e6:.2f} MB manifests), single deletion "
                  f"{np.mean(e['single_deletions']):.0f} samples x epochs (expected {e['expected_single_deletion']:.0f})")
    return results


if __name__ == "__main__":
    main()
