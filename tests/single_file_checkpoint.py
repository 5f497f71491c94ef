"""Test fixture: write a diffusers folder back out as an original (CompVis/LDM) single-file checkpoint.

Used only by the tests (tests/test_loading.py); it lived in the package as
``gooddrag.testing_single_file`` until it was folded into the test fixtures.
It exists so tests can exercise the *real* single-file loading path
(``StableDiffusionPipeline.from_single_file`` / ``AutoencoderKL.from_single_file``)
offline: it turns the tiny pipeline of :mod:`gooddrag.models.tiny` into a file laid
out like the ones users download (``v1-5-pruned-emaonly.safetensors`` and
friends), i.e. a flat state dict with

* ``model.diffusion_model.*``                    - the UNet (``input_blocks`` /
  ``middle_block`` / ``output_blocks`` naming),
* ``first_stage_model.*``                        - the VAE (``encoder.down.N.block.M``
  naming, mid-block attention as 1x1 convolutions),
* ``cond_stage_model.transformer.text_model.*``  - the CLIP text model (SD 1.x layout).

It is the inverse of diffusers' ``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint`` and ``convert_ldm_clip_checkpoint``
(``diffusers/loaders/single_file_utils.py``) for SD-1.x-shaped models of any
size: block counts and ``layers_per_block`` are read from the configs. Every
tensor is copied bit for bit, so a round trip through ``from_single_file``
reproduces the original weights exactly.

Usage::

    python -m gooddrag.models.tiny /tmp/tiny-sd
    python -m tests.single_file_checkpoint /tmp/tiny-sd /tmp/tiny-sd.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

__all__ = ["save_single_file_checkpoint", "diffusers_to_ldm_state_dict"]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

# Renames inside one ResNet block, diffusers -> LDM (UNet and VAE differ).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
# VAE mid-block attention, diffusers -> LDM (LDM stores q/k/v/proj_out as 1x1 convs).
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """Rename the leading module name of ``rest`` (e.g. ``"conv1.weight"``) using ``table``."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _split(key: str, n: int) -> tuple[list[str], str]:
    """Split ``key`` into its first ``n`` dotted parts and the remainder."""
    parts = key.split(".")
    return parts[:n], ".".join(parts[n:])


def _unet_key(key: str, layers_per_block: int) -> str:
    """Map one diffusers UNet2DConditionModel key to its LDM ``openaimodel`` name."""
    fixed = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]

    if key.startswith("down_blocks."):
        (_, b, kind, j), rest = _split(key, 4)
        b, j = int(b), int(j)
        first = 1 + b * (layers_per_block + 1)  # input_blocks.0 is conv_in
        if kind == "resnets":
            return f"input_blocks.{first + j}.0.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"input_blocks.{first + j}.1.{rest}"
        if kind == "downsamplers":  # "downsamplers.0.conv.weight" -> "...op.weight"
            return f"input_blocks.{first + layers_per_block}.0.op.{rest.removeprefix('conv.')}"

    if key.startswith("mid_block."):
        (_, kind, j), rest = _split(key, 3)
        if kind == "resnets":  # resnet, attention, resnet
            return f"middle_block.{2 * int(j)}.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"middle_block.1.{rest}"

    if key.startswith("up_blocks."):
        (_, b, kind, j), rest = _split(key, 4)
        b, j = int(b), int(j)
        first = b * (layers_per_block + 1)  # up blocks have one more layer than down blocks
        if kind == "resnets":
            return f"output_blocks.{first + j}.0.{_rename_head(rest, _UNET_RESNET)}"
        if kind == "attentions":
            return f"output_blocks.{first + j}.1.{rest}"
        # upsamplers: handled by the caller (slot depends on whether the block has attention)

    raise ValueError(f"no LDM name for UNet parameter {key!r} (not an SD-1.x-shaped UNet?)")


def _unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith("up_blocks.") and ".upsamplers." in key:
            (_, b, _, _), rest = _split(key, 4)  # up_blocks.B.upsamplers.0.conv.weight
            b = int(b)
            last = b * (layers_per_block + 1) + layers_per_block
            # After a ResBlock (+ SpatialTransformer, if this block has one) in the same TimestepEmbedSequential.
            slot = 2 if any(k.startswith(f"up_blocks.{b}.attentions.") for k in state) else 1
            out[f"output_blocks.{last}.{slot}.{rest}"] = value
        else:
            out[_unet_key(key, layers_per_block)] = value
    return out


