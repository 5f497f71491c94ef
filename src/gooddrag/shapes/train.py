"""Train the small latent diffusion model that ships with gooddrag ("shapes-64").

A Stable-Diffusion-shaped pipeline (AutoencoderKL + UNet2DConditionModel +
CLIP text encoder and tokenizer + DDIM scheduler with SD1.5's betas) trained
from scratch on the synthetic scenes of :mod:`gooddrag.shapes.scenes`, so the
very same engine code (loader, LoRA, inversion, AIDD, tracking, mutual
self-attention) runs on it, offline, on a CPU.

Why a latent model with its own autoencoder rather than pixel space: the
engine, the loader and the LoRA code are written for SD's (VAE, UNet) pair,
and a pixel model would need a fake identity VAE that AutoencoderKL cannot
express; a 4x autoencoder also makes the UNet 16x cheaper, which is what lets
the whole training run fit in well under an hour on 2 CPU cores.

Stages (all deterministic from ``--seed``):
1. render ``--scenes`` random 64x64 scenes (plus their mirror images);
2. train the autoencoder (4x down, 8 latent channels: with SD's 4 it stayed
   near 20 dB PSNR in our CPU budget) on random 32x32 crops:
   it is fully convolutional, and crops make each step 4x cheaper;
3. encode every scene, set ``scaling_factor`` = 1 / std of the latents (as SD
   does), train the UNet with the eps-prediction MSE at uniform timesteps
   (SD1.5's scaled-linear betas, 1000 steps), empty-prompt conditioning,
   keeping an exponential moving average of its weights; optionally with
   v-prediction (``--prediction-type``) and Min-SNR loss weighting
   (``--snr-gamma``; Hang et al. 2023, "Efficient Diffusion Training via
   Min-SNR Weighting Strategy", eq. 5-6);
4. save the pipeline with ``save_pretrained`` (weights in fp16 to halve the
   package size; they load as fp32), a loss curve, a grid of DDIM samples and
   a model card.

``--latent-factor 2`` (an experiment, not the shipped model) trains a 2x
autoencoder with 4 latent channels and a UNet with one more, narrow level at
32x32 instead (``VAE_CONFIG_F2``, ``UNET_CONFIG_F2``).

``--vae-from FOLDER`` skips stage 2 and reuses the autoencoder of an earlier
run (its training record is carried into the new model card).

Usage::

    python -m gooddrag.shapes.train --out src/gooddrag/assets/shapes-64
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
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image, ImageDraw

from ..core.ddim import SD15_SCHEDULER_CONFIG
from ..core.geometry import vae_scale_factor
from ..models.tiny import make_tiny_pipeline
from .scenes import random_scene

logger = logging.getLogger(__name__)

IMAGE_SIZE = 64

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(24, 48, 64),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=8,
    sample_size=IMAGE_SIZE,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=VAE_CONFIG["latent_channels"],
    out_channels=VAE_CONFIG["latent_channels"],
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(64, 96, 96),
    layers_per_block=1,
    norm_num_groups=16,
    cross_attention_dim=32,
    attention_head_dim=8,
)
# ``--latent-factor 2`` (an experiment, issue P5): a 2x autoencoder, so an object
# spans twice as many latent cells, and a UNet with one more level on top, at
# 32x32, kept narrow (32 channels) so that it costs about what the 16x16 level does.
VAE_CONFIG_F2 = dict(
    VAE_CONFIG,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 64),
    latent_channels=4,
)
UNET_CONFIG_F2 = dict(
    UNET_CONFIG,
    sample_size=IMAGE_SIZE // 2,
    in_channels=VAE_CONFIG_F2["latent_channels"],
    out_channels=VAE_CONFIG_F2["latent_channels"],
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    block_out_channels=(32, 64, 96, 96),
)
CONFIGS = {4: (VAE_CONFIG, UNET_CONFIG), 2: (VAE_CONFIG_F2, UNET_CONFIG_F2)}
"""Autoencoder and UNet configs by the autoencoder's downsampling factor."""


