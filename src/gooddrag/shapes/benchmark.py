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
from tqdm.auto import tqdm

from ..io.outputs import draw_points
from ..methods import presets
from ..methods.config import get_preset
from ..models.backbone import TRANSFORMERS
from ..models.names import SHAPES_DIT_MODEL, SHAPES_MODEL, shipped_model_dir
from .metrics import DEFORMATION_SUCCESS, case_metrics, success_threshold, summarize
from .scenes import ALL_KINDS, DragCase, make_case, make_deformation_case

logger = logging.getLogger(__name__)

MODEL_NAME = SHAPES_MODEL
SHAPES_MODELS = (SHAPES_MODEL, SHAPES_DIT_MODEL)
"""The shipped shapes models the benchmark and the demo run on: the UNet and its transformer counterpart."""
REFERENCE_METHODS = ("identity", "autoencoder")
"""Reference rows: the input unchanged (what doing nothing scores) and the exact answer passed
through the model's own autoencoder (the best any edit by this model can score: the ceiling)."""


def load_shapes_pipeline(device: str = "cpu", dtype: str = "fp32", folder=None, model: str = SHAPES_MODEL):
    """The shipped shapes model ``model`` (shapes-64 or shapes-dit-64), or another trained shapes folder,
    ``folder``. On the CPU, torch runs it on one thread: the model is too small
    to gain from more (a UNet forward: 9.3 ms on 2 threads, 10.4 ms on 1, on a 2-core machine),
    and 2-thread OpenMP regions stall when anything else uses the second core (`gooddrag demo`
    measured 149 s instead of 5.7 s beside one other busy process)."""
    # heavy (diffusers, transformers): `gooddrag bench shapes` imports this module to check its arguments
    from ..methods.pipeline import DragPipeline

    if device == "cpu":
        torch.set_num_threads(1)
    return DragPipeline.from_pretrained(str(folder or shipped_model_dir(model)), device=device, dtype=dtype)


def shapes_family(pipe) -> str:
    """The preset family of a shapes model: ``shapes-dit`` for a transformer (the kind its configs
    say), else ``shapes``."""
    return "shapes-dit" if pipe.kind in TRANSFORMERS else "shapes"


def model_name(pipe) -> str:
    """The shipped name of a shapes pipeline (its folder's name otherwise)."""
    return Path(pipe.source.location).name if pipe.source else MODEL_NAME


def methods_for(family: str) -> tuple[str, ...]:
    """The methods with a preset for ``family`` (the one preset table), then the reference rows."""
    return (*(method for (method, fam) in presets.PRESET_NAMES if fam == family), *REFERENCE_METHODS)


BENCH_METHODS = methods_for("shapes")
"""Every method with a shapes-64 preset, then the reference rows."""


def edit_case(pipe, case: DragCase, method: str, *, seed: int = 0, lora_cache_dir=None,
              return_trajectory: bool = False, progress: bool = False, **overrides):
    """Run ``method`` on one case with the shapes preset; returns (result uint8 (H, W, 3), seconds, DragResult or None)."""
    t0 = time.perf_counter()
    if method == "identity":
        return case.image.copy(), time.perf_counter() - t0, None
    if method == "autoencoder":
        with torch.no_grad():
            (decoded,) = pipe.decode_latents(pipe.encode_image(Image.fromarray(case.ground_truth)))
        return np.asarray(decoded.convert("RGB")), time.perf_counter() - t0, None
    config = get_preset(presets.preset_name(method, shapes_family(pipe)), seed=seed, **overrides)
    result = pipe(
        Image.fromarray(case.image), case.handle_points, case.target_points, mask=case.mask, config=config,
        generator=torch.Generator().manual_seed(seed), lora_cache_dir=lora_cache_dir,
        return_trajectory=return_trajectory, progress=progress,
    )
    return np.asarray(result.image.convert("RGB")), time.perf_counter() - t0, result


def run_benchmark(pipe, cases: list[DragCase], methods, *, seed: int = 0, progress: bool = True):
    """Every method on every case; returns (rows, results[method][i] uint8 images)."""
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


def summarize_by_kind(rows) -> dict:
    """{kind: :func:`summarize` of that kind's rows}, kinds in :data:`ALL_KINDS` order, then "all"."""
    kinds = [k for k in ALL_KINDS if any(r["kind"] == k for r in rows)]
    return {k: summarize([r for r in rows if r["kind"] == k]) for k in kinds} | {"all": summarize(rows)}


