"""Diffusion backbones at real size with no weights, for ``gooddrag bench estimate``: SD 1.x/2.x,
SDXL, SD3.5-medium and FLUX.1-dev.

Every component (UNet or transformer, VAE, text encoders) is built from its published config (or a
diffusers folder's configs) inside PyTorch's ``FakeTensorMode``: tensors have shapes, dtypes and
devices but no values, no memory and no arithmetic, and every operator still runs its shape logic,
so the pipeline's own code runs on them unchanged. Two things are stand-ins, and say so:

* the tokenizers: CLIP's and T5's vocabularies cannot be downloaded here, so each CLIP tokenizer is
  the small character-level one of :mod:`gooddrag.models.tiny` and each T5 tokenizer the
  character-level one of :func:`gooddrag.models.tiny_dit.tiny_t5`; the text encoders still see the
  token counts their cost depends on (CLIP 77; T5 the pipeline's ``max_sequence_length``, every
  slot padded as the real tokenizers pad them) and keep their published embedding tables (CLIP
  49408 rows, T5 32128);
* the image processor: turning fake pixels into a picture would need their values, so
  :class:`BlankImageProcessor` returns blank pictures of the right size (the tensor work before
  that, denormalising, still runs).

The device is a fake CPU: CPU is where autograd runs on fake tensors in a CPU-only build, and its
fused attention kernel keeps what CUDA's flash / memory-efficient kernels keep (the output and the
log-sum-exp, never the attention matrix). Weights moved off the accelerator go to fake ``meta``
tensors (:data:`HOST_STAND_IN`), which the counters do not count as device memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.nn.modules.module import register_module_parameter_registration_hook
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from ..core.ddim import SD15_SCHEDULER_CONFIG
from ..errors import GoodDragError
from ..models import backbone
from ..models.sdxl import SDXL_BASE_UNET_CONFIG
from ..models.tiny import tiny_vocab
from ..models.tiny_dit import FLUX_SCHEDULER_CONFIG, FLUX_VAE, SD3_SCHEDULER_CONFIG, SD3_VAE, tiny_t5
from ..models.tiny_sdxl import SDXL_SCHEDULER_CONFIG

logger = logging.getLogger(__name__)

HOST_STAND_IN = torch.device("meta")
"""Where the estimator's pipeline keeps what a real run keeps on the CPU (``DragPipeline.offload_device``)."""

# ---------------------------------------------------------------------------------- published configs
# The structural fields of each model's unet/, vae/, text_encoder(_2)/ config.json (diffusers /
# transformers defaults fill the rest, as they do when those files are loaded).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, norm_num_groups=32,
)
SD21_UNET = SD15_UNET | dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                             use_linear_projection=True, upcast_attention=True)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), sample_size=512, scaling_factor=0.18215,
)
SDXL_VAE = SD_VAE | dict(sample_size=1024, scaling_factor=0.13025, force_upcast=False)
"""SDXL's VAE as the README runs it (madebyollin/sdxl-vae-fp16-fix: fp16 without the fp32 upcast)."""
_CLIP = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)
CLIP_L = _CLIP | dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                      hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_H = _CLIP | dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                          hidden_act="gelu", projection_dim=512)
OPENCLIP_BIGG = _CLIP | dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                             hidden_act="gelu", projection_dim=1280)

