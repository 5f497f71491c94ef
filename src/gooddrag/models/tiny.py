"""Tiny Stable-Diffusion-shaped models for tests and offline smoke runs.

The tiny pipeline has the same *kinds* of parts as Stable Diffusion 1.x (a
UNet2DConditionModel with cross-attention in four down/up blocks, an
AutoencoderKL, a CLIP text encoder and a CLIP tokenizer built from a local
vocabulary) but with a few thousand parameters, so a forward+backward pass takes
tens of milliseconds on a CPU. Weights are random (seeded): it exercises every
code path of the engine, it does not make pretty pictures.

Usage::

    python -m gooddrag.models.tiny /tmp/tiny-sd   # writes a diffusers folder
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..core.ddim import SD15_SCHEDULER_CONFIG

__all__ = ["make_tiny_pipeline", "save_tiny_pipeline", "tiny_vocab"]


def _byte_unicode_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary (used with no merges): every byte and byte+"</w>"."""
    alphabet = _byte_unicode_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def tiny_vae(**config):
    """A tiny ``AutoencoderKL`` with SD's layout (4 levels, factor 8, 4 latent channels); ``config``
    overrides (SDXL's scaling factor and upcast flag, say). Random weights from torch's global seed."""

    return AutoencoderKL(**{
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (8, 8, 16, 16),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "latent_channels": 4,
        "sample_size": 128,
    } | config)


def make_tiny_pipeline(seed: int = 0):
    """Build a tiny ``StableDiffusionPipeline`` with random weights (seeded)."""

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    # A random UNet's prediction swings wildly between neighbouring timesteps, so
    # DDIM inversion of it cannot reconstruct anything; a trained model's changes
    # slowly along a trajectory. Scaling the output layer down gives the random
    # model that property (tests/test_ddim.py measures the reconstruction).
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.02)
    vae = tiny_vae()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=2 * 256 + 2,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=512,
            eos_token_id=513,
            pad_token_id=513,
        )
    )
    # The SD1.5 scheduler settings (docs/method.md, "Pipeline" 5).
    scheduler = DDIMScheduler(**SD15_SCHEDULER_CONFIG)
    tokenizer = CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=77)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def save_tiny_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and ``save_pretrained`` it as a diffusers folder."""
    folder = Path(folder)
    pipe = make_tiny_pipeline(seed=seed)
    pipe.save_pretrained(folder)
    return folder


if __name__ == "__main__":  # pragma: no cover - thin script
    if len(sys.argv) != 2:
        sys.exit("usage: python -m gooddrag.models.tiny OUTPUT_FOLDER")
    save_tiny_pipeline(sys.argv[1])
