"""Can the shapes model render an object moved by hand in its inverted latent? (issue P5)

A diagnostic beside ``shapes_budget.py``: no drag, no optimiser. For each case,
the input is inverted as the pipeline does (LoRA, DDIM inversion to the first
drag timestep), the moved object's latent cells are moved by hand, and the
result is denoised as the pipeline denoises after a drag (source branch beside
it, mutual self-attention from the first step). Rows, PSNR inside the mask
(the case's mask plus every pixel where the reference differs from the input):

(g) whole latent cells: the object's inverted latent translated by the
    displacement rounded to whole cells (4 px on the shipped model), pasted over its end cells; the
    cells it leaves are taken from the inversion of the reference. Reference:
    the scene rendered with the object at that rounded displacement;
(h) sub-cell: the same with the exact displacement, the latent resampled
    bilinearly (what any latent motion finer than a cell does to it); the cells
    it leaves come from the ground truth's inversion. Reference: the ground truth;
(i) paste only: as (h), but the cells the object leaves keep the input's latent;
(j) the reference of (g) itself inverted and denoised: the reconstruction ceiling.

Each case trains its own LoRA with the preset's settings. Frames: displacements
(dx, dy) image px; latents (1, c, h, w), one cell = size / h px.

    python research/shapes_latent_paste.py --seed 100 --cases 16 --out results/paste-100
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gooddrag.core.ddim import ddim_step, make_schedule
from gooddrag.methods.config import get_preset
from gooddrag.models import backbone, lora
from gooddrag.models.attention import mutual_self_attention
from gooddrag.shapes.benchmark import load_shapes_pipeline
from gooddrag.shapes.metrics import PSNR_CAP, psnr
from gooddrag.shapes.scenes import compose, make_cases

ROWS = {
    "g": "(g) object moved by whole latent cells, vacated cells from the reference's inversion",
    "h": "(h) object moved sub-cell (bilinear), vacated cells from the ground truth's inversion",
    "i": "(i) object moved sub-cell (bilinear), vacated cells keep the input's latent",
    "j": "(j) reference of (g) inverted and denoised (ceiling)",
}


def translate(z: torch.Tensor, dx_cells: float, dy_cells: float) -> torch.Tensor:
    """z (1, c, h, w) moved by (dx, dy) cells; bilinear for fractions, border values outside."""
    _, _, h, w = z.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=z.dtype), torch.arange(w, dtype=z.dtype), indexing="ij")
    gx = (xs - dx_cells + 0.5) / w * 2 - 1  # grid_sample's [-1, 1] frame, align_corners=False
    gy = (ys - dy_cells + 0.5) / h * 2 - 1
    return F.grid_sample(z, torch.stack([gx, gy], -1)[None], mode="bilinear", padding_mode="border",
                         align_corners=False)


def cells_of(coverage: np.ndarray, cell: int) -> torch.Tensor:
    """(H, W) coverage -> (h, w) bool: latent cells touching the object."""
    return F.max_pool2d(torch.from_numpy(coverage > 0).float()[None, None], cell)[0, 0] > 0


def denoise(pipe, source: torch.Tensor, edited: torch.Tensor, text, schedule, config) -> np.ndarray:
    """Both branches to t = 0 in one batch, mutual self-attention from the first step; the edit as uint8."""
    pt = pipe.scheduler.config.prediction_type
    with mutual_self_attention(pipe.unet, config.mutual_attention_start_layer), torch.no_grad():
        for k in range(len(schedule)):
            both = torch.cat([source, edited])  # (2, c, h, w): [source, edited]
            eps = pipe.model_output(both, schedule.timesteps[k], text)
            source, edited = ddim_step(both, eps, schedule.alphas[k], schedule.alphas_prev[k], pt).chunk(2)
    return np.asarray(pipe.decode_latents(edited)[0].convert("RGB"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", type=Path, default=None, help="a trained shapes folder (default: the shipped one)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    pipe = load_shapes_pipeline(folder=args.model)
    torch.set_num_threads(args.threads)
    config = get_preset("shapes-gooddrag", seed=args.seed)
    schedule = make_schedule(pipe.scheduler, config.num_inference_steps, config.inversion_steps)
    scores: dict[str, list[float]] = {k: [] for k in ROWS}
    images: dict[str, list[np.ndarray]] = {k: [] for k in ROWS}
    with tempfile.TemporaryDirectory(prefix="gooddrag-paste-lora-") as cache:
        for case in make_cases(args.cases, args.seed):
            inputs = pipe.check_inputs(Image.fromarray(case.image), case.handle_points, case.target_points,
                                       case.mask, config)
            text = backbone.encode_conditioning(pipe.sd, "", inputs.working_size, pipe.device)
            pipe.prepare_lora(inputs.image, "", config, text_embeddings=text, cache_dir=cache,
                              generator=torch.Generator().manual_seed(args.seed), progress=False)
            try:
                def invert(image: np.ndarray) -> torch.Tensor:
                    return pipe.invert(pipe.encode_image(Image.fromarray(image)), text, schedule, progress=False)

                z_input, z_truth = invert(case.image), invert(case.ground_truth)
                cell = case.size // z_input.shape[-1]
                whole = {i: (round(d[0] / cell), round(d[1] / cell)) for i, d in zip(case.moved, case.displacements)}
                reference = compose(case.background, case.objects,
                                    {i: (cell * cx, cell * cy) for i, (cx, cy) in whole.items()})
                z_reference = invert(reference)
                z_g, z_h = z_input.clone(), z_input.clone()
                none = torch.zeros(z_input.shape[-2:], dtype=torch.bool)
                starts, ends_g, ends_h = none.clone(), none.clone(), none.clone()  # (h, w) unions over moved objects
                for i, d in zip(case.moved, case.displacements):
                    obj = case.objects[i]
                    end_g = cells_of(obj.coverage(case.size, (cell * whole[i][0], cell * whole[i][1])), cell)
                    end_h = cells_of(obj.coverage(case.size, tuple(d)), cell)
                    z_g = torch.where(end_g, torch.roll(z_input, shifts=(whole[i][1], whole[i][0]), dims=(2, 3)), z_g)
                    z_h = torch.where(end_h, translate(z_input, d[0] / cell, d[1] / cell), z_h)
                    starts |= cells_of(obj.coverage(case.size), cell)
                    ends_g |= end_g
                    ends_h |= end_h
                # vacated = left by some object and covered by none at its end (never over a pasted object)
                left_g, left_h = starts & ~ends_g, starts & ~ends_h
                edits = {
                    "g": (z_input, torch.where(left_g, z_reference, z_g), reference),
                    "h": (z_input, torch.where(left_h, z_truth, z_h), case.ground_truth),
                    "i": (z_input, z_h, case.ground_truth),
                    "j": (z_reference, z_reference, reference),
                }
                for key, (source, edited, truth) in edits.items():
                    image = denoise(pipe, source, edited, text, schedule, config)
                    region = case.mask | (truth != case.image).any(-1)
                    scores[key].append(min(psnr(image, truth, region), PSNR_CAP))
                    images[key].append(image)
            finally:
                lora.remove_lora(pipe.unet)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {key: {"row": ROWS[key], "cases": len(v), "mean_psnr_in_region_db": float(np.mean(v))}
               for key, v in scores.items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    np.savez_compressed(args.out / "images.npz", **{k: np.stack(v) for k, v in images.items()})
    lines = ["| row | cases | PSNR in mask dB |", "|---|---|---|"]
    lines += [f"| {s['row']} | {s['cases']} | {s['mean_psnr_in_region_db']:.2f} |" for s in summary.values()]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
