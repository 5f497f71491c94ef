"""Train "shapes-dit-64": an SD3-layout diffusion transformer of the shapes scenes (issue P5).

The transformer counterpart of shapes-64 (:mod:`gooddrag.shapes.train`), so that GoodDrag on a
flow-matching MMDiT can be run and measured offline: a ``StableDiffusion3Pipeline`` whose
``SD3Transformer2DModel`` (patch 2, joint text/image attention, RMS q/k norm, AdaLN) is trained from
scratch with SD3's objective on the same scenes, on a CPU.

Stages (deterministic from ``--seed``):
1. render ``--scenes`` random 64x64 scenes and their mirror images (the shapes-64 data, same seed);
2. reuse the autoencoder of ``--vae-from`` (default: the shipped shapes-64): it is a plain
   ``AutoencoderKL`` (4x down, 8 latent channels, 33 dB), and what the transformer learns does not
   depend on which network made the latents. The latents are normalised as SD3's are,
   ``(z - shift_factor) * scaling_factor``, with shift = their mean and scale = 1 / their std;
3. train the transformer with rectified flow (Esser et al. 2024, "Scaling Rectified Flow
   Transformers", eq. 1-2 and sec. 3.1): ``x_s = (1 - s) x0 + s eps``, target ``eps - x0``, ``s``
   drawn from the logit-normal density (their sec. 3.1, m 0, s 1; diffusers'
   ``compute_density_for_timestep_sampling``) over the scheduler's training table, empty-prompt
   conditioning from two fixed random tiny CLIPs (no T5, as diffusers allows), an EMA of the weights;
4. save the pipeline (fp16 weights), loss curve, a grid of 28-step samples drawn by diffusers' own
   ``StableDiffusion3Pipeline``, and the model card.

The scheduler's ``shift`` is 1 (SD3's is 3.0 at 1024 px; its paper scales the shift with the square
root of the resolution, sec. 5.3.2, and at 64 px the unshifted schedule is the one that fits).

Usage::

    python -m gooddrag.shapes.train_dit --out /tmp/shapes-dit-64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling
from PIL import Image

from ..models.names import shipped_model_dir
from ..models.tiny_dit import T5_WIDTH, make_tiny_sd3_pipeline
from .train import IMAGE_SIZE, cosine_lr, encode_all, plot_losses, recon_psnr, render_dataset

logger = logging.getLogger(__name__)

TEXT_TOKENS = 8
"""Length of each tiny CLIP tokenizer (SD3's is 77): the empty prompt gives 2 x 8 text tokens."""
POOLED = 64  # the two tiny CLIPs' projections, 32 + 32


def transformer_config(width: int, layers: int, head_dim: int = 32) -> dict:
    """The SD3-layout transformer of shapes-dit-64: 16x16x8 latents in 2x2 patches (an 8x8 token grid,
    up to 16x16 = 128 px); SD3's options otherwise (RMS q/k norm as SD3.5)."""
    return dict(sample_size=IMAGE_SIZE // 4, patch_size=2, in_channels=8, out_channels=8, num_layers=layers,
                attention_head_dim=head_dim, num_attention_heads=width // head_dim, joint_attention_dim=T5_WIDTH,
                caption_projection_dim=width, pooled_projection_dim=POOLED, pos_embed_max_size=16,
                qk_norm="rms_norm", dual_attention_layers=())


def normalised_latents(vae: AutoencoderKL, data: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(latents normalised as SD3's, shift_factor, scaling_factor) of ``data`` (N, 3, 64, 64)."""
    z = encode_all(vae, data)  # (N, 8, 16, 16)
    shift = float(z.mean())
    scale = float(1.0 / (z - shift).std())
    return (z - shift) * scale, shift, scale


@torch.no_grad()
def empty_prompt(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeds (1, 16, 96), pooled (1, 64)) of the empty prompt, by the pipeline's own encoder."""
    embeds, _, pooled, _ = pipe.encode_prompt("", None, None, device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False, max_sequence_length=TEXT_TOKENS)
    return embeds, pooled


def train_transformer(latents, text, args) -> tuple[SD3Transformer2DModel, list[float]]:
    """Stage 3: rectified-flow training (module docstring); returns the EMA weights and the losses."""
    torch.manual_seed(args.seed + 1)
    model = SD3Transformer2DModel(**transformer_config(args.width, args.layers))
    noise_sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.shift)
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, args.steps, 200))
    g = torch.Generator().manual_seed(args.seed + 2)
    embeds, pooled = (x.expand(args.batch, *x.shape[1:]) for x in text)
    losses, t0 = [], time.perf_counter()
    model.train()
    for step in range(args.steps):
        x0 = latents[torch.randint(0, len(latents), (args.batch,), generator=g)]  # (B, 8, 16, 16)
        noise = torch.randn(x0.shape, generator=g)
        u = compute_density_for_timestep_sampling("logit_normal", args.batch, logit_mean=0.0, logit_std=1.0,
                                                  generator=g)
        index = (u * noise_sched.config.num_train_timesteps).long()
        sigma = noise_sched.sigmas[index].view(-1, 1, 1, 1)
        noisy = (1.0 - sigma) * x0 + sigma * noise
        pred = model(hidden_states=noisy, timestep=noise_sched.timesteps[index], encoder_hidden_states=embeds,
                     pooled_projections=pooled).sample
        loss = (pred - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        losses.append(loss.detach().item())
        if step % 200 == 0 or step == args.steps - 1:
            logger.info("transformer step %d/%d loss %.4f (%.2f s/step)", step, args.steps, losses[-1],
                        (time.perf_counter() - t0) / (step + 1))
    ema.copy_to(model.parameters())
    model.eval()
    return model, losses


def sample_grid(pipe, path: Path, n: int = 16, seed: int = 0) -> None:
    """Samples of the saved pipeline by diffusers' ``StableDiffusion3Pipeline`` (28 steps, the SD3
    pipeline's default, no guidance: the model knows one prompt), as a 4-column grid."""
    images = pipe(prompt=[""] * n, height=IMAGE_SIZE, width=IMAGE_SIZE, num_inference_steps=28, guidance_scale=1.0,
                  max_sequence_length=TEXT_TOKENS, generator=torch.Generator().manual_seed(seed)).images
    cols = 4
    grid = Image.new("RGB", (cols * (IMAGE_SIZE + 2), math.ceil(n / cols) * (IMAGE_SIZE + 2)), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * (IMAGE_SIZE + 2), (i // cols) * (IMAGE_SIZE + 2)))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)


def write_model_card(folder: Path) -> Path:
    """The model card (README.md) of a trained shapes-dit folder, from its training.json."""
    rec = json.loads((folder / "training.json").read_text())
    a, t, c = rec["args"], rec["timings_s"], rec["transformer_config"]
    card = f"""# shapes-dit-64: a small flow-matching transformer of synthetic scenes

The diffusion-transformer counterpart of shapes-64, shipped with gooddrag so that GoodDrag on a
flow-matching MMDiT can be run, demonstrated and benchmarked offline on a CPU
(`gooddrag demo --model shapes-dit-64`, `gooddrag bench shapes --model shapes-dit-64`). It has the
parts of Stable Diffusion 3 (`SD3Transformer2DModel`: 2x2 patches, joint text/image attention,
RMS q/k norm, AdaLN; two CLIP text encoders, no T5; `FlowMatchEulerDiscreteScheduler`;
`AutoencoderKL` latents normalised with a shift and a scale) and loads through the same loader as a
`StableDiffusion3Pipeline`. It knows only the scenes of `gooddrag.shapes.scenes` (64x64, one to three
flat shapes on a muted background), with the empty prompt; the text encoders are fixed random tiny
CLIPs (8 tokens each).

| | |
|---|---|
| training command | `{rec['command']}` |
| data | {a['scenes']} random scenes (seed {a['seed']}) and their mirror images |
| autoencoder | shapes-64's, reused, not retrained (`{Path(rec['vae_from']).name}`): reconstruction PSNR {rec['vae_recon_psnr_db']} dB; shift_factor {rec['shift_factor']:.4f}, scaling_factor {rec['scaling_factor']:.4f} (the latents' mean and 1 / std) |
| transformer | width {c['num_attention_heads'] * c['attention_head_dim']} ({c['num_attention_heads']} heads of {c['attention_head_dim']}), {c['num_layers']} joint blocks, patch {c['patch_size']}, 16x16x{c['in_channels']} latents = 8x8 tokens; {rec['parameters'] / 1e6:.2f} M parameters |
| objective | rectified flow (Esser et al. 2024): `x_s = (1 - s) x0 + s eps`, target `eps - x0`, s logit-normal (0, 1), scheduler shift {a['shift']:g}; {a['steps']} steps x batch {a['batch']}, AdamW {a['lr']:g} cosine, gradient clip 1, EMA 0.999 |
| final loss | {rec['final_loss']:.4f} (mean of the last 200 steps) |
| time | data {t['data_s']} s, transformer {t['transformer_s']} s |
| device | {rec['device']}, torch {rec['torch']} |
| weights | stored in fp16 (loaded as fp32) |

Loss curve: `loss_curve.png`. Samples (diffusers' `StableDiffusion3Pipeline`, 28 Euler steps, from
noise): `samples.png`.

![loss curve](loss_curve.png)

![samples](samples.png)

Limits: the autoencoder's reconstruction error bounds how faithful any edit can be; the model has
seen no other kind of image and no other prompt.
"""
    path = folder / "README.md"
    path.write_text(card)
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output diffusers folder (refused if it exists)")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="folder whose autoencoder is reused (default: the shipped shapes-64)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling (default: 0)")
    p.add_argument("--scenes", type=int, default=6000, help="random scenes rendered (x2 with mirrors) (default: 6000)")
    p.add_argument("--steps", type=int, default=6000, help="transformer steps (default: 6000)")
    p.add_argument("--batch", type=int, default=32, help="batch (default: 32)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate, cosine (default: 5e-4)")
    p.add_argument("--width", type=int, default=128, help="transformer width, heads of 32 (default: 128)")
    p.add_argument("--layers", type=int, default=8, help="joint transformer blocks (default: 8)")
    p.add_argument("--shift", type=float, default=1.0, help="the flow scheduler's shift (default: 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default (default: 0)")
    return p


def _check(args) -> None:
    if args.width % 32 or args.width <= 0:
        raise SystemExit(f"error: --width {args.width}: must be a positive multiple of 32 (heads of 32)")
    for name in ("steps", "batch", "layers", "scenes"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} {getattr(args, name)}: must be >= 1")


def _save(out: Path, model, vae, shift: float, scale: float, args) -> object:
    """Stage 4's pipeline: the tiny CLIPs (fixed, seed 0) around the trained transformer."""
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    pipe = make_tiny_sd3_pipeline(seed=0, max_length=TEXT_TOKENS, transformer=model, vae=vae)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.shift)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).half()
    pipe.save_pretrained(out)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).float()
    return pipe


