"""The bench's protocol: forget sets per scenario, splits, seeds, the hard set, the recorded ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestration.bench import protocol
from orchestration.config import BenchConfig, load_config
from tests.conftest import make_table


def test_random_scenario_forgets_the_fraction_drawn_with_the_forget_seed():
    table = make_table(200)
    (ids,) = protocol.draw_requests(BenchConfig(forget_fraction=0.1), table)
    assert len(ids) == len(np.unique(ids)) == 20
    assert np.array_equal(ids, protocol.draw_requests(BenchConfig(forget_fraction=0.1, models=4), table)[0])
    assert not np.array_equal(ids, protocol.draw_requests(BenchConfig(forget_fraction=0.1, forget_seed=1), table)[0])


def test_stream_scenario_is_a_sequence_of_single_sample_requests():
    requests = protocol.draw_requests(BenchConfig(scenario="stream", stream_requests=4), make_table(200))
    assert [len(r) for r in requests] == [1, 1, 1, 1] and len(np.unique(np.concatenate(requests))) == 4


def test_class_scenario_forgets_the_class_and_reports_test_accuracy_without_it():
    train, test = make_table(200), make_table(100, seed=1)
    chosen = protocol.build(BenchConfig(scenario="class", forget_class=2), train, test, seed=0)
    assert np.array_equal(chosen.forget, train.ids[train.labels == 2])
    label = dict(zip(test.ids.tolist(), test.labels.tolist()))
    assert {label[i] for i in chosen.test} == {0, 1} and {label[i] for i in chosen.test_class} == {2}
    assert all(label[i] != 2 for i in chosen.validation)
    assert set(chosen.splits()) == {"forget", "retain", "test", "validation", "test_class"}


def test_class_scenario_rejects_a_label_without_samples():
    with pytest.raises(ValueError, match=r"labels present: \[0, 1, 2\]"):
        protocol.draw_requests(BenchConfig(scenario="class", forget_class=7), make_table(200))


def test_validation_split_is_stratified_disjoint_from_test_and_fixed():
    test = make_table(300, seed=2)
    validation, reported = protocol.split_test(test, 0, 0.2, seed=0)
    assert len(np.intersect1d(validation, reported)) == 0 and len(validation) + len(reported) == 300
    for label in range(3):
        in_class = test.ids[test.labels == label]
        assert len(np.intersect1d(validation, in_class)) == round(0.2 * len(in_class))
    assert np.array_equal(validation, protocol.split_test(test, 0, 0.2, seed=0)[0])


def test_test_samples_caps_the_scored_test_split_per_class():
    test = make_table(300, seed=2)
    validation, reported = protocol.split_test(test, 150, 0.2, seed=0)
    assert abs(len(validation) + len(reported) - 150) <= 2
    for label in range(3):
        in_class = test.ids[test.labels == label]
        assert abs(len(np.intersect1d(np.concatenate([validation, reported]), in_class)) - len(in_class) / 2) <= 0.5


def test_population_seeds_are_distinct_across_roles_and_base_seeds():
    chosen = protocol.build(BenchConfig(models=6), make_table(100), make_table(50, seed=1), seed=0)
    seeds = {role: chosen.seeds(role) for role in protocol.ROLES}
    assert all(len(set(s)) == 6 for s in seeds.values())
    assert len(set().union(*map(set, seeds.values()))) == 18
    other = protocol.build(BenchConfig(models=6), make_table(100), make_table(50, seed=1), seed=1)
    assert not set(other.seeds("original")) & set(seeds["original"])


def test_hardest_keeps_the_samples_whose_originals_differ_most_from_the_oracles():
    # Memorisation (mean original margin - mean oracle margin): ids 10, 11, 12, 13 -> 1, 5, 3, 0.
    pool = np.array([10, 11, 12, 13])
    originals = np.array([[2.0, 6, 4, 1], [2, 6, 4, 1]])
    oracles = np.ones((3, 4))
    assert protocol.hardest(pool, originals, oracles, 0.5).tolist() == [11, 12]


def test_hard_scenario_needs_the_ids_from_hardest():
    with pytest.raises(ValueError, match="hardest"):
        protocol.build(BenchConfig(scenario="hard"), make_table(100), make_table(50), seed=0)


def test_protocol_record_holds_every_id_as_json():
    train, test = make_table(100), make_table(60, seed=1)
    chosen = protocol.build(BenchConfig(models=4), train, test, seed=3)
    record = json.loads(json.dumps(chosen.record()))
    assert record["forget"] == chosen.forget.tolist() and record["validation"] == chosen.validation.tolist()
    assert sorted(record["forget"] + record["retain"]) == train.ids.tolist()
    assert record["seeds"]["oracle"] == chosen.seeds("oracle")


def test_bench_config_rejects_bad_settings_listing_valid_ones():
    with pytest.raises(ValueError, match="random, class, stream, hard"):
        load_config(None, ["bench.scenario=everything"])
    with pytest.raises(ValueError, match="subset of"):
        load_config(None, ["bench.targets=cluster"])
    with pytest.raises(ValueError, match="at least 2"):
        load_config(None, ["bench.models=1"])
    with pytest.raises(ValueError, match="unknown method 'nope'; valid:"):
        protocol.create_methods(BenchConfig(methods=("nope",)))
    with pytest.raises(ValueError, match="has no parameter"):
        protocol.create_methods(BenchConfig(params={"finetune": {"alpha": 1}}))
    with pytest.raises(ValueError, match="does not run"):
        protocol.create_methods(BenchConfig(methods=("finetune",), params={"salun": {"lr": 1}}))


def test_splits_name_the_table_each_split_comes_from():
    train, test = make_table(100), make_table(60, seed=1)
    splits = protocol.build(BenchConfig(), train, test, seed=0).splits()
    assert {name: table for name, (table, _) in splits.items()} == {
        "forget": "train", "retain": "train", "test": "test", "validation": "test"}
    assert np.array_equal(splits["forget"][1], protocol.draw_requests(BenchConfig(), train)[0])
