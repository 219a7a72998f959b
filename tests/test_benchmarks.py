"""The benchmarks run end to end in their quick mode (their numbers live in benchmarks/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import approx
from benchmarks import deletion, overhead, parallel, service, storage, tuning


@pytest.mark.ray
def test_parallel_benchmark_quick_mode_writes_its_results(tmp_path, ray_cluster):
    results = parallel.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "parallel-quick.json").read_text())
    assert set(saved["median_s"]) == {"local-1t", "ray-1w", "ray-2w", "local-2t"}
    assert all(value > 0 for value in saved["median_s"].values())
    assert saved["samples_epochs"] == results["samples_epochs"] > 0
    assert results["speedup_2w_over_1w"] == pytest.approx(saved["median_s"]["ray-1w"] / saved["median_s"]["ray-2w"])


def test_expected_deletion_cost_of_one_id_is_the_sisa_papers_fraction():
    # n=1200, S=4, R=3, e'=2: a shard of 300 trains cumulative slices of 100, 200, 300 samples for 2
    # epochs each; an id in slice k retrains slices k..3: (200+400+600, 400+600, 600) averaged over k
    # = 2800/3, which is (n/S) e' (R+1)(2R+1)/(6R) = 300*2*4*7/18.
    assert deletion.expected_samples_epochs(1200, 4, 3, 2, 1) == pytest.approx(2800 / 3)
    assert storage.expected_single_deletion(1200, 4, 3, 2, every=1) == pytest.approx(2800 / 3)
    # a batch so large that every slice of every shard is hit retrains everything: 4 x 1200
    assert deletion.expected_samples_epochs(1200, 4, 3, 2, 10_000) == pytest.approx(4 * 1200)


def test_sparse_checkpoints_expect_more_retraining():
    # every=3 with R=3 keeps only the last slice: every deletion retrains the whole shard, 1200
    assert storage.expected_single_deletion(1200, 4, 3, 2, every=3) == pytest.approx(1200)


def test_deletion_benchmark_quick_mode_writes_its_grid(tmp_path):
    results = deletion.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "deletion-quick.json").read_text())
    assert [(p["shards"], p["slices"]) for p in saved["points"]] == [(s, r) for s in (1, 2, 4) for r in (1, 2)]
    mono = saved["retrain_samples_epochs"]
    single = saved["points"][0]["b1"]  # S = R = 1: a deletion retrains the monolithic model, less one sample
    assert single["mean_samples_epochs"] == mono - results["workload"]["epochs"]


def test_overhead_and_storage_benchmarks_quick_modes_write_results(tmp_path):
    overhead.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "overhead-quick.json").read_text())
    assert set(saved["slices"]) == {"1", "4"} and all(v["sisa_s"] > 0 for v in saved["slices"].values())
    storage.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "storage-quick.json").read_text())
    point = saved["points"][1]
    assert point["every"]["2"]["checkpoints"] < point["every"]["1"]["checkpoints"]
    assert point["serving"]["bfloat16"]["bytes"] < point["serving"]["float32"]["bytes"]


def test_tuning_benchmark_plan_prints_tune_default_and_tuned_bench_per_setting_and_runs_nothing(tmp_path, monkeypatch,
                                                                                                 capsys):
    monkeypatch.chdir(tmp_path)
    assert tuning.main(["--plan"]) == []
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["tune", "tune", "bench", "bench"] * 4
    assert sum("--tuned" in line for line in lines) == 4
    for first, second in zip(lines[::4], lines[1::4], strict=True):  # every method searched once, SFR-on apart
        searched = first.split("--method ")[1].split()[0].split(",") + second.split("--method ")[1].split()[0].split(",")
        assert sorted(searched) == approx.available() and second.split("--method ")[1].startswith("sfr_on ")
        assert "tune.time_budget_s=180" in first and "tune.time_budget_s=900" in second
        assert first.split("--out ")[1] != second.split("--out ")[1]  # a tune's trial records are its own
    assert list(tmp_path.iterdir()) == []


def _rows(**scores):
    return {"retrain": {"ua": 10.0, "ra": 90.0, "ulira": float("nan"), **scores}, "original": {"ua": 2.0, "ra": 99.0}}


def test_the_tuning_comparison_refuses_benches_that_scored_different_models():
    tuning.same_models(_rows(), _rows(seconds=99.0))  # the time of the floor's runs may differ
    with pytest.raises(SystemExit, match="retrain ua is 10.0 against 10.5"):
        tuning.same_models(_rows(), _rows(ua=10.5))


def test_the_tuning_benchmark_runs_the_steps_it_is_given_and_reads_the_others_from_disk(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(tuning, "_run", lambda argv: ran.append(argv[0]) or 1.0)
    with pytest.raises(SystemExit, match="no default bench in .*: run its step"):
        tuning.main(["--only", "fashion-mnist-random", "--out", str(tmp_path), "--steps", "tune,tuned"])
    assert ran == []  # refused before any step ran
    (tmp_path / "bench-fashion-mnist-random").mkdir()
    (tmp_path / "bench-fashion-mnist-random" / "results.csv").write_text("method\n")
    monkeypatch.setattr(tuning, "compare", lambda p: {"setting": p.name, "methods": {}})
    (saved,) = tuning.main(["--only", "fashion-mnist-random", "--out", str(tmp_path), "--steps", "tune,tuned"])
    assert ran == ["tune", "tune", "bench"] and set(saved["seconds"]) == {"tune 1", "tune 2", "tuned"}
    ran.clear()
    (saved,) = tuning.main(["--only", "fashion-mnist-random", "--out", str(tmp_path)])
    assert ran == ["tune", "tune", "bench", "bench"] and set(saved["seconds"]) == {"tune 1", "tune 2", "default", "tuned"}
    with pytest.raises(SystemExit, match="--steps 'tune,bench': give some of tune, default, tuned"):
        tuning.main(["--steps", "tune,bench"])
    ran.clear()
    with pytest.raises(SystemExit, match="no default bench in"):  # nothing to run: the comparison needs both
        tuning.main(["--only", "fashion-mnist-random", "--out", str(tmp_path / "elsewhere"), "--steps="])
    (tmp_path / "bench-fashion-mnist-random-tuned").mkdir()
    (tmp_path / "bench-fashion-mnist-random-tuned" / "results.csv").write_text("method\n")
    (saved,) = tuning.main(["--only", "fashion-mnist-random", "--out", str(tmp_path), "--steps="])
    assert ran == [] and saved["seconds"] == {}


@pytest.mark.ray
@pytest.mark.slow
def test_tuning_benchmark_quick_mode_compares_default_and_tuned_benches(tmp_path, ray_cluster):
    (comparison,) = tuning.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "tuning-digits-random-quick.json").read_text())
    assert set(saved["methods"]) == set(comparison["methods"]) == {"finetune", "gradient_ascent"}
    for entry in saved["methods"].values():
        assert entry["search"]["trials"] == 3 and entry["search"]["finished"] + entry["search"]["failed"] == 3
        assert {entry["default"]["rank_objective"], entry["tuned"]["rank_objective"]} <= {1, 2}
    header = (tmp_path / "bench-tuned" / "results.md").read_text()
    assert f"tuned hyperparameters from {tmp_path / 'tuned' / 'digits-mlp-random'}: finetune (3 trials), " \
           "gradient_ascent (3 trials)" in header
    assert "| finetune |" in (tmp_path / "tuning-digits-random-quick.md").read_text()


@pytest.mark.slow
def test_frozen_benchmark_quick_mode_compares_every_mode_and_times_the_command(tmp_path):
    from benchmarks import frozen
    from orchestration.config import DataConfig
    from orchestration.datasets import load_dataset
    from orchestration.frozen.public import public_ids

    # A workload measured earlier (`--only` another one) stays in the file as it was.
    (tmp_path / "frozen-quick.json").write_text(json.dumps({"workloads": {"earlier": {"samples": 7}}}))
    frozen.main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    workloads = json.loads((tmp_path / "frozen-quick.json").read_text())["workloads"]
    assert workloads["earlier"] == {"samples": 7}
    digits = workloads["digits"]
    assert digits["recipes"]["full"]["epochs"] == 4 and digits["recipes"]["head"]["trainable"] == "head"
    config = DataConfig(name="digits", public_fraction=0.5)
    public = public_ids(config, load_dataset(config)[0])
    assert digits["public"] == len(public) and digits["pretrain"]["backbone_bytes"] > 0
    points = {(p["mode"], p["shards"]): p for p in digits["points"]}
    assert list(points) == [(mode, s) for mode in ("full", "head", "adapter") for s in (2, 4)]
    mono = digits["monolithic"]
    for (mode, _), point in points.items():
        deletion = point["deletion"]
        assert len(deletion["forget_s"]) == 1 and deletion["ids"][0] not in public, "only deletable samples are deleted"
        assert 0 < deletion["samples_epochs"][0] < mono["samples_epochs"]
        assert (point["features_bytes"] > 0) == (mode == "head") and 0 <= point["acc_vote"] <= 1
        assert deletion["speedup"] == pytest.approx(mono["median_s"] / deletion["median_s"])
    for shards in (2, 4):  # checkpoints of heads and adapters hold far fewer weights than the full network's
        assert points[("head", shards)]["store_bytes"] < points[("adapter", shards)]["store_bytes"] < \
            points[("full", shards)]["store_bytes"]
    e2e = digits["end_to_end"]
    assert (e2e["mode"], e2e["shards"]) == ("head", 4) and e2e["median_s"] > e2e["in_process_median_s"] > 0
    assert e2e["breakdown"]["retrain the affected slices"] > 0 and e2e["breakdown"]["purge stored feature rows"] > 0


def test_frozen_benchmark_pretrains_the_backbone_with_the_monolithic_models_recipe():
    from benchmarks import frozen

    for workload in frozen.FULL["workloads"]:
        config = frozen.run_config(workload, "full", 1, 1, frozen.FULL, Path("backbone.pt"), 0.5)
        assert config.pretrain == config.sisa  # backbone and monolithic model are trained alike
        adapter = frozen.recipe("adapter", 16, 4, frozen.FULL, workload)
        assert (adapter.epochs, adapter.augment) == (workload.epochs, workload.augment)
        assert not frozen.recipe("head", 16, 4, frozen.FULL, workload).augment
    cifar = next(w for w in frozen.FULL["workloads"] if w.name == "cifar10")
    assert cifar.augment and cifar.epochs == 30


def test_timings_line_of_a_command_parses_into_phases():
    stderr = ("request r-0001: ...\n"
              "timings: startup 3.10 s, data load 0.41 s, retraining 0.80 s, other 0.05 s; total 4.36 s\n")
    assert service.parse_timings(stderr) == {"startup": 3.10, "data load": 0.41, "retraining": 0.80, "other": 0.05,
                                             "total": 4.36}


def test_done_line_of_the_service_parses_into_the_workers_phases():
    lines = ["(ServiceWorker pid=7) done r-0002: retrained {3: [1, 2]}, 617 samples x epochs, 2.50 s (served in 2.10 s, "
             "shard training 1.90 s summed over shards; swap to every replica 0.40 s)\n",
             "(ServiceWorker pid=7) done r-0003: retrained nothing, 0 samples x epochs, 0.20 s (served in 0.10 s, "
             "shard training 0.00 s summed over shards; swap to every replica 0.10 s)\n"]
    assert service.parse_done(lines, "r-0002") == {"worker_s": 2.5, "served_s": 2.1, "shard_training_s": 1.9,
                                                  "swap_s": 0.4}
    with pytest.raises(ValueError, match="r-0004"):
        service.parse_done(lines, "r-0004")


@pytest.mark.slow
@pytest.mark.ray
def test_service_benchmark_quick_mode_times_every_path(tmp_path):
    results = service.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "service-quick.json").read_text())
    summary = saved["summary"]
    assert set(summary["command"]) == {"ray", "local-1t", "local-2t"}
    assert all(v["median_s"] > 0 and v["breakdown_median_s"]["retraining"] > 0 for v in summary["command"].values())
    ray_phases = summary["command"]["ray"]["breakdown_median_s"]
    # One id touches one shard: the default engine trains it in the command's process, with no cluster to start.
    assert "ray start" not in ray_phases and "actor start" not in ray_phases and "evaluation" in ray_phases
    assert summary["service"]["median_s"] > 0 and summary["monolithic_median_s"] > 0
    worker = summary["service"]["worker_median_s"]
    assert 0 < worker["served_s"] <= worker["worker_s"] and worker["swap_s"] > 0
    assert results["predictions"]["idle"]["answers"] > 0 and results["predictions"]["deleting"]["answers"] > 0
    # More deletions than trainings: a deletion's cost depends on the slice its id sits in.
    assert len(saved["workload"]["ids"]) == 2 == len(saved["service"]["done_s"]) == len(saved["command"]["ray"])
    assert len(saved["monolithic_s"]) == 1


def test_frozen_benchmark_copies_of_a_run_have_their_own_data_cache(tmp_path):
    """A deletion on one copy purges that copy's cache only: the next copy opens from a whole cache."""
    import pyarrow.parquet as pq

    from benchmarks import frozen
    from orchestration.config import DataConfig, RayConfig, RunConfig, TrackingConfig
    from orchestration.datasets.cache import cached_ids, purged_rows
    from orchestration.runs import open_run
    from sisa import SisaConfig
    from tests.orchestration.test_sources import image_table

    pq.write_table(image_table(60, "user-", 0), tmp_path / "train.parquet")
    pq.write_table(image_table(12, "test-", 1), tmp_path / "test.parquet")
    data = DataConfig(name="parquet", path=str(tmp_path / "train.parquet"), test_path=str(tmp_path / "test.parquet"),
                      id_column="user_id", cache_dir=str(tmp_path / "cache"))
    config = RunConfig(data=data, sisa=SisaConfig(num_shards=2, num_slices=1, epochs=1), ray=RayConfig(engine="local"),
                       tracking=TrackingConfig(enabled=False))
    session = open_run(tmp_path / "run", config)
    session.run.train()
    (shared,) = (tmp_path / "cache").glob("*-train")

    copied = frozen.copy_run(session, tmp_path / "copy-0")
    own = next(Path(copied.data.cache_dir).glob("*-train"))
    assert own.name == shared.name and own.parent != shared.parent
    copy = frozen.open_run(tmp_path / "copy-0", copied)
    sample = int(copy.run.table.ids[0])
    copy.run.forget([sample])
    assert purged_rows(own) == 1 and sample not in cached_ids(own), "the copy's deletion purges the copy's cache"
    assert purged_rows(shared) == 0 and sample in cached_ids(shared), "and leaves the cache the next copy copies"
    frozen.remove_run_copy(tmp_path / "copy-0")
    assert not (tmp_path / "copy-0").exists() and not own.parent.exists()


