"""``gooddrag bench run``: edit every sample of a Drag100 / DragBench folder.

- Samples are found recursively (:func:`find_samples`): a folder is a sample
  when it holds any of the two layouts' files; it is not searched further.
  Folders whose name starts with "." are skipped. The list is sorted by the
  sample's relative path (POSIX form), so every run, shard and machine sees
  the same order; ``--filter`` keeps paths containing a substring, ``--shard
  i/n`` keeps the samples whose index in the filtered list is ``i mod n``,
  and ``--limit N`` keeps the first N of those.
- Each sample is written to ``RESULTS/<relative path>/`` by
  :func:`gooddrag.io.outputs.write_result_folder` (atomic: a temporary folder
  renamed at the end), with the same files and ``run.json`` as
  ``gooddrag edit``. A sample whose folder has ``run.json`` is done and is
  skipped by a later run, so an interrupted run is resumed by running the
  same command again.
- A sample that cannot be edited (unreadable files, a bad pickle, points
  outside the image, any error) is appended to ``RESULTS/failures.jsonl``
  (one JSON object a line: sample, error type, message, time) and the run
  goes on; a later run tries it again. ``--fail-fast`` stops at the first.
- ``RESULTS/manifest.json`` records the dataset, method, config, seed and
  model; a later run into the same RESULTS with other settings is refused.

- ``--ray ADDRESS`` (:func:`run_on_ray`) makes one Ray task per sample still
  to do (by default one GPU each; each worker process loads the model once),
  retried by Ray when its worker dies; they write into the same RESULTS, the
  rules above hold unchanged, so a run on Ray and a plain run can resume each
  other.

Importing this module loads no torch and no model (numpy, PIL and tqdm only);
the model is loaded when there is something to edit, and Ray only with ``--ray``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..core.atomic import write_json_atomic
from ..errors import GoodDragError, InputsCannotWorkError
from ..io.outputs import (
    file_sha256,
    package_versions,
    remove_stale_partials,
    run_record,
    write_result_folder,
)

logger = logging.getLogger(__name__)

SAMPLE_MARKERS = ("original.jpg", "mask.png", "points.json", "original_image.png", "meta_data.pkl")
MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
# Settings that must agree between runs into one RESULTS folder.
MANIFEST_KEYS = ("dataset", "method", "config", "model")


@dataclass(frozen=True)
class SampleRef:
    """A sample folder and its path relative to the dataset root (POSIX, e.g. ``animals/cat_1``)."""

    rel: str
    path: Path


def find_samples(dataset: str | Path) -> list[SampleRef]:
    """Every sample folder under ``dataset`` (or ``dataset`` itself), sorted by relative path.

    A folder counts when it holds any Drag100 or DragBench file, complete or
    not: an incomplete one fails to load later and is reported, not skipped.
    """
    root = Path(dataset)
    if not root.is_dir():
        raise GoodDragError(f"dataset {str(root)!r}: no such folder")
    found: list[SampleRef] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(m in files for m in SAMPLE_MARKERS):
            rel = Path(folder).relative_to(root).as_posix()
            found.append(SampleRef(rel if rel != "." else root.resolve().name, Path(folder)))
            dirs[:] = []  # a sample folder is not searched further
    return sorted(found, key=lambda s: s.rel)


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise GoodDragError(f"--shard {text!r} is not i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise GoodDragError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def select_samples(samples: list[SampleRef], *, filter: str | None = None, shard: tuple[int, int] = (0, 1),
                   limit: int | None = None) -> list[SampleRef]:
    """Filter by substring, take shard i of n (index mod n == i), then the first ``limit``."""
    if filter:
        samples = [s for s in samples if filter in s.rel]
    i, n = shard
    samples = [s for k, s in enumerate(samples) if k % n == i]
    if limit is not None:
        if limit < 0:
            raise GoodDragError(f"--limit must be >= 0, got {limit}")
        samples = samples[:limit]
    return samples


def is_done(results: Path, sample: SampleRef) -> bool:
    return (results / sample.rel / "run.json").is_file()


def record_failure(results: Path, sample: SampleRef, err: BaseException, *, shard: str | None = None) -> dict:
    """Append one line to ``RESULTS/failures.jsonl`` (one write, so concurrent shards do not mix lines)."""
    entry = {
        "sample": sample.rel,
        "path": str(sample.path),
        "error_type": type(err).__name__,
        "error": str(err).splitlines()[0] if str(err) else type(err).__name__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "shard": shard,
        "refused": isinstance(err, InputsCannotWorkError),  # inputs that cannot work: refused before any work
    }
    if not isinstance(err, GoodDragError):
        entry["traceback"] = "".join(traceback.format_exception(type(err), err, err.__traceback__))[-4000:]
    results.mkdir(parents=True, exist_ok=True)
    with open(results / FAILURES, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def read_failures(results: str | Path) -> list[dict]:
    """The entries of ``failures.jsonl`` (the latest per sample), without samples that have since succeeded."""
    path = Path(results) / FAILURES
    if not path.is_file():
        return []
    latest: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            latest[entry["sample"]] = entry
    return [e for rel, e in sorted(latest.items()) if not (Path(results) / rel / "run.json").is_file()]


def check_manifest(results: Path, manifest: dict) -> None:
    """Write ``manifest.json``, or refuse when the one there was made with other settings."""
    path = results / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in MANIFEST_KEYS if json.dumps(old.get(k), sort_keys=True, default=str)
                != json.dumps(manifest.get(k), sort_keys=True, default=str)]
        if diff:
            raise GoodDragError(
                f"{str(results)!r} holds results made with other settings ({', '.join(diff)} differ from "
                f"{MANIFEST}); use another --out"
            )
        return
    write_json_atomic(path, manifest)


def _model_info(args) -> dict:
    return {"model": args.model, "model_config": args.model_config, "vae": args.vae,
            "vae_config": args.vae_config, "dtype": args.dtype}


def edit_sample(pipe, sample: SampleRef, out: Path, config, args, dataset: Path) -> dict:
    """Load one sample, edit it and write its result folder; returns a summary line's values."""
    # heavy: torch, and io.samples imports it
    import torch

    from ..io.samples import check_points, fit_mask, load_sample

    s = load_sample(sample.path)
    size = (s.image.height, s.image.width)
    check_points(s.handle_points, s.target_points, size)
    if s.mask is not None:
        s.mask = fit_mask(s.mask, size)
    result = pipe(
        s.image, s.handle_points, s.target_points, mask=s.mask, prompt=s.prompt, config=config,
        generator=torch.Generator().manual_seed(config.seed), lora_cache_dir=args.lora_cache_dir,
        progress=False,
    )
    record = run_record(
        result=result, config=config, seed=config.seed,
        inputs={
            "layout": s.layout,
            "sample": str(sample.path.resolve()),
            "benchmark": {"dataset": str(dataset.resolve()), "sample": sample.rel},
            "prompt": s.prompt,
            "files": {role: {"path": str(p.resolve()), "sha256": file_sha256(p)} for role, p in s.files.items()},
            "image_size": [s.image.width, s.image.height],
        },
        model=_model_info(args) | {
            "kind": pipe.source.kind if pipe.source else None, "device": str(pipe.device),
            "prediction_type": pipe.prediction_type,
        },
        argv=["gooddrag", *getattr(args, "argv", sys.argv[1:])],
    )
    write_result_folder(out, input_image=s.image, result=result, mask=s.mask, run_record=record, overwrite=True)
    return {"seconds": result.timings["total"]}


