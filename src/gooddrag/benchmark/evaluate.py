"""``gooddrag bench eval`` and ``gooddrag bench compare``: score a results folder.

A result is any folder under RESULTS (searched recursively, "." folders
skipped) holding ``edited.png``. Its input is ``input.png`` beside it (the
input exactly as edited), its points and final handle positions come from
``new_points.json`` and its prompt from ``run.json``; with ``--dataset`` the
original image, points and prompt are read from ``DATASET/<same relative
path>`` instead. A result of another size than its input is resized to the
input's size (bilinear, as DragBench's script does) and flagged in the CSV.

Metrics (:mod:`gooddrag.benchmark.metrics`): ``dai`` at each gamma (lower is
better; our mean over pairs, or ``--dai-authors-variant``), ``md`` (DIFT
mean distance in pixels, lower is better), ``if`` (1 - LPIPS(alex), higher
is better), ``gscore`` (a vision-language judge's 1-10 rating, higher is
better; :mod:`gooddrag.benchmark.gscore`).

Several results folders (one method each, ``NAME=DIR`` to name one) are
scored each on its own and reported side by side, one ``method`` column in
``metrics.csv`` (default report folder ``eval/joint`` in the folder whose
resolved path sorts first, the same in whatever order they are listed, so the
GScore cache in it is found again); for ``gscore`` every method's result for a
sample is judged in the same request, and only the samples scored in every
folder are judged (the others are listed in the report as left out).

The report goes to ``RESULTS/eval/`` (``--eval-out``):
``metrics.csv`` (one row a sample), ``summary.json``, ``summary.md`` (mean
of each metric over the samples, and per category = the first path component
under RESULTS, or for a flat layout the sample name without a trailing
``_<number>``, e.g. Drag100's ``cat_2`` -> ``cat``), ``matches.jsonl`` (MD's
matched points) and, with matplotlib installed, ``categories.png`` and
``final_distances.png`` (histogram of the final handle-to-target distances
of every pair, from ``new_points.json``).

Importing this module is cheap (standard library only).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import GoodDragError
from . import gscore as G

logger = logging.getLogger(__name__)

METRICS = ("dai", "md", "if", "gscore")
LOWER_IS_BETTER = {"dai": True, "md": True, "if": False, "gscore": False, "final_distance": True, "edit_seconds": True}
SPREADS = ("gscore_sd",)  # neither better nor worse
JOINT_DIR = "joint"
EVAL_DIR = "eval"
DAI_VARIANTS = {
    False: "ours: mean over the pairs (divided by the number of pairs once)",
    True: "authors' script: divided by the number of pairs twice, each patch by the full (2 gamma + 1)^2",
}


@dataclass(frozen=True)
class ResultRef:
    rel: str
    path: Path


def find_results(results: str | Path) -> list[ResultRef]:
    """Every folder under ``results`` with an ``edited.png``, sorted by relative path."""
    root = Path(results)
    if not root.is_dir():
        raise GoodDragError(f"results {str(root)!r}: no such folder")
    found = []
    for p in root.rglob("edited.png"):
        rel = p.parent.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        found.append(ResultRef(rel.as_posix() if rel.parts else root.resolve().name, p.parent))
    return sorted(found, key=lambda r: r.rel)


def category_of(rel: str) -> str:
    """First path component; for a flat layout the name without a trailing ``_<number>``."""
    parts = rel.split("/")
    if len(parts) > 1:
        return parts[0]
    return re.sub(r"_\d+$", "", parts[0]) or parts[0]


def metric_columns(metrics, gammas) -> list[str]:
    cols = []
    for m in metrics:
        cols += [f"dai_g{g}" for g in gammas] if m == "dai" else ["gscore", "gscore_sd"] if m == "gscore" else [m]
    return cols


def lower_is_better(column: str) -> bool:
    return LOWER_IS_BETTER.get(column.split("_g")[0] if column.startswith("dai_g") else column, True)


def direction(column: str) -> str:
    if column in SPREADS:
        return "spread: SD of all ratings"
    return "lower is better" if lower_is_better(column) else "higher is better"


@dataclass
class EvalInputs:
    original: object  # PIL image
    result: object  # PIL image, at the original's size
    handles: object  # (N, 2) (x, y); None: no points (GScore alone, no new_points.json)
    targets: object
    prompt: str
    final_handles: object | None
    resized: bool
    seconds: float | None
    original_file: Path | None = None


def load_inputs(ref: ResultRef, dataset: Path | None, need_points: bool = True) -> EvalInputs:
    """need_points False (GScore alone): a result without ``new_points.json`` is read too (handles and
    targets None)."""
    import numpy as np
    from PIL import Image

    from ..samples import load_image, load_sample

    result = load_image(ref.path / "edited.png")
    points = _read_json(ref.path / "new_points.json")
    record = _read_json(ref.path / "run.json")
    if dataset is not None:
        sample = load_sample(dataset / ref.rel)
        original, handles, targets, prompt = sample.image, sample.handle_points, sample.target_points, sample.prompt
        original_file = sample.files.get("image")
    else:
        original, original_file = load_image(ref.path / "input.png"), ref.path / "input.png"
        if (not points or "handle_points" not in points) and need_points:
            raise GoodDragError(f"{str(ref.path / 'new_points.json')!r} is missing; give --dataset for the points")
        handles, targets = ((points["handle_points"], points["target_points"]) if points and "handle_points" in points
                            else (None, None))
        prompt = ((record or {}).get("inputs") or {}).get("prompt") or ""
    resized = result.size != original.size
    if resized:
        result = result.resize(original.size, Image.BILINEAR)
    final = points.get("new_handle_points") if points else None
    seconds = ((record or {}).get("timings_s") or {}).get("total")
    if handles is None:
        return EvalInputs(original, result, None, None, prompt, None, resized, seconds, original_file)
    return EvalInputs(original, result, np.asarray(handles, float), np.asarray(targets, float), prompt,
                      np.asarray(final, float) if final is not None else None, resized, seconds, original_file)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GoodDragError(f"{str(path)!r} is not valid JSON") from None


def parse_metrics(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise GoodDragError(f"unknown metric(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def parse_gammas(text: str) -> list[int]:
    try:
        gammas = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise GoodDragError(f"--gamma {text!r} is not a comma-separated list of integers") from None
    if not gammas or any(g < 0 for g in gammas):
        raise GoodDragError(f"--gamma {text!r}: give radii >= 0, e.g. 1,5,10,20")
    return gammas


def evaluate(results: str | Path, metrics=("dai",), *, dataset: str | Path | None = None, gammas=(1, 5, 10, 20),
             authors_variant: bool = False, featurizer=None, dift_prompt: str = "sample", lpips_model=None,
             progress: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """Score every result folder. Returns (rows, matches, errors).

    featurizer: a callable ``(PIL image, prompt) -> (1, C, h, w)`` features
    (:class:`~gooddrag.benchmark.dift.DiftFeaturizer`), needed for ``md``;
    lpips_model: from :func:`~gooddrag.benchmark.metrics.load_lpips_alex`, needed for ``if``.
    """
    from tqdm.auto import tqdm

    from . import metrics as M

    results = Path(results)
    dataset = Path(dataset) if dataset is not None else None
    refs = find_results(results)
    if "md" in metrics and featurizer is None:
        raise GoodDragError("MD needs a DIFT featurizer")
    if "if" in metrics and lpips_model is None:
        raise GoodDragError("IF needs an LPIPS model")
    rows, matches, errors = [], [], []
    for ref in tqdm(refs, desc="eval", unit="sample", disable=not progress, dynamic_ncols=True):
        try:
            inp = load_inputs(ref, dataset, need_points=any(m != "gscore" for m in metrics))
            row = {"sample": ref.rel, "category": category_of(ref.rel),
                   "pairs": len(inp.handles) if inp.handles is not None else None,
                   "original_file": inp.original_file, "edited_file": ref.path / "edited.png"}
            if "dai" in metrics:
                for g in gammas:
                    row[f"dai_g{g}"] = M.dai(inp.original, inp.result, inp.handles, inp.targets, g,
                                             authors_variant=authors_variant)
            if "md" in metrics:
                prompt = inp.prompt if dift_prompt == "sample" else ""
                f_src, f_dst = featurizer(inp.original, prompt), featurizer(inp.result, prompt)
                H, W = inp.original.height, inp.original.width
                matched = M.match_points(f_src, f_dst, inp.handles, size=(H, W))
                dists = M.pair_distances(matched, inp.targets)
                row["md"] = float(dists.mean())
                matches.append({"sample": ref.rel, "matched_points": matched.tolist(),
                                "target_points": inp.targets.tolist(), "distances": dists.round(4).tolist()})
            if "if" in metrics:
                row["if"] = M.image_fidelity(inp.original, inp.result, lpips_model)
            if inp.final_handles is not None and inp.targets is not None and len(inp.final_handles) == len(inp.targets):
                d = M.pair_distances(inp.final_handles, inp.targets)
                row["final_distance"] = float(d.mean())
                row["final_distances"] = d.tolist()
            row["edit_seconds"] = inp.seconds
            row["resized"] = inp.resized
            rows.append(row)
        except GoodDragError as err:
            errors.append({"sample": ref.rel, "error": str(err)})
    return rows, matches, errors


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and v != "" and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else None


def summarize(rows: list[dict], columns: list[str], matches: list[dict] | None = None) -> dict:
    """Mean of each column over the samples, overall and per category."""
    extra = [c for c in ("final_distance", "edit_seconds") if any(r.get(c) is not None for r in rows)]
    cols = columns + extra
    out = {"samples": len(rows), "mean": {c: _mean(r.get(c) for r in rows) for c in cols}, "categories": {}}
    for cat in sorted({r["category"] for r in rows}):
        sub = [r for r in rows if r["category"] == cat]
        out["categories"][cat] = {"samples": len(sub)} | {c: _mean(r.get(c) for r in sub) for c in cols}
    if "gscore_sd" in cols:  # the spread of every rating (samples and repetitions), not a mean of SDs
        out["mean"]["gscore_sd"] = G.pooled_sd([v for r in rows for v in r.get("gscore_ratings") or []])
        for cat, vals in out["categories"].items():
            vals["gscore_sd"] = G.pooled_sd([v for r in rows if r["category"] == cat
                                             for v in r.get("gscore_ratings") or []])
    if matches:
        pooled = [d for m in matches for d in m["distances"]]
        out["md_pooled_over_pairs"] = sum(pooled) / len(pooled)
    return out


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_markdown(summary: dict, info: dict) -> str:
    cols = list(summary["mean"])
    lines = [f"# Evaluation of {info['results']}", ""]
    lines += [f"- method: {info.get('method') or '?'}; model: {info.get('model') or '?'}",
              f"- samples scored: {summary['samples']}; failed in the run: {info['failed']}; "
              f"refused (inputs that cannot work): {info.get('refused', 0)}; "
              f"could not be scored: {len(info['errors'])}"
              + (f"; not run: {info['missing']}" if info.get("missing") is not None else "")]
    lines += _settings_lines(summary, info)
    lines += ["", "## Mean over the samples", "", "| metric | mean | |", "|---|---|---|"]
    lines += [f"| {c} | {_fmt(summary['mean'][c])} | {direction(c)} |" for c in cols]
    lines += ["", "## Per category", "", "| category | samples | " + " | ".join(cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for cat, vals in summary["categories"].items():
        lines.append(f"| {cat} | {vals['samples']} | " + " | ".join(_fmt(vals[c]) for c in cols) + " |")
    if info["errors"]:
        lines += ["", "## Could not be scored", ""] + [f"- {e['sample']}: {e['error']}" for e in info["errors"]]
    failed = [f for f in info["failures"] if not f.get("refused")]
    refused = [f for f in info["failures"] if f.get("refused")]
    if failed:
        lines += ["", "## Failed in the run (failures.jsonl)", ""]
        lines += [f"- {f['sample']}: {f['error_type']}: {f['error']}" for f in failed]
    if refused:
        lines += ["", "## Refused in the run: inputs that cannot work (failures.jsonl)", ""]
        lines += [f"- {f['sample']}: {f['error']}" for f in refused]
    return "\n".join(lines) + "\n"


def _settings_lines(summary: dict, info: dict) -> list[str]:
    """One line per metric family: the settings a reader needs to compare numbers."""
    lines = []
    if "dai" in info["metrics"]:
        lines.append(f"- DAI variant: {DAI_VARIANTS[info['dai_authors_variant']]}; gamma "
                     f"{', '.join(map(str, info.get('gammas', [])))}; images in [0, 1]; patch offsets [-gamma, gamma]^2, "
                     "only where both patches are inside the image")
    if "md" in info["metrics"]:
        d = info["dift"]
        lines.append(f"- MD: DIFT {d['model']}, t={d['t']}, up_ft_index {d['up_ft_index']}, ensemble {d['ensemble']}, "
                     f"seed {d['seed']}, prompt: {info['dift_prompt']}"
                     + (f"; pooled over all pairs (as DragBench's script): {_fmt(summary.get('md_pooled_over_pairs'))}"
                        if "md_pooled_over_pairs" in summary or "runs" not in info else ""))
    if "if" in info["metrics"]:
        lines.append("- IF: 1 - LPIPS v0.1 (AlexNet) at 224x224")
    if "gscore" in info["metrics"]:
        j = info["gscore"]
        st = j["settings"]
        sampling = ", ".join(f"{k} {v}" for k, v in st["sampling"].items())
        lines.append(f"- GScore: judge {j['model']} at {j['url']}; prompt sha256 {j['prompt_sha256'][:12]}; "
                     f"{sampling}; "
                     f"{st['repeats']} repetition(s) a sample, order shuffled with seed {st['seed']}; "
                     f"{j['requests']} request(s), {j['from_cache']} from the cache; missing ratings: "
                     f"{j['missing_malformed']} unparsable, {j['missing_unavailable']} unanswered; gscore = mean over "
                     "samples of each sample's mean rating (1-10), gscore_sd = SD of all ratings")
    return lines


def write_plots(out: Path, rows: list[dict], summary: dict) -> list[str]:
    """categories.png and final_distances.png; [] (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    cols = [c for c in summary["mean"] if c != "edit_seconds" and c not in SPREADS and summary["mean"][c] is not None]
    cats = list(summary["categories"])
    if cols and cats:
        n = len(cols)
        ncol = min(3, n)
        nrow = math.ceil(n / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
        for ax, c in zip(axes.flat, cols):
            vals = [summary["categories"][k][c] or 0.0 for k in cats]
            ax.bar(range(len(cats)), vals, color="#4878a8")
            ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{c} ({direction(c)})", fontsize=9)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "categories.png", dpi=100)
        plt.close(fig)
        written.append("categories.png")
    dists = [d for r in rows for d in r.get("final_distances", [])]
    if dists:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(dists, bins=min(30, max(5, len(dists))), color="#4878a8")
        ax.set_xlabel("final handle-to-target distance (px)")
        ax.set_ylabel("pairs")
        fig.tight_layout()
        fig.savefig(out / "final_distances.png", dpi=100)
        plt.close(fig)
        written.append("final_distances.png")
    return written


def write_report(out: Path, rows, matches, summary, info, judged: list[dict] | None = None) -> list[str]:
    """One results folder's report; ``judged``: GScore's records, one per request (gscore.jsonl)."""
    files = _write_tables(out, rows, matches, {"info": info, "summary": summary}, summary_markdown(summary, info),
                          info, judged, joint=False)
    return files + write_plots(out, rows, summary)


def _write_tables(out: Path, rows, matches, data: dict, markdown: str, info: dict, judged, joint: bool) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    extra = ["gscore_n", "gscore_missing"] if "gscore" in info["metrics"] else []
    cols = [*(["method"] if joint else []), "sample", "category", "pairs", *info["columns"], *extra,
            "final_distance", "edit_seconds", "resized"]
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    (out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
    (out / "summary.md").write_text(markdown)
    with open(out / "matches.jsonl", "w") as f:
        for m in matches:
            f.write(json.dumps(m) + "\n")
    files = ["metrics.csv", "summary.json", "summary.md", "matches.jsonl"]
    if judged is not None:
        with open(out / "gscore.jsonl", "w") as f:
            for r in judged:
                f.write(json.dumps(r) + "\n")
        files.append("gscore.jsonl")
    return files


# ------------------------------------------------------------ several methods
@dataclass(frozen=True)
class Run:
    """One results folder and the method name it is reported under."""

    name: str
    path: Path


def parse_runs(texts: list[str]) -> list[Run]:
    """``DIR`` or ``NAME=DIR`` each; unnamed: the manifest's method, else the folder's name
    (folder names for all unnamed ones when two would share a name)."""
    from .runner import MANIFEST

    given = []
    for t in texts:
        t = str(t)
        name, sep, folder = t.partition("=")
        if sep and name and folder and not Path(t).exists():
            given.append((name, Path(folder)))
        else:
            given.append((None, Path(t)))
    for _, folder in given:
        if not folder.is_dir():
            raise GoodDragError(f"results {str(folder)!r}: no such folder")

    def auto(folder: Path) -> str:
        return (_read_json(folder / MANIFEST) or {}).get("method") or folder.resolve().name

    names = [n or auto(f) for n, f in given]
    if len(set(names)) < len(names):
        names = [n or f.resolve().name for n, f in given]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GoodDragError(f"two results folders are both called {dup[0]!r}; name them NAME=DIR")
    if len(names) > len(G.LABELS):
        raise GoodDragError(f"at most {len(G.LABELS)} results folders, got {len(names)}")
    return [Run(n, f) for n, (_, f) in zip(names, given)]


def joint_markdown(summaries: dict[str, dict], info: dict) -> str:
    names = list(summaries)
    cols = list(dict.fromkeys(c for s in summaries.values() for c in s["mean"]))
    lines = [f"# Evaluation of {len(names)} methods", "",
             "| method | results | samples scored | failed in the run | refused (cannot work) | could not be scored |",
             "|---|---|---|---|---|---|"]
    for n in names:
        r = info["runs"][n]
        lines.append(f"| {n} | {r['results']} | {summaries[n]['samples']} | {r['failed']} | {r.get('refused', 0)} "
                     f"| {len(r['errors'])} |")
    lines += [""] + _settings_lines({}, info)
    if "md" in info["metrics"]:
        lines.append("- MD pooled over all pairs (as DragBench's script): "
                     + ", ".join(f"{n} {_fmt(summaries[n].get('md_pooled_over_pairs'))}" for n in names))
    lines += ["", "## Mean over the samples", "", "| metric | " + " | ".join(names) + " | |",
              "|---|" + "---|" * len(names) + "---|"]
    lines += [f"| {c} | " + " | ".join(_fmt(summaries[n]["mean"].get(c)) for n in names) + f" | {direction(c)} |"
              for c in cols]
    lines += ["", "## Per category", "", "| category | method | samples | " + " | ".join(cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    for cat in sorted({c for s in summaries.values() for c in s["categories"]}):
        for n in names:
            vals = summaries[n]["categories"].get(cat)
            if vals:
                cells = " | ".join(_fmt(vals.get(c)) for c in cols)
                lines.append(f"| {cat} | {n} | {vals['samples']} | {cells} |")
    left_out = (info.get("gscore") or {}).get("left_out")
    if left_out:
        lines += ["", f"## Left out of GScore ({len(left_out)})", "",
                  "Not scored in every results folder, so not judged: every method's gscore is over the same "
                  "samples.", ""]
        lines += [f"- {e['sample']}: not scored in {', '.join(e['missing_from'])}" for e in left_out[:50]]
        lines += [f"- and {len(left_out) - 50} more (summary.json: info.gscore.left_out)"] if len(left_out) > 50 else []
    errors = [f"- {n}: {e['sample']}: {e['error']}" for n in names for e in info["runs"][n]["errors"]]
    if errors:
        lines += ["", "## Could not be scored", ""] + errors
    failures = [f"- {n}: {f['sample']}: " + ("refused: " if f.get("refused") else f"{f['error_type']}: ") + f["error"]
                for n in names for f in info["runs"][n]["failures"]]
    if failures:
        lines += ["", "## Failed in the run (failures.jsonl)", ""] + failures
    return "\n".join(lines) + "\n"


def write_joint_plot(out: Path, summaries: dict[str, dict]) -> list[str]:
    """methods.png: per metric, bars by method over every category and all samples; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    names = list(summaries)
    cols = [c for c in dict.fromkeys(c for s in summaries.values() for c in s["mean"])
            if c != "edit_seconds" and c not in SPREADS
            and any(s["mean"].get(c) is not None for s in summaries.values())]
    if not cols:
        return []
    cats = ["all", *sorted({c for s in summaries.values() for c in s["categories"]})]
    ncol = min(2, len(cols))
    nrow = math.ceil(len(cols) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 3.4 * nrow), squeeze=False)
    width = 0.8 / len(names)
    for ax, c in zip(axes.flat, cols):
        for i, n in enumerate(names):
            s = summaries[n]
            vals = [(s["mean"] if k == "all" else s["categories"].get(k, {})).get(c) for k in cats]
            err = None
            if c == "gscore":
                err = [(s["mean"] if k == "all" else s["categories"].get(k, {})).get("gscore_sd") or 0.0 for k in cats]
            ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(cats))], [v or 0.0 for v in vals],
                   width, yerr=err, label=n, capsize=2)
        ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{c} ({direction(c)})", fontsize=9)
    axes.flat[0].legend(fontsize=8)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "methods.png", dpi=100)
    plt.close(fig)
    return ["methods.png"]


# --------------------------------------------------------------------- the CLI
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``gooddrag bench eval``."""
    p.add_argument("results", nargs="+",
                   help="results folder of `gooddrag bench run` (or any folder of result folders); several: one "
                        "method each, reported side by side and judged together for gscore (NAME=DIR names one)")
    p.add_argument("--metrics", default="dai,md,if",
                   help="comma-separated: dai, md, if, gscore (default: %(default)s)")
    p.add_argument("--dataset", default=None,
                   help="read original images, points and prompts from DATASET/<sample path> "
                        "(default: input.png, new_points.json and run.json of each result)")
    p.add_argument("--eval-out", default=None,
                   help="report folder (default: RESULTS/eval; with several: eval/joint in the one whose path "
                        "sorts first, whatever their order here)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    g = p.add_argument_group("DAI")
    g.add_argument("--gamma", default="1,5,10,20", help="patch radii in pixels (default: %(default)s)")
    g.add_argument("--dai-authors-variant", action="store_true",
                   help="the GoodDrag authors' script: divide by the number of pairs twice (default: once)")
    g = p.add_argument_group("MD (DIFT features)")
    from .metrics import DEFAULT_DIFT_MODEL, DIFT_ENSEMBLE, DIFT_T, DIFT_UP_FT_INDEX

    g.add_argument("--dift-model", default=DEFAULT_DIFT_MODEL,
                   help="hub id, diffusers folder or single file for DIFT (default: %(default)s)")
    g.add_argument("--dift-model-config", default=None, help="configs folder for a single-file --dift-model (default: inferred)")
    g.add_argument("--dift-t", type=int, default=DIFT_T, help="noise timestep (default: %(default)s)")
    g.add_argument("--dift-up-ft-index", type=int, default=DIFT_UP_FT_INDEX,
                   help="features = output of up_blocks[INDEX] (default: %(default)s)")
    g.add_argument("--dift-ensemble", type=int, default=DIFT_ENSEMBLE, help="noise draws averaged (default: %(default)s)")
    g.add_argument("--dift-seed", type=int, default=0, help="seed of the noise draws (default: %(default)s)")
    g.add_argument("--dift-prompt", default="sample", choices=["sample", "empty"],
                   help="prompt for DIFT: the sample's or empty (default: %(default)s)")
    g = p.add_argument_group("IF (LPIPS alex)")
    g.add_argument("--alexnet-weights", default=None,
                   help="torchvision's alexnet-owt-7be5be79.pth (default: torch hub's cache, fetched if missing)")
    g.add_argument("--lpips-weights", default=None,
                   help="LPIPS v0.1 alex.pth linear heads (default: the file the lpips package ships)")
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="DIFT model weights (default: %(default)s)")
    G.add_judge_arguments(p)


def cmd_eval(args, say) -> int:
    from . import metrics as M
    from .runner import MANIFEST, read_failures

    runs = parse_runs(args.results)
    metrics = parse_metrics(args.metrics)
    gammas = parse_gammas(args.gamma)
    judge = _judge_setup(args) if "gscore" in metrics else None  # cheap checks before loading any model
    found = [{r.rel for r in find_results(run.path)} for run in runs]
    for run, rels in zip(runs, found):
        if not rels:
            raise GoodDragError(f"no result folders (with edited.png) under {str(run.path)!r}")
    joint = len(runs) > 1
    if judge is not None and not set.intersection(*found):
        raise GoodDragError("no sample is in every results folder, so GScore has nothing to judge side by side; "
                            "are these results of the same data set?")
    featurizer = lpips_model = None
    info: dict = {"results": str(runs[0].path.resolve()) if not joint else [str(r.path.resolve()) for r in runs],
                  "metrics": metrics, "gammas": gammas,
                  "dai_authors_variant": bool(args.dai_authors_variant), "dift_prompt": args.dift_prompt,
                  "dataset": str(Path(args.dataset).resolve()) if args.dataset else None,
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if "if" in metrics:  # the cheapest to fail: check it before loading DIFT
        from ..loading import resolve_device

        lpips_model = M.load_lpips_alex(args.alexnet_weights, args.lpips_weights, resolve_device(args.device))
    if "md" in metrics:
        from .dift import DiftFeaturizer

        featurizer = DiftFeaturizer(args.dift_model, model_config=args.dift_model_config, device=args.device,
                                    dtype=args.dtype, t=args.dift_t, up_ft_index=args.dift_up_ft_index,
                                    ensemble=args.dift_ensemble, seed=args.dift_seed)
        info["dift"] = featurizer.settings()
    scored: dict[str, tuple[list[dict], list[dict], dict]] = {}
    for run in runs:
        rows, matches, errors = evaluate(
            run.path, metrics, dataset=args.dataset, gammas=gammas, authors_variant=args.dai_authors_variant,
            featurizer=featurizer, dift_prompt=args.dift_prompt, lpips_model=lpips_model,
            progress=not args.no_progress,
        )
        manifest = _read_json(run.path / MANIFEST) or {}
        failures = read_failures(run.path)
        run_info = {"results": str(run.path.resolve()), "errors": errors, "failures": failures,
                    "failed": sum(1 for f in failures if not f.get("refused")),
                    "refused": sum(1 for f in failures if f.get("refused")), "method": manifest.get("method"),
                    "model": (manifest.get("model") or {}).get("model")}
        if args.dataset:
            from .runner import find_samples

            done = {r["sample"] for r in rows} | {e["sample"] for e in errors} | {f["sample"] for f in failures}
            run_info["missing"] = sum(1 for s in find_samples(args.dataset) if s.rel not in done)
        scored[run.name] = (rows, matches, run_info)
    out = report_folder(runs, args.eval_out)
    judged = None
    if judge is not None:
        judged, info["gscore"] = _judge_runs(judge, {n: v[0] for n, v in scored.items()}, out,
                                             progress=not args.no_progress)
    info["columns"] = metric_columns(metrics, gammas)
    if not joint:
        rows, matches, run_info = scored[runs[0].name]
        info |= {k: v for k, v in run_info.items() if k != "results"}
        summary = summarize(rows, info["columns"], matches)
        files = write_report(out, rows, matches, summary, info, judged)
        say(summary_markdown(summary, info))
    else:
        info["runs"] = {n: v[2] for n, v in scored.items()}
        summaries = {n: summarize(v[0], info["columns"], v[1]) for n, v in scored.items()}
        rows = [{"method": n} | r for n, v in scored.items() for r in v[0]]
        matches = [{"method": n} | m for n, v in scored.items() for m in v[1]]
        markdown = joint_markdown(summaries, info)
        files = _write_tables(out, rows, matches, {"info": info, "summary": summaries}, markdown, info, judged,
                              joint=True)
        files += write_joint_plot(out, summaries)
        say(markdown)
    say(f"wrote {', '.join(str(out / f) for f in files)}")
    unanswered = 0
    if judge is not None:
        j = info["gscore"]
        unanswered = j["missing_unavailable"]
        reason = next((r["error"] for r in judged or [] if r["status"] == "unavailable" and r.get("error")), None)
        say(f"GScore: {j['requests']} request(s): {j['from_cache']} from the cache, {j['asked']} asked "
            f"({j['http_requests']} HTTP request(s)); missing: {j['missing_malformed']} unparsable after "
            f"{judge.settings.parse_retries} retries, {unanswered} unanswered"
            + (f"; {len(j['left_out'])} sample(s) left out, not in every results folder" if j["left_out"] else "")
            + (f" (first: {reason.splitlines()[0][:200]}); run the same command again to ask for the unanswered "
               "ones" if unanswered else ""))
    return 1 if unanswered or any(v[2]["errors"] for v in scored.values()) else 0


@dataclass
class _Judge:
    settings: G.JudgeSettings
    template: str
    prompt_file: str | None
    key: str | None
    key_env: str | None


def _judge_setup(args) -> _Judge:
    settings = G.settings_from_args(args)
    template = G.load_prompt(args.judge_prompt)
    G.import_httpx()
    key, key_env = G.api_key_from_env(args.judge_key_env)
    return _Judge(settings, template, args.judge_prompt, key, key_env)


def report_folder(runs: list[Run], eval_out: str | None) -> Path:
    """``--eval-out``; else ``RESULTS/eval``, or with several folders ``eval/joint`` in the one whose resolved
    path sorts first: the same folder (and GScore cache) in whatever order the folders are given."""
    if eval_out:
        return Path(eval_out)
    if len(runs) == 1:
        return runs[0].path / EVAL_DIR
    return min(runs, key=lambda r: str(r.path.resolve())).path / EVAL_DIR / JOINT_DIR


def _judge_runs(judge: _Judge, rows_by_run: dict[str, list[dict]], out: Path, progress: bool):
    """Judge every sample scored in every run, all runs' results in one request; adds GScore's columns to
    the rows (empty for a sample left out). Returns (one record per request, summary.json's ``gscore``)."""
    by_sample: dict[str, dict[str, dict]] = {}
    for name in sorted(rows_by_run):
        for r in rows_by_run[name]:
            by_sample.setdefault(r["sample"], {})[name] = r
    left_out = [{"sample": s, "missing_from": sorted(set(rows_by_run) - set(rows))}
                for s, rows in sorted(by_sample.items()) if len(rows) < len(rows_by_run)]
    for entry in left_out:
        del by_sample[entry["sample"]]
    if left_out:
        logger.warning("GScore leaves out %d sample(s) not scored in every results folder (listed in the report)",
                       len(left_out))
    refs: dict[Path, G.ImageRef] = {}

    def ref(path) -> G.ImageRef:
        path = Path(path)
        if path not in refs:
            refs[path] = G.image_ref(path)
        return refs[path]

    items, differ = [], 0
    for sample, rows in sorted(by_sample.items()):
        originals = [ref(r["original_file"]) for r in rows.values()]
        differ += len({o.sha256 for o in originals}) > 1
        items.append(G.JudgeItem(sample, originals[0], {n: ref(r["edited_file"]) for n, r in rows.items()}))
    if differ:
        logger.warning("%d sample(s) have different input images in different results folders; the judge is "
                       "shown the one of the first method by name (give --dataset to use the data set's)", differ)
    cache = out / G.CACHE_DIR
    outcome = G.judge(items, judge.settings, judge.template, cache, judge.key, progress=progress)
    ratings = G.ratings_by_method(outcome)
    for name, rows in rows_by_run.items():
        for r in rows:
            columns = G.sample_columns(ratings.get((name, r["sample"]), []), judge.settings.repeats)
            r |= columns if r["sample"] in by_sample else dict.fromkeys(columns)
    info = G.info(judge.settings, judge.template, judge.prompt_file, judge.key_env, cache, outcome)
    return outcome.records, info | {"left_out": left_out}


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``gooddrag bench compare``."""
    p.add_argument("results_a", help="first results folder (evaluated with `gooddrag bench eval`)")
    p.add_argument("results_b", help="second results folder")
    p.add_argument("--eval-dir", default=EVAL_DIR, help="report folder inside each (default: %(default)s)")


def _load_eval(results: Path, eval_dir: str) -> tuple[dict, list[dict]]:
    folder = results / eval_dir
    data = _read_json(folder / "summary.json")
    if data is None or not (folder / "metrics.csv").is_file():
        raise GoodDragError(f"{str(folder)!r} has no summary.json / metrics.csv; run `gooddrag bench eval {results}` first")
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return data, rows


def compare_markdown(a: Path, b: Path, eval_dir: str = EVAL_DIR) -> str:
    (da, ra), (db, rb) = _load_eval(a, eval_dir), _load_eval(b, eval_dir)
    ia, ib = da["info"], db["info"]
    common = sorted({r["sample"] for r in ra} & {r["sample"] for r in rb})
    cols = [c for c in ia["columns"] + ["final_distance", "edit_seconds"] if c in (ra[0] if ra else {})
            and c in (rb[0] if rb else {})]
    byname_a, byname_b = {r["sample"]: r for r in ra}, {r["sample"]: r for r in rb}
    lines = ["| | A | B |", "|---|---|---|",
             f"| results | {a} | {b} |",
             f"| method | {ia.get('method') or '?'} | {ib.get('method') or '?'} |",
             f"| model | {ia.get('model') or '?'} | {ib.get('model') or '?'} |",
             f"| samples scored | {len(ra)} | {len(rb)} |",
             f"| failed in the run | {ia.get('failed', 0)} | {ib.get('failed', 0)} |"]
    if "dai" in ia["metrics"] or "dai" in ib["metrics"]:
        lines.append(f"| DAI variant | {DAI_VARIANTS[ia['dai_authors_variant']]} | {DAI_VARIANTS[ib['dai_authors_variant']]} |")
    notes = []
    if ia.get("dai_authors_variant") != ib.get("dai_authors_variant"):
        notes.append("warning: the two reports use different DAI variants; their DAI columns are not comparable")
    if ia.get("dift") and ib.get("dift") and ia["dift"] != ib["dift"]:
        notes.append("warning: the two reports used different DIFT settings; MD is not comparable")
    lines += ["", f"Means over the {len(common)} sample(s) scored in both; B - A, and which is better:", "",
              "| metric | A | B | B - A | better |", "|---|---|---|---|---|"]

    def mean(rows_by, names, c):
        return _mean(rows_by[n].get(c) for n in names)

    for c in cols:
        va, vb = mean(byname_a, common, c), mean(byname_b, common, c)
        diff = vb - va if va is not None and vb is not None else None
        better = ("-" if diff is None or diff == 0 or c in SPREADS
                  else ("B" if (diff < 0) == lower_is_better(c) else "A"))
        lines.append(f"| {c} | {_fmt(va)} | {_fmt(vb)} | {_fmt(diff, 4) if diff is None else f'{diff:+.4f}'} | {better} |")
    cats = sorted({byname_a[n]["category"] for n in common})
    if len(cats) > 1 and cols:
        lines += ["", "Per category, A / B (B - A):", "", "| category | n | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for cat in cats:
            names = [n for n in common if byname_a[n]["category"] == cat]
            cells = []
            for c in cols:
                va, vb = mean(byname_a, names, c), mean(byname_b, names, c)
                cells.append(f"{_fmt(va)} / {_fmt(vb)} ({'-' if va is None or vb is None else f'{vb - va:+.4f}'})")
            lines.append(f"| {cat} | {len(names)} | " + " | ".join(cells) + " |")
    only = len(set(byname_a) ^ set(byname_b))
    if only:
        notes.append(f"{only} sample(s) scored in only one of the two are left out")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def cmd_compare(args, say) -> int:
    say(compare_markdown(Path(args.results_a), Path(args.results_b), args.eval_dir))
    return 0
