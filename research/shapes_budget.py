"""Where the shapes benchmark's PSNR goes (issue P5): the loss budget on its own cases.

Rows, each with PSNR inside and outside the case's mask:
(a) the autoencoder alone: encode + decode of the input, and of the ground truth;
(b) the whole pipeline with no drag work (LoRA, inversion, denoising with the
    preset's settings; every handle already counts as arrived, so the drag
    phase stops before its first optimiser step), against the input;
(c) the same without the LoRA;
(d) the drag (the preset as it is), against the ground truth;
(e) an oracle: the ground truth re-rendered with each moved object exactly where
    the drag left it (its segmented centroid's error added to the displacement,
    sub-pixel), against the ground truth: the PSNR a drag that keeps shape,
    colour and background perfectly would score at (d)'s position errors
    (cases where (d) lost an object are left out, and counted). The centroid
    measure itself is noisy by about 0.1-0.2 px, so this row is slightly
    pessimistic;
(f) the same oracle with every moved object 1 px off in x, for scale.

Beside the whole mask, each row reports the mask split in two: the moved objects'
end footprint (coverage > 0 in the ground truth) and the rest of the mask (the
uncovered background and the margin). ``--only-drag`` skips rows (b) and (c).

    python research/shapes_budget.py --seed 0 --cases 50 --out results/shapes-budget
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gooddrag.shapes.benchmark import edit_case, load_shapes_pipeline
from gooddrag.shapes.metrics import PSNR_CAP, find_object, placed_oracle, psnr
from gooddrag.shapes.scenes import make_cases

NO_DRAG = {"stop_distance": 1e6}
"""Every pair is "done" from the start: the start tracking stops the drag before any step."""


def round_trip(pipe, image: np.ndarray) -> np.ndarray:
    latents = pipe.encode_image(Image.fromarray(image))
    return np.asarray(pipe.decode_latents(latents)[0].convert("RGB"))


def end_footprint(case) -> np.ndarray:
    """(H, W) bool: pixels the moved objects cover (coverage > 0) in the ground truth."""
    out = np.zeros(case.mask.shape, dtype=bool)
    for i, d in zip(case.moved, case.displacements):
        out |= case.objects[i].coverage(case.size, tuple(d)) > 0
    return out


def error_along_and_across(drag_image: np.ndarray, case) -> list[list[float]]:
    """Per moved object: its position error (found - true centroid, px) split along the
    displacement (positive = overshoot, negative = fell short) and across it; lost objects are left out."""
    out = []
    for i, d in zip(case.moved, case.displacements):
        ref, _ = find_object(case.ground_truth, case, i)
        found, _ = find_object(drag_image, case, i)
        if found is None or ref is None:
            continue
        u = d / np.linalg.norm(d)
        err = found - ref
        out.append([float(err @ u), float(err[0] * -u[1] + err[1] * u[0])])
    return out


def row(name: str, pairs, left_out: int = 0) -> dict:
    """Mean PSNR over cases inside and outside each case's mask, and inside the mask on the
    moved objects' end footprint and off it; ``pairs``: (result, reference, case)."""
    def mean(values):  # identical pixels (inf) count as PSNR_CAP, as in the benchmark's summary
        return float(np.mean(np.minimum(values, PSNR_CAP)))

    inside = mean([psnr(r, ref, c.mask) for r, ref, c in pairs])
    outside = mean([psnr(r, ref, ~c.mask) for r, ref, c in pairs])
    on_obj = mean([psnr(r, ref, c.mask & end_footprint(c)) for r, ref, c in pairs])
    off_obj = mean([psnr(r, ref, c.mask & ~end_footprint(c)) for r, ref, c in pairs])
    return {"row": name, "cases": len(pairs), "left_out": left_out,
            "psnr_in_mask": inside, "psnr_outside_mask": outside,
            "psnr_mask_on_end_footprint": on_obj, "psnr_mask_off_end_footprint": off_obj}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", type=int, default=50)
    ap.add_argument("--method", default="gooddrag", choices=["gooddrag", "dragdiffusion"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only-drag", action="store_true", help="skip rows (b) and (c)")
    ap.add_argument("--model", type=Path, default=None, help="a trained shapes folder (default: the shipped one)")
    args = ap.parse_args(argv)
    pipe = load_shapes_pipeline(folder=args.model)
    torch.set_num_threads(args.threads)
    cases = make_cases(args.cases, args.seed)
    results: dict[str, list] = {k: [] for k in ("ae_input", "ae_truth", "no_drag", "no_drag_no_lora", "drag")}
    with tempfile.TemporaryDirectory(prefix="gooddrag-budget-lora-") as cache:
        for case in cases:
            results["ae_input"].append((round_trip(pipe, case.image), case.image, case))
            results["ae_truth"].append((round_trip(pipe, case.ground_truth), case.ground_truth, case))
            if not args.only_drag:
                image, _, _ = edit_case(pipe, case, args.method, seed=args.seed, lora_cache_dir=cache, **NO_DRAG)
                results["no_drag"].append((image, case.image, case))
                image, _, _ = edit_case(pipe, case, args.method, seed=args.seed, lora_cache_dir=cache,
                                        lora_steps=0, **NO_DRAG)
                results["no_drag_no_lora"].append((image, case.image, case))
            image, _, _ = edit_case(pipe, case, args.method, seed=args.seed, lora_cache_dir=cache)
            results["drag"].append((image, case.ground_truth, case))
    oracle = [(placed_oracle(image, case), gt, case) for image, gt, case in results["drag"]]
    one_px = [(placed_oracle(image, case, (1.0, 0.0)), gt, case) for image, gt, case in results["drag"]]
    rows = [
        row("(a) autoencoder round trip of the input, vs input", results["ae_input"]),
        row("(a) autoencoder round trip of the ground truth, vs ground truth", results["ae_truth"]),
        *([] if args.only_drag else [
            row("(b) pipeline, no drag (LoRA, inversion, denoising), vs input", results["no_drag"]),
            row("(c) pipeline, no drag, no LoRA, vs input", results["no_drag_no_lora"])]),
        row(f"(d) {args.method} drag, vs ground truth", results["drag"]),
        row("(e) oracle: ground truth with the objects where (d) left them, vs ground truth",
            [o for o in oracle if o[0] is not None], left_out=sum(o[0] is None for o in oracle)),
        row("(f) oracle: ground truth with the objects 1 px off in x, vs ground truth", one_px),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    errors = [e for image, _, case in results["drag"] for e in error_along_and_across(image, case)]
    along, across = np.asarray(errors).T if errors else (np.full(1, np.nan), np.full(1, np.nan))
    position = {"objects": len(errors), "median_along_px": float(np.median(along)),
                "median_abs_along_px": float(np.median(np.abs(along))),
                "median_abs_across_px": float(np.median(np.abs(across))), "along_across_px": errors}
    (args.out / "budget.json").write_text(json.dumps({"seed": args.seed, "cases": args.cases, "rows": rows,
                                                      "drag_position_error": position}, indent=2))
    def cells(r):
        lost = f" ({r['left_out']} lost)" if r["left_out"] else ""
        return (f"| {r['row']} | {r['cases']}{lost} | {r['psnr_in_mask']:.2f} | {r['psnr_outside_mask']:.2f} "
                f"| {r['psnr_mask_on_end_footprint']:.2f} | {r['psnr_mask_off_end_footprint']:.2f} |")

    table = ("| row | cases | PSNR in mask dB | outside mask | in mask, on the end footprint | in mask, off it |\n"
             "|---|---|---|---|---|---|\n") + "\n".join(cells(r) for r in rows)
    (args.out / "budget.md").write_text(table + "\n")
    print(table)  # a script's report
    print(f"drag position error over {position['objects']} objects: median along the displacement "
          f"{position['median_along_px']:+.2f} px (|.| {position['median_abs_along_px']:.2f}), "
          f"median |across| {position['median_abs_across_px']:.2f} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
