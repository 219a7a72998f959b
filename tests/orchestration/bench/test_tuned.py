"""Tuned configurations on disk and `bench --tuned`: used where they fit, defaults (and why) elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.bench import tuned
from orchestration.config import load_config
from tests.orchestration.test_cli import run_cli

SETTING = ["bench.methods=finetune,gradient_ascent,l1_sparse", "data.train_limit=300"]


def _write(folder: Path, config, method: str, params: dict, **changes) -> Path:
    record = {"trials": 7, "objective": 0.1, "recipe": tuned.recipe(config), "protocol": tuned.protocol_settings(config)}
    for key, value in changes.items():
        record[key] = {**record[key], **value}
    return tuned.write(tuned.path_of(folder, config, method), method, params, record, ["tuned for a test"])


def test_tuned_file_lives_under_data_model_and_scenario_and_reads_back(tmp_path):
    config = load_config(None, [*SETTING, "model.name=cnn", "bench.scenario=class"])
    path = _write(tmp_path, config, "finetune", {"lr": 0.003, "epochs": 2})
    assert path == tmp_path / "digits-cnn-class" / "finetune.toml"
    assert path.read_text().startswith("# tuned for a test\nmethod = \"finetune\"\n")
    back = tuned.read(path)
    assert (back.method, back.params, back.tuning["trials"]) == ("finetune", {"lr": 0.003, "epochs": 2}, 7)


def test_apply_runs_matching_files_tuned_and_says_which_methods_run_defaults_and_why(tmp_path):
    config = load_config(None, SETTING)
    _write(tmp_path, config, "finetune", {"lr": 0.003, "epochs": 2})
    _write(tmp_path, config, "gradient_ascent", {"lr": 0.02}, recipe={"sisa.epochs": 40})
    applied, notes = tuned.apply(config, tmp_path)
    assert applied.bench.params == {"finetune": {"lr": 0.003, "epochs": 2}}
    folder = tmp_path / "digits-mlp-random"
    assert notes == [f"tuned hyperparameters from {folder}: finetune (7 trials)",
                     f"no tuned file in {folder}, defaults for: l1_sparse",
                     "tuned for other settings, defaults for: gradient_ascent (sisa.epochs 40 -> 20)"]


def test_a_file_tuned_against_another_forget_set_or_split_is_not_used(tmp_path):
    config = load_config(None, SETTING)
    _write(tmp_path, config, "finetune", {"lr": 0.003}, protocol={"bench.forget_seed": 1})
    applied, notes = tuned.apply(config, tmp_path)
    assert applied.bench.params == {} and "finetune (bench.forget_seed 1 -> 0)" in notes[-1]
    # the shard layout and the models' seed do not change what a single model's tuning fits
    same = load_config(None, [*SETTING, "sisa.num_shards=8", "seed=3", "bench.models=32"])
    assert tuned.apply(same, tmp_path)[0].bench.params == {}
    _write(tmp_path, config, "finetune", {"lr": 0.003})
    assert tuned.apply(same, tmp_path)[0].bench.params == {"finetune": {"lr": 0.003}}


def test_parameters_set_in_the_bench_win_over_tuned_ones(tmp_path):
    config = load_config(None, [*SETTING, "bench.params.finetune.lr=0.5"])
    _write(tmp_path, config, "finetune", {"lr": 0.003, "epochs": 2})
    applied, notes = tuned.apply(config, tmp_path)
    assert applied.bench.params["finetune"] == {"lr": "0.5", "epochs": 2}
    assert notes[-1] == "bench.params set here win over the tuned values of: finetune.lr"


def test_bench_refuses_a_tuned_file_that_is_not_one_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "configs/tuned/digits-mlp-random/finetune.toml"
    bad.parent.mkdir(parents=True)
    bad.write_text("lr = 0.1\n")
    code, _, err = run_cli(capsys, "bench", "--tuned", "--engine", "local", "--no-track", "--set", "bench.methods=finetune")
    assert code == 2 and err.strip().splitlines() == [
        f"error: {Path('configs/tuned/digits-mlp-random/finetune.toml')} is not a tuned configuration (it needs method, "
        "[params] and [tuning]); write one with `unlearn tune`"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


@pytest.mark.parametrize("scenario, key", [("random", "bench.forget_fraction"), ("class", "bench.forget_class"),
                                           ("stream", "bench.stream_requests"), ("hard", "bench.forget_fraction")])
def test_protocol_settings_name_what_decides_each_scenarios_forget_set(scenario, key):
    settings = tuned.protocol_settings(load_config(None, [f"bench.scenario={scenario}"]))
    assert key in settings and {"bench.forget_seed", "bench.test_samples", "bench.validation_fraction"} <= set(settings)
