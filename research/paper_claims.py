"""GoodDrag's three claims, measured on the shapes benchmark (docs/method.md, "The paper's claims
on the shapes benchmark"). One command writes the tables (claims.md, claims.json) and the plots:

    python research/paper_claims.py --seeds 0:50,1:20 --out docs/claims

1. **AIDD** vs drag-then-denoise with the same optimiser-step budget: the shapes preset (7 drag
   timesteps x 10 rounds x 3 steps) against all 210 steps at the first drag timestep
   (``drag_end_step 1, track_per_step 70``; ``--rounds`` scales both). Plot: the moved object's distance to its true place
   in the predicted clean image (x0) of every denoising step, median and quartiles over cases.
2. **Noise**: Gaussian noise of variance ``E`` per latent element added to the inverted latent at
   the first denoising step, or ``E / k`` at each of the first k steps (denoising in between); PSNR
   of the decoded result against the same denoising without noise (no drag, no LoRA). Plot:
   PSNR against k for each E.
3. **Information-preserving motion supervision**: Eq. 4 (``information_preserving`` off) and Eq. 8
   (on) at 1 optimiser step per tracking, and Eq. 8 at the preset's 3; a picture of one case.

Every drag of a case reuses one LoRA (its settings are the same in every variant). Tune nothing
here: this measures the authors' settings.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from gooddrag.core.ddim import DDIMSchedule, ddim_step, make_schedule
from gooddrag.methods.config import get_preset
from gooddrag.shapes.benchmark import _fmt, load_shapes_pipeline
from gooddrag.shapes.metrics import PSNR_CAP, case_metrics, find_object, psnr, summarize
from gooddrag.shapes.scenes import make_cases

DRAG_VARIANTS = ("aidd", "drag_then_denoise", "eq4_1step", "eq8_1step")


def drag_variants(rounds: int) -> dict[str, dict]:
    """Overrides of shapes-gooddrag per variant, with ``rounds`` tracking rounds per drag timestep
    (the preset's 10 by default): AIDD spreads drag_end_step x rounds x 3 optimiser steps over the
    drag timesteps, drag-then-denoise takes the same number at the first one."""
    preset = get_preset("shapes-gooddrag")
    return {
        "aidd": {"track_per_step": rounds},
        "drag_then_denoise": {"drag_end_step": 1, "track_per_step": preset.drag_end_step * rounds},
        "eq4_1step": {"track_per_step": rounds, "information_preserving": False, "max_drag_per_track": 1},
        "eq8_1step": {"track_per_step": rounds, "max_drag_per_track": 1},
    }
NOISE_ENERGIES = (0.1, 0.3, 1.0)
"""Variance added per latent element in total (the inverted latent's own variance is about 1)."""
NOISE_SPLITS = (1, 2, 5, 10)
COLUMNS = ("median_relative_error", "success_rate", "lost_rate", "mean_psnr_in_mask", "mean_shape_psnr",
           "mean_psnr_outside_mask")


def object_distance(image: np.ndarray, case) -> float:
    """Mean over moved objects of |centroid in ``image`` - centroid in the ground truth| / |d|; inf if lost."""
    out = []
    for i, d in zip(case.moved, case.displacements):
        ref, _ = find_object(case.ground_truth, case, i)
        found, _ = find_object(image, case, i)
        out.append(math.inf if found is None or ref is None else float(np.linalg.norm(found - ref) / np.linalg.norm(d)))
    return float(np.mean(out))


def drag_runs(pipe, case, seed: int, cache: Path, variants: dict) -> dict:
    """Every variant's edit of ``case`` (name -> overrides of shapes-gooddrag): metrics, the x0
    trajectory's distances, the image."""
    out = {}
    for name, overrides in variants.items():
        frames = []

        def on_step(event, frames=frames):
            if event.phase == "denoise":
                frames.append(event.latents.detach().clone())

        config = get_preset("shapes-gooddrag", seed=seed, **overrides)
        result = pipe(Image.fromarray(case.image), case.handle_points, case.target_points, mask=case.mask,
                      config=config, generator=torch.Generator().manual_seed(seed), lora_cache_dir=cache,
                      callback=on_step, progress=False)
        image = np.asarray(result.image.convert("RGB"))
        decoded = [np.asarray(im.convert("RGB")) for im in pipe.decode_latents(torch.cat(frames))]
        out[name] = {"image": image, "metrics": case_metrics(image, case),
                     "trajectory": [object_distance(im, case) for im in decoded]}
    return out


@torch.no_grad()
def noise_psnrs(pipe, case, seed: int) -> dict:
    """{(energy, k): PSNR dB of the noised denoising against the plain one} for one case."""
    config = get_preset("shapes-gooddrag", lora_steps=0)
    inputs = pipe.check_inputs(Image.fromarray(case.image), case.handle_points, case.target_points, None, config)
    schedule = make_schedule(pipe.scheduler, config.num_inference_steps, config.inversion_steps)
    schedule = DDIMSchedule(*(x.to(pipe.device) for x in (schedule.timesteps, schedule.alphas, schedule.alphas_prev)))
    from gooddrag.models.backbone import encode_conditioning

    text = encode_conditioning(pipe.sd, "", inputs.working_size, pipe.device)
    inverted = pipe.invert(pipe.encode_image(inputs.working_image), text, schedule, progress=False)
    pt = pipe.scheduler.config.prediction_type

    def denoise(energy: float, k: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(seed)
        z = inverted
        for step in range(len(schedule)):
            if step < k and energy > 0:
                z = z + math.sqrt(energy / k) * torch.randn(z.shape, generator=gen).to(z.device)
            eps = pipe.model_output(z, schedule.timesteps[step], text)
            z = ddim_step(z, eps, schedule.alphas[step], schedule.alphas_prev[step], pt)
        return np.asarray(pipe.decode_latents(z)[0].convert("RGB"))

    clean = denoise(0.0, 1)
    return {(e, k): min(psnr(denoise(e, k), clean), PSNR_CAP) for e in NOISE_ENERGIES for k in NOISE_SPLITS}


_PIPE = None


def _load_worker() -> None:
    global _PIPE
    _PIPE = load_shapes_pipeline()


def _run_case(task) -> tuple[dict, dict]:
    """One case in a worker: every drag variant (one LoRA) and the noise experiment."""
    seed, _, case, variants = task
    with tempfile.TemporaryDirectory(prefix="gooddrag-claims-lora-") as cache:
        runs = drag_runs(_PIPE, case, seed, Path(cache), variants)
    return runs, {f"{e}/{k}": v for (e, k), v in noise_psnrs(_PIPE, case, seed).items()}


def quartiles(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(rows, dtype=np.float64)
    a = np.where(np.isfinite(a), a, np.nan)
    return tuple(np.nanpercentile(a, q, axis=0) for q in (25, 50, 75))


def plots(out: Path, trajectories: dict, noise: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("aidd", "AIDD (7 drag timesteps)"), ("drag_then_denoise", "drag, then denoise (1)")):
        lo, mid, hi = quartiles(trajectories[name])
        steps = np.arange(1, len(mid) + 1)
        ax.plot(steps, mid, label=label)
        ax.fill_between(steps, lo, hi, alpha=0.25)
    ax.set_xlabel("denoising step")
    ax.set_ylabel("object's distance to its place / drag length")
    ax.set_title("Object in the predicted clean image (median, quartiles)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "claims-aidd-trajectory.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for e in NOISE_ENERGIES:
        per_k = [[row[f"{e}/{k}"] for row in noise] for k in NOISE_SPLITS]
        mid = [np.median(v) for v in per_k]
        lo = [np.percentile(v, 25) for v in per_k]
        hi = [np.percentile(v, 75) for v in per_k]
        ax.errorbar(NOISE_SPLITS, mid, yerr=[np.subtract(mid, lo), np.subtract(hi, mid)], marker="o", capsize=3,
                    label=f"total variance {e}")
    ax.set_xlabel("timesteps the noise is split over (k)")
    ax.set_ylabel("PSNR vs. no noise (dB)")
    ax.set_xscale("log")
    ax.set_xticks(NOISE_SPLITS, [str(k) for k in NOISE_SPLITS])
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "claims-noise.png", dpi=100)
    plt.close(fig)


def side_by_side(out: Path, case, images: dict) -> None:
    scale, pad, top = 3, 4, 16
    names = ["input", "ground truth", *images]
    tiles = [case.image, case.ground_truth, *images.values()]
    side = case.size * scale
    fig = Image.new("RGB", (len(tiles) * (side + pad), side + top), "white")
    draw = ImageDraw.Draw(fig)
    for i, (name, tile) in enumerate(zip(names, tiles)):
        fig.paste(Image.fromarray(tile).resize((side, side), Image.NEAREST), (i * (side + pad), top))
        draw.text((i * (side + pad) + 2, 2), name, fill="black")
    fig.save(out / "claims-motion-supervision.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0:50,1:20", help="SEED:CASES,... (default: %(default)s; tune on 100, 200)")
    ap.add_argument("--out", type=Path, required=True, help="folder for claims.md, claims.json and the plots")
    ap.add_argument("--rounds", type=int, default=10,
                    help="tracking rounds per drag timestep (default: the preset's %(default)s; fewer for a quick check)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes, one per core (default: %(default)s)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override of every drag variant, JSON values (for quick checks, e.g. lora_steps=2)")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    variants = {name: {**v, **overrides} for name, v in drag_variants(args.rounds).items()}
    plan = [(int(s), int(n)) for s, n in (part.split(":") for part in args.seeds.split(","))]
    tasks = [(seed, i, case, variants) for seed, n in plan for i, case in enumerate(make_cases(n, seed))]
    rows, trajectories, noise = [], {name: [] for name in DRAG_VARIANTS}, []
    picture = None
    # One process per core, each with its own model on one torch thread (load_shapes_pipeline).
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_load_worker) as pool:
        for (seed, i, case, _), (runs, noise_row) in tqdm(zip(tasks, pool.map(_run_case, tasks)), total=len(tasks),
                                                          desc="paper claims", unit="case"):
            for name, run in runs.items():
                rows.append({"seed": seed, "case": i, "method": name, **run["metrics"]})
                trajectories[name].append(run["trajectory"])
            if picture is None:
                picture = (case, {name: runs[name]["image"] for name in ("eq4_1step", "eq8_1step", "aidd")})
            noise.append({"seed": seed, "case": i} | noise_row)
    summary = summarize(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plots(args.out, trajectories, noise)
    side_by_side(args.out, *picture)
    (args.out / "claims.json").write_text(json.dumps({"seeds": plan, "variants": variants, "rows": rows,
                                                      "summary": summary, "trajectories": trajectories,
                                                      "noise": noise}, indent=1, default=_fmt))
    label = {"aidd": "AIDD (preset: 7 x 10 x 3)", "drag_then_denoise": "drag then denoise (1 x 70 x 3)",
             "eq4_1step": "Eq. 4, 1 step per tracking", "eq8_1step": "Eq. 8, 1 step per tracking"}
    lines = ["| variant | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    lines += [f"| {label[m]} | " + " | ".join(_fmt(summary[m][c]) for c in COLUMNS) + " |" for m in DRAG_VARIANTS]
    lines += ["", "| total noise variance | " + " | ".join(f"k = {k}" for k in NOISE_SPLITS) + " |",
              "|---|" + "---|" * len(NOISE_SPLITS)]
    for e in NOISE_ENERGIES:
        cells = []
        for k in NOISE_SPLITS:
            v = np.asarray([row[f"{e}/{k}"] for row in noise])
            cells.append(f"{np.median(v):.2f} ({np.percentile(v, 25):.2f}-{np.percentile(v, 75):.2f})")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    (args.out / "claims.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))  # a script's report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
