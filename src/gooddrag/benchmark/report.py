"""The report files of ``gooddrag bench eval`` and the table of ``gooddrag bench compare``.

In the report folder: ``metrics.csv`` (one row a sample; with several
results folders a ``method`` column first), ``summary.json``, ``summary.md``
(mean of each metric over the samples, and per category), ``matches.jsonl``
(MD's matched points), ``gscore.jsonl`` (GScore's records, one per request)
and the plots of :mod:`gooddrag.benchmark.plots`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import GoodDragError
from .plots import write_plots
from .scoring import SPREADS, direction, lower_is_better, mean_of, read_json

EVAL_DIR = "eval"
DAI_VARIANTS = {
    False: "ours: mean over the pairs (divided by the number of pairs once)",
    True: "authors' script: divided by the number of pairs twice, each patch by the full (2 gamma + 1)^2",
}


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


# ------------------------------------------------------------ one results folder
def summary_markdown(summary: dict, info: dict) -> str:
    """summary.md of one results folder."""
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


def write_report(out: Path, rows, matches, summary, info, judged: list[dict] | None = None) -> list[str]:
    """One results folder's report; ``judged``: GScore's records, one per request (gscore.jsonl)."""
    files = write_tables(out, rows, matches, {"info": info, "summary": summary}, summary_markdown(summary, info),
                         info, judged, joint=False)
    return files + write_plots(out, rows, summary)


def write_tables(out: Path, rows, matches, data: dict, markdown: str, info: dict, judged, joint: bool) -> list[str]:
    """metrics.csv, summary.json (``data``), summary.md (``markdown``), matches.jsonl and, with ``judged``,
    gscore.jsonl; returns their names."""
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
    _write_jsonl(out / "matches.jsonl", matches)
    files = ["metrics.csv", "summary.json", "summary.md", "matches.jsonl"]
    if judged is not None:
        _write_jsonl(out / "gscore.jsonl", judged)
        files.append("gscore.jsonl")
    return files


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


# --------------------------------------------------------- several results folders
def joint_markdown(summaries: dict[str, dict], info: dict) -> str:
    """summary.md of several results folders (one method each), side by side."""
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
    return "\n".join(lines + _joint_lists(names, info)) + "\n"


def _joint_lists(names: list[str], info: dict) -> list[str]:
    """The sections listing samples: left out of GScore, not scored, failed in the run."""
    lines = []
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
    return lines


# ------------------------------------------------------------------ compare
def _load_eval(results: Path, eval_dir: str) -> tuple[dict, list[dict]]:
    folder = results / eval_dir
    data = read_json(folder / "summary.json")
    if data is None or not (folder / "metrics.csv").is_file():
        raise GoodDragError(f"{str(folder)!r} has no summary.json / metrics.csv; run `gooddrag bench eval {results}` first")
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return data, rows


def compare_markdown(a: Path, b: Path, eval_dir: str = EVAL_DIR) -> str:
    """Two evaluated results folders side by side: the means over the samples scored in both, B - A."""
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
    lines += _compare_rows(byname_a, byname_b, common, cols)
    lines += _compare_categories(byname_a, byname_b, common, cols)
    only = len(set(byname_a) ^ set(byname_b))
    if only:
        notes.append(f"{only} sample(s) scored in only one of the two are left out")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _compare_rows(byname_a: dict, byname_b: dict, common: list[str], cols: list[str]) -> list[str]:
    """One table row a column: A's and B's means over ``common``, B - A and which is better."""
    lines = []
    for c in cols:
        va, vb = mean_of(byname_a[n].get(c) for n in common), mean_of(byname_b[n].get(c) for n in common)
        diff = vb - va if va is not None and vb is not None else None
        better = ("-" if diff is None or diff == 0 or c in SPREADS
                  else ("B" if (diff < 0) == lower_is_better(c) else "A"))
        lines.append(f"| {c} | {_fmt(va)} | {_fmt(vb)} | {_fmt(diff, 4) if diff is None else f'{diff:+.4f}'} | {better} |")
    return lines


def _compare_categories(byname_a: dict, byname_b: dict, common: list[str], cols: list[str]) -> list[str]:
    """Per category (when there are several), A / B (B - A) for each column."""
    cats = sorted({byname_a[n]["category"] for n in common})
    if len(cats) <= 1 or not cols:
        return []
    lines = ["", "Per category, A / B (B - A):", "", "| category | n | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for cat in cats:
        names = [n for n in common if byname_a[n]["category"] == cat]
        cells = []
        for c in cols:
            va, vb = mean_of(byname_a[n].get(c) for n in names), mean_of(byname_b[n].get(c) for n in names)
            cells.append(f"{_fmt(va)} / {_fmt(vb)} ({'-' if va is None or vb is None else f'{vb - va:+.4f}'})")
        lines.append(f"| {cat} | {len(names)} | " + " | ".join(cells) + " |")
    return lines
