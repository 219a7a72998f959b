"""`unlearn methods` and `unlearn approx`: on the ensemble's affected constituents and on a single model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import approx
from approx.registry import method_class, parameter_docs, parameters
from orchestration.approximate import run_approx
from orchestration.cli import main
from orchestration.runs import open_session
from tests.conftest import LOCAL
from tests.orchestration.test_cli import FAST, run_cli


@pytest.fixture(scope="module")
def digits_session(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("approx") / "run"
    assert main(["train", "--run-dir", str(run_dir), *FAST]) == 0
    return open_session(run_dir, flags=LOCAL)


def test_methods_lists_every_method_and_its_parameters(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == approx.available()
    assert "reference:" not in out and "batch_size" not in out


def test_methods_verbose_gives_each_reference_and_every_parameter_with_default_and_description(capsys):
    code, out, _ = run_cli(capsys, "methods", "-v")
    assert code == 0
    blocks = {}
    for line in out.splitlines():
        if not line.startswith(" "):
            blocks[line.split()[0]] = []
        else:
            blocks[list(blocks)[-1]].append(line.strip())
    assert list(blocks) == approx.available()
    for name, lines in blocks.items():
        assert lines[0] == f"reference: {method_class(name).reference}"
        docs = parameter_docs(name)
        rows = lines[1:]
        assert len(rows) == len(docs)
        for row, (key, value) in zip(rows, parameters(name).items()):
            setting, description = row.split("  ", 1)
            assert setting == f"{key} = {value!r}" and description.strip() == docs[key] != ""
    assert "fraction = 0.5" in out and "iterations = 1500" in out and "init_rate = 0.3" in out


def test_approx_on_the_ensemble_touches_only_affected_constituents(digits_session):
    plan = digits_session.run.plan()
    ids = plan.sample_ids[plan.shard == 1][:5]
    exact_before = {e.path for e in digits_session.run.store.entries()}
    report = run_approx(digits_session, approx.create("random_label", epochs=2), ids)
    assert report.shards == [1]
    saved = sorted(p.name for p in __import__("pathlib").Path(report.saved_to).iterdir())
    assert saved == ["derived.json", "shard-001.pt"]
    state = torch.load(f"{report.saved_to}/shard-001.pt", weights_only=True)
    original = digits_session.run.constituents()[1][1].state_dict()
    assert set(state) == set(original)
    assert any(not torch.equal(state[k], original[k]) for k in state), "the affected constituent was unlearned"
    assert report.after != report.before
    assert {e.path for e in digits_session.run.store.entries()} == exact_before, "exact checkpoints are untouched"


def test_approx_on_a_single_model_trains_it_once_and_unlearns(digits_session):
    report = run_approx(digits_session, approx.create("finetune", epochs=1), [0, 1, 2], target="single")
    assert report.shards == [0] and report.samples > 0 and report.trained_single[0] > 0
    assert (digits_session.run.run_dir / "single" / "checkpoints" / "shard-000").is_dir()
    again = run_approx(digits_session, approx.create("finetune", epochs=1), [3], target="single")
    assert again.trained_single is None, "the single model is reused until the next deletion"


def test_derived_models_are_trained_on_retained_data_and_destroyed_by_the_next_deletion(tmp_path):
    from orchestration.derived import stale_derived

    run_dir = tmp_path / "run"
    assert main(["train", "--run-dir", str(run_dir), *FAST]) == 0
    session = open_session(run_dir, flags=LOCAL)
    session.run.forget([0, 1])
    report = run_approx(session, approx.create("finetune", epochs=1), [2], target="single")
    single_ids = np.asarray(__import__("json").loads(
        next((run_dir / "single" / "checkpoints").rglob("slice-*.json")).read_text())["sample_ids"])
    assert not np.isin([0, 1], single_ids).any(), "the single model never trains on deleted samples"
    approx_dir = __import__("pathlib").Path(report.saved_to)
    assert stale_derived(session.run) == []

    deletion = session.run.forget([5])

    assert not (run_dir / "single").exists() and not approx_dir.exists()
    destroyed = {item["path"] for item in deletion.destroyed if item["kind"] == "derived-model"}
    assert any(p.startswith("single/") for p in destroyed) and any(p.startswith("approx/") for p in destroyed)
    assert session.run.ledger.requests()[-1].destroyed == deletion.destroyed


def test_approx_cli_reports_accuracies_and_rejects_bad_input(digits_session, capsys):
    run_dir = str(digits_session.run.run_dir)
    code, out, _ = run_cli(capsys, "approx", "--run-dir", run_dir, "--method", "salun", "--ids", "4,5,6",
                           "--set", "method.epochs=1", "--set", "method.fraction=0.2")
    assert code == 0 and "forget/acc" in out and "exact SISA checkpoints are unchanged" in out
    for argv, message in [
        (["--method", "salun", "--ids", "99999"], "not in the training data"),
        (["--method", "salun", "--ids", ""], "names no sample ids"),
        (["--method", "nope", "--ids", "1"], "valid: bad_teacher, conv_transpose, finetune"),
        (["--method", "salun", "--ids", "1", "--set", "method.alpha=1"], "valid: batch_size"),
    ]:
        code, _, err = run_cli(capsys, "approx", "--run-dir", run_dir, *argv)
        assert code == 2 and message in err, err


def test_approx_refuses_a_method_that_cannot_run_on_the_model_before_any_work(digits_session, capsys):
    run_dir = digits_session.run.run_dir
    files_before = sorted(run_dir.rglob("*"))
    code, _, err = run_cli(capsys, "approx", "--run-dir", str(run_dir), "--method", "conv_transpose", "--ids", "7",
                           "--target", "single")
    assert code == 2 and "conv_transpose needs a model with Conv2d layers" in err and "use a method" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(run_dir.rglob("*")) == files_before, "nothing trained, nothing written"


def test_approx_refuses_ids_already_deleted_exactly(digits_session):
    digits_session.run.forget([100])
    with pytest.raises(ValueError, match="already deleted by request r-0001"):
        run_approx(digits_session, approx.create("finetune", epochs=1), np.array([100]))
