"""Compare candidate shapes models (issue P5) on tuning cases: the shapes benchmark's
GoodDrag (or another method) on each model folder, one summary row per model.

Tune on seeds other than the benchmark's (0 and 1): 100 and 200.

    python research/shapes_candidates.py --seed 100 --cases 16 \\
        src/gooddrag/assets/shapes-64 /tmp/shapes-a /tmp/shapes-b --out results/candidates-100.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gooddrag.shapes.benchmark import load_shapes_pipeline, run_benchmark
from gooddrag.shapes.metrics import summarize
from gooddrag.shapes.scenes import make_cases


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", type=Path, help="diffusers folders of shapes models")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--method", default="gooddrag", choices=["gooddrag", "dragdiffusion"])
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the summaries (refused if it exists)")
    args = ap.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists")
    cases = make_cases(args.cases, args.seed)
    summaries = {}
    for folder in args.models:
        pipe = load_shapes_pipeline(folder=folder)
        rows, _ = run_benchmark(pipe, cases, [args.method], seed=args.seed, progress=False)
        summaries[str(folder)] = summarize(rows)[args.method]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seed": args.seed, "cases": args.cases, "method": args.method,
                                    "models": summaries}, indent=2, default=str))
    keys = ("median_relative_error", "success_rate", "lost_rate", "mean_psnr_in_mask", "mean_psnr_outside_mask")
    print("| model | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|")  # a script's report
    for folder, s in summaries.items():
        print(f"| {folder} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
