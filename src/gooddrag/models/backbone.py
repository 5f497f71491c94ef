"""What the engine needs to know about its backbone: SD 1.x/2.x or SDXL.

The drag method is the same on every backbone; what differs is

* how the model is recognised (:func:`backbone_kind_of_config`,
  :func:`detect_backbone`): from the model's own configs (``model_index.json``,
  the UNet config) or, for a single-file checkpoint without configs, from the
  names of its tensors; never from the path or the hub id;
* what the UNet is conditioned on (:class:`Conditioning`,
  :func:`encode_conditioning`): SD takes the text encoder's hidden states only;
  SDXL also takes "added conditioning", the pooled embedding of its second
  text encoder and six size/crop numbers, and runs outside what it was
  trained on without them;
* where the method's layers are (:func:`feature_block_index`,
  :func:`mutual_attention_start_layer`): computed from the UNet's structure
  so that the SD1.5 values (feature block 3, mutual self-attention from layer
  10) keep their meaning on other layouts;
* whether the VAE must run in fp32 (:func:`vae_needs_upcast`).

Nothing here imports :mod:`gooddrag.models.loading` or :mod:`gooddrag.methods.config`, so both
may import this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import GoodDragError
from . import sdxl

logger = logging.getLogger(__name__)

SD = "sd"
"""Stable Diffusion 1.x/2.x: one CLIP text encoder, UNet conditioned on its hidden states only."""
SDXL = "sdxl"
"""Stable Diffusion XL (base and fine-tunes): two text encoders, UNet with ``addition_embed_type == "text_time"``."""
SD3 = "sd3"
"""Stable Diffusion 3 / 3.5: an ``SD3Transformer2DModel`` (MMDiT), two CLIPs and optionally T5, flow matching."""
FLUX = "flux"
"""FLUX.1 (dev and its fine-tunes): a ``FluxTransformer2DModel``, CLIP (pooled) and T5, flow matching."""
BACKBONES = (SD, SDXL, SD3, FLUX)
TRANSFORMERS = (SD3, FLUX)
"""Backbones whose denoiser is a transformer (:mod:`gooddrag.models.denoiser`)."""

# Pipeline classes whose model_index.json names an SD-1.x/2.x-shaped model (text-to-image or image-to-image:
# the components are what we use, not the class's own __call__).
_SD_CLASSES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
_SDXL_CLASSES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"}
_SD3_CLASSES = {"StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"}
_FLUX_CLASSES = {"FluxPipeline", "FluxImg2ImgPipeline"}
_TRANSFORMER_KINDS = {"SD3Transformer2DModel": SD3, "FluxTransformer2DModel": FLUX}
_SUPPORTED = "SD 1.x/2.x, SDXL, SD3/SD3.5 and FLUX.1"
# diffusers' own markers of original single-file checkpoints (loaders/single_file_utils.py CHECKPOINT_KEY_NAMES)
_SD3_KEY = "joint_blocks.0.context_block.adaLN_modulation.1.bias"
_FLUX_KEY = "double_blocks.0.img_attn.norm.key_norm.scale"

# Tensor-name prefixes of an original (SGM/LDM) single-file checkpoint.
_SGM_TEXT_ENCODER_1 = "conditioner.embedders.0."  # SDXL base: CLIP ViT-L (refiner: OpenCLIP bigG)
_SGM_TEXT_ENCODER_2 = "conditioner.embedders.1."  # SDXL base: OpenCLIP ViT-bigG
_LDM_ADDED_EMBEDDING = "model.diffusion_model.label_emb."  # SDXL's text_time embedding (diffusers: add_embedding)


# --------------------------------------------------------------------------- recognising the backbone
def backbone_kind_of_config(model_index: dict[str, Any] | None, unet_config: dict[str, Any] | None,
                            transformer_config: dict[str, Any] | None = None) -> str:
    """``SD``, ``SDXL``, ``SD3`` or ``FLUX`` from a diffusers folder's configs.

    A transformer config (no UNet) decides by its class: ``SD3Transformer2DModel`` is SD3/SD3.5,
    ``FluxTransformer2DModel`` FLUX.1 (:func:`transformer_kind`).

    The UNet config decides when there is one: ``addition_embed_type ==
    "text_time"`` is SDXL's added conditioning (pooled text + size/crop ids),
    and the model index must then list ``text_encoder_2`` (the refiner, which
    has only that one, is an image-to-image model and not supported). Without
    a UNet config the model index's ``_class_name`` decides.
    """
    model_index = model_index or {}
    components = {k for k, v in model_index.items() if not k.startswith("_") and isinstance(v, list) and v[0]}
    class_name = model_index.get("_class_name")
    if unet_config is not None:
        added = unet_config.get("addition_embed_type")
        if added == "text_time":
            if model_index and not {"text_encoder", "text_encoder_2"} <= components:
                encoders = sorted(c for c in components if "text_encoder" in c)
                raise GoodDragError(
                    f"unsupported model: an SDXL UNet with text encoders {encoders} (the SDXL refiner "
                    "has only the second one; use an SDXL base model or a fine-tune of it)"
                )
            return SDXL
        if added is not None or unet_config.get("class_embed_type") is not None:
            raise GoodDragError(
                f"unsupported model: its UNet takes added conditioning of type "
                f"{added or unet_config.get('class_embed_type')!r} (supported: SD 1.x/2.x and SDXL)"
            )
        return SD
    if transformer_config is not None:
        return transformer_kind(transformer_config, class_name)
    if class_name in _SDXL_CLASSES:
        return SDXL
    if class_name in _SD3_CLASSES:
        return SD3
    if class_name in _FLUX_CLASSES:
        return FLUX
    if class_name in _SD_CLASSES or class_name is None:
        return SD
    raise GoodDragError(f"unsupported pipeline class {class_name!r} (supported: {_SUPPORTED})")


def transformer_kind(config: dict[str, Any], pipeline_class_name: str | None = None) -> str:
    """``SD3`` or ``FLUX`` from a transformer's config; FLUX variants whose transformer takes extra
    input channels (Fill, Depth, Canny: more than 16 x 4 packed) and pipelines other than
    text-to-image / image-to-image (Kontext, ControlNet) are refused: they need inputs we do not give."""
    kind = _TRANSFORMER_KINDS.get(config.get("_class_name"))
    if kind is None:
        raise GoodDragError(f"unsupported transformer {config.get('_class_name')!r} (supported: {_SUPPORTED})")
    allowed = _SD3_CLASSES if kind == SD3 else _FLUX_CLASSES
    if pipeline_class_name is not None and pipeline_class_name not in allowed:
        raise GoodDragError(f"unsupported pipeline class {pipeline_class_name!r} (supported: {_SUPPORTED})")
    if kind == FLUX and config.get("in_channels", 64) != 64:
        raise GoodDragError(f"unsupported FLUX variant: its transformer takes {config.get('in_channels')} input "
                            "channels (Fill/Depth/Canny models condition on extra images; use FLUX.1-dev or a fine-tune)")
    return kind


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _configs_of_folder(folder: Path) -> tuple[dict | None, dict | None, dict | None]:
    """model_index.json, unet/config.json and transformer/config.json (None where absent)."""
    return (_read_json(folder / "model_index.json"), _read_json(folder / "unet" / "config.json"),
            _read_json(folder / "transformer" / "config.json"))


def _configs_of_hub(repo_id: str) -> tuple[dict | None, dict | None, dict | None]:
    """model_index.json, unet/config.json and transformer/config.json of a hub repo (from the local cache when offline).

    OSError (not cached and no network) propagates: the caller turns it into its offline hint.
    """
    from huggingface_hub import (
        hf_hub_download,  # heavy: the kind constants above serve gooddrag --help
    )

    index = json.loads(Path(hf_hub_download(repo_id, "model_index.json")).read_text())
    configs = []
    for folder in ("unet", "transformer"):
        try:
            configs.append(json.loads(Path(hf_hub_download(repo_id, "config.json", subfolder=folder)).read_text())
                           if folder in index else None)
        except OSError:  # a repo without it (unusual) is decided by its _class_name
            configs.append(None)
    return index, *configs


def checkpoint_keys(path: str | Path) -> list[str]:
    """Tensor names of a single-file checkpoint; for ``.safetensors`` without reading the tensors."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # safetensors and pickle raise their own types for a damaged file
        raise GoodDragError(f"cannot read checkpoint {str(path)!r}: {type(err).__name__}: {err}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return list(state)


def backbone_kind_of_checkpoint(keys: list[str]) -> str:
    """``SD``, ``SDXL``, ``SD3`` or ``FLUX`` from an original single-file checkpoint's tensor names.

    SD3 and FLUX: the keys diffusers' own single-file loader recognises them by (SD3's first joint
    block's context AdaLN, FLUX's first double block's key norm), with or without a prefix.

    SDXL base files carry two text encoders (``conditioner.embedders.0`` and
    ``.1``) and the UNet's added text/time embedding (``label_emb``); SD 1.x/2.x
    files one text encoder (``cond_stage_model``) and no ``label_emb``.
    """
    if any(k.endswith(_SD3_KEY) for k in keys):
        return SD3
    if any(k.endswith(_FLUX_KEY) for k in keys):
        return FLUX
    has_1 = any(k.startswith(_SGM_TEXT_ENCODER_1) for k in keys)
    has_2 = any(k.startswith(_SGM_TEXT_ENCODER_2) for k in keys)
    added = any(k.startswith(_LDM_ADDED_EMBEDDING) for k in keys)
    if has_1 and has_2 and added:
        return SDXL
    if has_1 or has_2:
        raise GoodDragError(
            "unsupported single-file checkpoint: SDXL-style text encoders but not the SDXL base layout "
            "(the SDXL refiner is not supported)"
        )
    if added:
        raise GoodDragError("unsupported single-file checkpoint: its UNet takes class/added conditioning")
    return SD


def detect_backbone(source, model_config: str | None = None) -> str:
    """``SD`` or ``SDXL`` for a :class:`gooddrag.models.loading.ModelSource`, read from the model itself.

    folder: its ``model_index.json`` and ``unet/config.json``; hub id: the same two
    files from the hub or the local cache; single file: the configs of
    ``model_config`` (folder or hub id) when given, else the checkpoint's tensor names.
    """
    if source.kind == "folder":
        return backbone_kind_of_config(*_configs_of_folder(Path(source.location)))
    if source.kind == "hub":
        return backbone_kind_of_config(*_configs_of_hub(source.location))
    if model_config is not None:
        folder = Path(model_config).expanduser()
        configs = _configs_of_folder(folder) if folder.is_dir() else _configs_of_hub(model_config)
        return backbone_kind_of_config(*configs)
    return backbone_kind_of_checkpoint(checkpoint_keys(source.location))


def model_index_of(source, model_config: str | None = None) -> dict[str, Any] | None:
    """The ``model_index.json`` of a model source (folder, hub id, or a single file's ``model_config``);
    None where there is none to read."""
    where = source.location if source.kind != "file" else model_config
    if where is None:
        return None
    folder = Path(where).expanduser()
    if folder.is_dir():
        return _read_json(folder / "model_index.json")
    try:
        return _configs_of_hub(where)[0]
    except OSError:
        return None


def pipeline_class(kind: str):
    """The diffusers pipeline class that holds the components of a ``kind`` backbone."""
    from diffusers import (  # heavy: not for gooddrag --help
        FluxPipeline,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    return {SD: StableDiffusionPipeline, SDXL: StableDiffusionXLPipeline, SD3: StableDiffusion3Pipeline,
            FLUX: FluxPipeline}[kind]


def pipeline_kwargs(kind: str, model_index: dict[str, Any] | None = None) -> dict[str, Any]:
    """Constructor arguments for ``from_pretrained`` / ``from_single_file`` beyond the dtype.

    SD: no safety checker (we never call the pipeline's own ``__call__``).
    SDXL: no invisible watermarker (the same reason; it would import ``imwatermark``).
    SD3 saved without T5 (``model_index`` lists no ``text_encoder_3``): ``text_encoder_3=None``, which
    diffusers needs at load time to accept the missing component.
    """
    if kind == SD:
        return dict(safety_checker=None, requires_safety_checker=False)
    if kind == SDXL:
        return dict(add_watermarker=False)
    if kind == SD3 and model_index is not None and not (model_index.get("text_encoder_3") or [None])[0]:
        return dict(text_encoder_3=None, tokenizer_3=None)
    return {}


SINGLE_FILE_PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    SD3: {"text_encoders.clip_l.": ("text_encoder", "tokenizer"), "text_encoders.clip_g.": ("text_encoder_2", "tokenizer_2"),
          "text_encoders.t5xxl.": ("text_encoder_3", "tokenizer_3")},
    FLUX: {"text_encoders.clip_l.": ("text_encoder", "tokenizer"), "text_encoders.t5xxl.": ("text_encoder_2", "tokenizer_2"),
           "vae.": ("vae",)},
}
"""Per transformer kind: the key prefix of a component inside an original single file -> the pipeline
components it holds. Stability's and Black Forest Labs' files come with and without their text
encoders (SD3-medium's ``sd3_medium.safetensors`` has none; FLUX.1's has the transformer only)."""


def components_missing_from_checkpoint(kind: str, keys: list[str]) -> list[str]:
    """The pipeline components of a ``kind`` single file whose weights the file does not hold (read
    from the model's config folder instead); none for SD and SDXL (their files hold everything)."""
    missing = []
    for prefix, components in SINGLE_FILE_PARTS.get(kind, {}).items():
        if not any(k.startswith(prefix) or k.startswith("model." + prefix) for k in keys):
            missing.extend(components)
    return missing


def backbone_kind(sd_pipeline) -> str:
    """``SD``, ``SDXL``, ``SD3`` or ``FLUX`` for a loaded diffusers pipeline (from its denoiser's config
    and its text encoders)."""
    if getattr(sd_pipeline, "unet", None) is None and getattr(sd_pipeline, "transformer", None) is not None:
        return transformer_kind(dict(sd_pipeline.transformer.config) | {"_class_name": type(sd_pipeline.transformer).__name__})
    added = getattr(sd_pipeline.unet.config, "addition_embed_type", None)
    if added == "text_time":
        if getattr(sd_pipeline, "text_encoder_2", None) is None:
            raise GoodDragError("an SDXL UNet without a second text encoder (refiner?) is not supported")
        return SDXL
    return SD


def text_encoders(sd_pipeline) -> list[torch.nn.Module]:
    """The pipeline's text encoders: ``[text_encoder]`` (SD), ``[text_encoder, text_encoder_2]`` (SDXL,
    FLUX: CLIP and T5), and SD3's ``text_encoder_3`` (T5) when it has one."""
    names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    return [m for m in (getattr(sd_pipeline, n, None) for n in names) if m is not None]


def denoiser_module(sd_pipeline) -> torch.nn.Module:
    """The denoising network: the UNet (SD, SDXL) or the transformer (SD3, FLUX)."""
    unet = getattr(sd_pipeline, "unet", None)
    return unet if unet is not None else sd_pipeline.transformer


# --------------------------------------------------------------------------- conditioning
@dataclass(frozen=True)
class Conditioning:
    """Everything a UNet call is conditioned on, for one prompt (batch 1) or a batch.

    ``encoder_hidden_states``: (B, L, D) text-encoder hidden states, L = 77
    tokens; D = 768 (SD1.x), 1024 (SD2.x), 2048 (SDXL: the penultimate hidden
    states of both encoders concatenated, 768 + 1280).
    ``added_cond_kwargs``: None for SD; for SDXL ``{"text_embeds": (B, P) pooled
    and projected output of the second encoder (P = 1280), "time_ids": (B, 6)
    original (h, w), crop top-left (y, x), target (h, w) in image pixels}``.
    """

    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.encoder_hidden_states.shape[0]

    def expand(self, batch: int) -> "Conditioning":
        """The same conditioning for ``batch`` rows (a view; no copy). Batch 1 or ``batch`` only."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot expand a conditioning of batch {self.batch_size} to {batch}")
        added = None
        if self.added_cond_kwargs is not None:
            added = {k: v.expand(batch, *v.shape[1:]) for k, v in self.added_cond_kwargs.items()}
        return Conditioning(self.encoder_hidden_states.expand(batch, *self.encoder_hidden_states.shape[1:]), added)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Conditioning":
        """On ``device`` and, for floating tensors, in ``dtype`` (time ids included: the UNet embeds them as floats)."""
        def move(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype if x.is_floating_point() else None)

        added = None if self.added_cond_kwargs is None else {k: move(v) for k, v in self.added_cond_kwargs.items()}
        return Conditioning(move(self.encoder_hidden_states), added)

    def unet_kwargs(self, batch: int | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Keyword arguments for ``unet(sample, t, **kwargs)``: expanded to ``batch``, floats in ``dtype``."""
        cond = self if batch is None else self.expand(batch)
        if dtype is not None:
            cond = cond.to(dtype=dtype)
        return {"encoder_hidden_states": cond.encoder_hidden_states, "added_cond_kwargs": cond.added_cond_kwargs}


@torch.no_grad()
def encode_conditioning(sd_pipeline, prompt: str, size_hw: tuple[int, int], device,
                        text_tokens: int = 0, guidance: float = 3.5) -> Conditioning:
    """Batch-1 :class:`Conditioning` for ``prompt`` without classifier-free guidance.

    SD: ``StableDiffusionPipeline.encode_prompt`` -> (1, 77, D) hidden states.
    SDXL: ``StableDiffusionXLPipeline.encode_prompt`` (both encoders, the same
    prompt for both) -> (1, 77, 2048) hidden states and (1, 1280) pooled
    embedding; time ids from :func:`gooddrag.models.sdxl.time_ids` for ``size_hw`` (the working
    image's (h, w) in pixels; SD ignores it).
    SD3 / FLUX: see :func:`_encode_transformer_prompt` (``text_tokens``; ``guidance``: FLUX.1-dev's
    distilled guidance, a (1,) ``added_cond_kwargs["guidance"]`` where the transformer embeds one).
    """
    device = torch.device(device)
    kind = backbone_kind(sd_pipeline)
    if kind == SD:
        embeds, _ = sd_pipeline.encode_prompt(prompt, device, 1, False)
        return Conditioning(embeds)
    if kind in TRANSFORMERS:
        cond = _encode_transformer_prompt(sd_pipeline, kind, prompt, device, text_tokens)
        if kind == FLUX and sd_pipeline.transformer.config.guidance_embeds:
            cond.added_cond_kwargs["guidance"] = torch.full((1,), float(guidance), device=device)
        return cond
    return Conditioning(*sdxl.encode_prompt(sd_pipeline, prompt, size_hw, device))


def _encode_transformer_prompt(sd_pipeline, kind: str, prompt: str, device, text_tokens: int) -> Conditioning:
    """SD3: ``StableDiffusion3Pipeline.encode_prompt`` (both CLIPs' penultimate states zero-padded to
    T5's width, then T5's, or zeros without T5) -> (1, 77 + T, D) and the two CLIPs' pooled outputs
    (1, P); FLUX: ``FluxPipeline.encode_prompt`` -> T5's (1, T, D) and CLIP's pooled (1, P).
    ``text_tokens``: T (0: the pipeline's default, 256 / 512)."""
    extra = {"max_sequence_length": text_tokens} if text_tokens else {}
    if kind == SD3:
        embeds, _, pooled, _ = sd_pipeline.encode_prompt(prompt, None, None, device=device, num_images_per_prompt=1,
                                                         do_classifier_free_guidance=False, **extra)
    else:
        embeds, pooled, _ = sd_pipeline.encode_prompt(prompt, None, device=device, num_images_per_prompt=1, **extra)
    return Conditioning(embeds, {"pooled_projections": pooled})


# --------------------------------------------------------------------------- the method's layers
# SD1.5's own numbers, whose meaning the rules below keep on other layouts.
SD15_FEATURE_BLOCK = 3
"""Official feature block: index 3 of [mid, up0, up1, up2, up3] = output of up_blocks[2] (64x64 for a 64x64 latent)."""
SD15_MUTUAL_LAYERS = (10, 16)
"""Official mutual self-attention: layers 10..15 of SD1.5's 16 (down 6, mid 1, up 9): the last 6 of the decoder's 9."""


def _decoder_scales(unet) -> list[int]:
    """Downsampling level of each output of [mid_block, *up_blocks]: 0 = latent resolution.

    The mid block runs at the level reached by the encoder's downsamplers; each
    up block with an upsampler ends one level higher.
    """
    level = sum(1 for block in unet.down_blocks if getattr(block, "downsamplers", None))
    levels = [level]
    for block in unet.up_blocks:
        if getattr(block, "upsamplers", None):
            level -= 1
        levels.append(level)
    return levels


def feature_block_index(unet) -> int:
    """Index into [mid_block, *up_blocks] of the first decoder block whose output is at latent resolution.

    SD1.5's official index 3 is the output of up_blocks[2], the first one at
    the latent's 64x64 (mid 8x8, up0 16, up1 32, up2 64). On SDXL's three-level
    UNet the same rule gives 2 (up_blocks[1]: mid 32x32 for a 128x128 latent,
    up0 64, up1 128), which like SD1.5's block has 640 channels.
    """
    levels = _decoder_scales(unet)
    if 0 not in levels:
        raise GoodDragError("this UNet's decoder never reaches the latent resolution")
    return levels.index(0)


def mutual_attention_start_layer(unet) -> int:
    """First self-attention layer (counted down, mid, up as :mod:`gooddrag.models.attention` counts them)
    of mutual self-attention, covering the same share of the decoder's
    self-attention layers as SD1.5's official layers 10..15 (the decoder's last
    6 of 9, two thirds): ``total - round(decoder * 6 / 9)``.

    SD1.5: 16 - round(9 * 2/3) = 10. SDXL base: 70 layers, 36 in the decoder
    (up_blocks[0]: 3 x 10, up_blocks[1]: 3 x 2) -> 70 - 24 = 46.

    Other readings of "the same layers" give other SDXL values, all equal to 10
    on SD1.5: the same share of whole attention blocks (the last 4 of the
    decoder's 6 Transformer2D blocks) 44; the decoder's last two attention
    blocks (what the shapes-64 preset chose: 3 there, where this rule gives 4)
    34; the layers at half the latent resolution or finer 64. None has been
    compared on real SDXL weights.
    """
    from .attention import (
        self_attention_layer_names,  # imports diffusers: not for gooddrag --help
    )

    names = self_attention_layer_names(unet)
    decoder = sum(1 for n in names if n.startswith("up_blocks."))
    start, end = SD15_MUTUAL_LAYERS
    sd15_decoder = 9
    share = (end - start) / sd15_decoder
    return len(names) - round(decoder * share)


DIT_FEATURE_DEPTH = 0.5
"""Ours: the feature block of a transformer, as a share of its joint blocks (tuned on shapes-dit-64's
tuning seeds, docs/benchmarks.md); no published GoodDrag value exists for transformers."""
DIT_MUTUAL_SHARE = (SD15_MUTUAL_LAYERS[1] - SD15_MUTUAL_LAYERS[0]) / 16
"""Ours: mutual attention in the last 6/16 of a transformer's attention layers, SD1.5's share of its
16 self-attention layers (a first guess, docs/method.md)."""


def transformer_structural_settings(transformer) -> dict[str, int]:
    """``feature_block`` (joint block ``round(DIT_FEATURE_DEPTH x (blocks - 1))``) and
    ``mutual_attention_start_layer`` (the last :data:`DIT_MUTUAL_SHARE` of the attention layers)
    of an SD3/FLUX transformer."""
    blocks = len(transformer.transformer_blocks)
    layers = len(transformer.attn_processors)
    return {"feature_block": round(DIT_FEATURE_DEPTH * (blocks - 1)),
            "mutual_attention_start_layer": layers - round(layers * DIT_MUTUAL_SHARE)}


def structural_settings(unet) -> dict[str, int]:
    """DragConfig settings that depend on the UNet's layout: ``feature_block``, ``mutual_attention_start_layer``."""
    if not hasattr(unet, "up_blocks"):
        return transformer_structural_settings(unet)
    return {
        "feature_block": feature_block_index(unet),
        "mutual_attention_start_layer": mutual_attention_start_layer(unet),
    }


def unet_on_meta(config: dict[str, Any]):
    """A ``UNet2DConditionModel`` built from ``config`` on the meta device: structure only, no memory, no weights."""
    from diffusers import UNet2DConditionModel  # heavy: not for gooddrag --help

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


# --------------------------------------------------------------------------- VAE precision
def vae_needs_upcast(vae) -> bool:
    """True when the VAE runs in fp16 and its config says fp16 overflows (``force_upcast``).

    SDXL's original VAE has ``force_upcast: true`` (its activations exceed fp16's
    range: NaN/black images); the fp16-fix VAE (madebyollin/sdxl-vae-fp16-fix) has
    ``false``. bf16 has fp32's range, so it never needs the upcast.
    """
    return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


@contextlib.contextmanager
def vae_precision(vae) -> Iterator[torch.dtype]:
    """Inside the block the VAE runs in fp32 if :func:`vae_needs_upcast`, else in its own dtype.

    Yields the dtype to feed it (cast inputs to it). The weights go back to
    fp16 on exit. diffusers' own pipelines upcast the same way
    (``vae.to(torch.float32)`` when ``force_upcast``) but keep it upcast; we
    restore it so the model's memory stays what the user asked for.
    """
    if not vae_needs_upcast(vae):
        yield vae.dtype
        return
    before = vae.dtype
    vae.to(torch.float32)
    try:
        yield torch.float32
    finally:
        vae.to(before)


__all__ = [
    "SD", "SDXL", "SD3", "FLUX", "BACKBONES", "TRANSFORMERS", "denoiser_module", "model_index_of",
    "transformer_kind", "transformer_structural_settings", "components_missing_from_checkpoint", "SINGLE_FILE_PARTS", "Conditioning", "encode_conditioning", "detect_backbone",
    "backbone_kind", "backbone_kind_of_config", "backbone_kind_of_checkpoint", "checkpoint_keys",
    "pipeline_class", "pipeline_kwargs", "text_encoders", "feature_block_index", "mutual_attention_start_layer",
    "structural_settings", "unet_on_meta", "vae_needs_upcast", "vae_precision",
]
