"""Write a diffusers SD3 folder as an original single-file checkpoint (Stability's MMDiT layout), for the
loader's tests: the inverse of diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers`` (read in
diffusers/loaders/single_file_utils.py; test code only, which is why it is written out here) under
``model.diffusion_model.``, and the VAE in the LDM layout under ``first_stage_model.`` (as
:mod:`tests.single_file_checkpoint` writes SD's). The text encoders stay out, as in SD3.5's own
single files without them: diffusers then reads them from ``config``.

Original names: ``joint_blocks.N.x_block`` (image stream) / ``context_block`` (text stream) with a fused
``attn.qkv``, ``attn.proj``, ``attn.ln_q/ln_k``, ``adaLN_modulation.1``, ``mlp.fc1/fc2``; SD3.5's
``x_block.attn2``; ``x_embedder``, ``t_embedder.mlp``, ``y_embedder.mlp``, ``pos_embed``, ``final_layer``.
"""

from __future__ import annotations

from pathlib import Path

import json

import torch
from safetensors.torch import load_file

from .single_file_checkpoint import VAE_PREFIX, _vae_to_ldm, flatten, write_checkpoint

PREFIX = "model.diffusion_model."
_TOP = {  # modules with .weight and .bias
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder", "proj_out": "final_layer.linear",
}
_BLOCK = {  # diffusers name in transformer_blocks.N -> original name in joint_blocks.N
    "attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q", "attn2.norm_k": "x_block.attn2.ln_k",
    "norm1.linear": "x_block.adaLN_modulation.1", "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1", "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1", "ff_context.net.2": "context_block.mlp.fc2",
}
_QKV = {"attn.to_": "x_block.attn.qkv", "attn.add_": "context_block.attn.qkv", "attn2.to_": "x_block.attn2.qkv"}


def _shift_scale(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' (scale, shift) halves back to the original (shift, scale)."""
    scale, shift = weight.chunk(2, dim=0)
    return torch.cat([shift, scale], dim=0)


def _block_to_original(i: int, state: dict[str, torch.Tensor], last: bool) -> dict[str, torch.Tensor]:
    out, pre = {}, f"transformer_blocks.{i}."
    for suffix in ("weight", "bias"):
        for head, fused in _QKV.items():
            names = [f"{pre}{head}{x}.{suffix}" for x in ("q", "k", "v")] if head != "attn.add_" else [
                f"{pre}attn.add_{x}_proj.{suffix}" for x in ("q", "k", "v")]
            if names[0] in state:
                out[f"joint_blocks.{i}.{fused}.{suffix}"] = torch.cat([state[n] for n in names])
        for ours, theirs in _BLOCK.items():
            if f"{pre}{ours}.{suffix}" in state:
                value = state[f"{pre}{ours}.{suffix}"]
                out[f"joint_blocks.{i}.{theirs}.{suffix}"] = (
                    _shift_scale(value) if last and ours == "norm1_context.linear" else value)
    return out


def sd3_to_original_state_dict(transformer_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``SD3Transformer2DModel`` state dict in the original MMDiT names (no prefix)."""
    out = {"pos_embed": transformer_state["pos_embed.pos_embed"]}
    for ours, theirs in _TOP.items():
        for suffix in (".weight", ".bias"):
            out[theirs + suffix] = transformer_state[ours + suffix]
    for suffix in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = _shift_scale(transformer_state[f"norm_out.linear.{suffix}"])
    blocks = 1 + max(int(k.split(".")[1]) for k in transformer_state if k.startswith("transformer_blocks."))
    for i in range(blocks):
        out |= _block_to_original(i, transformer_state, last=i == blocks - 1)
    return out


def save_sd3_single_file_checkpoint(diffusers_folder: str | Path, out_path: str | Path) -> Path:
    """The SD3 pipeline in ``diffusers_folder`` as one ``.safetensors`` (transformer and VAE)."""
    folder = Path(diffusers_folder)
    transformer = load_file(str(next((folder / "transformer").glob("*.safetensors"))))
    vae = load_file(str(next((folder / "vae").glob("*.safetensors"))))
    num_up_blocks = len(json.loads((folder / "vae" / "config.json").read_text())["up_block_types"])
    parts = [(PREFIX, sd3_to_original_state_dict(transformer)), (VAE_PREFIX, _vae_to_ldm(vae, num_up_blocks))]
    return write_checkpoint(flatten(parts), out_path)
