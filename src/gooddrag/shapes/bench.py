"""The shapes benchmark and the offline demo, on the shipped shapes-64 model.

Each case (:func:`gooddrag.shapes.scenes.make_case`) has an exact ground truth,
so a method's result is scored by where the moved object really ended up
(:mod:`gooddrag.shapes.metrics`). ``identity`` returns the input unchanged: it
shows what "did nothing" scores.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import get_preset
from ..models import SHAPES_MODEL, shipped_model_dir  # noqa: F401 - shipped_model_dir: for callers of this module
from ..outputs import draw_points
from .metrics import case_metrics, success_threshold, summarize
from .scenes import DragCase

logger = logging.getLogger(__name__)

MODEL_NAME = SHAPES_MODEL
BENCH_METHODS = ("gooddrag", "dragdiffusion", "gooddrag-plus", "identity")


def load_shapes_pipeline(device: str = "cpu", dtype: str = "fp32", folder=None):
    """The shipped shapes-64 model (or another trained shapes folder, ``folder``). On the CPU, torch runs it on one thread: the model is too small
    to gain from more (a UNet forward: 9.3 ms on 2 threads, 10.4 ms on 1, on a 2-core machine),
    and 2-thread OpenMP regions stall when anything else uses the second core (`gooddrag demo`
    measured 149 s instead of 5.7 s beside one other busy process)."""
    from ..pipeline import DragPipeline

    if device == "cpu":
        torch.set_num_threads(1)
    return DragPipeline.from_pretrained(str(folder or shipped_model_dir()), device=device, dtype=dtype)


def edit_case(pipe, case: DragCase, method: str, *, seed: int = 0, lora_cache_dir=None,
              return_trajectory: bool = False, progress: bool = False, **overrides):
    """Run ``method`` on one case with the shapes preset; returns (result uint8 (H, W, 3), seconds, DragResult or None)."""
    t0 = time.perf_counter()
    if method == "identity":
        return case.image.copy(), time.perf_counter() - t0, None
    config = get_preset(f"shapes-{method}", seed=seed, **overrides)
    result = pipe(
        Image.fromarray(case.image), case.handle_points, case.target_points, mask=case.mask, config=config,
        generator=torch.Generator().manual_seed(seed), lora_cache_dir=lora_cache_dir,
        return_trajectory=return_trajectory, progress=progress,
    )
    return np.asarray(result.image.convert("RGB")), time.perf_counter() - t0, result


def run_benchmark(pipe, cases: list[DragCase], methods, *, seed: int = 0, progress: bool = True):
    """Every method on every case; returns (rows, results[method][i] uint8 images)."""
    from tqdm.auto import tqdm

    rows, images = [], {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="gooddrag-bench-lora-") as cache:  # every case trains its own LoRA
        bar = tqdm(total=len(cases) * len(methods), desc="shapes bench", disable=not progress)
        for i, case in enumerate(cases):
            for method in methods:
                image, seconds, _ = edit_case(pipe, case, method, seed=seed, lora_cache_dir=cache)
                images[method].append(image)
                rows.append({
                    "case": i, "case_seed": case.seed, "kind": case.kind, "method": method,
                    "requested_distance": float(np.linalg.norm(case.displacements, axis=1).mean()),
                    **case_metrics(image, case), "seconds": seconds,
                })
                bar.update(1)
        bar.close()
    return rows, images


def _fmt(v, digits=2):
    if isinstance(v, float):
        return "inf" if math.isinf(v) else ("nan" if math.isnan(v) else f"{v:.{digits}f}")
    return str(v)


def markdown_table(summary: dict, *, cases: int, seed: int, size: int) -> str:
    head = (
        f"Shapes benchmark: {cases} cases, seed {seed}, {size}x{size} px, model {MODEL_NAME}; success = every "
        f"moved object within {success_threshold(size):g} px of its true place.\n\n"
        "Shape PSNR: in the mask, against the ground truth re-rendered with each object where the result put "
        "it (position taken out; cases with a lost object left out).\n\n"
        "| method | median error px | median error / distance | success | lost | PSNR in mask vs GT dB "
        "| shape PSNR dB | L1 in mask vs GT | PSNR outside mask vs input dB | s / case |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {m} | {_fmt(s['median_position_error'])} | {_fmt(s['median_relative_error'])} | "
        f"{s['success_rate']:.0%} | {s['lost_rate']:.0%} | {_fmt(s['mean_psnr_in_mask'])} | "
        f"{_fmt(s.get('mean_shape_psnr', math.nan))} | "
        f"{_fmt(s['mean_l1_in_mask'], 4)} | {_fmt(s['mean_psnr_outside_mask'])} | {_fmt(s.get('mean_seconds', math.nan))} |"
        for m, s in summary.items()
    ]
    return head + "\n".join(lines) + "\n"


def figure(cases, images, methods, path: Path, n: int = 4, scale: int = 3) -> None:
    """A few cases side by side: input with points, ground truth, each method's result."""
    cols = ["input", "ground truth", *methods]
    size = cases[0].size * scale
    pad, top = 4, 18
    fig = Image.new("RGB", (len(cols) * (size + pad), min(n, len(cases)) * (size + pad) + top), "white")
    draw = ImageDraw.Draw(fig)
    for j, name in enumerate(cols):
        draw.text((j * (size + pad) + 2, 2), name, fill="black")
    for i, case in enumerate(cases[:n]):
        up = lambda a: Image.fromarray(a).resize((size, size), Image.NEAREST)  # noqa: E731
        tiles = [
            draw_points(up(case.image), case.handle_points * scale, case.target_points * scale),
            up(case.ground_truth),
            *[up(images[m][i]) for m in methods],
        ]
        for j, tile in enumerate(tiles):
            fig.paste(tile, (j * (size + pad), top + i * (size + pad)))
    fig.save(path)


def write_report(out: Path, rows, summary, cases, images, methods, *, seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(markdown_table(summary, cases=len(cases), seed=seed, size=cases[0].size))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_fmt))
    figure(cases, images, methods, out / "figure.png")


def config_record(method: str, seed: int) -> dict:
    return {} if method == "identity" else dataclasses.asdict(get_preset(f"shapes-{method}", seed=seed))
