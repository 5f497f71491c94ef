"""GScore inside ``gooddrag bench eval``: the judge's settings from the command line, which samples are
judged (those scored in every results folder, every folder's result in one request), GScore's columns in the
CSV rows and the line the command prints. The judge itself: :mod:`gooddrag.benchmark.gscore`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from . import gscore as G

logger = logging.getLogger(__name__)


@dataclass
class JudgeSetup:
    """What ``--judge-*`` and the environment give: checked before any model is loaded."""

    settings: G.JudgeSettings
    template: str
    prompt_file: str | None
    key: str | None
    key_env: str | None


def judge_setup(args) -> JudgeSetup:
    """The settings, prompt and key, with every check that needs no request (httpx installed too)."""
    settings = G.settings_from_args(args)
    template = G.load_prompt(args.judge_prompt)
    G.import_httpx()
    key, key_env = G.api_key_from_env(args.judge_key_env)
    return JudgeSetup(settings, template, args.judge_prompt, key, key_env)


def judge_runs(judge: JudgeSetup, rows_by_run: dict[str, list[dict]], out: Path, progress: bool):
    """Judge every sample scored in every run, all runs' results in one request; adds GScore's columns to
    the rows (empty for a sample left out). Returns (one record per request, summary.json's ``gscore``)."""
    items, left_out = _judge_items(rows_by_run)
    judged_samples = {item.sample for item in items}
    cache = out / G.CACHE_DIR
    outcome = G.judge(items, judge.settings, judge.template, cache, judge.key, progress=progress)
    ratings = G.ratings_by_method(outcome)
    for name, rows in rows_by_run.items():
        for r in rows:
            columns = G.sample_columns(ratings.get((name, r["sample"]), []), judge.settings.repeats)
            r |= columns if r["sample"] in judged_samples else dict.fromkeys(columns)
    info = G.info(judge.settings, judge.template, judge.prompt_file, judge.key_env, cache, outcome)
    return outcome.records, info | {"left_out": left_out}


def _judge_items(rows_by_run: dict[str, list[dict]]) -> tuple[list[G.JudgeItem], list[dict]]:
    """(one item a sample scored in every run: its original and each run's result, sorted by sample;
    the samples left out, with the runs that lack them)."""
    by_sample: dict[str, dict[str, dict]] = {}  # sample -> run name -> row, names sorted
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
    refs: dict[Path, G.ImageRef] = {}  # each file hashed once

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
    return items, left_out


def gscore_line(judge: JudgeSetup, j: dict, judged: list[dict] | None) -> str:
    """The one line the command prints about GScore: requests, cache, what is missing and why."""
    unanswered = j["missing_unavailable"]
    reason = next((r["error"] for r in judged or [] if r["status"] == "unavailable" and r.get("error")), None)
    return (f"GScore: {j['requests']} request(s): {j['from_cache']} from the cache, {j['asked']} asked "
            f"({j['http_requests']} HTTP request(s)); missing: {j['missing_malformed']} unparsable after "
            f"{judge.settings.parse_retries} retries, {unanswered} unanswered"
            + (f"; {len(j['left_out'])} sample(s) left out, not in every results folder" if j["left_out"] else "")
            + (f" (first: {reason.splitlines()[0][:200]}); run the same command again to ask for the unanswered "
               "ones" if unanswered else ""))
