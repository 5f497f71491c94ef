"""A tiny SDXL-shaped pipeline for tests and offline smoke runs.

The tiny pipeline has the parts of SDXL base, each a few thousand parameters:

* a ``UNet2DConditionModel`` with SDXL's layout: three levels, no attention
  at the first (``DownBlock2D`` / ``UpBlock2D``), two transformer layers per
  attention block at the deepest level (``transformer_layers_per_block``
  (1, 1, 2); SDXL: (1, 2, 10)), linear projections, and the added
  ``text_time`` conditioning: ``projection_class_embeddings_input_dim`` =
  6 time ids x ``addition_time_embed_dim`` + the pooled text width;
* two CLIP text encoders of different widths (32 and 48; SDXL: 768 and 1280),
  the second a ``CLIPTextModelWithProjection`` whose projection (32 wide;
  SDXL: 1280) is the pooled embedding; cross-attention width 32 + 48 = 80.
  The widths differ on purpose: diffusers' single-file loader tells the two
  encoders apart by their width, as it does for the real ones;
* an ``AutoencoderKL`` with SDXL's VAE settings (scaling factor 0.13025,
  ``force_upcast``);
* SDXL base's scheduler config (an ``EulerDiscreteScheduler`` with the SD
  betas, "leading" spacing) and tokenizers built from a local vocabulary.

Weights are random (seeded). tests/sdxl_single_file_checkpoint.py writes the
saved folder out as an original single-file checkpoint.

Usage::

    python -m gooddrag.models.tiny_sdxl /tmp/tiny-sdxl
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from .tiny import tiny_vocab, tiny_vae

__all__ = ["make_tiny_sdxl_pipeline", "save_tiny_sdxl_pipeline", "SDXL_SCHEDULER_CONFIG"]

SDXL_SCHEDULER_CONFIG = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
    timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
)
"""The settings of SDXL base 1.0's ``scheduler/scheduler_config.json`` (an EulerDiscreteScheduler)."""

_WIDTH_1, _WIDTH_2, _POOLED = 32, 48, 32
_TIME_EMBED = 8


def _clip_config(hidden: int, projection: int):

    return CLIPTextConfig(
        vocab_size=2 * 256 + 2, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=projection,
        bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_act="gelu",
    )


def make_tiny_sdxl_pipeline(seed: int = 0):
    """Build a tiny ``StableDiffusionXLPipeline`` with random weights (seeded)."""

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 16, 32),
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        norm_num_groups=8,
        attention_head_dim=(2, 4, 8),
        cross_attention_dim=_WIDTH_1 + _WIDTH_2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED,
        projection_class_embeddings_input_dim=6 * _TIME_EMBED + _POOLED,
    )
    # As in gooddrag.models.tiny: a small output layer makes the random UNet change
    # slowly along a trajectory, so DDIM inversion behaves as with a trained model.
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.02)
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE config values
    text_encoder = CLIPTextModel(_clip_config(_WIDTH_1, _WIDTH_1))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(_WIDTH_2, _POOLED))
    tokenizer = CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=77)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,
    )


def save_tiny_sdxl_pipeline(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny SDXL pipeline and ``save_pretrained`` it as a diffusers folder."""
    folder = Path(folder)
    make_tiny_sdxl_pipeline(seed=seed).save_pretrained(folder)
    return folder


if __name__ == "__main__":  # pragma: no cover - thin script
    if len(sys.argv) != 2:
        sys.exit("usage: python -m gooddrag.models.tiny_sdxl OUTPUT_FOLDER")
    save_tiny_sdxl_pipeline(sys.argv[1])