def main(argv: list[str] | None = None) -> int:
    """Train and save shapes-dit-64 (the stages of the module docstring); returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    _check(args)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; remove it or choose another --out")
    vae_from = args.vae_from or shipped_model_dir("shapes-64")
    if args.threads:
        torch.set_num_threads(args.threads)
    timings, t0 = {}, time.perf_counter()
    data = torch.from_numpy(render_dataset(args.scenes, args.seed))
    vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae").float().eval()
    latents, shift, scale = normalised_latents(vae, data)
    timings["data_s"] = time.perf_counter() - t0
    text = empty_prompt(make_tiny_sd3_pipeline(seed=0, max_length=TEXT_TOKENS))
    t0 = time.perf_counter()
    model, losses = train_transformer(latents, text, args)
    timings["transformer_s"] = time.perf_counter() - t0
    out.mkdir(parents=True)
    pipe = _save(out, model, vae, shift, scale, args)
    plot_losses({"transformer": losses}, out / "loss_curve.png")
    sample_grid(pipe, out / "samples.png", seed=args.seed)
    record = {
        "command": "python -m gooddrag.shapes.train_dit " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "vae_from": str(vae_from), "vae_recon_psnr_db": round(recon_psnr(vae, data[-256:]), 2),
        "shift_factor": shift, "scaling_factor": scale, "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "device": f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads",
        "torch": torch.__version__, "transformer_config": transformer_config(args.width, args.layers),
        "parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": float(np.mean(losses[-200:])), "losses": [round(v, 6) for v in losses],
    }
    (out / "training.json").write_text(json.dumps(record, indent=2))
    write_model_card(out)
    logger.info("saved %s", out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
