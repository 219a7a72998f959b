"""Overhead of SISA training over a plain PyTorch loop doing the same work.

One shard, in-process, from scratch: `ShardTrainer` (Arrow data, seeded orders and dropout,
deterministic kernels, a verified checkpoint after every slice) against a plain loop over the
same tensors with the same model, optimizer, batch size and the same cumulative-slice schedule
(so the same samples x epochs), and no checkpoints. Variants are interleaved and repeated; medians
are reported.

    python -m benchmarks.overhead                 # MNIST, small CNN, about 5 minutes on 2 cores
    python -m benchmarks.overhead --quick         # digits, MLP, seconds (CI)
"""

from __future__ import annotations

import argparse
import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import SHARED_MNIST, median, write_results
from orchestration.config import DataConfig, ModelConfig
from orchestration.datasets import load_dataset
from orchestration.models import build_model
from sisa import SampleTable, SisaConfig, SisaRun

FULL = {"data": DataConfig(name="mnist", root=str(SHARED_MNIST), train_limit=6000), "model": ModelConfig(name="cnn"),
        "slices": (1, 4), "epochs": 10}
QUICK = {"data": DataConfig(name="digits"), "model": ModelConfig(name="mlp"), "slices": (1, 4), "epochs": 4}


def sisa_seconds(table: SampleTable, factory: functools.partial, config: SisaConfig) -> tuple[float, int]:
    """Train one shard holding all of `table` with SISA; (seconds, samples x epochs)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        run = SisaRun(folder, table, factory, config, seed=0, fingerprint="overhead")
        began = time.perf_counter()
        reports = run.train()
        return time.perf_counter() - began, sum(r.samples_epochs for r in reports)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def plain_seconds(table: SampleTable, factory: functools.partial, config: SisaConfig) -> tuple[float, int]:
    """The same schedule as a plain loop over in-memory tensors; (seconds, samples x epochs)."""
    began = time.perf_counter()
    x, y = table.tensors()
    model = factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    model.train()
    work = 0
    for r in range(config.num_slices):
        seen = len(x) * (r + 1) // config.num_slices  # cumulative slices 0..r
        for _ in range(config.slice_epochs):
            for batch in torch.randperm(seen).split(config.batch_size):
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            work += seen
    return time.perf_counter() - began, work


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="digits, MLP (CI)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each variant")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the JSON results")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else FULL
    table, test = load_dataset(spec["data"])
    factory = functools.partial(build_model, spec["model"], table.sample_shape, max(table.num_classes, test.num_classes))
    results: dict[str, Any] = {"workload": {"data": spec["data"].name, "model": spec["model"].name,
                                            "samples": len(table), "epochs": spec["epochs"]}, "slices": {}}
    plain_seconds(table, factory, SisaConfig(num_shards=1, num_slices=1, epochs=1))  # warm-up, untimed
    for slices in spec["slices"]:
        config = SisaConfig(num_shards=1, num_slices=slices, epochs=spec["epochs"])
        runs: dict[str, list[float]] = {"sisa": [], "plain": []}
        work: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, variant in (("sisa", sisa_seconds), ("plain", plain_seconds)):
                seconds, work[name] = variant(table, factory, config)
                runs[name].append(seconds)
        # Seconds per sample x epoch: hashed slices are only about equal, so the works differ slightly.
        rate = {name: median(runs[name]) / work[name] for name in runs}
        results["slices"][str(slices)] = {
            "runs": runs, "samples_epochs": work, "sisa_s": median(runs["sisa"]), "plain_s": median(runs["plain"]),
            "overhead": rate["sisa"] / rate["plain"] - 1,
            "pair_overheads": [(s / work["sisa"]) / (p / work["plain"]) - 1 for s, p in zip(runs["sisa"], runs["plain"])],
        }
    write_results("overhead-quick" if args.quick else "overhead", results, Path(args.out))
    for slices, r in results["slices"].items():
        print(f"R={slices}: SISA {r['sisa_s']:.2f} s, plain {r['plain_s']:.2f} s, "
              f"overhead per sample x epoch {100 * r['overhead']:+.1f}% "
              f"(pairs {', '.join(f'{100 * o:+.1f}%' for o in r['pair_overheads'])})")
    return results


if __name__ == "__main__":
    main()
