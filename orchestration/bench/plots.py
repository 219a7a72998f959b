"""The bench's plots (matplotlib, headless PNG):

- `klom_vs_time.png`: KLoM P95 on the forget set against unlearning time, one panel per target,
  floor and ceiling drawn as bands;
- `metrics_<target>.png`: every score of every method as a dot with its 95% interval, floor and
  ceiling as lines (dots rather than bars: accuracy axes start near the data, not at 0);
- `margins_<target>.png`: the margins of the three forget samples the originals memorised most
  (largest mean margin under the originals minus under the oracles), under the oracles, the
  originals and each method;
- `sisa_cost.png`: SISA serving single-sample requests against retraining from scratch.

Each method keeps one colour and marker in every plot; exact methods are large stars.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from orchestration.bench.study import Row

FLOOR_COLOR, CEILING_COLOR = "tab:green", "tab:red"
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h", "p", "d", "8", "H")
METHOD_COLORS = (0, 2, 8, 10, 12, 14, 16, 18, 1, 3, 9, 11, 13, 15, 17, 19)
"""tab20 entries for methods: every colour but the greens and reds of the floor and the ceiling."""
METRICS = [  # (summary key, panel title, axis bounds)
    ("klom_forget", "KLoM P95, forget (nats; lower = like retraining)", (0, None)),
    ("klom_retain", "KLoM P95, retain (nats)", (0, None)), ("klom_test", "KLoM P95, test (nats)", (0, None)),
    ("ulira", "U-LiRA attack accuracy (0.5 = indistinguishable)", (0, 1)),
    ("fq", "forget quality (1 = like retraining)", (0, 1)), ("ua", "UA: forget error (%)", (0, 100)),
    ("ra", "RA: retain accuracy (%)", (0, 100)), ("ta", "TA: test accuracy (%)", (0, 100)),
    ("mia", "MIA-efficacy (% of forget called unseen)", (0, 100)),
]
TITLES = {"single": "single model", "ensemble": "SISA ensemble"}


def pyplot():  # noqa: ANN201 - matplotlib.pyplot, imported on use and headless
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styles(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Method name -> matplotlib style, the same in every plot: distinct colour and marker pairs."""
    plt = pyplot()
    tab20 = plt.get_cmap("tab20").colors
    colors = [tab20[i] for i in METHOD_COLORS]
    names = sorted({r.method for r in rows if r.kind == "approximate"})
    out = {name: {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)], "markersize": 8}
           for i, name in enumerate(names)}
    for name in {r.method for r in rows if r.kind in ("exact", "floor")}:
        out[name] = {"color": "black" if name == "sisa" else FLOOR_COLOR, "marker": "*", "markersize": 17,
                     "markeredgecolor": "white", "zorder": 10}
    return out


def _reference(rows: list[Row], target: str, kind: str) -> dict[str, float] | None:
    row = next((r for r in rows if r.target == target and r.kind == kind and r.scores is not None), None)
    return row.scores.summary if row is not None else None


def _band(ax: Any, summary: dict[str, float] | None, key: str, color: str, label: str, vertical: bool = False) -> None:
    if summary is None or math.isnan(summary.get(key, math.nan)):
        return
    low, high = summary.get(f"{key}_lo", math.nan), summary.get(f"{key}_hi", math.nan)
    span, line = (ax.axvspan, ax.axvline) if vertical else (ax.axhspan, ax.axhline)
    if not (math.isnan(low) or math.isnan(high)):
        span(low, high, color=color, alpha=0.15, linewidth=0)
    line(summary[key], color=color, linestyle="--", linewidth=1.2, label=label)


def _limits(ax: Any, values: list[float], low_bound: float | None = None, high_bound: float | None = None,
            vertical: bool = False) -> None:
    """Fit the axis to the values (not to 0), padded, within the metric's own bounds."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return
    low, high = min(values), max(values)
    pad = 0.08 * (high - low) if high > low else max(0.05 * abs(high), 0.05)
    # Never far past the metric's own bounds, but far enough that a marker on a bound shows whole.
    low = max(low - pad, low_bound - pad / 2) if low_bound is not None else low - pad
    high = min(high + pad, high_bound + pad / 2) if high_bound is not None else high + pad
    (ax.set_xlim if vertical else ax.set_ylim)(low, high)


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis labels as plain numbers (0.2, 1, 5), minor ones too when the axis spans little."""
    from matplotlib.ticker import FuncFormatter, LogFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _outliers(values: list[float], factor: float = 20.0) -> set[float]:
    """Values so far from the rest (more than `factor` median absolute deviations from the median)
    that zooming out to them would flatten every difference among the others."""
    finite = np.array([v for v in values if not math.isnan(v)])
    if len(finite) < 3:
        return set()
    median = np.median(finite)
    spread = max(np.median(np.abs(finite - median)), 1e-9)
    return {float(v) for v in finite if abs(v - median) > factor * spread}


