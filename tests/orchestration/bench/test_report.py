"""The bench's tables: the terminal one fits 120 columns, floor and ceiling rows first, intervals in Markdown."""

from __future__ import annotations

import math

import numpy as np

from orchestration.bench.protocol import Protocol
from orchestration.bench.report import COLUMNS, FULL, markdown_tables, terminal_table
from orchestration.bench.scoring import Scores
from orchestration.bench.study import Row


def _row(method: str, target: str, kind: str, value: float) -> Row:
    summary = {key: value for key, _, _ in COLUMNS} | {key: value for key, _, _, _ in FULL}
    summary |= {f"{key}_lo": value - 1 for key, _, _, _ in FULL} | {f"{key}_hi": value + 1 for key, _, _, _ in FULL}
    summary |= {"seconds_q25": value / 2, "seconds_q75": value * 2, "ulira": math.nan}
    return Row(method, target, kind, Scores({}, summary))


def _protocol() -> Protocol:
    ids = np.arange(10)
    return Protocol("random", (ids[:2],), ids[:2], ids[2:], ids, ids[:0], ids[:0], 16, 0)


def test_terminal_table_fits_120_columns_even_with_long_names_and_large_values():
    rows = [_row("retrain", "single", "floor", 1.0), _row("original", "single", "ceiling", 99.999),
            _row("masked_small_gradients", "single", "approximate", 12345.678), _row("sisa", "ensemble", "exact", 0.5),
            Row("conv_transpose", "single", "approximate", None, note="needs Conv2d layers " * 10)]
    table = terminal_table(rows, _protocol())
    assert max(len(line) for line in table.splitlines()) <= 120
    lines = table.splitlines()
    assert lines[2].startswith("retrain [floor]") and lines[3].startswith("original [ceiling]")
    assert "skipped: needs Conv2d layers" in table


def test_speedup_of_floor_and_ceiling_rows_is_left_out_and_missing_scores_show_a_dash():
    table = terminal_table([_row("retrain", "single", "floor", 2.0)], _protocol())
    cells = table.splitlines()[2].split()
    assert cells[-1] == "-" and cells[cells.index("[floor]") + 4] == "-"  # U-LiRA is NaN


def test_markdown_tables_give_each_score_its_interval():
    text = markdown_tables([_row("finetune", "single", "approximate", 3.0)])
    assert "| finetune | 3.000 [2.000, 4.000] |" in text and "### single model" in text