def render_dataset(n: int, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """(2n, 3, size, size) float32 in [-1, 1]: n random scenes and their mirror images."""
    rng = np.random.default_rng(seed)
    images = np.stack([random_scene(rng, size=size).image for _ in range(n)])  # (n, H, W, 3) uint8
    images = np.concatenate([images, images[:, :, ::-1]])
    return (images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1.0


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(data: torch.Tensor, steps: int, batch: int, crop: int, lr: float, seed: int, log_every: int,
              config: dict = VAE_CONFIG):
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    # Start the posterior's log-variance channels at -10 (std 0.007): with the
    # default 0 the decoder trains on latents drowned in unit noise and learns
    # a blur; the tiny KL weight would take far longer than our budget to fix it.
    with torch.no_grad():
        c = config["latent_channels"]
        vae.encoder.conv_out.weight[c:] *= 0.01
        vae.encoder.conv_out.bias[c:] = -10.0
    fixed = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:64]]
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, 100))
    g = torch.Generator().manual_seed(seed)
    losses = []
    vae.train()
    n, _, h, w = data.shape
    for step in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        y0 = int(torch.randint(0, h - crop + 1, (1,), generator=g))
        x0 = int(torch.randint(0, w - crop + 1, (1,), generator=g))
        x = data[idx, :, y0:y0 + crop, x0:x0 + crop]
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=g)).sample
        # MSE rather than L1: with L1 the reconstruction stalled near 21 dB PSNR
        # (1500 steps); MSE at lr 1e-3 passed 26 dB in 400 steps. KL weight as
        # SD's autoencoder (1e-6).
        loss = F.mse_loss(recon, x) + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        if step % log_every == 0 or step == steps - 1:
            logger.info("vae step %d/%d loss %.4f", step, steps, losses[-1])
        if step % (5 * log_every) == 0 or step == steps - 1:
            logger.info("vae step %d: reconstruction PSNR %.2f dB (64 full images)", step, recon_psnr(vae, fixed))
            vae.train()
    vae.eval()
    return vae, losses


@torch.no_grad()
def recon_psnr(vae, images: torch.Tensor) -> float:
    """PSNR (dB, images in [0, 1]) of decode(posterior mean) against the images."""
    vae.eval()
    recon = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    return float(-10 * torch.log10(((recon - images) / 2).pow(2).mean()))


