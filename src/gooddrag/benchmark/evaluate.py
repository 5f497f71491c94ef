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
is better). The report goes to ``RESULTS/eval/`` (``--eval-out``):
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

logger = logging.getLogger(__name__)

METRICS = ("dai", "md", "if")
LOWER_IS_BETTER = {"dai": True, "md": True, "if": False, "final_distance": True, "edit_seconds": True}
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
        cols += [f"dai_g{g}" for g in gammas] if m == "dai" else [m]
    return cols


def lower_is_better(column: str) -> bool:
    return LOWER_IS_BETTER.get(column.split("_g")[0] if column.startswith("dai_g") else column, True)


@dataclass
class EvalInputs:
    original: object  # PIL image
    result: object  # PIL image, at the original's size
    handles: object  # (N, 2) (x, y)
    targets: object
    prompt: str
    final_handles: object | None
    resized: bool
    seconds: float | None


def load_inputs(ref: ResultRef, dataset: Path | None) -> EvalInputs:
    import numpy as np
    from PIL import Image

    from ..samples import load_image, load_sample

    result = load_image(ref.path / "edited.png")
    points = _read_json(ref.path / "new_points.json")
    record = _read_json(ref.path / "run.json")
    if dataset is not None:
        sample = load_sample(dataset / ref.rel)
        original, handles, targets, prompt = sample.image, sample.handle_points, sample.target_points, sample.prompt
    else:
        original = load_image(ref.path / "input.png")
        if not points or "handle_points" not in points:
            raise GoodDragError(f"{str(ref.path / 'new_points.json')!r} is missing; give --dataset for the points")
        handles, targets = np.asarray(points["handle_points"], float), np.asarray(points["target_points"], float)
        prompt = ((record or {}).get("inputs") or {}).get("prompt") or ""
    resized = result.size != original.size
    if resized:
        result = result.resize(original.size, Image.BILINEAR)
    final = points.get("new_handle_points") if points else None
    seconds = ((record or {}).get("timings_s") or {}).get("total")
    return EvalInputs(original, result, np.asarray(handles, float), np.asarray(targets, float), prompt,
                      np.asarray(final, float) if final is not None else None, resized, seconds)


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
            inp = load_inputs(ref, dataset)
            row = {"sample": ref.rel, "category": category_of(ref.rel), "pairs": len(inp.handles)}
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
            if inp.final_handles is not None and len(inp.final_handles) == len(inp.targets):
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
              f"could not be scored: {len(info['errors'])}"
              + (f"; not run: {info['missing']}" if info.get("missing") is not None else "")]
    if "dai" in info["metrics"]:
        lines.append(f"- DAI variant: {DAI_VARIANTS[info['dai_authors_variant']]}; gamma "
                     f"{', '.join(map(str, info.get('gammas', [])))}; images in [0, 1]; patch offsets [-gamma, gamma]^2, "
                     "only where both patches are inside the image")
    if "md" in info["metrics"]:
        d = info["dift"]
        lines.append(f"- MD: DIFT {d['model']}, t={d['t']}, up_ft_index {d['up_ft_index']}, ensemble {d['ensemble']}, "
                     f"seed {d['seed']}, prompt: {info['dift_prompt']}; pooled over all pairs (as DragBench's script): "
                     f"{_fmt(summary.get('md_pooled_over_pairs'))}")
    if "if" in info["metrics"]:
        lines.append("- IF: 1 - LPIPS v0.1 (AlexNet) at 224x224")
    arrows = {c: ("lower is better" if lower_is_better(c) else "higher is better") for c in cols}
    lines += ["", "## Mean over the samples", "", "| metric | mean | |", "|---|---|---|"]
    lines += [f"| {c} | {_fmt(summary['mean'][c])} | {arrows[c]} |" for c in cols]
    lines += ["", "## Per category", "", "| category | samples | " + " | ".join(cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for cat, vals in summary["categories"].items():
        lines.append(f"| {cat} | {vals['samples']} | " + " | ".join(_fmt(vals[c]) for c in cols) + " |")
    if info["errors"]:
        lines += ["", "## Could not be scored", ""] + [f"- {e['sample']}: {e['error']}" for e in info["errors"]]
    if info["failures"]:
        lines += ["", "## Failed in the run (failures.jsonl)", ""]
        lines += [f"- {f['sample']}: {f['error_type']}: {f['error']}" for f in info["failures"]]
    return "\n".join(lines) + "\n"


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
    cols = [c for c in summary["mean"] if c != "edit_seconds" and summary["mean"][c] is not None]
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
            ax.set_title(f"{c} ({'lower' if lower_is_better(c) else 'higher'} is better)", fontsize=9)
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


def write_report(out: Path, rows, matches, summary, info) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    cols = ["sample", "category", "pairs", *info["columns"], "final_distance", "edit_seconds", "resized"]
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in cols})
    (out / "summary.json").write_text(json.dumps({"info": info, "summary": summary}, indent=2, default=str))
    (out / "summary.md").write_text(summary_markdown(summary, info))
    with open(out / "matches.jsonl", "w") as f:
        for m in matches:
            f.write(json.dumps(m) + "\n")
    return ["metrics.csv", "summary.json", "summary.md", "matches.jsonl", *write_plots(out, rows, summary)]


# --------------------------------------------------------------------- the CLI
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``gooddrag bench eval``."""
    p.add_argument("results", help="results folder of `gooddrag bench run` (or any folder of result folders)")
    p.add_argument("--metrics", default="dai,md,if", help="comma-separated: dai, md, if (default: %(default)s)")
    p.add_argument("--dataset", default=None,
                   help="read original images, points and prompts from DATASET/<sample path> "
                        "(default: input.png, new_points.json and run.json of each result)")
    p.add_argument("--eval-out", default=None, help="report folder (default: RESULTS/eval)")
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


def cmd_eval(args, say) -> int:
    from . import metrics as M
    from .runner import MANIFEST, read_failures

    results = Path(args.results)
    metrics = parse_metrics(args.metrics)
    gammas = parse_gammas(args.gamma)
    refs = find_results(results)
    if not refs:
        raise GoodDragError(f"no result folders (with edited.png) under {str(results)!r}")
    featurizer = lpips_model = None
    info: dict = {"results": str(results.resolve()), "metrics": metrics, "gammas": gammas,
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
    rows, matches, errors = evaluate(
        results, metrics, dataset=args.dataset, gammas=gammas, authors_variant=args.dai_authors_variant,
        featurizer=featurizer, dift_prompt=args.dift_prompt, lpips_model=lpips_model, progress=not args.no_progress,
    )
    manifest = _read_json(results / MANIFEST) or {}
    failures = read_failures(results)
    info |= {"columns": metric_columns(metrics, gammas), "errors": errors, "failures": failures,
             "failed": len(failures), "method": manifest.get("method"),
             "model": (manifest.get("model") or {}).get("model")}
    if args.dataset:
        from .runner import find_samples

        scored = {r["sample"] for r in rows} | {e["sample"] for e in errors} | {f["sample"] for f in failures}
        info["missing"] = sum(1 for s in find_samples(args.dataset) if s.rel not in scored)
    summary = summarize(rows, info["columns"], matches)
    out = Path(args.eval_out) if args.eval_out else results / EVAL_DIR
    files = write_report(out, rows, matches, summary, info)
    say(summary_markdown(summary, info))
    say(f"wrote {', '.join(str(out / f) for f in files)}")
    return 1 if errors else 0


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
        better = "-" if diff is None or diff == 0 else ("B" if (diff < 0) == lower_is_better(c) else "A")
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
