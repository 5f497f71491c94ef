"""Scoring of one results folder for ``gooddrag bench eval``: find the results, read each one's
inputs, compute DAI / MD / IF per sample, and the means over the samples.

A result is any folder under RESULTS (searched recursively, "." folders
skipped) holding ``edited.png``. Its input is ``input.png`` beside it (the
input exactly as edited), its points and final handle positions come from
``new_points.json`` and its prompt from ``run.json``; with ``--dataset`` the
original image, points and prompt are read from ``DATASET/<same relative
path>`` instead. A result of another size than its input is resized to the
input's size (bilinear, as DragBench's script does) and flagged in the CSV.

Points are (x, y) pixels of the original image. Importing this module loads
no torch (numpy, PIL and tqdm only); the metrics that need torch import it
when they run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import GoodDragError
from . import gscore as G
from . import metrics as M

METRICS = ("dai", "md", "if", "gscore")
LOWER_IS_BETTER = {"dai": True, "md": True, "if": False, "gscore": False, "final_distance": True, "edit_seconds": True}
SPREADS = ("gscore_sd",)  # neither better nor worse


# ----------------------------------------------------------------- columns
def metric_columns(metrics, gammas) -> list[str]:
    """The CSV columns of ``metrics``: one ``dai_g<gamma>`` per gamma, ``gscore`` with its SD."""
    cols = []
    for m in metrics:
        cols += [f"dai_g{g}" for g in gammas] if m == "dai" else ["gscore", "gscore_sd"] if m == "gscore" else [m]
    return cols


def lower_is_better(column: str) -> bool:
    return LOWER_IS_BETTER.get(column.split("_g")[0] if column.startswith("dai_g") else column, True)


def direction(column: str) -> str:
    """How to read a column, as the reports print it."""
    if column in SPREADS:
        return "spread: SD of all ratings"
    return "lower is better" if lower_is_better(column) else "higher is better"


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


# ------------------------------------------------------------------ inputs
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


def read_json(path: Path) -> dict | None:
    """The JSON in ``path``; None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GoodDragError(f"{str(path)!r} is not valid JSON") from None


def load_inputs(ref: ResultRef, dataset: Path | None, need_points: bool = True) -> EvalInputs:
    """need_points False (GScore alone): a result without ``new_points.json`` is read too (handles and
    targets None)."""
    # heavy: imports torch
    from ..io.samples import load_image, load_sample

    result = load_image(ref.path / "edited.png")
    points = read_json(ref.path / "new_points.json")
    record = read_json(ref.path / "run.json")
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


# ----------------------------------------------------------------- scoring
def evaluate(results: str | Path, metrics=("dai",), *, dataset: str | Path | None = None, gammas=(1, 5, 10, 20),
             authors_variant: bool = False, featurizer=None, dift_prompt: str = "sample", lpips_model=None,
             progress: bool = False) -> tuple[list[dict], list[dict], list[dict]]:
    """Score every result folder. Returns (rows, matches, errors).

    featurizer: a callable ``(PIL image, prompt) -> (1, C, h, w)`` features
    (:class:`~gooddrag.benchmark.dift.DiftFeaturizer`), needed for ``md``;
    lpips_model: from :func:`~gooddrag.benchmark.metrics.load_lpips_alex`, needed for ``if``.
    """
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
            row, match = score_sample(ref, inp, metrics, gammas=gammas, authors_variant=authors_variant,
                                      featurizer=featurizer, dift_prompt=dift_prompt, lpips_model=lpips_model)
        except GoodDragError as err:
            errors.append({"sample": ref.rel, "error": str(err)})
            continue
        rows.append(row)
        if match is not None:
            matches.append(match)
    return rows, matches, errors


def score_sample(ref: ResultRef, inp: EvalInputs, metrics, *, gammas, authors_variant: bool, featurizer,
                 dift_prompt: str, lpips_model) -> tuple[dict, dict | None]:
    """One sample's CSV row, and its MD match record (matched points in the result's frame) or None."""
    row = {"sample": ref.rel, "category": category_of(ref.rel),
           "pairs": len(inp.handles) if inp.handles is not None else None,
           "original_file": inp.original_file, "edited_file": ref.path / "edited.png"}
    if "dai" in metrics:
        for g in gammas:
            row[f"dai_g{g}"] = M.dai(inp.original, inp.result, inp.handles, inp.targets, g,
                                     authors_variant=authors_variant)
    match = None
    if "md" in metrics:
        prompt = inp.prompt if dift_prompt == "sample" else ""
        f_src, f_dst = featurizer(inp.original, prompt), featurizer(inp.result, prompt)  # (1, C, h, w) each
        matched = M.match_points(f_src, f_dst, inp.handles, size=(inp.original.height, inp.original.width))
        dists = M.pair_distances(matched, inp.targets)  # (N,) pixels
        row["md"] = float(dists.mean())
        match = {"sample": ref.rel, "matched_points": matched.tolist(), "target_points": inp.targets.tolist(),
                 "distances": dists.round(4).tolist()}
    if "if" in metrics:
        row["if"] = M.image_fidelity(inp.original, inp.result, lpips_model)
    if inp.final_handles is not None and inp.targets is not None and len(inp.final_handles) == len(inp.targets):
        d = M.pair_distances(inp.final_handles, inp.targets)
        row["final_distance"] = float(d.mean())
        row["final_distances"] = d.tolist()
    row["edit_seconds"] = inp.seconds
    row["resized"] = inp.resized
    return row, match


# ----------------------------------------------------------------- summary
def mean_of(values) -> float | None:
    """Mean of the values that are numbers (None, "" and NaN left out); None when there are none."""
    vals = [float(v) for v in values if v is not None and v != "" and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else None


def summarize(rows: list[dict], columns: list[str], matches: list[dict] | None = None) -> dict:
    """Mean of each column over the samples, overall and per category."""
    extra = [c for c in ("final_distance", "edit_seconds") if any(r.get(c) is not None for r in rows)]
    cols = columns + extra
    out = {"samples": len(rows), "mean": {c: mean_of(r.get(c) for r in rows) for c in cols}, "categories": {}}
    for cat in sorted({r["category"] for r in rows}):
        sub = [r for r in rows if r["category"] == cat]
        out["categories"][cat] = {"samples": len(sub)} | {c: mean_of(r.get(c) for r in sub) for c in cols}
    if "gscore_sd" in cols:  # the spread of every rating (samples and repetitions), not a mean of SDs
        out["mean"]["gscore_sd"] = G.pooled_sd([v for r in rows for v in r.get("gscore_ratings") or []])
        for cat, vals in out["categories"].items():
            vals["gscore_sd"] = G.pooled_sd([v for r in rows if r["category"] == cat
                                             for v in r.get("gscore_ratings") or []])
    if matches:
        pooled = [d for m in matches for d in m["distances"]]
        out["md_pooled_over_pairs"] = sum(pooled) / len(pooled)
    return out
