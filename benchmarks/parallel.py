"""Parallel efficiency of the Ray engine, and its overhead over the in-process engine.

Trains the same SISA ensemble (compute-bound CNN shards on MNIST) several ways, each from scratch,
repeated, and reports medians:
- local-1t: in-process engine, torch limited to 1 thread (the same work an actor does);
- ray-1w:   Ray engine, 1 worker actor of 1 CPU (so, shards one after another);
- ray-2w:   Ray engine, 2 worker actors of 1 CPU each;
- local-2t: in-process engine with 2 torch threads (for reference).
speedup = ray-1w / ray-2w; overhead = (ray-1w - local-1t) / local-1t. Cluster start-up (ray.init)
is measured apart: a long-lived cluster (`--address`) pays it once, not per command. The machine's
own ceiling is measured too: the same plain PyTorch loop in 2 processes at once vs one after the
other (no Ray, no SISA), since no engine can beat what the cores give.

    python -m benchmarks.parallel                 # full: MNIST, about 10 minutes on 2 cores
    python -m benchmarks.parallel --quick         # digits, seconds (CI)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import SHARED_MNIST, median, timed, write_results
from orchestration.cluster import ensure_ray
from orchestration.runs import open_session

FULL = ["data.name=mnist", "data.train_limit=24000", "model.name=cnn", "sisa.num_shards=4", "sisa.num_slices=2",
        "sisa.epochs=6"]
QUICK = ["data.name=digits", "model.name=mlp", "sisa.num_shards=4", "sisa.num_slices=2", "sisa.epochs=4"]
VARIANTS = {
    "local-1t": (["ray.engine=local"], 1),
    "ray-1w": (["ray.engine=ray", "ray.max_workers=1"], 1),
    "ray-2w": (["ray.engine=ray", "ray.max_workers=2"], 1),
    "local-2t": (["ray.engine=local"], 2),
}


def run_once(settings: list[str], variant: str) -> tuple[float, int]:
    """Train once from scratch; returns (seconds, samples x epochs)."""
    overrides, threads = VARIANTS[variant]
    folder = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    try:
        session = open_session(folder / "run", overrides=[*settings, *overrides, "tracking.enabled=false"], create=True)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        reports: list = []
        seconds = timed(lambda: reports.extend(session.run.train()))
        torch.set_num_threads(previous)
        if session.run.executor is not None and hasattr(session.run.executor, "close"):
            session.run.executor.close()
        return seconds, sum(r.samples_epochs for r in reports)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _plain_loop(settings: list[str], samples: int, epochs: int) -> None:
    """A plain PyTorch training loop (1 thread) over `samples` samples of the workload's data."""
    import functools

    from orchestration.config import load_config
    from orchestration.datasets import load_dataset
    from orchestration.models import build_model

    torch.set_num_threads(1)
    config = load_config(None, settings)
    train, _ = load_dataset(config.data)
    x, y = train.tensors(train.ids[:samples])
    model = functools.partial(build_model, config.model, train.sample_shape, 10)()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(config.sisa.batch_size):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def hardware_ceiling(settings: list[str], samples: int, epochs: int) -> dict[str, float]:
    """Seconds for two equal plain-PyTorch jobs one after the other vs in two processes at once."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")

    def together(count: int) -> float:
        processes = [context.Process(target=_plain_loop, args=(settings, samples, epochs)) for _ in range(count)]
        began = time.perf_counter()
        for p in processes:
            p.start()
        for p in processes:
            p.join()
        return time.perf_counter() - began

    one, both = together(1), together(2)
    return {"one_job_s": one, "two_jobs_parallel_s": both, "ceiling": 2 * one / both}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny workload on digits (for CI)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default=str(SHARED_MNIST), help="directory with the MNIST idx files")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON results")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else [*FULL, f"data.root={args.data_root}"]
    began = time.perf_counter()
    ensure_ray(num_cpus=2)
    startup = time.perf_counter() - began
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    work = 0
    for _ in range(args.repeats):
        for variant in VARIANTS:  # interleaved, so drifts in machine speed hit every variant alike
            seconds, work = run_once(settings, variant)
            times[variant].append(seconds)
            print(f"{variant:9} {seconds:7.2f} s", flush=True)
    medians = {v: median(t) for v, t in times.items()}
    ceiling = hardware_ceiling(settings, samples=500 if args.quick else 6000, epochs=2 if args.quick else 4)
    results = {
        "workload": settings, "samples_epochs": work, "repeats": args.repeats, "ray_init_s": startup,
        "seconds": times, "median_s": medians,
        "speedup_2w_over_1w": medians["ray-1w"] / medians["ray-2w"],
        "ray_overhead": (medians["ray-1w"] - medians["local-1t"]) / medians["local-1t"],
        "hardware": ceiling,
    }
    path = write_results("parallel-quick" if args.quick else "parallel", results, Path(args.out))
    print(f"\nmedians over {args.repeats} runs ({work} samples x epochs each):")
    for variant, value in medians.items():
        print(f"  {variant:9} {value:7.2f} s")
    print(f"2 workers vs 1: {results['speedup_2w_over_1w']:.2f}x; Ray overhead over in-process (1 thread each): "
          f"{100 * results['ray_overhead']:+.1f}%; ray.init {startup:.1f} s\n"
          f"machine ceiling (plain PyTorch, 2 processes vs 1): {ceiling['ceiling']:.2f}x\nwritten to {path}")
    return results


if __name__ == "__main__":
    main()