# The flow-matching backbones. The hub repos are gated and cannot be downloaded here; each value was
# read from a public copy of the file, or from code that builds it, named here:
# * SD35_MEDIUM_TRANSFORMER (stabilityai/stable-diffusion-3.5-medium transformer/config.json): every
#   field as in ``_MEDIUM_TRANSFORMER_CONFIG`` of tenstorrent/tt-forge-models
#   stable_diffusion_3_5_fp8/pytorch/src/model_utils.py (it rebuilds the gated repo's folder for
#   ``from_single_file``); diffusers' scripts/convert_sd3_to_diffusers.py derives the same from the
#   checkpoint (heads = layers, head 64, sample 128, joint 4096; "pos_embed_max_size=384" for "sd3.5
#   2b"; attn2 in blocks 0..12 "for sd3.5"; rms q/k norm). pooled 2048 = CLIP-L's 768 + bigG's 1280.
# * FLUX1_DEV_TRANSFORMER (black-forest-labs/FLUX.1-dev transformer/config.json): the file as copied
#   into Eco-Sphere/FLUX.1-dev README.md, section 4.4 ("_name_or_path": "../checkpoints/flux-dev/
#   transformer", diffusers 0.30.0.dev0; an ``is_tp`` key added there): head 128, guidance_embeds
#   true, in 64, joint 4096, 24 heads, 19 + 38 layers, patch 1, pooled 768. axes_dims_rope is not in
#   that file (diffusers' default applies): (16, 56, 56), as FLUX.1-schnell's saved config lists it
#   (edkamesh/FluX-optimized transformer/config.json).
# * SD35_VAE: ``_VAE_CONFIG`` of the same tt-forge-models file (the SD layout, sample 1024,
#   force_upcast true, 16 latent channels, no quant convs, 1.5305 / 0.0609), which is what
#   convert_sd3_to_diffusers.py builds (SDXL base's VAE config with those overrides). FLUX1_VAE:
#   FLUX.1-schnell's vae/config.json as saved in edkamesh/FluX-optimized (the same fields, 0.3611 /
#   0.1159; FLUX.1-dev ships the same autoencoder, not checked against dev's own file).
# * T5_XXL (google/t5-v1_1-xxl's encoder: SD3.5's text_encoder_3, FLUX.1's text_encoder_2):
#   FLUX.1-schnell's text_encoder_2/config.json as saved in edkamesh/FluX-optimized; SD3.5's the
#   same model (tt-forge-models takes text_encoder_3's config from google/t5-v1_1-xxl).
# * CLIP_L and OPENCLIP_BIGG as above: SD3.5's text_encoder / text_encoder_2 (with projections),
#   FLUX.1's text_encoder (CLIP-L, no projection; its config as saved in edkamesh/FluX-optimized).
# * The schedulers: :mod:`gooddrag.models.tiny_dit`'s SD3 / FLUX.1-dev settings (not re-checked here;
#   they set timestep values only, never a shape: memory and FLOPs do not depend on them).
SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
FLUX1_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLOW_VAE = SD_VAE | dict(sample_size=1024, force_upcast=True)
SD35_VAE = FLOW_VAE | SD3_VAE
FLUX1_VAE = FLOW_VAE | FLUX_VAE
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)
BUILTIN = ("sd15", "sd21", "sdxl", "sd35-medium", "flux1-dev")
"""The architectures :func:`builtin_configs` knows."""


def builtin_configs(name: str) -> dict[str, Any]:
    """The configs of a built-in architecture (:data:`BUILTIN`): ``sd15`` (runwayml/stable-diffusion-v1-5),
    ``sd21`` (stabilityai/stable-diffusion-2-1, v-prediction), ``sdxl`` (stabilityai/stable-diffusion-xl-base-1.0
    with the fp16-fix VAE), ``sd35-medium`` (stabilityai/stable-diffusion-3.5-medium: CLIP-L, bigG and
    T5-XXL) or ``flux1-dev`` (black-forest-labs/FLUX.1-dev: CLIP-L and T5-XXL)."""
    if name == "sd35-medium":
        return dict(kind=backbone.SD3, transformer=SD35_MEDIUM_TRANSFORMER, vae=SD35_VAE, text_encoder=CLIP_L,
                    text_encoder_2=OPENCLIP_BIGG, text_encoder_3=T5_XXL, scheduler=dict(SD3_SCHEDULER_CONFIG))
    if name == "flux1-dev":
        return dict(kind=backbone.FLUX, transformer=FLUX1_DEV_TRANSFORMER, vae=FLUX1_VAE, text_encoder=CLIP_L,
                    text_encoder_2=T5_XXL, scheduler=dict(FLUX_SCHEDULER_CONFIG))
    if name == "sd15":
        return dict(unet=SD15_UNET, vae=SD_VAE, text_encoder=CLIP_L, scheduler=dict(SD15_SCHEDULER_CONFIG))
    if name == "sd21":
        return dict(unet=SD21_UNET, vae=SD_VAE | dict(sample_size=768), text_encoder=OPENCLIP_H,
                    scheduler=dict(SD15_SCHEDULER_CONFIG, prediction_type="v_prediction"))
    if name == "sdxl":
        return dict(unet=dict(SDXL_BASE_UNET_CONFIG), vae=SDXL_VAE, text_encoder=CLIP_L, text_encoder_2=OPENCLIP_BIGG,
                    scheduler=dict(SDXL_SCHEDULER_CONFIG), scheduler_class="EulerDiscreteScheduler")
    raise GoodDragError(f"unknown architecture {name!r}; choose {', '.join(BUILTIN)} or give a diffusers folder")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def folder_configs(folder: str | Path) -> dict[str, Any]:
    """The component configs of a local diffusers folder (its weights are never read): SD 1.x/2.x
    and SDXL (a unet/), SD3/SD3.5 and FLUX.1 (a transformer/)."""
    root = Path(folder).expanduser()
    index, unet = _read(root / "model_index.json"), _read(root / "unet" / "config.json")
    transformer = _read(root / "transformer" / "config.json") if unet is None else None
    vae, text = _read(root / "vae" / "config.json"), _read(root / "text_encoder" / "config.json")
    if index is None or (unet is None and transformer is None) or vae is None or text is None:
        raise GoodDragError(f"{str(folder)!r} is not a diffusers folder with model_index.json and the configs of "
                            f"unet/ or transformer/, vae/ and text_encoder/ (give {', '.join(BUILTIN)} or such a "
                            "folder)")
    kind = backbone.backbone_kind_of_config(index, unet, transformer)
    scheduler = _read(root / "scheduler" / "scheduler_config.json")
    if transformer is not None:
        configs = dict(kind=kind, transformer=transformer, vae=vae, text_encoder=text, scheduler=scheduler or {})
        for name in ("text_encoder_2", "text_encoder_3"):  # SD3: bigG and T5 (if saved with it); FLUX: T5
            configs[name] = _read(root / name / "config.json") if (index.get(name) or [None])[0] else None
        return configs
    configs = dict(unet=unet, vae=vae, text_encoder=text, scheduler=scheduler or dict(SD15_SCHEDULER_CONFIG))
    if kind == backbone.SDXL:
        configs["text_encoder_2"] = _read(root / "text_encoder_2" / "config.json")
    configs["scheduler_class"] = configs["scheduler"].get("_class_name", "DDIMScheduler")
    return configs


