"""``gooddrag bench eval`` and ``gooddrag bench compare``: score a results folder.

This module is the command: its arguments, the order of the work and what it
prints. The work itself: :mod:`.scoring` (find the results, read their inputs,
DAI / MD / IF per sample, means), :mod:`.report` (CSV, JSON, markdown, the
compare table), :mod:`.plots` (matplotlib) and :mod:`.gscore` (the judge).

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

Importing this module loads no torch and no model (numpy, PIL and tqdm only);
DIFT and LPIPS are loaded when ``md`` or ``if`` is asked for.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import GoodDragError
from . import gscore as G
from . import metrics as M
from .judging import gscore_line, judge_runs, judge_setup
from .metrics import DEFAULT_DIFT_MODEL, DIFT_ENSEMBLE, DIFT_T, DIFT_UP_FT_INDEX
from .plots import write_joint_plot, write_plots
from .report import (
    DAI_VARIANTS,
    EVAL_DIR,
    compare_markdown,
    joint_markdown,
    summary_markdown,
    write_report,
    write_tables,
)
from .runner import MANIFEST, find_samples, read_failures
from .scoring import (
    LOWER_IS_BETTER,
    METRICS,
    SPREADS,
    EvalInputs,
    ResultRef,
    category_of,
    direction,
    evaluate,
    find_results,
    load_inputs,
    lower_is_better,
    metric_columns,
    parse_gammas,
    parse_metrics,
    read_json,
    summarize,
)

__all__ = [  # the command, and the names this module had before it was split (re-exported)
    "DAI_VARIANTS", "EVAL_DIR", "JOINT_DIR", "LOWER_IS_BETTER", "METRICS", "SPREADS", "EvalInputs", "ResultRef", "Run",
    "add_compare_arguments", "add_eval_arguments", "category_of", "cmd_compare", "cmd_eval", "compare_markdown",
    "direction", "evaluate", "find_results", "joint_markdown", "load_inputs", "lower_is_better", "metric_columns",
    "parse_gammas", "parse_metrics", "parse_runs", "report_folder", "summarize", "summary_markdown",
    "write_joint_plot", "write_plots", "write_report",
]

JOINT_DIR = "joint"


# ------------------------------------------------------------ several methods
@dataclass(frozen=True)
class Run:
    """One results folder and the method name it is reported under."""

    name: str
    path: Path


def parse_runs(texts: list[str]) -> list[Run]:
    """``DIR`` or ``NAME=DIR`` each; unnamed: the manifest's method, else the folder's name
    (folder names for all unnamed ones when two would share a name)."""
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
        return (read_json(folder / MANIFEST) or {}).get("method") or folder.resolve().name

    names = [n or auto(f) for n, f in given]
    if len(set(names)) < len(names):
        names = [n or f.resolve().name for n, f in given]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GoodDragError(f"two results folders are both called {dup[0]!r}; name them NAME=DIR")
    if len(names) > len(G.LABELS):
        raise GoodDragError(f"at most {len(G.LABELS)} results folders, got {len(names)}")
    return [Run(n, f) for n, (_, f) in zip(names, given)]


def report_folder(runs: list[Run], eval_out: str | None) -> Path:
    """``--eval-out``; else ``RESULTS/eval``, or with several folders ``eval/joint`` in the one whose resolved
    path sorts first: the same folder (and GScore cache) in whatever order the folders are given."""
    if eval_out:
        return Path(eval_out)
    if len(runs) == 1:
        return runs[0].path / EVAL_DIR
    return min(runs, key=lambda r: str(r.path.resolve())).path / EVAL_DIR / JOINT_DIR


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
    _add_md_if_arguments(p)
    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="DIFT model weights (default: %(default)s)")
    G.add_judge_arguments(p)


def _add_md_if_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MD (DIFT features)")
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


@dataclass
class _Scored:
    """One results folder's scores: CSV rows, MD matches, and what the report says about the folder."""

    rows: list[dict]
    matches: list[dict]
    info: dict


def cmd_eval(args, say) -> int:
    """``gooddrag bench eval``: exit 0 when every result was scored and every GScore request answered, else 1.
    ``say`` receives the report lines (the CLI passes ``print``)."""
    runs = parse_runs(args.results)
    metrics = parse_metrics(args.metrics)
    gammas = parse_gammas(args.gamma)
    judge = judge_setup(args) if "gscore" in metrics else None  # cheap checks before loading any model
    _check_results(runs, judged=judge is not None)
    info = _eval_info(args, runs, metrics, gammas)
    featurizer, lpips_model = _load_scorers(args, metrics, info)
    scored = {run.name: _score_run(run, args, metrics, gammas, featurizer, lpips_model) for run in runs}
    out = report_folder(runs, args.eval_out)
    judged = None
    if judge is not None:
        judged, info["gscore"] = judge_runs(judge, {n: s.rows for n, s in scored.items()}, out,
                                             progress=not args.no_progress)
    info["columns"] = metric_columns(metrics, gammas)
    files, markdown = (_report_joint if len(runs) > 1 else _report_one)(out, scored, info, judged)
    say(markdown)
    say(f"wrote {', '.join(str(out / f) for f in files)}")
    unanswered = 0
    if judge is not None:
        unanswered = info["gscore"]["missing_unavailable"]
        say(gscore_line(judge, info["gscore"], judged))
    return 1 if unanswered or any(s.info["errors"] for s in scored.values()) else 0


