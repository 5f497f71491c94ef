"""Ablation of GoodDrag+'s options on the shapes benchmark: several variants of the shapes
GoodDrag preset on the same cases, one summary row each (docs/benchmarks.md, "GoodDrag+").

Each variant is ``LABEL`` or ``LABEL:KEY=VALUE,KEY=VALUE`` on top of ``shapes-gooddrag`` (LoRA
seed = ``--seed``, as ``gooddrag bench shapes``). The LoRA settings are the same in every variant,
so each case trains its LoRA once and the variants reuse it: the seconds column counts the
drag and denoising (and the first variant's LoRA training). Tune on seeds 100 and 200; the
benchmark's reported seeds are 0 and 1.

    python research/shapes_ablation.py --seed 100 --cases 16 --out results/ablation-100 \\
        gooddrag warp:latent_warp=true subpixel:subpixel_tracking=true \\
        plus:latent_warp=true,subpixel_tracking=true
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import tempfile
from pathlib import Path

from gooddrag.methods.config import DragConfig
from gooddrag.shapes.benchmark import _fmt, edit_case, load_shapes_pipeline
from gooddrag.shapes.metrics import case_metrics, summarize
from gooddrag.shapes.scenes import make_cases

COLUMNS = ("median_relative_error", "success_rate", "lost_rate", "mean_psnr_in_mask", "mean_shape_psnr",
           "mean_psnr_outside_mask", "mean_seconds")


def parse_variant(text: str) -> tuple[str, dict]:
    """``LABEL:KEY=VALUE,...`` -> (label, DragConfig overrides with the fields' types)."""
    from shapes_options import parse_value  # research/ is the script's folder

    label, _, rest = text.partition(":")
    fields = {f.name: f for f in dataclasses.fields(DragConfig)}
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"variant {text!r}: unknown setting {key!r}")
        overrides[key] = parse_value(fields[key], value)
    return label, overrides


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help="LABEL[:KEY=VALUE,...] on top of shapes-gooddrag")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True, help="folder for rows.csv, summary.json, table.md (must not exist)")
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists")
    variants = [parse_variant(v) for v in args.variants]
    pipe = load_shapes_pipeline()
    cases = make_cases(args.cases, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gooddrag-ablation-lora-") as cache:
        for i, case in enumerate(cases):
            for label, overrides in variants:
                image, seconds, result = edit_case(pipe, case, "gooddrag", seed=args.seed,
                                                   lora_cache_dir=Path(cache) / str(i), **overrides)
                rows.append({"case": i, "kind": case.kind, "method": label, **case_metrics(image, case),
                             "seconds": seconds, "drag_steps": result.stats.drag_steps,
                             "stop_reason": result.stats.stop_reason})
            print(f"case {i + 1}/{len(cases)} done", flush=True)  # a script's progress
    summary = summarize(rows)
    args.out.mkdir(parents=True)
    with open(args.out / "rows.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "summary.json").write_text(json.dumps({"seed": args.seed, "cases": args.cases,
                                                      "variants": dict(variants), "summary": summary},
                                                     indent=2, default=_fmt))
    head = "| variant | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    table = head + "\n".join(f"| {label} | " + " | ".join(_fmt(summary[label][c]) for c in COLUMNS) + " |"
                             for label, _ in variants)
    (args.out / "table.md").write_text(table + "\n")
    print(table)  # a script's report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