@dataclass
class RunPlan:
    """What one ``bench run`` (or one Ray task) will do."""

    config: object  # DragConfig
    dataset: Path
    results: Path
    samples: list[SampleRef]
    selected: list[SampleRef]
    todo: list[SampleRef]
    shard_text: str | None


def plan_run(args, rels: list[str] | None = None) -> RunPlan:
    """Check the settings, find and select the samples, write or check the manifest.

    rels: exactly these samples (a Ray task's) instead of --filter / --shard / --limit.
    """
    # heavy: imports torch
    from ..io.options import config_from_args

    dataset, results = Path(args.dataset), Path(args.out)
    config = config_from_args(args)
    samples = find_samples(dataset)
    if not samples:
        raise GoodDragError(f"no Drag100 or DragBench sample folders under {str(dataset)!r}")
    shard = parse_shard(args.shard)
    if rels is None:
        selected = select_samples(samples, filter=args.filter, shard=shard, limit=args.limit)
    else:
        wanted = set(rels)
        selected = [s for s in samples if s.rel in wanted]
    if results.resolve() == dataset.resolve() or dataset.resolve() in results.resolve().parents:
        raise GoodDragError(f"--out {str(results)!r} must not be inside the dataset {str(dataset)!r}")
    results.mkdir(parents=True, exist_ok=True)
    check_manifest(results, {
        "dataset": str(dataset.resolve()),
        "method": config.method,
        "config": config.to_dict(),
        "model": _model_info(args),
        "seed": config.seed,
        "samples_in_dataset": len(samples),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "gooddrag_version": package_versions().get("gooddrag"),
    })
    todo = [s for s in selected if not is_done(results, s)]
    return RunPlan(config, dataset, results, samples, selected, todo,
                   f"{shard[0]}/{shard[1]}" if args.shard else None)


