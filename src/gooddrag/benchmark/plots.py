"""The plots of ``gooddrag bench eval``, with matplotlib (an optional extra; without it, no plots and
one log line).

- ``categories.png``: per metric, the mean of each category (one results folder);
- ``final_distances.png``: histogram of the final handle-to-target distances of every pair, in pixels;
- ``methods.png``: per metric, bars by method over all samples and each category (several folders).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .scoring import SPREADS, direction

logger = logging.getLogger(__name__)

BAR_COLOUR = "#4878a8"


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only), or None when matplotlib is not installed."""
    try:  # optional extra: matplotlib
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return None
    return plt


def _plotted_columns(means: list[dict]) -> list[str]:
    """The columns worth a bar chart: not the edit time, not a spread, and a value somewhere."""
    cols = dict.fromkeys(c for m in means for c in m)
    return [c for c in cols if c != "edit_seconds" and c not in SPREADS and any(m.get(c) is not None for m in means)]


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(out: Path, rows: list[dict], summary: dict) -> list[str]:
    """categories.png and final_distances.png; [] (and a log line) without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return []
    written = []
    cols = _plotted_columns([summary["mean"]])
    cats = list(summary["categories"])
    if cols and cats:
        _categories_plot(plt, out / "categories.png", summary, cols, cats)
        written.append("categories.png")
    dists = [d for r in rows for d in r.get("final_distances", [])]  # pixels, every pair of every sample
    if dists:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(dists, bins=min(30, max(5, len(dists))), color=BAR_COLOUR)
        ax.set_xlabel("final handle-to-target distance (px)")
        ax.set_ylabel("pairs")
        _save(plt, fig, out / "final_distances.png")
        written.append("final_distances.png")
    return written


def _categories_plot(plt, path: Path, summary: dict, cols: list[str], cats: list[str]) -> None:
    """One panel per column (three a row): the category means as bars."""
    ncol = min(3, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        vals = [summary["categories"][k][c] or 0.0 for k in cats]
        ax.bar(range(len(cats)), vals, color=BAR_COLOUR)
        ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{c} ({direction(c)})", fontsize=9)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    _save(plt, fig, path)


def write_joint_plot(out: Path, summaries: dict[str, dict]) -> list[str]:
    """methods.png: per metric, bars by method over every category and all samples; [] without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return []
    cols = _plotted_columns([s["mean"] for s in summaries.values()])
    if not cols:
        return []
    cats = ["all", *sorted({c for s in summaries.values() for c in s["categories"]})]
    ncol = min(2, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 3.4 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        _method_bars(ax, summaries, c, cats)
        ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{c} ({direction(c)})", fontsize=9)
    axes.flat[0].legend(fontsize=8)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    _save(plt, fig, out / "methods.png")
    return ["methods.png"]


def _method_bars(ax, summaries: dict[str, dict], column: str, cats: list[str]) -> None:
    """Side by side, one bar a method at each category ("all": the mean over all samples); gscore with its SD."""
    names = list(summaries)
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        s = summaries[n]
        means = [s["mean"] if k == "all" else s["categories"].get(k, {}) for k in cats]
        err = [m.get("gscore_sd") or 0.0 for m in means] if column == "gscore" else None
        ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(cats))],
               [m.get(column) or 0.0 for m in means], width, yerr=err, label=n, capsize=2)
