"""Shapes benchmark of one method with setting overrides: measures a named option
against its preset on the same cases (docs/method.md, "Where we differ").

    python research/shapes_options.py --method gooddrag --seed 0 --cases 50 \
        --set track_on_fresh_features=true --out results/shapes-fresh

Writes results.csv, summary.json and results.md (the table of
``gooddrag bench shapes``) to ``--out``; every case trains its own LoRA, as
in ``gooddrag bench shapes``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from gooddrag.methods.config import DragConfig, get_preset
from gooddrag.shapes.benchmark import edit_case, load_shapes_pipeline, markdown_table
from gooddrag.shapes.metrics import case_metrics, summarize
from gooddrag.shapes.scenes import make_cases


def parse_value(field: dataclasses.Field, text: str):
    """``KEY=VALUE`` text -> the field's type (bool accepts true/false/1/0)."""
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise SystemExit(f"--set {field.name}={text}: expected true or false")
        return text.lower() in ("true", "1")
    return {"int": int, "float": float, "str": str}[kind](text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["gooddrag", "dragdiffusion"], default="gooddrag")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="DragConfig override")
    ap.add_argument("--label", default=None, help="method name in the table (default: method+overrides)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", type=Path, default=None, help="a trained shapes folder (default: the shipped one)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    fields = {f.name: f for f in dataclasses.fields(DragConfig)}
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {item}: unknown setting {key!r}")
        overrides[key] = parse_value(fields[key], value)
    label = args.label or "+".join([args.method] + [f"{k}={v}" for k, v in overrides.items()])
    torch.set_num_threads(args.threads)
    pipe = load_shapes_pipeline(folder=args.model)
    cases = make_cases(args.cases, args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gooddrag-bench-lora-") as cache:
        for i, case in enumerate(cases):
            image, seconds, _ = edit_case(pipe, case, args.method, seed=args.seed, lora_cache_dir=cache, **overrides)
            rows.append({
                "case": i, "case_seed": case.seed, "kind": case.kind, "method": label,
                "requested_distance": float(np.linalg.norm(case.displacements, axis=1).mean()),
                **case_metrics(image, case), "seconds": seconds,
            })
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    table = markdown_table(summary, cases=len(cases), seed=args.seed, size=cases[0].size)
    config = get_preset(f"shapes-{args.method}", seed=args.seed, **overrides)
    (args.out / "results.md").write_text(table + "\nconfig: " + config.to_json() + "\n")
    print(table)  # a script's report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
