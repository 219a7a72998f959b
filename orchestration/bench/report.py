"""The bench's results as people read them: a terminal table, Markdown/CSV/Parquet tables, the
per-example arrays and the protocol (plots are in plots.py).

Every target gets its block of rows: the floor (`retrain`: oracles against oracles), the ceiling
(`original`: no unlearning), SISA's exact deletions for the ensemble, then the approximate methods.
A score reads between its block's floor and ceiling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from orchestration.bench.protocol import Protocol
from orchestration.bench.study import Row

TERMINAL_WIDTH = 120
COLUMNS = [  # (summary key, header, format): the terminal's compact table
    ("klom_forget", "KLoM-F", ".2f"), ("klom_retain", "KLoM-R", ".2f"), ("klom_test", "KLoM-T", ".2f"),
    ("ulira", "U-LiRA", ".2f"), ("fq", "FQ", ".3f"), ("ua", "UA", ".1f"), ("ra", "RA", ".1f"), ("ta", "TA", ".1f"),
    ("mia", "MIA", ".1f"), ("gap", "Gap", ".2f"), ("seconds", "time s", ".3g"), ("speedup", "speedup", ".1f"),
]
FULL = [  # (summary key, header, format, interval): results.md
    ("klom_forget", "KLoM forget P95", ".3f", "boot"), ("klom_forget_median", "median", ".3f", ""),
    ("klom_retain", "KLoM retain P95", ".3f", "boot"), ("klom_test", "KLoM test P95", ".3f", "boot"),
    ("ulira", "U-LiRA acc.", ".3f", "boot"), ("fq", "FQ", ".3f", "boot"),
    ("ua", "UA %", ".2f", "t"), ("ra", "RA %", ".2f", "t"), ("ta", "TA %", ".2f", "t"),
    ("ta_class", "TA class %", ".2f", "t"),
    ("mia", "MIA-eff. %", ".2f", "t"), ("gap", "Avg. Gap", ".2f", ""), ("kl", "KL nats", ".4f", "t"),
    ("js", "JS nats", ".4f", "t"), ("seconds", "time s (median)", ".3g", "iqr"), ("cpu_share", "CPU/wall", ".2f", ""),
    ("speedup", "speedup", ".2f", ""), ("cpu_seconds", "CPU s (median)", ".3g", ""),
    ("speedup_cpu", "speedup (CPU)", ".2f", ""), ("samples_epochs", "samples x epochs", ",.0f", ""),
    ("peak_mb", "peak MB", ".1f", ""),
]
TARGET_TITLES = {"single": "single model", "ensemble": "SISA ensemble"}
KIND_MARKS = {"floor": " [floor]", "ceiling": " [ceiling]", "exact": " [exact]", "approximate": ""}


def _name(row: Row) -> str:
    return row.method + KIND_MARKS[row.kind]


def _value(summary: dict[str, Any], key: str, fmt: str, kind: str) -> str:
    value = summary.get(key, math.nan)
    if key in ("speedup", "speedup_cpu") and kind in ("floor", "ceiling"):
        return "-"  # their time is training time: a speedup of training over retraining says nothing
    return "-" if value is None or math.isnan(value) else f"{value:{fmt}}"


def _fit(summary: dict[str, Any], key: str, fmt: str, kind: str, width: int) -> str:
    """The cell in its format, or with fewer significant digits when it would not fit `width`."""
    for candidate in (fmt, ".3g", ".2g"):
        text = _value(summary, key, candidate, kind)
        if len(text) <= width:
            return text
    return text


def terminal_table(rows: list[Row], protocol: Protocol) -> str:
    """The compact table (at most 120 columns): one block per target, floor and ceiling first."""
    lines = []
    widths = [max(24, *(len(_name(r)) + 1 for r in rows))] + [max(8, len(h) + 1) for _, h, _ in COLUMNS]
    for target in dict.fromkeys(r.target for r in rows):
        n = protocol.models
        lines.append(f"{TARGET_TITLES[target]}: {n} originals, {n} oracles, {n} runs per method; "
                     f"scores compare {n // 2} models a side")
        lines.append(f"{'method':<{widths[0]}}" + "".join(f"{h:>{w}}" for (_, h, _), w in zip(COLUMNS, widths[1:])))
        for row in (r for r in rows if r.target == target):
            if row.scores is None:
                lines.append(f"{_name(row):<{widths[0]}}  skipped: {row.note}"[:TERMINAL_WIDTH])
                continue
            cells = [_fit(row.scores.summary, key, fmt, row.kind, w - 1) for (key, _, fmt), w in zip(COLUMNS, widths[1:])]
            lines.append(f"{_name(row):<{widths[0]}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths[1:])))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cell(summary: dict[str, Any], key: str, fmt: str, interval: str, kind: str) -> str:
    text = _value(summary, key, fmt, kind)
    bounds = {"boot": ("_lo", "_hi"), "t": ("_lo", "_hi"), "iqr": ("_q25", "_q75")}.get(interval)
    if text == "-" or bounds is None:
        return text
    low, high = summary.get(key + bounds[0], math.nan), summary.get(key + bounds[1], math.nan)
    return text if math.isnan(low) or math.isnan(high) else f"{text} [{low:{fmt}}, {high:{fmt}}]"


def markdown_tables(rows: list[Row]) -> str:
    """Every metric with its interval, one Markdown table per target."""
    keys = [entry for entry in FULL if any(r.scores is not None and entry[0] in r.scores.summary for r in rows)]
    out = []
    for target in dict.fromkeys(r.target for r in rows):
        out += [f"### {TARGET_TITLES[target]}", "", "| method | " + " | ".join(h for _, h, _, _ in keys) + " |",
                "|---|" + "---|" * len(keys)]
        for row in (r for r in rows if r.target == target):
            if row.scores is None:
                out.append(f"| {row.method} | skipped: {row.note} |" + " |" * (len(keys) - 1))
                continue
            cells = [_cell(row.scores.summary, k, fmt, interval, row.kind) for k, _, fmt, interval in keys]
            out.append(f"| {_name(row)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


LEGEND = """Brackets: 95% intervals (KLoM, U-LiRA, FQ: bootstrap over forget samples; UA..JS: Student-t over
models; time: interquartile range). Population scores compare half the models of a side with half of the
oracles, in two folds. Floor = oracles against oracles (where an exact method sits); ceiling = the
originals, no unlearning. KLoM: KL of margin histograms, 0 = like retraining, at most 11.5. U-LiRA: attack
accuracy telling the models from oracles, 0.5 = indistinguishable. FQ: the NeurIPS 2023 challenge's forget
quality (N runs from one original), 1 = indistinguishable. Speedup: retraining from scratch (once per
request) over the method's median time.
"""


def write_tables(rows: list[Row], protocol: Protocol, header: str, out: Path) -> list[Path]:
    """results.md, results.csv, results.parquet, protocol.json and examples/<target>-<method>.npz."""
    md, csv, parquet, record = out / "results.md", out / "results.csv", out / "results.parquet", out / "protocol.json"
    md.write_text(f"{header}\n\n{LEGEND}\n{markdown_tables(rows)}")
    summaries = [_flat(r) for r in rows]
    columns = sorted({k for s in summaries for k in s}, key=lambda k: (k not in ("method", "target", "kind", "note"), k))
    table = pa.Table.from_pylist([{k: s.get(k) for k in columns} for s in summaries])
    pcsv.write_csv(table, csv)
    pq.write_table(table, parquet)
    record.write_text(json.dumps(protocol.record()))
    return [md, csv, parquet, record, *write_examples(rows, out / "examples")]


def _flat(row: Row) -> dict[str, Any]:
    summary = row.summary
    summary["params"] = json.dumps(row.params, default=str) if row.params else ""
    return summary


def write_examples(rows: list[Row], folder: Path) -> list[Path]:
    """Per-example arrays of every row: margins (models x samples) per split and per-sample scores."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows:
        if row.scores is None or row.population is None:
            continue
        arrays = {f"margins/{s}": v for s, v in row.population.margins.items()}
        arrays.update({f"scores/{k}": v for k, v in row.scores.per_sample.items()})
        path = folder / f"{row.target}-{row.method}.npz"
        np.savez_compressed(path, **arrays)
        paths.append(path)
    return paths