# --------------------------------------------------------------------------------------- fake tensors
def fake_mode() -> FakeTensorMode:
    """A ``FakeTensorMode`` whose fake parameters ``nn.Module.to`` can move.

    The mode files every operator's output in a weak-value table (keyed by the fresh meta tensor
    behind it, never looked up again), which puts a weakref on each fake tensor; ``Module.to``
    swaps fake parameters with ``torch.utils.swap_tensors``, which refuses tensors with weakrefs.
    This mode's converter files only real tensors converted to fake (the table's real use)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    converter = mode.fake_tensor_converter
    file_memo = converter.set_tensor_memo

    def set_tensor_memo(t: torch.Tensor, v: FakeTensor) -> None:
        if t.device.type != "meta":
            file_memo(t, v)

    converter.set_tensor_memo = set_tensor_memo
    return mode


def is_fake(t: Any) -> bool:
    return isinstance(t, FakeTensor)


@contextlib.contextmanager
def fake_new_parameters(mode: FakeTensorMode) -> Iterator[None]:
    """Inside the block, a parameter made with real values and registered on a module (the LoRA's,
    which peft makes while the edit runs) is registered as a fake one of the same shape, dtype and
    ``requires_grad`` instead (``torch.nn.modules.module.register_module_parameter_registration_hook``):
    the LoRA then runs on fake tensors as the rest of the model does, and costs the same."""

    def fake(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None):
        if param is None or is_fake(param):
            return None
        with mode:
            data = torch.empty(param.shape, dtype=param.dtype, device=param.device)
            return torch.nn.Parameter(data, requires_grad=param.requires_grad)

    handle = register_module_parameter_registration_hook(fake)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


class BlankImageProcessor(VaeImageProcessor):
    """diffusers' image processor, except that fake pixels become blank (zero) pictures."""

    @staticmethod
    def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
        if is_fake(images):  # (B, 3, H, W) -> (B, H, W, 3), no values to read
            b, c, h, w = images.shape
            return np.zeros((b, h, w, c), np.float32)
        return VaeImageProcessor.pt_to_numpy(images)


# ------------------------------------------------------------------------------------------ building
def _text_encoder(config: dict[str, Any], with_projection: bool):
    cfg = CLIPTextConfig(**{k: v for k, v in config.items() if not k.startswith("_")} | dict(_CLIP_TOKENS))
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


_CLIP_TOKENS = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)  # the stand-in tokenizer's ids


def _t5(config: dict[str, Any], dtype: torch.dtype):
    """A T5 encoder (``T5EncoderModel``) in ``dtype``, but for the layers transformers' loader keeps in
    fp32 when asked for fp16 (``_keep_in_fp32_modules``: T5's ``wo``; ``PreTrainedModel._get_dtype_plan``)."""
    model = T5EncoderModel(T5Config(**{k: v for k, v in config.items() if not k.startswith("_")}))
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype == torch.float16 else set()
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in keep:
            module.to(torch.float32)
    return model


def stand_in_t5_tokenizer():
    """The T5 tokenizers' stand-in: :func:`gooddrag.models.tiny_dit.tiny_t5`'s character-level one
    (the pipelines pad every prompt to their ``max_sequence_length``, as with the real one)."""
    with torch.random.fork_rng(devices=[]):  # tiny_t5 also draws a tiny encoder's weights: not from our stream
        return tiny_t5(max_length=512)[1]


