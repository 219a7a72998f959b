"""The README's "Your own data" section runs as written: its example files, its three commands, its Python."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import torch

from orchestration.cli import main
from orchestration.config import ModelConfig
from orchestration.models import build_model

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the section, in order."""
    text = README.read_text()
    section = text[text.index("\n## Your own data\n"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)


def _block(language: str, index: int = 0) -> str:
    return [code for lang, code in _blocks() if lang == language][index]


def test_the_readme_example_files_and_three_commands_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("python", 0), "make_example.py", "exec"), {"__name__": "__main__"})
    Path("own.toml").write_text(_block("toml"))
    commands = [shlex.split(line) for line in _block("bash").splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [[".venv/bin/unlearn", "train"], [".venv/bin/unlearn", "forget"],
                                         [".venv/bin/unlearn", "status"]]
    outputs = []
    for command in commands:
        code = main(command[1:] + ["--engine", "local", "--no-track"])
        out, err = capsys.readouterr()
        assert code == 0, err
        outputs.append(out)
    assert "2 sample(s) forgotten (user-42, user-77)" in outputs[1] or "(user-77, user-42)" in outputs[1]
    assert "1 id(s) (" not in outputs[2] and "2 id(s) (user-" in outputs[2] and "classes: bird, cat, dog" in outputs[2]
    accuracy = float(outputs[1].rsplit("test accuracy: ", 1)[1])
    assert accuracy > 0.6, "the example's classes are learnable"


def test_the_readme_model_factory_plugs_in_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(_block("python", 1))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    model = build_model(ModelConfig(name="my_models:small_net"), (1, 8, 8), 3)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    monkeypatch.delitem(sys.modules, "my_models", raising=False)


def test_the_readme_python_api_example_trains_and_forgets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(_block("python", 2), "api_example.py", "exec"), namespace)
    report = namespace["report"]
    assert report.retrained and len(report.sample_ids) == 2
    assert (tmp_path / "runs" / "api" / "ledger.jsonl").exists()
    out = capsys.readouterr().out
    assert out.startswith("{") and "bit-identical to retraining: True" in out

