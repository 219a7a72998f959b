"""The bench's results as people read them: a summary over seeds, tables (terminal, Markdown, CSV,
Parquet) and plots (matplotlib PNG)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from orchestration.bench import Row
from orchestration.evaluation import forget_quality

METRICS = ("UA", "MIA", "RA", "TA", "gap", "KL", "JS", "seconds", "samples_epochs", "peak_mb", "store_mb")
EXACT_REFERENCE = {"single": ("retrain", "single"), "ensemble": ("sisa", "ensemble")}
"""Forget quality compares a target's models with the exactly retrained models of the same kind."""
COLUMNS = [  # (summary key, header, format)
    ("UA", "UA", ".2f"), ("MIA", "MIA-eff.", ".2f"), ("RA", "RA", ".2f"), ("TA", "TA", ".2f"),
    ("gap", "Avg. Gap", ".2f"), ("KL", "KL", ".3f"), ("JS", "JS", ".3f"), ("FQ", "FQ", ".3f"),
    ("seconds", "time s", ".2f"), ("speedup", "speedup", ".1f"), ("samples_epochs", "samples x epochs", ",.0f"),
    ("peak_mb", "peak MB", ".1f"), ("store_mb", "store MB", ".2f"),
]


def summarize(rows: list[Row]) -> list[dict[str, Any]]:
    """Mean and std over seeds of every metric per (method, target), forget quality and speedup.

    Speedup = the same seed's retraining time / the method's time. Forget quality needs at least
    two seeds (one model each); with fewer it is NaN.
    """
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row.method, row.target)].append(row)
    retrain_s = {r.seed: r.metrics["seconds"] for r in groups[("retrain", "single")]}
    summary = []
    for (method, target), members in groups.items():
        entry: dict[str, Any] = {"method": method, "target": target, "kind": members[0].kind, "seeds": len(members)}
        for key in METRICS:
            values = np.array([r.metrics.get(key, math.nan) for r in members], float)
            entry[key], entry[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
        speedups = [retrain_s[r.seed] / r.metrics["seconds"] for r in members if r.kind != "original"]
        entry["speedup"] = float(np.mean(speedups)) if speedups else math.nan
        entry["speedup_std"] = float(np.std(speedups)) if speedups else math.nan
        entry["FQ"] = _forget_quality(members, groups.get(EXACT_REFERENCE[target], []))
        entry["FQ_std"] = math.nan
        summary.append(entry)
    return summary


def _forget_quality(members: list[Row], reference: list[Row]) -> float:
    by_seed = {r.seed: r for r in reference}
    pairs = [(r, by_seed[r.seed]) for r in members if r.seed in by_seed]
    if len(pairs) < 2:
        return math.nan
    unlearned = np.stack([u.forget_stat for u, _ in pairs])
    retrained = np.stack([r.forget_stat for _, r in pairs])
    ratio = {k: np.mean([u.metrics[k] for u, _ in pairs]) / np.mean([r.metrics[k] for _, r in pairs]) for k in ("RA", "TA")}
    return forget_quality(unlearned, retrained, ratio["RA"], ratio["TA"])


def _cell(entry: dict[str, Any], key: str, fmt: str) -> str:
    mean, std = entry[key], entry.get(f"{key}_std", math.nan)
    if math.isnan(mean):
        return "-"
    return f"{mean:{fmt}}" if math.isnan(std) or entry["seeds"] < 2 else f"{mean:{fmt}} ± {std:{fmt}}"


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, mean ± std over seeds."""
    header = ["method", "target"] + [h for _, h, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        cells = [entry["method"], entry["target"]] + [_cell(entry, key, fmt) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(summary: list[dict[str, Any]], rows: list[Row], out: Path) -> list[Path]:
    """results.md, results.csv (summary) and rows.parquet (every seed's metrics)."""
    md, csv, parquet = out / "results.md", out / "results.csv", out / "rows.parquet"
    md.write_text(markdown_table(summary) + "\n")
    pcsv.write_csv(pa.Table.from_pylist(summary), csv)
    per_seed = [{"method": r.method, "target": r.target, "seed": r.seed, "kind": r.kind, **r.metrics} for r in rows]
    pq.write_table(pa.Table.from_pylist(per_seed), parquet)
    return [md, csv, parquet]


def pyplot():  # noqa: ANN201 - matplotlib.pyplot, imported on use and headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gap_vs_time(summary: list[dict[str, Any]], path: Path) -> Path:
    """Avg. Gap vs unlearning time, one point per method and target (error bars: std over seeds)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for entry in (e for e in summary if e["kind"] != "original"):
        marker = "*" if entry["kind"] == "exact" else ("o" if entry["target"] == "single" else "s")
        ax.errorbar(entry["seconds"], entry["gap"], xerr=entry["seconds_std"], yerr=entry["gap_std"], fmt=marker,
                    markersize=11 if marker == "*" else 7, capsize=3)
        ax.annotate(f"{entry['method']} ({entry['target']})", (entry["seconds"], entry["gap"]), fontsize=7,
                    textcoords="offset points", xytext=(5, 4))
    ax.set_xscale("log")
    ax.set_xlabel("unlearning time (s, log scale)")
    ax.set_ylabel("Avg. Gap to retraining (points)")
    ax.set_title("Closeness to retraining vs cost (o single model, □ ensemble, * exact)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metrics(summary: list[dict[str, Any]], path: Path) -> Path:
    """One bar chart per metric, every method and target, error bars = std over seeds."""
    plt = pyplot()
    keys = [("UA", "UA"), ("MIA", "MIA-efficacy"), ("RA", "RA"), ("TA", "TA"), ("gap", "Avg. Gap"), ("JS", "JS to retrain")]
    labels = [f"{e['method']}\n{e['target']}" for e in summary]
    colors = ["tab:gray" if e["kind"] == "original" else "tab:green" if e["kind"] == "exact" else
              "tab:blue" if e["target"] == "single" else "tab:orange" for e in summary]
    fig, axes = plt.subplots(len(keys), 1, figsize=(max(8, 0.6 * len(summary)), 2.4 * len(keys)), sharex=True)
    for ax, (key, title) in zip(axes, keys):
        ax.bar(range(len(summary)), [e[key] for e in summary], yerr=[e[f"{key}_std"] for e in summary],
               color=colors, capsize=2)
        retrain = next((e[key] for e in summary if e["method"] == "retrain"), None)
        if retrain is not None:
            ax.axhline(retrain, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(summary)), labels, rotation=90, fontsize=7)
    axes[0].set_title("Metrics (dashed: retrain; grey original, green exact, blue single, orange ensemble)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sisa_cost(curve: list[dict[str, float]], retrain_seconds: float, path: Path) -> Path:
    """SISA deletion cost vs number of single-sample requests, against retraining for each."""
    plt = pyplot()
    n = [p["request"] for p in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(n, np.cumsum([p["samples_epochs"] for p in curve]), "o-", label="SISA (retrained slices)")
    left.plot(n, np.cumsum([p["retrain_samples_epochs"] for p in curve]), "s--", label="retrain from scratch")
    left.set_xlabel("requests served")
    left.set_ylabel("cumulative samples x epochs")
    left.legend()
    right.plot(n, [p["seconds"] for p in curve], "o-", label="SISA, measured")
    right.axhline(retrain_seconds, color="tab:orange", linestyle="--", label="retrain from scratch, measured")
    right.set_xlabel("request")
    right.set_ylabel("seconds per request")
    right.set_yscale("log")
    right.set_ylim(top=max(retrain_seconds, *(p["seconds"] for p in curve)) * 3)
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle("Cost of serving single-sample deletion requests")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