def run_benchmark(args, rels: list[str] | None = None, pipe=None) -> dict:
    """The work of ``gooddrag bench run`` in this process; returns counts (selected, skipped, done, failed).
    ``pipe``: an already loaded pipeline (a Ray worker's), else it is loaded when there is work."""
    plan = plan_run(args, rels)
    config, results, todo = plan.config, plan.results, plan.todo
    counts = {"selected": len(plan.selected), "skipped": len(plan.selected) - len(todo), "done": 0, "failed": 0,
              "refused": 0}
    if todo:
        if pipe is None:
            # heavy: imports torch
            from ..io.options import load_pipeline

            pipe = load_pipeline(args)
        bar = tqdm(todo, desc=f"bench {config.method}", unit="sample", disable=args.no_progress,
                   dynamic_ncols=True)
        try:
            for sample in bar:
                bar.set_postfix_str(f"{sample.rel} ok={counts['done']} failed={counts['failed']} "
                                    f"refused={counts['refused']}", refresh=False)
                try:
                    edit_sample(pipe, sample, results / sample.rel, config, args, plan.dataset)
                    counts["done"] += 1
                except InputsCannotWorkError as err:  # a sample that cannot work: recorded, the run goes on
                    record_failure(results, sample, err, shard=plan.shard_text)
                    counts["refused"] += 1
                    tqdm.write(f"refused: {sample.rel}: {err}", file=sys.stderr)
                except Exception as err:  # noqa: BLE001 - one bad sample must not end the run
                    # an out-of-memory sample needs no emptying of the CUDA cache: its tensors are
                    # freed with the frame, and torch's caching allocator releases cached blocks
                    # and retries before it reports out of memory for the next sample
                    record_failure(results, sample, err, shard=plan.shard_text)
                    counts["failed"] += 1
                    if args.fail_fast:
                        raise
                    first = str(err).splitlines()[0] if str(err) else ""
                    tqdm.write(f"failed: {sample.rel}: {type(err).__name__}: {first}", file=sys.stderr)
        finally:
            bar.close()
    return counts


# ------------------------------------------------------------------------- Ray
# The pipeline a Ray worker process loaded for an earlier task, keyed by the
# model settings. Ray reuses worker processes between tasks of the same shape,
# so each worker loads the model once, not once per sample.
_WORKER_PIPELINE: dict[str, object] = {}


def edit_on_ray(args, rel: str) -> dict:
    """One Ray task: edit the sample ``rel`` (counts as :func:`run_benchmark` returns them).

    A sample that fails is recorded in failures.jsonl as in a plain run; only a
    dead worker makes the task itself fail (and Ray then retries it)."""
    args = copy.copy(args)
    args.ray, args.no_progress, args.shard, args.filter, args.limit = None, True, None, None, None
    key = json.dumps(_model_info(args), sort_keys=True, default=str)
    if key not in _WORKER_PIPELINE:
        # heavy: imports torch
        from ..io.options import load_pipeline

        _WORKER_PIPELINE.clear()
        _WORKER_PIPELINE[key] = load_pipeline(args)
    return run_benchmark(args, rels=[rel], pipe=_WORKER_PIPELINE[key])


def run_on_ray(args, ray=None, poll_s: float = 5.0) -> dict:
    """``bench run --ray ADDRESS``: one Ray task per sample still to do.

    Each task asks for ``--ray-gpus`` GPUs (Ray sets its CUDA_VISIBLE_DEVICES)
    and one CPU, so Ray runs as many at once as the cluster has room for
    (``--ray-workers`` caps it). Ray itself retries a task whose worker or node
    dies (``max_retries`` = ``--ray-retries``) on whatever worker is free; we
    do no scheduling of our own. Every task writes into the same RESULTS, so
    the dataset and RESULTS must be on a file system every node sees, and
    gooddrag must be installed on every node. ``ray``: the module (tests pass a
    stand-in).
    """
    _check_ray_arguments(args)
    if ray is None:
        ray = _import_ray()
    plan = plan_run(args)
    counts = {"selected": len(plan.selected), "skipped": len(plan.selected) - len(plan.todo), "done": 0,
              "failed": 0, "refused": 0, "lost": 0}
    if not plan.todo:
        return counts
    if args.ray == "local":
        ray.init(include_dashboard=False)
    else:
        ray.init(address=args.ray)
    try:
        gpus = args.ray_gpus if args.ray_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) >= 1
                                                                 else 0.0)
        task = ray.remote(edit_on_ray).options(num_gpus=gpus, num_cpus=1, max_retries=args.ray_retries)
        _run_ray_tasks(ray, task, args, plan, counts, poll_s)
    finally:
        ray.shutdown()
    return counts


def _check_ray_arguments(args) -> None:
    if args.shard:
        raise GoodDragError("--shard and --ray do not combine: Ray spreads the samples over its workers")
    if args.ray_workers is not None and args.ray_workers < 1:
        raise GoodDragError(f"--ray-workers must be at least 1, got {args.ray_workers}")
    if args.ray_gpus is not None and args.ray_gpus < 0:
        raise GoodDragError(f"--ray-gpus must be >= 0, got {args.ray_gpus}")
    if args.ray_retries < 0:
        raise GoodDragError(f"--ray-retries must be >= 0, got {args.ray_retries}")


