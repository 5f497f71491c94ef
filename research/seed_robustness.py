"""Seed robustness on the demo's scene (the web UI's first example, shapes-single-0: one handle
34,23 > 46,23 on ``make_case(0, 64, "single")``): each method once per LoRA seed, the final tracked
handle's distance to its target and the moved object's position error (docs/benchmarks.md,
"GoodDrag+").

    python research/seed_robustness.py --methods gooddrag,gooddrag-plus --seeds 0-9,42 --out results/seeds.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gooddrag.shapes.benchmark import edit_case, load_shapes_pipeline
from gooddrag.shapes.metrics import case_metrics, success_threshold
from gooddrag.shapes.scenes import make_case


def parse_seeds(text: str) -> list[int]:
    """``0-9,42`` -> [0, 1, ..., 9, 42]."""
    seeds = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return seeds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="gooddrag,gooddrag-plus")
    ap.add_argument("--seeds", default="0-9,42")
    ap.add_argument("--out", type=Path, required=True, help="markdown table (a .json beside it holds every row)")
    args = ap.parse_args(argv)
    methods, seeds = args.methods.split(","), parse_seeds(args.seeds)
    pipe = load_shapes_pipeline()
    case = make_case(0, 64, "single")
    rows = []
    for method in methods:
        for seed in seeds:
            image, seconds, result = edit_case(pipe, case, method, seed=seed)
            m = case_metrics(image, case)
            rows.append({"method": method, "seed": seed, "seconds": seconds,
                         "handle_to_target_px": float(np.linalg.norm(result.handle_points - case.target_points)),
                         "object_error_px": m["position_error"], "success": m["success"],
                         "stop_reason": result.stats.stop_reason, "drag_steps": result.stats.drag_steps})
            print(rows[-1], flush=True)  # a script's progress
    thr = success_threshold(case.size)
    lines = [f"Demo scene (shapes-single-0, 12 px drag); success = object within {thr:g} px.", "",
             "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | successes |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = [f"{r['handle_to_target_px']:.1f} / {r['object_error_px']:.1f}" for r in mine]
        lines.append(f"| {method} (handle / object px) | " + " | ".join(cells)
                     + f" | {sum(r['success'] for r in mine)} of {len(mine)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))  # a script's report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
