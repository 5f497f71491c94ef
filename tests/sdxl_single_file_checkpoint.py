"""Test fixture: write a diffusers SDXL folder as an original (SGM) single-file checkpoint.

The SDXL counterpart of tests/single_file_checkpoint.py: it turns the tiny
pipeline of :mod:`gooddrag.models.tiny_sdxl` into a file laid out like
``sd_xl_base_1.0.safetensors``, a flat state dict with

* ``model.diffusion_model.*``                          - the UNet (LDM names as for SD 1.x, plus
  ``label_emb.0.{0,2}`` = diffusers' ``add_embedding.linear_{1,2}``),
* ``first_stage_model.*``                              - the VAE,
* ``conditioner.embedders.0.transformer.text_model.*`` - the first text encoder (Hugging Face CLIP names),
* ``conditioner.embedders.1.model.*``                  - the second text encoder in OpenCLIP names
  (``transformer.resblocks.N``, q/k/v stacked in ``attn.in_proj_weight``,
  ``text_projection`` stored transposed).

It is the inverse of what diffusers' ``StableDiffusionXLPipeline.from_single_file``
reads (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint`` in
``diffusers/loaders/single_file_utils.py``); every tensor is copied bit for
bit, so a round trip reproduces the weights exactly.

Usage::

    python -m gooddrag.models.tiny_sdxl /tmp/tiny-sdxl
    python -m tests.sdxl_single_file_checkpoint /tmp/tiny-sdxl /tmp/tiny-sdxl.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .single_file_checkpoint import (
    VAE_PREFIX,
    _unet_to_ldm,
    _vae_to_ldm,
    flatten,
    write_checkpoint,
)

__all__ = ["sdxl_to_sgm_state_dict", "save_sdxl_single_file_checkpoint"]

UNET_PREFIX = "model.diffusion_model."
CLIP_1_PREFIX = "conditioner.embedders.0.transformer.text_model."
OPEN_CLIP_2_PREFIX = "conditioner.embedders.1.model."

_ADDED_EMBEDDING = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}

# Inside one text-encoder layer, Hugging Face CLIP -> OpenCLIP names.
_OPEN_CLIP_LAYER = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}


def _sdxl_unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """SDXL UNet -> LDM names: the SD-1.x mapping plus ``add_embedding`` -> ``label_emb.0``."""
    added, rest = {}, {}
    for key, value in state.items():
        head = next((h for h in _ADDED_EMBEDDING if key.startswith(h)), None)
        if head is not None:
            added[_ADDED_EMBEDDING[head] + key[len(head):]] = value
        else:
            rest[key] = value
    return _unet_to_ldm(rest, layers_per_block) | added


def _open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``CLIPTextModelWithProjection`` state dict -> OpenCLIP names (without the ``conditioner`` prefix).

    q, k and v projections are stacked into one ``in_proj_weight`` / ``in_proj_bias``
    (q first, as diffusers splits them); ``text_projection`` is stored (hidden, projection),
    the transpose of the Linear weight.
    """
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    state.pop("embeddings.position_ids", None)
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            )
        for key in [k for k in state if k.startswith(src)]:
            tail = key[len(src):]
            head = next(h for h in _OPEN_CLIP_LAYER if tail.startswith(h))
            out[dst + _OPEN_CLIP_LAYER[head] + tail[len(head):]] = state.pop(key)
    if state:
        raise ValueError(f"no OpenCLIP name for {sorted(state)}")
    return out


def sdxl_to_sgm_state_dict(diffusers_folder: str | Path) -> dict[str, torch.Tensor]:
    """Load the parts of a diffusers SDXL folder as one SGM-layout (``sd_xl_base``) state dict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(diffusers_folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2")
    if unet.config.addition_embed_type != "text_time":
        raise ValueError("not an SDXL UNet (addition_embed_type != 'text_time')")

    clip_1 = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    clip_1.setdefault(
        "embeddings.position_ids", torch.arange(text_encoder.config.max_position_embeddings, dtype=torch.int64)[None]
    )
    parts = [
        (UNET_PREFIX, _sdxl_unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)),
        (VAE_PREFIX, _vae_to_ldm(vae.state_dict(), len(vae.config.up_block_types))),
        (CLIP_1_PREFIX, clip_1),
        (OPEN_CLIP_2_PREFIX, _open_clip_state(text_encoder_2.state_dict())),
    ]
    return flatten(parts)


def save_sdxl_single_file_checkpoint(diffusers_folder: str | Path, out_path: str | Path) -> Path:
    """Write the diffusers SDXL folder as an SGM single file (``.ckpt``: pickled ``{"state_dict": ...}``)."""
    return write_checkpoint(sdxl_to_sgm_state_dict(diffusers_folder), out_path)



if __name__ == "__main__":  # pragma: no cover - thin script
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.sdxl_single_file_checkpoint DIFFUSERS_FOLDER OUTPUT.safetensors|OUTPUT.ckpt")
    save_sdxl_single_file_checkpoint(sys.argv[1], sys.argv[2])
