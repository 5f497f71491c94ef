"""Tune the shapes-dit-64 presets on the shapes benchmark's TUNING seeds (issue P5; never on 0 and 1).

Each candidate is a set of overrides of a shapes-dit preset; every candidate runs the same cases
(``--cases`` translations and ``--per-kind`` of each deformation kind per seed), and the table
gives the median error / distance, success rate, median IoU and PSNR outside the mask per candidate.

    python research/shapes_dit_tune.py --seeds 100,200 --cases 4 --per-kind 1 \\
        --candidates '{"feature_block": 2}' '{"feature_block": 4}' '{"feature_block": 6}'
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np

from gooddrag.shapes.benchmark import edit_case, load_shapes_pipeline
from gooddrag.shapes.metrics import case_metrics
from gooddrag.shapes.scenes import ALL_KINDS, make_benchmark_cases


def run(pipe, method: str, overrides: dict, seeds: list[int], cases: int, per_kind: int) -> dict:
    """Median error / distance, success, median IoU and PSNR outside of ``method`` with ``overrides``."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for seed in seeds:
            for case in make_benchmark_cases(cases, seed, ALL_KINDS, per_kind=per_kind):
                image, seconds, _ = edit_case(pipe, case, method, seed=seed, lora_cache_dir=cache, **overrides)
                rows.append(case_metrics(image, case) | {"seconds": seconds, "kind": case.kind})
    rel = [r["relative_error"] for r in rows]  # inf where an object was lost: the median copes
    return {"overrides": overrides, "cases": len(rows), "median_error": float(np.median(rel)),
            "success": float(np.mean([r["success"] for r in rows])), "iou": float(np.median([r["iou"] for r in rows])),
            "psnr_out": float(np.median([r["psnr_outside_mask"] for r in rows])),
            "seconds": float(np.mean([r["seconds"] for r in rows]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="gooddrag")
    p.add_argument("--seeds", default="100,200")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--per-kind", type=int, default=1)
    p.add_argument("--candidates", nargs="+", default=["{}"], help="JSON overrides, one candidate each")
    args = p.parse_args()
    pipe = load_shapes_pipeline(model="shapes-dit-64")
    seeds = [int(s) for s in args.seeds.split(",")]
    for text in args.candidates:
        out = run(pipe, args.method, json.loads(text), seeds, args.cases, args.per_kind)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