def _import_ray():
    """The ray module, or a one-line error saying how to install it."""
    try:  # optional: ray, installed by hand on every node
        import ray
    except ImportError:
        raise GoodDragError("--ray needs Ray on this machine and every node: pip install ray") from None
    return ray


def _run_ray_tasks(ray, task, args, plan: RunPlan, counts: dict, poll_s: float) -> None:
    """Submit one task per sample of ``plan.todo`` (at most ``--ray-workers`` in flight) and add each finished
    task's counts to ``counts`` until every one is back."""
    waiting = list(plan.todo)
    in_flight: dict = {}  # ObjectRef -> SampleRef
    cap = args.ray_workers or len(waiting)
    with tqdm(total=len(plan.todo), desc=f"bench {plan.config.method} on Ray", unit="sample",
              disable=args.no_progress, dynamic_ncols=True) as bar:
        while waiting or in_flight:
            while waiting and len(in_flight) < cap:
                sample = waiting.pop(0)
                in_flight[task.remote(args, sample.rel)] = sample
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=poll_s)
            for ref in ready:
                _collect_ray_task(ray, ref, in_flight.pop(ref), plan.results, args.ray_retries, counts)
                bar.update(1)


def _collect_ray_task(ray, ref, sample: SampleRef, results: Path, retries: int, counts: dict) -> None:
    """Add a finished task's counts; a task that failed after Ray's retries is recorded in failures.jsonl as lost."""
    try:
        got = ray.get(ref)
        counts["done"] += got["done"]
        counts["failed"] += got["failed"]
        counts["refused"] += got.get("refused", 0)
    except Exception as err:  # noqa: BLE001 - retries used up: record it, keep the others
        counts["lost"] += 1
        record_failure(results, sample, err)
        tqdm.write(f"lost on Ray after {retries} retries: {sample.rel}: "
                   f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}",
                   file=sys.stderr)


# --------------------------------------------------------------------- the CLI
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``gooddrag bench run``."""
    # heavy: imports torch
    from ..io.options import add_method_options, add_model_options

    p.add_argument("dataset", help="dataset folder: Drag100 or DragBench sample folders, found recursively")
    p.add_argument("--out", required=True, help="results folder; RESULTS/<sample path>/ per sample (required)")
    sel = p.add_argument_group("which samples")
    sel.add_argument("--filter", default=None, help="only samples whose relative path contains this (default: all)")
    sel.add_argument("--shard", default=None, help="i/n: only samples whose index %% n == i (default: all)")
    sel.add_argument("--limit", type=int, default=None, help="only the first N selected samples (default: all)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing sample (default: record it and go on)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar (default: shown)")
    add_model_options(p)
    add_method_options(p, lora_file=False)
    r = p.add_argument_group("Ray (several GPUs or machines; needs `pip install ray` and a shared file system)")
    r.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="spread the samples over Ray workers, one task each: 'local' starts Ray on this machine, "
                        "'auto' joins the running cluster, or ray://HOST:PORT (default: no Ray, one process)")
    r.add_argument("--ray-workers", type=int, default=None,
                   help="at most this many samples in flight (default: as many as the cluster's GPUs/CPUs allow)")
    r.add_argument("--ray-gpus", type=float, default=None,
                   help="GPUs per sample's task (default: 1 when the cluster has GPUs, else 0)")
    r.add_argument("--ray-retries", type=int, default=3,
                   help="times Ray retries a sample whose worker or node died (default: 3)")


def cmd_run(args, say) -> int:
    """``gooddrag bench run``: exit 0 when every selected sample has a result or was refused (inputs
    that cannot work, recorded in failures.jsonl with ``"refused": true``), 1 when some failed.
    ``say`` receives the one-line report (the CLI passes ``print``)."""
    counts = run_on_ray(args) if getattr(args, "ray", None) else run_benchmark(args)
    out = Path(args.out)
    # A process killed mid-write (a Ray worker, an earlier run) leaves a half-written folder
    # beside the sample's result; once that result is written in full, the leftover goes.
    for stale in remove_stale_partials(out):
        logger.info("removed %s, left by a killed writer", stale)
    failed = counts["failed"] + counts.get("lost", 0)
    lost = f" ({counts['lost']} lost with their Ray workers)" if counts.get("lost") else ""
    refused = counts.get("refused", 0)
    say(f"{counts['selected']} sample(s) selected: {counts['done']} edited, {counts['skipped']} already done, "
        f"{failed} failed{lost}, {refused} refused (inputs that cannot work)"
        + (f" (see {out / FAILURES})" if failed or refused else "") + f"; results in {out}")
    return 1 if failed else 0
