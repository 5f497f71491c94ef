"""SDXL's layout and conditioning: the structural numbers of the SDXL base UNet (which the SDXL
presets of :mod:`gooddrag.methods.config` are built from) and the added conditioning (pooled text
embedding and micro-conditioning time ids) that every SDXL UNet call takes.

SDXL is a backbone, not a new method: GoodDrag and DragDiffusion run unchanged; what changes is the
UNet call (added conditioning, :class:`gooddrag.models.backbone.Conditioning`), the working
resolution and where in the UNet the method's layers are (docs/sdxl.md):

* ``resolution`` 1024, SDXL's training size (768 for the lighter presets; 512 is outside the sizes
  SDXL was trained on and degrades);
* ``feature_block`` 2: output of ``up_blocks[1]``, the first decoder block at latent resolution,
  as SD1.5's 3 (``up_blocks[2]``) is; both have 640 channels
  (:func:`gooddrag.models.backbone.feature_block_index`);
* ``mutual_attention_start_layer`` 46: the decoder's last two thirds of self-attention layers, as
  SD1.5's layers 10..15 of 16 are (:func:`gooddrag.models.backbone.mutual_attention_start_layer`);
* ``r1``, ``r2``, ``beta`` and ``stop_distance`` unchanged: they are counted in supervision cells,
  and with ``sup_res_scale`` 0.5 and the VAE's factor 8 a feature cell is 4 supervision cells at
  every working size, so their size in feature cells (what the optimisation feels) is the same.

A UNet with another layout (distilled SDXL variants such as SSD-1B) has other structural numbers:
:func:`gooddrag.models.backbone.structural_settings` computes them from the UNet itself.
"""

from __future__ import annotations

from typing import Any

import torch

SDXL_BASE_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
"""The structural fields of stabilityai/stable-diffusion-xl-base-1.0's ``unet/config.json``
(2816 = 6 time ids x 256 + the 1280-wide pooled text embedding). Used with
:func:`gooddrag.models.backbone.unet_on_meta` to compute and check the preset values without weights."""

SDXL_FEATURE_BLOCK = 2
"""``feature_block_index`` of the SDXL base layout (output of up_blocks[1], 128x128 for a 128x128 latent)."""
SDXL_MUTUAL_ATTENTION_START_LAYER = 46
"""``mutual_attention_start_layer`` of the SDXL base layout: 70 self-attention layers,
36 in the decoder, the last 24 mutual."""
SDXL_RESOLUTION = 1024
SDXL_LIGHT_RESOLUTION = 768


def time_ids(sd_pipeline, size_hw: tuple[int, int], text_encoder_projection_dim: int, dtype) -> torch.Tensor:
    """(1, 6) SDXL micro-conditioning for an image edited at ``size_hw`` (h, w) image pixels.

    original size = target size = the working size, crop top-left (0, 0): the
    image is neither cropped nor rescaled by the UNet's standards. Built by
    diffusers' own ``StableDiffusionXLPipeline._get_add_time_ids`` (which also
    checks the length against the UNet's ``add_embedding``).
    """
    size = (int(size_hw[0]), int(size_hw[1]))
    return sd_pipeline._get_add_time_ids(
        size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=text_encoder_projection_dim
    )


@torch.no_grad()
def encode_prompt(sd_pipeline, prompt: str, size_hw: tuple[int, int], device) -> tuple[torch.Tensor, dict]:
    """SDXL's batch-1 conditioning without classifier-free guidance: (1, 77, 2048) hidden states of
    both encoders (the same prompt for both) and ``{"text_embeds": (1, 1280) pooled, "time_ids": (1, 6)}``
    (:func:`time_ids` for ``size_hw``, the working image's (h, w) in pixels)."""
    embeds, _, pooled, _ = sd_pipeline.encode_prompt(
        prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    ids = time_ids(sd_pipeline, size_hw, int(pooled.shape[-1]), embeds.dtype).to(device)
    return embeds, {"text_embeds": pooled, "time_ids": ids}


__all__ = [
    "SDXL_BASE_UNET_CONFIG", "SDXL_FEATURE_BLOCK", "SDXL_MUTUAL_ATTENTION_START_LAYER", "SDXL_RESOLUTION",
    "SDXL_LIGHT_RESOLUTION", "time_ids", "encode_prompt",
]