def markdown_table(summary: dict, *, cases: int, seed: int, size: int, model: str = MODEL_NAME) -> str:
    """One table per kind (``summary`` from :func:`summarize_by_kind`)."""
    head = (
        f"Shapes benchmark: {cases} cases, seed {seed}, {size}x{size} px, model {model}.\n\n"
        f"Translation kinds: error = the moved objects' centroid error, success = every moved object within "
        f"{success_threshold(size):g} px of its true place. Deformation kinds (rotate, scale, stretch): error = "
        "the per-point error (each handle taken by the pose the result reached, against where the answer's "
        f"pose takes it) over the mean drag length, success = at most {DEFORMATION_SUCCESS:g} of it; px error "
        "= the centroid's. IoU: the object's pixels (by colour) against the answer's. Shape PSNR: in the mask, "
        "against the answer re-rendered at the pose the result reached (cases with a lost object left out). "
        "Reference rows: identity (the input), autoencoder (the answer through the model's VAE: the ceiling).\n"
    )
    cols = ("| method | median error px | median error / distance | success | lost | median IoU "
            "| PSNR in mask vs GT dB | shape PSNR dB | L1 in mask vs GT | PSNR outside mask vs input dB | s / case |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    parts = [head]
    for kind, per_method in summary.items():
        n = next(iter(per_method.values()))["n"]
        parts.append(f"\n### {kind} ({n} cases)\n\n" + cols + "\n".join(
            f"| {m} | {_fmt(s['median_position_error'])} | {_fmt(s['median_relative_error'])} | "
            f"{s['success_rate']:.0%} | {s['lost_rate']:.0%} | {_fmt(s.get('median_iou', math.nan))} | "
            f"{_fmt(s['mean_psnr_in_mask'])} | {_fmt(s.get('mean_shape_psnr', math.nan))} | "
            f"{_fmt(s['mean_l1_in_mask'], 4)} | {_fmt(s['mean_psnr_outside_mask'])} | "
            f"{_fmt(s.get('mean_seconds', math.nan))} |"
            for m, s in per_method.items()) + "\n")
    return "".join(parts)


def figure(cases, images, methods, path: Path, n: int = 4, scale: int = 3) -> None:
    """A few cases side by side (the first of each kind, then the next ones, ``n`` rows at least one
    per kind): input with points, ground truth, each method's result."""
    first = list(dict.fromkeys(c.kind for c in cases))
    order = [next(i for i, c in enumerate(cases) if c.kind == k) for k in first]
    order += [i for i in range(len(cases)) if i not in order]
    n = max(n, len(first))
    cases = [cases[i] for i in order]
    images = {m: [images[m][i] for i in order] for m in methods}
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


def write_report(out: Path, rows, summary, cases, images, methods, *, seed: int, model: str = MODEL_NAME) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(markdown_table(summary, cases=len(cases), seed=seed, size=cases[0].size,
                                                   model=model))
    rows = [dict(r) for r in rows]  # csv: every row the same columns
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_fmt))
    figure(cases, images, methods, out / "figure.png")


def config_record(method: str, seed: int, family: str = "shapes") -> dict:
    if method in REFERENCE_METHODS:
        return {}
    return dataclasses.asdict(get_preset(presets.preset_name(method, family), seed=seed))


# ------------------------------------------------------------------------ demo
DEMO_METHODS = ("gooddrag", "gooddrag-plus")
DEMO_SCALE = 4  # the demo picture shows each 64 px tile at 256 px


@dataclasses.dataclass
class DemoRun:
    """One method on one demo scene: the case, the result image (H, W, 3) uint8, its scores, seconds."""

    scene: str
    method: str
    case: DragCase
    image: np.ndarray
    scores: dict
    seconds: float
    result: object  # DragResult


def demo_cases(seed: int, kind: str = "single") -> dict[str, DragCase]:
    """The demo's two scenes: a translation (``kind``) and a turn, both made from ``seed``."""
    return {"move": make_case(seed, size=64, kind=kind), "turn": make_deformation_case(seed, 64, "rotate")}


def run_demo(pipe, cases: dict[str, DragCase], methods, *, seed: int, progress: bool = False) -> list[DemoRun]:
    """Every method on every demo scene, with its trajectory (for the result folders)."""
    runs = []
    for scene, case in cases.items():
        for method in methods:
            image, seconds, result = edit_case(pipe, case, method, seed=seed, return_trajectory=True,
                                               progress=progress)
            runs.append(DemoRun(scene, method, case, image, case_metrics(image, case), seconds, result))
    return runs


def demo_picture(runs: list[DemoRun], path: Path) -> None:
    """One row per scene: input (mask, handles red, targets blue) | each method (final handles
    yellow) | the exact answer, each 64 px tile shown at DEMO_SCALE, a label above each column."""
    scenes = list(dict.fromkeys(r.scene for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    n = 64 * DEMO_SCALE
    pad, top, left = 8, 22, 44
    cols = ["input", *methods, "exact answer"]
    pic = Image.new("RGB", (left + len(cols) * (n + pad), top + len(scenes) * (n + pad)), "white")
    draw = ImageDraw.Draw(pic)
    for j, name in enumerate(cols):
        draw.text((left + j * (n + pad) + 4, 4), name, fill="black")
    up = lambda a: Image.fromarray(a).resize((n, n), Image.NEAREST)  # noqa: E731
    for i, scene in enumerate(scenes):
        row = [r for r in runs if r.scene == scene]
        case = row[0].case
        big = lambda p: p * DEMO_SCALE + (DEMO_SCALE - 1) / 2  # noqa: E731 - pixel centres at the bigger scale
        mask = case.mask.repeat(DEMO_SCALE, 0).repeat(DEMO_SCALE, 1)
        tiles = [draw_points(up(case.image), big(case.handle_points), big(case.target_points), mask)]
        tiles += [draw_points(up(r.image), big(case.handle_points), big(case.target_points),
                              final_points=big(r.result.handle_points)) for r in row]
        tiles.append(up(case.ground_truth))
        y = top + i * (n + pad)
        draw.text((4, y + n // 2), scene, fill="black")
        for j, tile in enumerate(tiles):
            pic.paste(tile, (left + j * (n + pad), y))
    pic.save(path)


def demo_line(run: DemoRun) -> str:
    """The figures of one demo run, in words."""
    s = run.scores
    what = (f"point error {s['relative_error']:.0%} of the drag" if run.case.kind in ("rotate", "scale", "stretch")
            else f"object {s['position_error']:.2f} px from its true place ({s['relative_error']:.0%} of the drag)")
    return (f"{run.scene}: {run.method:14s} {what}; IoU with the answer {s['iou']:.2f}; PSNR vs answer in mask "
            f"{s['psnr_in_mask']:.1f} dB (shape {s['shape_psnr']:.1f} dB), vs input outside "
            f"{s['psnr_outside_mask']:.1f} dB; {run.seconds:.1f} s")