@torch.no_grad()
def encode_all(vae, data: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([vae.encode(data[i:i + batch]).latent_dist.mean for i in range(0, len(data), batch)])


def loss_weights(noise_sched, t: torch.Tensor, snr_gamma: float, prediction_type: str) -> torch.Tensor:
    """(B,) per-sample weights of the MSE. Min-SNR-gamma (Hang et al. 2023, eq. 5-6): the
    x0-space weight min(SNR, gamma), expressed for the eps target as min(SNR, gamma) / SNR
    and for the v target as min(SNR, gamma) / (SNR + 1); ``snr_gamma <= 0``: all ones."""
    if snr_gamma <= 0:
        return torch.ones(t.shape)
    snr = compute_snr(noise_sched, t)
    clipped = torch.clamp(snr, max=snr_gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def training_target(noise_sched, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                    prediction_type: str) -> torch.Tensor:
    """What the UNet learns to output for x_t = sqrt(a) x0 + sqrt(1 - a) noise (a = alpha_bar_t):
    the noise (epsilon), or v = sqrt(a) noise - sqrt(1 - a) x0 (Salimans & Ho 2022, sec. 4)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_sched.get_velocity(x0, noise, t)
    raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")


def train_unet(latents, text, steps, batch, lr, seed, log_every, ema_decay=0.999, snr_gamma=0.0,
               prediction_type="epsilon", config: dict = UNET_CONFIG):
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**config)
    betas = {k: SD15_SCHEDULER_CONFIG[k] for k in ("beta_start", "beta_end", "beta_schedule", "clip_sample")}
    noise_sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type, **betas)
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, 200))
    g = torch.Generator().manual_seed(seed + 2)
    cond = text.expand(batch, -1, -1)
    losses = []
    unet.train()
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        pred = unet(noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        target = training_target(noise_sched, x0, noise, t, prediction_type)
        per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
        loss = (loss_weights(noise_sched, t, snr_gamma, prediction_type) * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        losses.append(loss.detach().item())
        if step % log_every == 0 or step == steps - 1:
            logger.info("unet step %d/%d loss %.4f", step, steps, losses[-1])
    ema.copy_to(unet.parameters())
    unet.eval()
    return unet, losses


def plot_losses(curves: dict[str, list[float]], path: Path, width: int = 640, height: int = 240) -> None:
    """Loss curves (moving average of 50 steps, log scale), drawn with PIL to keep
    matplotlib out of the dependencies."""
    img = Image.new("RGB", (width, height * len(curves)), "white")
    draw = ImageDraw.Draw(img)
    for row, (name, values) in enumerate(curves.items()):
        v = np.asarray(values, dtype=np.float64)
        k = min(50, len(v))
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        logv = np.log10(np.maximum(smooth, 1e-8))
        lo, hi = logv.min(), logv.max() + 1e-9
        top, left, pw, ph = row * height + 24, 50, width - 70, height - 50
        draw.rectangle([left, top, left + pw, top + ph], outline="black")
        pts = [(left + pw * i / max(1, len(logv) - 1), top + ph * (1 - (y - lo) / (hi - lo))) for i, y in enumerate(logv)]
        draw.line(pts, fill=(30, 80, 200), width=2)
        draw.text((left, top - 18), f"{name} loss (log10, 50-step mean): {10**hi:.4f} -> {smooth[-1]:.4f}, "
                  f"{len(v)} steps", fill="black")
    img.save(path)


def save_pipeline(out: Path, vae, unet, scaling_factor: float, prediction_type: str = "epsilon"):
    base = make_tiny_pipeline(seed=0)  # its CLIP text encoder and tokenizer (fixed, random)
    vae.register_to_config(scaling_factor=scaling_factor)
    scheduler = DDIMScheduler(**{**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    pipe = StableDiffusionPipeline(
        vae=vae.half(), text_encoder=base.text_encoder.half(), tokenizer=base.tokenizer, unet=unet.half(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    for m in (vae, unet, base.text_encoder):
        m.float()
    return pipe


@torch.no_grad()
def sample_grid(vae, unet, text, scaling_factor, path: Path, n: int = 16, steps: int = 50, seed: int = 0,
                prediction_type: str = "epsilon"):
    """DDIM samples from pure noise (eta 0), decoded, as a 4-column grid."""
    sched = DDIMScheduler(**{**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type})
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    side = unet.config.sample_size  # latent cells
    z = torch.randn(n, unet.config.in_channels, side, side, generator=g)
    cond = text.expand(n, -1, -1)
    for t in sched.timesteps:
        z = sched.step(unet(z, t, encoder_hidden_states=cond).sample, t, z).prev_sample
    images = ((vae.decode(z / scaling_factor).sample.clamp(-1, 1) + 1) * 127.5).round().byte()
    images = images.permute(0, 2, 3, 1).numpy()
    cols = 4
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * (IMAGE_SIZE + 2), rows * (IMAGE_SIZE + 2)), "white")
    for i, im in enumerate(images):
        grid.paste(Image.fromarray(im), ((i % cols) * (IMAGE_SIZE + 2), (i // cols) * (IMAGE_SIZE + 2)))
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(path)


def write_model_card(folder: Path) -> Path:
    """The model card (README.md) of a trained folder, from its training.json."""
    rec = json.loads((folder / "training.json").read_text())
    t = rec["timings_s"]
    a = rec["args"]
    objective = "v-prediction" if a.get("prediction_type") == "v_prediction" else "eps-prediction"
    objective += f" MSE with Min-SNR-{a['snr_gamma']:g} weighting" if a.get("snr_gamma") else " MSE"
    reused = rec.get("vae_from")
    vae_note = (f" (reused, not retrained: trained by `{reused['command']}` on {reused['device']}"
                + (f", on {reused['scenes']} scenes of seed {reused['seed']}" if "scenes" in reused else "") + ")"
                if reused else "")
    loss_kind = "weighted loss" if a.get("snr_gamma") else "loss"
    vae_time = f"{t['vae_s']} s" + (" (in the run that trained it)" if reused else "")
    card = f"""# shapes-64: a small latent diffusion model of synthetic scenes

Shipped with gooddrag so that the drag engine can be run, demonstrated and
benchmarked offline on a CPU (`gooddrag demo`, `gooddrag bench shapes`). It has
the same parts as Stable Diffusion 1.x (AutoencoderKL, UNet2DConditionModel with
cross-attention, CLIP text encoder and tokenizer, DDIM scheduler with SD1.5's
betas) and loads through the same loader. It knows only the scenes of
`gooddrag.shapes.scenes`: 64x64 images of a muted gradient background with a
soft texture and one to three saturated shapes (disc, square, triangle,
ellipse, rectangle, diamond; solid or striped). The text encoder is a fixed
random tiny CLIP; the model was trained with the empty prompt only.

| | |
|---|---|
| training command | `{rec['command']}` |
| data | {rec['args']['scenes']} random scenes (seed {rec['args']['seed']}) and their mirror images |
| autoencoder | {rec['vae_config']['block_out_channels']} channels, {vae_scale_factor(rec['vae_config'])}x down, {rec['vae_config']['latent_channels']} latent channels; {rec['args']['vae_steps']} steps x batch {rec['args']['vae_batch']} of 32x32 crops, AdamW {rec['args'].get('vae_lr', 2e-3):g} cosine, MSE + 1e-6 KL; reconstruction PSNR {rec['vae_recon_psnr_db']} dB; scaling_factor {rec['scaling_factor']:.4f}{vae_note} |
| UNet | {rec['unet_config']['block_out_channels']} channels, {rec['unet_config'].get('layers_per_block', 1)} layer(s) per block, attention at 8x8 and 4x4, {rec['unet_config']['sample_size']}x{rec['unet_config']['sample_size']} latents; {rec['args']['unet_steps']} steps x batch {rec['args']['unet_batch']}, AdamW {rec['args'].get('unet_lr', 4e-4):g} cosine, {objective}, EMA 0.999 |
| final losses | autoencoder {rec['final_loss']['autoencoder']:.4f}, UNet {rec['final_loss']['unet']:.4f} ({loss_kind}; means of the last 100 / 200 steps) |
| time | render {t['render_s']} s, autoencoder {vae_time}, UNet {t['unet_s']} s{(' (' + rec['note'] + ')') if rec.get('note') else ''} |
| device | {rec['device']}, torch {rec['torch']} |
| weights | stored in fp16 (loaded as fp32) |

Loss curves: `loss_curve.png`. Samples (DDIM, 50 steps, from noise): `samples.png`.

![loss curves](loss_curve.png)

![samples](samples.png)

Limits: the autoencoder's reconstruction error bounds how faithful any edit can
be (see `vae_recon_psnr_db`); the model has seen no other kind of image.
"""
    path = folder / "README.md"
    path.write_text(card)
    return path


def _channels(text: str) -> tuple[int, ...]:
    """argparse type of ``--unet-channels``: "96,128,128" -> (96, 128, 128)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: channels must be positive")
    return values


def _parser() -> argparse.ArgumentParser:
    """The options of ``python -m gooddrag.shapes.train``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output diffusers folder (refused if it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling (default: 0)")
    p.add_argument("--scenes", type=int, default=6000, help="random scenes rendered (x2 with mirrors) (default: 6000)")
    p.add_argument("--vae-steps", type=int, default=4000, help="autoencoder steps (default: 4000)")
    p.add_argument("--vae-batch", type=int, default=32, help="autoencoder batch (default: 32)")
    p.add_argument("--vae-lr", type=float, default=1e-3, help="autoencoder peak learning rate (default: 1e-3)")
    p.add_argument("--unet-steps", type=int, default=6000, help="UNet steps (default: 6000)")
    p.add_argument("--unet-batch", type=int, default=32, help="UNet batch (default: 32)")
    p.add_argument("--unet-lr", type=float, default=1e-3,
                   help="UNet peak learning rate (default: 1e-3; 4e-4 learnt ~1.5x slower in a 340-step trial)")
    p.add_argument("--snr-gamma", type=float, default=0.0,
                   help="Min-SNR loss weighting gamma (Hang et al. 2023; 5 in the paper); 0 = off (default: 0)")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"],
                   help="what the UNet predicts (default: epsilon)")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="reuse the autoencoder of an earlier trained folder instead of training one")
    p.add_argument("--latent-factor", type=int, default=4, choices=sorted(CONFIGS),
                   help="the autoencoder's downsampling factor: 4 (the shipped model) or 2 (an experiment: "
                        "32x32 latents, a UNet with one more level) (default: 4)")
    p.add_argument("--unet-channels", type=_channels, default=None,
                   help="the UNet's block_out_channels, comma-separated, one per level (default: the "
                        "config's, 64,96,96 for --latent-factor 4)")
    p.add_argument("--unet-layers-per-block", type=int, default=None,
                   help="the UNet's layers_per_block (default: the config's, 1)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default (default: 0)")
    return p


def _model_configs(args: argparse.Namespace) -> tuple[dict, dict]:
    """(autoencoder config, UNet config) of ``--latent-factor``, with the UNet size flags applied;
    a value that cannot work ends the run with a one-line error."""
    vae_config, unet_config = CONFIGS[args.latent_factor]
    if args.unet_channels is not None:
        levels = len(unet_config["block_out_channels"])
        if len(args.unet_channels) != levels:
            raise SystemExit(f"error: --unet-channels {','.join(map(str, args.unet_channels))}: "
                             f"give {levels} values, one per UNet level")
        bad = [c for c in args.unet_channels if c % unet_config["norm_num_groups"]]
        if bad:
            raise SystemExit(f"error: --unet-channels: {bad[0]} is not a multiple of the "
                             f"{unet_config['norm_num_groups']} normalisation groups")
        unet_config = dict(unet_config, block_out_channels=tuple(args.unet_channels))
    if args.unet_layers_per_block is not None:
        if args.unet_layers_per_block < 1:
            raise SystemExit(f"error: --unet-layers-per-block {args.unet_layers_per_block}: must be >= 1")
        unet_config = dict(unet_config, layers_per_block=args.unet_layers_per_block)
    return vae_config, unet_config


def _reused_vae_record(args: argparse.Namespace) -> dict | None:
    """The training record of ``--vae-from`` (None without it), after checking that its
    autoencoder has the ``--latent-factor`` asked for."""
    if args.vae_from is None:
        return None
    try:
        vae_record = json.loads((args.vae_from / "training.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: --vae-from {args.vae_from}: no readable training.json ({exc})")
    try:  # the config of the weights that will be loaded, not the record's copy
        reused_factor = vae_scale_factor(json.loads((args.vae_from / "vae" / "config.json").read_text()))
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(f"error: --vae-from {args.vae_from}: no readable vae/config.json ({exc})")
    if reused_factor != args.latent_factor:
        raise SystemExit(f"error: --vae-from {args.vae_from}: its autoencoder is "
                         f"{reused_factor}x, not --latent-factor {args.latent_factor}")
    return vae_record


def _autoencoder(args: argparse.Namespace, data: torch.Tensor, vae_config: dict, vae_record: dict | None,
                 timings: dict) -> tuple[AutoencoderKL, list[float]]:
    """Stage 2: train the autoencoder, or load the one of ``--vae-from`` (then ``args`` takes the
    reused run's autoencoder settings, for the card). Returns (autoencoder, its losses); its
    seconds go to ``timings["vae_s"]`` (for a reused one, those of the run that trained it)."""
    t0 = time.perf_counter()
    if vae_record is None:
        vae, vae_losses = train_vae(data, args.vae_steps, args.vae_batch, 32, args.vae_lr, args.seed, 100,
                                    config=vae_config)
        timings["vae_s"] = time.perf_counter() - t0
        return vae, vae_losses
    vae = AutoencoderKL.from_pretrained(args.vae_from / "vae").float().eval()
    vae_losses = vae_record.get("losses", {}).get("autoencoder") or [vae_record["final_loss"]["autoencoder"]]
    timings["vae_s"] = vae_record["timings_s"]["vae_s"]
    for key in ("vae_steps", "vae_batch", "vae_lr"):  # the card describes how the reused autoencoder was made
        setattr(args, key, vae_record["args"][key])
    return vae, vae_losses


def _empty_prompt_embedding() -> torch.Tensor:
    """(1, tokens, dim) text embedding of the empty prompt by the fixed tiny CLIP text encoder."""
    base = make_tiny_pipeline(seed=0)
    with torch.no_grad():
        ids = base.tokenizer("", padding="max_length", max_length=base.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        return base.text_encoder(ids)[0]


def _training_record(args: argparse.Namespace, argv: list[str] | None, *, timings: dict, vae_psnr: float,
                     scaling_factor: float, losses: dict[str, list[float]], vae_config: dict, unet_config: dict,
                     vae_record: dict | None) -> dict:
    """What ``training.json`` holds: the command, settings, timings, losses and configs, and where a
    reused autoencoder was really trained (carried through a chain of reuses)."""
    vae_losses, unet_losses = losses["autoencoder"], losses["unet"]
    record = {
        "command": "python -m gooddrag.shapes.train " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "device": f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "vae_recon_psnr_db": round(vae_psnr, 2),
        "scaling_factor": scaling_factor,
        "final_loss": {"autoencoder": float(np.mean(vae_losses[-100:])), "unet": float(np.mean(unet_losses[-200:]))},
        "vae_config": vae_config,
        "unet_config": unet_config,
        "losses": {"autoencoder": [round(v, 6) for v in vae_losses], "unet": [round(v, 6) for v in unet_losses]},
    }
    if vae_record is not None:
        origin = vae_record.get("vae_from") or {
            "command": vae_record["command"], "device": vae_record["device"],
            "scenes": vae_record["args"]["scenes"], "seed": vae_record["args"]["seed"]}
        record["vae_from"] = {**origin, "folder": str(args.vae_from),
                              "vae_recon_psnr_db_there": vae_record["vae_recon_psnr_db"]}
        record["args"]["vae_from"] = str(args.vae_from)
    return record


def main(argv: list[str] | None = None) -> int:
    """Train and save the model (the stages of the module docstring); returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; remove it or choose another --out")
    vae_config, unet_config = _model_configs(args)
    vae_record = _reused_vae_record(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    timings = {}
    t0 = time.perf_counter()
    data = torch.from_numpy(render_dataset(args.scenes, args.seed))
    timings["render_s"] = time.perf_counter() - t0
    logger.info("rendered %d images in %.1f s", len(data), timings["render_s"])

    vae, vae_losses = _autoencoder(args, data, vae_config, vae_record, timings)
    vae_psnr = recon_psnr(vae, data[-256:])
    latents = encode_all(vae, data)
    scaling_factor = float(1.0 / latents.std())
    latents = latents * scaling_factor
    logger.info("vae done in %.0f s, recon PSNR %.2f dB, scaling_factor %.4f", timings["vae_s"], vae_psnr, scaling_factor)

    text = _empty_prompt_embedding()
    t0 = time.perf_counter()
    unet, unet_losses = train_unet(latents, text, args.unet_steps, args.unet_batch, args.unet_lr, args.seed, 200,
                                   snr_gamma=args.snr_gamma, prediction_type=args.prediction_type,
                                   config=unet_config)
    timings["unet_s"] = time.perf_counter() - t0

    out.mkdir(parents=True)
    save_pipeline(out, vae, unet, scaling_factor, args.prediction_type)
    plot_losses({"autoencoder": vae_losses, "unet": unet_losses}, out / "loss_curve.png")
    sample_grid(vae, unet, text, scaling_factor, out / "samples.png", seed=args.seed,
                prediction_type=args.prediction_type)
    record = _training_record(args, argv, timings=timings, vae_psnr=vae_psnr, scaling_factor=scaling_factor,
                              losses={"autoencoder": vae_losses, "unet": unet_losses}, vae_config=vae_config,
                              unet_config=unet_config, vae_record=vae_record)
    (out / "training.json").write_text(json.dumps(record, indent=2))
    write_model_card(out)
    logger.info("saved %s", out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
