"""Where the shapes benchmark's PSNR goes (issue P5): the loss budget on its own cases.

Rows, each with PSNR inside and outside the case's mask:
(a) the autoencoder alone: encode + decode of the input, and of the ground truth;
(b) the whole pipeline with no drag work (LoRA, inversion, denoising with the
    preset's settings; every handle already counts as arrived, so the drag
    phase stops before its first optimiser step), against the input;
(c) the same without the LoRA;
(d) the drag (the preset as it is), against the ground truth.

    python benchmarks/shapes_budget.py --seed 0 --cases 50 --out results/shapes-budget
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gooddrag.shapes.bench import edit_case, load_shapes_pipeline
from gooddrag.shapes.metrics import psnr
from gooddrag.shapes.scenes import make_cases

NO_DRAG = {"stop_distance": 1e6}
"""Every pair is "done" from the start: the start tracking stops the drag before any step."""


def round_trip(pipe, image: np.ndarray) -> np.ndarray:
    latents = pipe.encode_image(Image.fromarray(image))
    return np.asarray(pipe.decode_latents(latents)[0].convert("RGB"))


def row(name: str, pairs) -> dict:
    """Mean PSNR over cases inside and outside each case's mask; ``pairs``: (result, reference, case)."""
    inside = [psnr(r, ref, c.mask) for r, ref, c in pairs]
    outside = [psnr(r, ref, ~c.mask) for r, ref, c in pairs]
    return {"row": name, "psnr_in_mask": float(np.mean(inside)), "psnr_outside_mask": float(np.mean(outside))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--method", default="gooddrag", choices=["gooddrag", "dragdiffusion"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_shapes_pipeline()
    cases = make_cases(args.cases, args.seed)
    results: dict[str, list] = {k: [] for k in ("ae_input", "ae_truth", "no_drag", "no_drag_no_lora", "drag")}
    with tempfile.TemporaryDirectory(prefix="gooddrag-budget-lora-") as cache:
        for case in cases:
            results["ae_input"].append((round_trip(pipe, case.image), case.image, case))
            results["ae_truth"].append((round_trip(pipe, case.ground_truth), case.ground_truth, case))
            image, _, _ = edit_case(pipe, case, args.method, seed=args.seed, lora_cache_dir=cache, **NO_DRAG)
            results["no_drag"].append((image, case.image, case))
            image, _, _ = edit_case(pipe, case, args.method, seed=args.seed, lora_cache_dir=cache, lora_steps=0,
                                    **NO_DRAG)
            results["no_drag_no_lora"].append((image, case.image, case))
            image, _, _ = edit_case(pipe, case, args.method, seed=args.seed, lora_cache_dir=cache)
            results["drag"].append((image, case.ground_truth, case))
    rows = [
        row("(a) autoencoder round trip of the input, vs input", results["ae_input"]),
        row("(a) autoencoder round trip of the ground truth, vs ground truth", results["ae_truth"]),
        row("(b) pipeline, no drag (LoRA, inversion, denoising), vs input", results["no_drag"]),
        row("(c) pipeline, no drag, no LoRA, vs input", results["no_drag_no_lora"]),
        row(f"(d) {args.method} drag, vs ground truth", results["drag"]),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budget.json").write_text(json.dumps({"seed": args.seed, "cases": args.cases, "rows": rows}, indent=2))
    table = "| row | PSNR in mask dB | PSNR outside mask dB |\n|---|---|---|\n" + "\n".join(
        f"| {r['row']} | {r['psnr_in_mask']:.2f} | {r['psnr_outside_mask']:.2f} |" for r in rows)
    (args.out / "budget.md").write_text(table + "\n")
    print(table)  # a script's report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