def _vae_key(key: str, num_up_blocks: int) -> str:
    """Map one diffusers AutoencoderKL key to its LDM ``autoencoder`` name (without reshaping)."""
    for old, new in {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]

    half, _, rest = key.partition(".")  # "encoder" / "decoder" / "quant_conv" / ...
    if rest.startswith("down_blocks."):
        (_, i, kind, j), tail = _split(rest, 4)
        if kind == "resnets":
            return f"{half}.down.{i}.block.{j}.{_rename_head(tail, _VAE_RESNET)}"
        if kind == "downsamplers":
            return f"{half}.down.{i}.downsample.{tail}"
    if rest.startswith("up_blocks."):  # LDM numbers decoder blocks from the lowest resolution up
        (_, i, kind, j), tail = _split(rest, 4)
        block = num_up_blocks - 1 - int(i)
        if kind == "resnets":
            return f"{half}.up.{block}.block.{j}.{_rename_head(tail, _VAE_RESNET)}"
        if kind == "upsamplers":
            return f"{half}.up.{block}.upsample.{tail}"
    if rest.startswith("mid_block."):
        (_, kind, j), tail = _split(rest, 3)
        if kind == "resnets":
            return f"{half}.mid.block_{int(j) + 1}.{_rename_head(tail, _VAE_RESNET)}"
        if kind == "attentions":
            return f"{half}.mid.attn_1.{_rename_head(tail, _VAE_ATTN)}"
    if key.split(".")[0] in {"encoder", "decoder", "quant_conv", "post_quant_conv"} and rest.count(".") <= 1:
        return key  # conv_in / conv_out / quant_conv / post_quant_conv keep their names
    raise ValueError(f"no LDM name for VAE parameter {key!r} (not an SD-1.x-shaped AutoencoderKL?)")


def _vae_to_ldm(state: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = _vae_key(key, num_up_blocks)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # linear -> 1x1 conv, as in the original checkpoints
        out[new] = value
    return out


def _clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 saves CLIPTextModel without the ``text_model.`` level; older versions keep it.
    return {key.removeprefix("text_model."): value for key, value in state.items()}


def diffusers_to_ldm_state_dict(diffusers_folder: str | Path) -> dict[str, torch.Tensor]:
    """Load the unet, vae and text_encoder of a diffusers SD-1.x folder as one LDM-layout state dict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(diffusers_folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")

    unet_cfg = unet.config
    if unet_cfg.class_embed_type is not None or unet_cfg.addition_embed_type is not None:
        raise ValueError("only SD-1.x-shaped UNets (no class/addition embeddings) are supported")
    if unet_cfg.mid_block_type != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"unsupported mid_block_type {unet_cfg.mid_block_type!r}")

    parts = [
        (UNET_PREFIX, _unet_to_ldm(unet.state_dict(), unet_cfg.layers_per_block)),
        (VAE_PREFIX, _vae_to_ldm(vae.state_dict(), len(vae.config.up_block_types))),
        (CLIP_PREFIX, _clip_to_ldm(text_encoder.state_dict())),
    ]
    checkpoint = flatten(parts)
    # Real SD-1.x files carry CLIP's position_ids buffer (transformers no longer saves it).
    checkpoint.setdefault(
        CLIP_PREFIX + "embeddings.position_ids",
        torch.arange(text_encoder.config.max_position_embeddings, dtype=torch.int64)[None],
    )
    return checkpoint


def save_single_file_checkpoint(diffusers_folder: str | Path, out_path: str | Path) -> Path:
    """Write the diffusers SD-1.x folder ``diffusers_folder`` as an LDM single-file checkpoint.

    ``out_path`` ending in ``.ckpt`` gets a pickled ``{"state_dict": ...}`` (``torch.save``), as
    the original CompVis checkpoints; anything else is written with
    ``safetensors.torch.save_file``. Returns ``out_path`` as a ``Path``.
    """
    return write_checkpoint(diffusers_to_ldm_state_dict(diffusers_folder), out_path)


def flatten(parts: list[tuple[str, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """``[(prefix, state dict), ...]`` -> one flat state dict of prefixed keys, each tensor with
    its own contiguous CPU storage (safetensors refuses views and shared tensors)."""
    return {prefix + key: value.detach().to("cpu").contiguous().clone()
            for prefix, part in parts for key, value in part.items()}


def write_checkpoint(checkpoint: dict[str, torch.Tensor], out_path: str | Path) -> Path:
    """``.ckpt``: a pickled ``{"state_dict": ...}`` (``torch.save``), as the original files;
    anything else: ``safetensors.torch.save_file``. Returns ``out_path`` as a ``Path``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".ckpt":
        torch.save({"state_dict": checkpoint}, out_path)
    else:
        from safetensors.torch import save_file

        save_file(checkpoint, str(out_path))
    return out_path


if __name__ == "__main__":  # pragma: no cover - thin script
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.single_file_checkpoint DIFFUSERS_FOLDER OUTPUT.safetensors|OUTPUT.ckpt")
    save_single_file_checkpoint(sys.argv[1], sys.argv[2])