def _check_results(runs: list[Run], judged: bool) -> None:
    """Every folder has results; with GScore, some sample is in all of them."""
    found = [{r.rel for r in find_results(run.path)} for run in runs]
    for run, rels in zip(runs, found):
        if not rels:
            raise GoodDragError(f"no result folders (with edited.png) under {str(run.path)!r}")
    if judged and not set.intersection(*found):
        raise GoodDragError("no sample is in every results folder, so GScore has nothing to judge side by side; "
                            "are these results of the same data set?")


def _eval_info(args, runs: list[Run], metrics: list[str], gammas: list[int]) -> dict:
    """The settings summary.json records under ``info``."""
    return {"results": str(runs[0].path.resolve()) if len(runs) == 1 else [str(r.path.resolve()) for r in runs],
            "metrics": metrics, "gammas": gammas,
            "dai_authors_variant": bool(args.dai_authors_variant), "dift_prompt": args.dift_prompt,
            "dataset": str(Path(args.dataset).resolve()) if args.dataset else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _load_scorers(args, metrics: list[str], info: dict):
    """(DIFT featurizer or None, LPIPS model or None); records DIFT's settings in ``info``."""
    featurizer = lpips_model = None
    if "if" in metrics:  # the cheapest to fail: check it before loading DIFT
        # heavy: imports torch and diffusers
        from ..models.loading import resolve_device

        lpips_model = M.load_lpips_alex(args.alexnet_weights, args.lpips_weights, resolve_device(args.device))
    if "md" in metrics:
        # heavy: imports torch and diffusers
        from .dift import DiftFeaturizer

        featurizer = DiftFeaturizer(args.dift_model, model_config=args.dift_model_config, device=args.device,
                                    dtype=args.dtype, t=args.dift_t, up_ft_index=args.dift_up_ft_index,
                                    ensemble=args.dift_ensemble, seed=args.dift_seed)
        info["dift"] = featurizer.settings()
    return featurizer, lpips_model


def _score_run(run: Run, args, metrics: list[str], gammas: list[int], featurizer, lpips_model) -> _Scored:
    """Score one results folder and gather what the run left: its manifest, failures and (with --dataset)
    how many samples it did not reach."""
    rows, matches, errors = evaluate(
        run.path, metrics, dataset=args.dataset, gammas=gammas, authors_variant=args.dai_authors_variant,
        featurizer=featurizer, dift_prompt=args.dift_prompt, lpips_model=lpips_model,
        progress=not args.no_progress,
    )
    manifest = read_json(run.path / MANIFEST) or {}
    failures = read_failures(run.path)
    run_info = {"results": str(run.path.resolve()), "errors": errors, "failures": failures,
                "failed": sum(1 for f in failures if not f.get("refused")),
                "refused": sum(1 for f in failures if f.get("refused")), "method": manifest.get("method"),
                "model": (manifest.get("model") or {}).get("model")}
    if args.dataset:
        done = {r["sample"] for r in rows} | {e["sample"] for e in errors} | {f["sample"] for f in failures}
        run_info["missing"] = sum(1 for s in find_samples(args.dataset) if s.rel not in done)
    return _Scored(rows, matches, run_info)


def _report_one(out: Path, scored: dict[str, _Scored], info: dict, judged) -> tuple[list[str], str]:
    """One results folder's report files; returns (their names, summary.md's text)."""
    [one] = scored.values()
    info |= {k: v for k, v in one.info.items() if k != "results"}
    summary = summarize(one.rows, info["columns"], one.matches)
    return write_report(out, one.rows, one.matches, summary, info, judged), summary_markdown(summary, info)


def _report_joint(out: Path, scored: dict[str, _Scored], info: dict, judged) -> tuple[list[str], str]:
    """Several folders side by side, a ``method`` column first; returns (the files' names, summary.md's text)."""
    info["runs"] = {n: s.info for n, s in scored.items()}
    summaries = {n: summarize(s.rows, info["columns"], s.matches) for n, s in scored.items()}
    rows = [{"method": n} | r for n, s in scored.items() for r in s.rows]
    matches = [{"method": n} | m for n, s in scored.items() for m in s.matches]
    markdown = joint_markdown(summaries, info)
    files = write_tables(out, rows, matches, {"info": info, "summary": summaries}, markdown, info, judged, joint=True)
    return files + write_joint_plot(out, summaries), markdown


# ------------------------------------------------------------------ compare
def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``gooddrag bench compare``."""
    p.add_argument("results_a", help="first results folder (evaluated with `gooddrag bench eval`)")
    p.add_argument("results_b", help="second results folder")
    p.add_argument("--eval-dir", default=EVAL_DIR, help="report folder inside each (default: %(default)s)")


def cmd_compare(args, say) -> int:
    """``gooddrag bench compare``: the table of :func:`~gooddrag.benchmark.report.compare_markdown`."""
    say(compare_markdown(Path(args.results_a), Path(args.results_b), args.eval_dir))
    return 0
