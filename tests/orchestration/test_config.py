"""Run config: TOML files, --set overrides, clear errors, round trip."""

from __future__ import annotations

import pytest

from orchestration.config import load_config, parse_overrides


def test_set_overrides_are_coerced_to_the_field_types(tmp_path):
    config = load_config(None, ["sisa.num_shards=8", "sisa.lr=0.1", "seed=3", "data.name=mnist"])
    assert (config.sisa.num_shards, config.sisa.lr, config.seed, config.data.name) == (8, 0.1, 3, "mnist")


def test_file_then_overrides_and_save_round_trip(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 5\n[sisa]\nnum_slices = 2\n[model]\nname = "cnn"\n')
    config = load_config(path, ["sisa.num_slices=3"])
    assert (config.seed, config.sisa.num_slices, config.model.name) == (5, 3, "cnn")
    config.save(tmp_path / "saved.toml")
    assert load_config(tmp_path / "saved.toml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sisa.shards=2"], r"unknown setting\(s\) \['sisa.shards'\]; valid in sisa.: \['aggregation'"),
        (["sisa.num_shards=two"], "sisa.num_shards must be an integer, got 'two'"),
        (["sisa.num_shards=0"], "num_shards must be a positive integer"),
        (["nokey"], "--set expects key=value"),
        (["sisa=3"], r"sisa is a section"),
    ],
)
def test_bad_settings_say_what_is_valid(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, overrides)


def test_missing_or_invalid_config_file_is_reported(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("seed = = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_fingerprint_ignores_paths_and_aggregation_but_not_training_settings():
    base = load_config(None, [])
    assert base.fingerprint() == load_config(None, ["data.root=/x", "sisa.aggregation=mean"]).fingerprint()
    assert base.fingerprint() != load_config(None, ["sisa.epochs=3"]).fingerprint()
    assert parse_overrides(["a.b=1", "c=2"]) == {"a": {"b": "1"}, "c": "2"}


def test_every_shipped_config_file_loads():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
    assert files
    for path in files:
        assert "unlearn " in path.read_text().splitlines()[1], f"{path.name} lacks the command that runs it"
        load_config(path)