def test_frozen_benchmark_scores_a_run_as_unlearn_train_does_so_its_copies_start_with_its_test_outputs(tmp_path):
    """The command it times then re-scores only the retrained head, as it does on a user's trained run."""
    from benchmarks import frozen
    from orchestration.outputs_cache import FEATURES, FOLDER
    from orchestration.status import accuracies

    spec = frozen.QUICK
    (workload,) = spec["workloads"]
    data, backbone, _, _, public = frozen.prepare(tmp_path, workload, spec, 0.5)
    deletable = np.setdiff1d(data[0].ids, public)
    point, session = frozen.measure(tmp_path, workload, "head", 2, spec, backbone, 0.5, data, deletable, 1,
                                    np.random.default_rng(0))
    copied = frozen.copy_run(session, tmp_path / "copy")
    outputs = sorted(p.name for p in (tmp_path / "copy" / FOLDER).glob("*.pt"))
    assert [name.split("-")[1] for name in outputs] == ["000", "001"], "one cached test output per constituent"
    assert len(list((tmp_path / "copy" / FEATURES).glob("*.pt"))) == 1, "and the backbone's test features"
    assert accuracies(frozen.open_run(tmp_path / "copy", copied)) == pytest.approx(
        {k.removeprefix("acc_"): v for k, v in point.items() if k.startswith("acc_")})
