"""SDXL backbones: method presets and the choice of preset for a loaded model.

SDXL is a backbone, not a new method: GoodDrag and DragDiffusion run
unchanged; what changes is the UNet call (added conditioning, see
:class:`gooddrag.backbone.Conditioning`), the working resolution and where in
the UNet the method's layers are. The presets below are the SD1.5 presets with
those settings translated:

* ``resolution`` 1024, SDXL's training size (``-768`` presets: 768, lighter,
  still inside the sizes SDXL was trained on; 512 is outside them and degrades);
* ``feature_block`` 2: output of ``up_blocks[1]``, the first decoder block at
  latent resolution, as SD1.5's 3 (``up_blocks[2]``) is; both have 640
  channels (:func:`gooddrag.backbone.feature_block_index`);
* ``mutual_attention_start_layer`` 46: the decoder's last two thirds of
  self-attention layers, as SD1.5's layers 10..15 of 16 are
  (:func:`gooddrag.backbone.mutual_attention_start_layer`);
* ``r1``, ``r2``, ``beta`` and ``stop_distance`` unchanged: they are counted in
  supervision cells, and with ``sup_res_scale`` 0.5 and the VAE's factor 8 a
  feature cell is 4 supervision cells at every working size (SD1.5 at 512:
  256-cell grid over a 64x64 feature map; SDXL at 1024: 512 over 128); what
  the optimisation feels is their size in feature cells, which is thus the same;
* LoRA on the same projections (q, k, v, out of every attention layer) with
  the same rank and schedule.

The structural numbers are those of the SDXL base layout (and of its
fine-tunes, which keep it). A UNet with another layout (distilled SDXL
variants such as SSD-1B have fewer transformer layers) needs
:func:`gooddrag.backbone.structural_settings` of its own UNet instead:
:func:`settings_for_unet` returns the overrides to apply.
"""

from __future__ import annotations

import logging
from typing import Any

from .backbone import SD, SDXL, backbone_kind, structural_settings

logger = logging.getLogger(__name__)

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
:func:`gooddrag.backbone.unet_on_meta` to compute and check the preset values without weights."""

SDXL_FEATURE_BLOCK = 2
"""``feature_block_index`` of the SDXL base layout (output of up_blocks[1], 128x128 for a 128x128 latent)."""
SDXL_MUTUAL_ATTENTION_START_LAYER = 46
"""``mutual_attention_start_layer`` of the SDXL base layout: 70 self-attention layers,
36 in the decoder, the last 24 mutual."""
SDXL_RESOLUTION = 1024
SDXL_LIGHT_RESOLUTION = 768

_SPATIAL = dict(feature_block=SDXL_FEATURE_BLOCK, mutual_attention_start_layer=SDXL_MUTUAL_ATTENTION_START_LAYER)

SDXL_PRESET_BASE: dict[str, str] = {
    "gooddrag-sdxl": "gooddrag",
    "dragdiffusion-sdxl": "dragdiffusion",
    "gooddrag-sdxl-768": "gooddrag",
    "dragdiffusion-sdxl-768": "dragdiffusion",
    "gooddrag-plus-sdxl": "gooddrag-plus",
    "gooddrag-plus-sdxl-768": "gooddrag-plus",
}
"""The SD preset (in :data:`gooddrag.config.PRESETS`) each SDXL preset starts from."""

SDXL_PRESET_OVERRIDES: dict[str, dict[str, Any]] = {
    "gooddrag-sdxl": dict(resolution=SDXL_RESOLUTION, **_SPATIAL),
    "dragdiffusion-sdxl": dict(resolution=SDXL_RESOLUTION, **_SPATIAL),
    "gooddrag-sdxl-768": dict(resolution=SDXL_LIGHT_RESOLUTION, **_SPATIAL),
    "dragdiffusion-sdxl-768": dict(resolution=SDXL_LIGHT_RESOLUTION, **_SPATIAL),
    "gooddrag-plus-sdxl": dict(resolution=SDXL_RESOLUTION, **_SPATIAL),
    "gooddrag-plus-sdxl-768": dict(resolution=SDXL_LIGHT_RESOLUTION, **_SPATIAL),
}
"""DragConfig overrides applied to ``SDXL_PRESET_BASE[name]``; register with :func:`register_sdxl_presets`."""


def register_sdxl_presets(presets: dict) -> None:
    """Add the SDXL presets to a preset registry (``gooddrag.config.PRESETS``) in place.

    ``presets`` must already hold the base presets ``gooddrag``, ``dragdiffusion`` and ``gooddrag-plus``.
    """
    import dataclasses

    for name, overrides in SDXL_PRESET_OVERRIDES.items():
        presets[name] = dataclasses.replace(presets[SDXL_PRESET_BASE[name]], **overrides)


def preset_name(kind: str, method: str = "gooddrag", light: bool = False) -> str:
    """The preset for ``method`` on a backbone of ``kind``: ``gooddrag`` / ``gooddrag-sdxl`` / ``gooddrag-sdxl-768``."""
    if kind == SD:
        return method
    if kind == SDXL:
        return f"{method}-sdxl-768" if light else f"{method}-sdxl"
    raise ValueError(f"unknown backbone kind {kind!r}")


def preset_for_pipeline(sd_pipeline, method: str = "gooddrag", light: bool = False) -> str:
    """:func:`preset_name` for a loaded diffusers pipeline (its kind read from its UNet and text encoders)."""
    return preset_name(backbone_kind(sd_pipeline), method, light)


def settings_for_unet(unet, config) -> dict[str, int]:
    """Structural overrides ``config`` needs on ``unet``: empty when its feature block and mutual
    attention start already are those computed from this UNet's layout.

    For an SDXL preset on a UNet whose layout is not SDXL base's (a distilled
    variant), apply the result with ``dataclasses.replace(config, **result)``
    unless the user chose those settings. Logs what differs.
    """
    wanted = structural_settings(unet)
    differ = {k: v for k, v in wanted.items() if getattr(config, k) != v}
    if differ:
        logger.info(
            "this UNet's layout puts %s (the preset has %s)",
            ", ".join(f"{k}={v}" for k, v in differ.items()),
            ", ".join(f"{k}={getattr(config, k)}" for k in differ),
        )
    return differ


__all__ = [
    "SDXL_BASE_UNET_CONFIG", "SDXL_FEATURE_BLOCK", "SDXL_MUTUAL_ATTENTION_START_LAYER", "SDXL_RESOLUTION",
    "SDXL_LIGHT_RESOLUTION", "SDXL_PRESET_BASE", "SDXL_PRESET_OVERRIDES", "register_sdxl_presets", "preset_name",
    "preset_for_pipeline", "settings_for_unet",
]
