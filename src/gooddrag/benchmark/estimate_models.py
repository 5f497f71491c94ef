"""Stable Diffusion backbones at real size with no weights, for ``gooddrag bench estimate``.

Every component (UNet, VAE, text encoders) is built from its published config (or a diffusers
folder's configs) inside PyTorch's ``FakeTensorMode``: tensors have shapes, dtypes and devices but
no values, no memory and no arithmetic, and every operator still runs its shape logic, so the
pipeline's own code runs on them unchanged. Two things are stand-ins, and say so:

* the tokenizers: CLIP's vocabulary cannot be downloaded here, so each tokenizer is the small
  character-level one of :mod:`gooddrag.models.tiny`; the text encoders still see 77 tokens, what
  their cost depends on (their embedding tables keep the published 49408 rows);
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
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.nn.modules.module import register_module_parameter_registration_hook
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..core.ddim import SD15_SCHEDULER_CONFIG
from ..errors import GoodDragError
from ..models import backbone
from ..models.sdxl import SDXL_BASE_UNET_CONFIG
from ..models.tiny import _tiny_vocab
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


def builtin_configs(name: str) -> dict[str, Any]:
    """The configs of a built-in architecture: ``sd15`` (runwayml/stable-diffusion-v1-5), ``sd21``
    (stabilityai/stable-diffusion-2-1, v-prediction) or ``sdxl`` (stabilityai/stable-diffusion-xl-base-1.0
    with the fp16-fix VAE)."""
    if name == "sd15":
        return dict(unet=SD15_UNET, vae=SD_VAE, text_encoder=CLIP_L, scheduler=dict(SD15_SCHEDULER_CONFIG))
    if name == "sd21":
        return dict(unet=SD21_UNET, vae=SD_VAE | dict(sample_size=768), text_encoder=OPENCLIP_H,
                    scheduler=dict(SD15_SCHEDULER_CONFIG, prediction_type="v_prediction"))
    if name == "sdxl":
        return dict(unet=dict(SDXL_BASE_UNET_CONFIG), vae=SDXL_VAE, text_encoder=CLIP_L, text_encoder_2=OPENCLIP_BIGG,
                    scheduler=dict(SDXL_SCHEDULER_CONFIG), scheduler_class="EulerDiscreteScheduler")
    raise GoodDragError(f"unknown architecture {name!r}; choose sd15, sd21, sdxl or give a diffusers folder")


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def folder_configs(folder: str | Path) -> dict[str, Any]:
    """The component configs of a local diffusers folder (its weights are never read)."""
    root = Path(folder).expanduser()
    index, unet = _read(root / "model_index.json"), _read(root / "unet" / "config.json")
    vae, text = _read(root / "vae" / "config.json"), _read(root / "text_encoder" / "config.json")
    if index is None or unet is None or vae is None or text is None:
        raise GoodDragError(f"{str(folder)!r} is not a diffusers folder with model_index.json and the configs of "
                            "unet/, vae/ and text_encoder/ (give sd15, sd21, sdxl or such a folder)")
    configs = dict(unet=unet, vae=vae, text_encoder=text,
                   scheduler=_read(root / "scheduler" / "scheduler_config.json") or dict(SD15_SCHEDULER_CONFIG))
    if backbone.backbone_kind_of_config(index, unet) == backbone.SDXL:
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


def _scheduler(configs: dict[str, Any]):
    klass = EulerDiscreteScheduler if configs.get("scheduler_class") == "EulerDiscreteScheduler" else DDIMScheduler
    return klass.from_config(configs["scheduler"])


def build_fake_pipeline(configs: dict[str, Any], dtype: torch.dtype, mode: FakeTensorMode | None):
    """A diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` whose models are
    fake (shapes only) on the CPU, in ``dtype``, frozen and in eval mode, as
    :func:`gooddrag.models.loading.load_components` leaves a loaded one. ``mode`` None: the same
    with real (random) weights, for the runs the estimates are checked against."""
    with mode if mode is not None else contextlib.nullcontext(), _default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = _text_encoder(configs["text_encoder"], with_projection=False)
        text_encoder_2 = (_text_encoder(configs["text_encoder_2"], with_projection=True)
                          if configs.get("text_encoder_2") else None)
    tokenizer = CLIPTokenizer(vocab=_tiny_vocab(), merges=[], model_max_length=77)
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_scheduler(configs))
    if text_encoder_2 is not None:
        sd = StableDiffusionXLPipeline(**parts, text_encoder_2=text_encoder_2, add_watermarker=False,
                                       tokenizer_2=CLIPTokenizer(vocab=_tiny_vocab(), merges=[], model_max_length=77))
    else:
        sd = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                     requires_safety_checker=False)
    sd.image_processor = BlankImageProcessor(vae_scale_factor=sd.vae_scale_factor)
    for module in (unet, vae, *backbone.text_encoders(sd)):
        module.requires_grad_(False)
        module.eval()
    return sd


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "HOST_STAND_IN", "SD15_UNET", "SD21_UNET", "SD_VAE", "SDXL_VAE", "CLIP_L", "OPENCLIP_H", "OPENCLIP_BIGG",
    "builtin_configs", "folder_configs", "fake_mode", "is_fake", "fake_new_parameters", "BlankImageProcessor", "build_fake_pipeline",
    "parameter_count",
]