def _clip_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer(vocab=tiny_vocab(), merges=[], model_max_length=77)


def _scheduler(configs: dict[str, Any]):
    if configs.get("kind") in backbone.TRANSFORMERS:
        return FlowMatchEulerDiscreteScheduler.from_config(configs["scheduler"])
    klass = EulerDiscreteScheduler if configs.get("scheduler_class") == "EulerDiscreteScheduler" else DDIMScheduler
    return klass.from_config(configs["scheduler"])


def _unet_pipeline(configs: dict[str, Any], dtype: torch.dtype, mode: FakeTensorMode | None):
    """SD 1.x/2.x (``StableDiffusionPipeline``) or SDXL (``StableDiffusionXLPipeline``, with a second encoder)."""
    with mode if mode is not None else contextlib.nullcontext(), _default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = _text_encoder(configs["text_encoder"], with_projection=False)
        text_encoder_2 = (_text_encoder(configs["text_encoder_2"], with_projection=True)
                          if configs.get("text_encoder_2") else None)
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=_clip_tokenizer(), unet=unet,
                 scheduler=_scheduler(configs))
    if text_encoder_2 is not None:
        return StableDiffusionXLPipeline(**parts, text_encoder_2=text_encoder_2, add_watermarker=False,
                                         tokenizer_2=_clip_tokenizer())
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _transformer_pipeline(configs: dict[str, Any], dtype: torch.dtype, mode: FakeTensorMode | None):
    """SD3/SD3.5 (``StableDiffusion3Pipeline``: CLIP-L and bigG with projections, T5 if the configs
    have one) or FLUX.1 (``FluxPipeline``: CLIP-L's pooled output and T5). The diffusers models are
    cast to ``dtype`` as ``from_pretrained(torch_dtype=...)`` casts them (SD3's positional table is
    made in fp32)."""
    sd3 = configs["kind"] == backbone.SD3
    with mode if mode is not None else contextlib.nullcontext(), _default_dtype(dtype):
        klass = SD3Transformer2DModel if sd3 else FluxTransformer2DModel
        transformer = klass.from_config(configs["transformer"]).to(dtype)
        vae = AutoencoderKL.from_config(configs["vae"]).to(dtype)
        clip_l = _text_encoder(configs["text_encoder"], with_projection=sd3)
        second = (_text_encoder(configs["text_encoder_2"], with_projection=True) if sd3
                  else _t5(configs["text_encoder_2"], dtype))
        t5 = _t5(configs["text_encoder_3"], dtype) if sd3 and configs.get("text_encoder_3") else None
    parts = dict(transformer=transformer, vae=vae, scheduler=_scheduler(configs), text_encoder=clip_l,
                 tokenizer=_clip_tokenizer())
    if not sd3:
        return FluxPipeline(**parts, text_encoder_2=second, tokenizer_2=stand_in_t5_tokenizer())
    return StableDiffusion3Pipeline(**parts, text_encoder_2=second, tokenizer_2=_clip_tokenizer(), text_encoder_3=t5,
                                    tokenizer_3=stand_in_t5_tokenizer() if t5 is not None else None)


def build_fake_pipeline(configs: dict[str, Any], dtype: torch.dtype, mode: FakeTensorMode | None):
    """A diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` / ``StableDiffusion3Pipeline``
    / ``FluxPipeline`` (``configs["kind"]``; SD when absent) whose models are fake (shapes only) on
    the CPU, in ``dtype``, frozen and in eval mode, as :func:`gooddrag.models.loading.load_components`
    leaves a loaded one. ``mode`` None: the same with real (random) weights, for the runs the
    estimates are checked against."""
    if configs.get("kind") in backbone.TRANSFORMERS:
        sd = _transformer_pipeline(configs, dtype, mode)
    else:
        sd = _unet_pipeline(configs, dtype, mode)
    sd.image_processor = BlankImageProcessor.from_config(sd.image_processor.config)  # FLUX's works in 16-px cells
    for module in (backbone.denoiser_module(sd), sd.vae, *backbone.text_encoders(sd)):
        module.requires_grad_(False)
        module.eval()
    return sd


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "HOST_STAND_IN", "SD15_UNET", "SD21_UNET", "SD_VAE", "SDXL_VAE", "CLIP_L", "OPENCLIP_H", "OPENCLIP_BIGG",
    "SD35_MEDIUM_TRANSFORMER", "FLUX1_DEV_TRANSFORMER", "FLOW_VAE", "SD35_VAE", "FLUX1_VAE", "T5_XXL", "BUILTIN",
    "builtin_configs", "folder_configs", "fake_mode", "is_fake", "fake_new_parameters", "BlankImageProcessor",
    "build_fake_pipeline", "stand_in_t5_tokenizer", "parameter_count",
]