def _extent(summary: dict[str, float] | None, key: str) -> list[float]:
    return [summary.get(k, math.nan) for k in (key, f"{key}_lo", f"{key}_hi")] if summary else []


def plot_klom_vs_time(rows: list[Row], path: Path) -> Path:
    """KLoM (P95 and median, forget set) against median time; bands: floor and ceiling with their intervals."""
    plt = pyplot()
    targets = list(dict.fromkeys(r.target for r in rows))
    style = styles(rows)
    fig, axes = plt.subplots(2, len(targets), figsize=(6.2 * len(targets) + 2.6, 8.4), squeeze=False, layout="constrained")
    for col, target in enumerate(targets):
        floor, ceiling = _reference(rows, target, "floor"), _reference(rows, target, "ceiling")
        for ax, key, what in ((axes[0, col], "klom_forget", "P95"), (axes[1, col], "klom_forget_median", "median")):
            _band(ax, floor, key, FLOOR_COLOR, "floor: oracles vs oracles")
            _band(ax, ceiling, key, CEILING_COLOR, "ceiling: originals (no unlearning)")
            values = _extent(floor, key) + _extent(ceiling, key)
            for row in rows:
                if row.target != target or row.scores is None or row.kind == "ceiling":
                    continue
                s = row.scores.summary
                x, y = s["seconds"], s[key]
                xerr = [[x - s["seconds_q25"]], [s["seconds_q75"] - x]]  # quartiles: positive, so they stay on a log axis
                yerr = None if math.isnan(s.get(f"{key}_lo", math.nan)) else [[y - s[f"{key}_lo"]], [s[f"{key}_hi"] - y]]
                label = "retrain (the oracles' training)" if row.kind == "floor" else row.method
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, linestyle="none", capsize=3, elinewidth=1, label=label,
                            **style[row.method])
                values += _extent(s, key)
            _limits(ax, values, low_bound=0)
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
            ax.set_ylabel(f"KLoM {what}, forget set (nats)")
            ax.grid(alpha=0.3, which="both")
        axes[0, col].set_title(f"{TITLES[target]}: closeness to retraining vs cost\n(0 = like retraining; lower is better)",
                               fontsize=11)
        axes[1, col].set_xlabel("median time per run (s, log scale; bars: quartiles)")
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize=9, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(rows: list[Row], target: str, path: Path) -> Path:
    """One panel per score: each method as a dot with its 95% interval; floor and ceiling as lines."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    style = styles(rows)
    shown = [r for r in rows if r.target == target and r.scores is not None and r.kind in ("exact", "approximate")]
    floor, ceiling = _reference(rows, target, "floor"), _reference(rows, target, "ceiling")
    keys = [(k, t, b) for k, t, b in METRICS if not math.isnan((floor or {}).get(k, math.nan))]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(14, (0.3 * max(len(shown), 3) + 1.1) * 3 + 1),
                             squeeze=False, sharey=True, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.12, wspace=0.06)
    for ax, (key, title, bounds) in zip(axes.flat, keys):
        _band(ax, floor, key, FLOOR_COLOR, "floor: oracles vs oracles", vertical=True)
        _band(ax, ceiling, key, CEILING_COLOR, "ceiling: originals (no unlearning)", vertical=True)
        points = {y: r.scores.summary for y, r in enumerate(shown) if not math.isnan(r.scores.summary.get(key, math.nan))}
        far = _outliers([s[key] for s in points.values()] + _extent(floor, key) + _extent(ceiling, key))
        values = _extent(floor, key) + _extent(ceiling, key)
        for y, s in points.items():
            if s[key] in far:
                continue
            low, high = s.get(f"{key}_lo", math.nan), s.get(f"{key}_hi", math.nan)
            xerr = None if math.isnan(low) else [[s[key] - low], [high - s[key]]]
            ax.errorbar(s[key], y, xerr=xerr, linestyle="none", capsize=3, **style[shown[y].method])
            values += _extent(s, key)
        _limits(ax, values, *bounds, vertical=True)
        for y, s in points.items():  # far off the others: an arrow at the edge with the value, so the axis keeps its zoom
            if s[key] in far:
                left = s[key] < ax.get_xlim()[0]
                ax.annotate(f"{'<' if left else ''}{s[key]:.3g}{'' if left else '>'}", (0.01 if left else 0.99, y),
                            xycoords=("axes fraction", "data"), ha="left" if left else "right", va="center", fontsize=8,
                            color=style[shown[y].method]["color"], fontweight="bold")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    axes[0, 0].set_yticks(range(len(shown)), [r.method for r in shown])
    axes[0, 0].set_ylim(len(shown) - 0.4, -0.6)  # first method on top
    handles = {h.get_label(): h for h in axes[0, 0].get_legend_handles_labels()[0]}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=2, frameon=False, fontsize=9)
    fig.suptitle(f"{TITLES[target]}: every score with its 95% interval", fontsize=12)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_margins(rows: list[Row], target: str, forget_ids: np.ndarray, path: Path, samples: int = 3) -> Path:
    """Margin histograms of the forget samples the originals separate most from the oracles."""
    plt = pyplot()
    style = styles(rows)
    of = {r.kind: r for r in rows if r.target == target and r.population is not None}
    shown = [r for r in rows if r.target == target and r.population is not None and r.kind in ("exact", "approximate")]
    memorised = of["ceiling"].population.margins["forget"].mean(0) - of["floor"].population.margins["forget"].mean(0)
    chosen = np.argsort(-memorised, kind="stable")[:samples]
    fig, axes = plt.subplots(len(shown), len(chosen), figsize=(4 * len(chosen) + 1.5, 1.3 * len(shown) + 1.4),
                             squeeze=False, sharex="col", layout="constrained")
    for col, sample in enumerate(chosen):
        every = np.concatenate([r.population.margins["forget"][:, sample] for r in (of["floor"], of["ceiling"], *shown)])
        bins = np.linspace(every.min(), every.max() + 1e-9, 16)
        for line, row in enumerate(shown):
            ax = axes[line, col]
            ax.hist(of["floor"].population.margins["forget"][:, sample], bins, color="0.75", label="oracles")
            ax.hist(row.population.margins["forget"][:, sample], bins, histtype="step", color=style[row.method]["color"],
                    linewidth=2.2, label="method")
            # drawn last and dashed, so a method that changed nothing still shows both outlines
            ax.hist(of["ceiling"].population.margins["forget"][:, sample], bins, histtype="step", color=CEILING_COLOR,
                    linewidth=1.3, linestyle="--", label="originals")
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(row.method, rotation=0, ha="right", va="center", fontsize=9)
        axes[0, col].set_title(f"forget sample {forget_ids[sample]}", fontsize=10)
        axes[-1, col].set_xlabel("margin log p_y - log(1 - p_y)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, ["oracles (retrained)", "the row's method", "originals (no unlearning)"],
               loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(f"{TITLES[target]}: margins of the forget samples the originals memorised most, one count per model")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sisa_cost(curve: list[dict[str, float]], retrain_seconds: float, path: Path) -> Path:
    """SISA deletion cost vs number of single-sample requests, against retraining for each."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    n = [p["request"] for p in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    left.plot(n, np.cumsum([p["samples_epochs"] for p in curve]), "o-", label="SISA (retrained slices)")
    left.plot(n, np.cumsum([p["retrain_samples_epochs"] for p in curve]), "s--", label="retrain from scratch")
    left.set_xlabel("requests served")
    left.set_ylabel("cumulative samples x epochs")
    left.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    left.legend()
    right.plot(n, [p["seconds"] for p in curve], "o-", label="SISA, measured")
    right.axhline(retrain_seconds, color="tab:orange", linestyle="--", label="retrain the ensemble from scratch, median")
    right.set_xlabel("request")
    right.set_ylabel("seconds per request")
    right.set_ylim(0, max(retrain_seconds, *(p["seconds"] for p in curve)) * 1.15)
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.set_xticks(n)
    fig.suptitle("Cost of serving single-sample deletion requests (one copy of the first original ensemble)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
