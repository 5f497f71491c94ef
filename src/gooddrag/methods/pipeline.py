"""The drag-editing pipeline: one ``__call__`` in numbered steps.

1. check inputs (working size, points and mask in each frame)
2. encode the prompt
3. LoRA: load the cached one or train it
4. encode the image
5. DDIM inversion (and GoodDrag+'s warped start)
6. the method: drag and denoise (:data:`gooddrag.methods.registry.METHODS`; AIDD for GoodDrag,
   one timestep for DragDiffusion), with mutual self-attention
7. decode, resize back to the input size, map points back to image pixels

The models, the scheduler config and the method are separate: the diffusers pipeline only
supplies components, :mod:`gooddrag.core.ddim` the steps, :mod:`gooddrag.core.motion` the math,
:mod:`gooddrag.methods.config` the settings and :mod:`gooddrag.methods.registry` the method, which
receives this pipeline as its model (:class:`gooddrag.methods.base.DenoisingModel`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image
from tqdm.auto import tqdm

from ..core import geometry, warp
from ..core.clock import PhaseClock
from ..core.ddim import DDIMSchedule, ddim_step, make_flow_schedule, make_schedule
from ..errors import NO_MASK_WARNING, GoodDragError, InputsCannotWorkError
from ..models import backbone, lora
from ..models.attention import SelfAttentionCache, decoder_self_attention_start
from ..models.denoiser import denoiser_for
from ..models.features import BlockOverride, FeatureHook
from ..models.loading import (
    DEFAULT_MODEL,
    ModelSource,
    load_components,
    resolve_device,
    resolve_dtype,
)
from . import presets
from .base import (
    DragContext,
    DragHooks,
    DragSource,
    DragStats,
    PreparedInputs,
    StepCallback,
    StepEvent,
)
from .config import PRESETS, DragConfig
from .registry import get_method

logger = logging.getLogger(__name__)


@dataclass
class DragResult:
    """The output of one drag edit."""

    image: Image.Image
    """Edited image at the input's size."""
    handle_points: np.ndarray
    """(N, 2) final handle positions, input-image (x, y) pixels."""
    initial_handle_points: np.ndarray
    target_points: np.ndarray
    config: DragConfig
    timings: dict[str, float]
    stats: DragStats
    working_size: tuple[int, int]
    """(height, width) the edit ran at."""
    lora: dict[str, Any]
    trajectory: list[Image.Image] | None = None
    """Input, one decoded frame per drag timestep, result (at the input's size)."""
    latents: torch.Tensor | None = None
    """(1, c, h, w) the clean edited latent that was decoded (fp32)."""


LORA_PASS_PIXELS = 4 * 512 * 512
"""Image pixels per LoRA forward pass when ``DragPipeline.lora_micro_batch`` is None: SD 1.5's
whole batch of 4 at 512 px in one pass (as fast as before), SDXL's at 1024 px one image a pass
(a quarter of the activations; docs/benchmarks.md, "Memory")."""


def lora_micro_batch(pixels: int) -> int:
    """Images per LoRA forward pass for images of ``pixels`` pixels (:data:`LORA_PASS_PIXELS`)."""
    return max(1, LORA_PASS_PIXELS // pixels)


def image_sha256(image: Image.Image) -> str:
    """Hash of an image's decoded RGB pixels and size (not of its file encoding)."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


class DragPipeline:
    """Drag editing on a Stable Diffusion 1.x/2.x, SDXL, SD3/SD3.5 or FLUX.1 backbone (the kind read from
    the model's configs; the denoising network behind :mod:`gooddrag.models.denoiser`'s adapter).

    Build with :meth:`from_pretrained`; call with an image, handle and target
    points (x, y image pixels), an optional mask (1 = may change) and a
    :class:`~gooddrag.methods.config.DragConfig`.

    Speed settings (attributes; each keeps the result up to rounding, tests/test_speed.py):
    ``fuse_lora`` (True) merges the LoRA into the UNet weights for inversion,
    drag and denoising and restores the exact base weights afterwards;
    ``fused_adam`` (on CUDA) uses torch's fused Adam/AdamW kernels; on CUDA the
    UNet is put in channels_last memory format. :meth:`enable_low_memory` trades
    speed for memory.

    Memory settings (attributes; each keeps the result up to float order, tests/test_estimate.py;
    their effect: ``gooddrag bench estimate``, docs/benchmarks.md): ``lora_micro_batch`` (None: as
    many images per LoRA forward pass as fit in :data:`LORA_PASS_PIXELS`, e.g. all 4 of SD 1.5's at
    512 px, one of SDXL's at 1024) splits each LoRA step into passes whose gradients add up;
    ``offload_text_encoders`` (True) keeps the text encoders on ``offload_device`` (the CPU) except
    while a prompt is encoded.
    """

    def __init__(self, sd_pipeline, *, source: ModelSource | None = None, device="cpu"):
        self.sd = sd_pipeline
        self.kind = backbone.backbone_kind(sd_pipeline)
        self.denoiser = denoiser_for(self.kind, sd_pipeline)
        self.unet = self.denoiser.module  # the denoising network: a UNet, or SD3's / FLUX's transformer
        self.vae = sd_pipeline.vae
        self.text_encoder = sd_pipeline.text_encoder
        self.tokenizer = sd_pipeline.tokenizer
        if self.denoiser.flow:  # the model's own flow-matching scheduler (docs/method.md, "Flow-matching backbones")
            self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(sd_pipeline.scheduler.config)
        else:  # DDIM with the model's own betas and prediction type; clip_sample and
            # set_alpha_to_one off as in the authors' scheduler (docs/method.md, "Pipeline" 5).
            self.scheduler = DDIMScheduler.from_config(
                sd_pipeline.scheduler.config, clip_sample=False, set_alpha_to_one=False
            )
        self.source = source
        self.device = torch.device(device)
        self.offload_device = torch.device("cpu")
        self.offload_text_encoders: bool = True
        self.unet.to(self.device)
        self.vae.to(self.device)
        for module in backbone.text_encoders(sd_pipeline):  # on the device only while a prompt is encoded
            module.to(self.offload_device if self.offload_text_encoders else self.device)
        # Gradients flow to the latent only (LoRA training unfreezes its own
        # parameters): frozen weights spare a weight-gradient matmul per layer in
        # every drag backward pass, and the memory of those gradients.
        for module in (self.unet, self.vae, *backbone.text_encoders(sd_pipeline)):
            module.requires_grad_(False)
        cuda = self.device.type == "cuda"
        self.fuse_lora: bool = True
        self.fused_adam: bool = cuda
        self.low_memory: bool = False
        self.lora_micro_batch: int | None = None
        self.cache_lora: bool = True
        self.hooks = DragHooks()
        if cuda and not self.denoiser.flow:  # NHWC convolutions (tensor-core friendly); values are unchanged
            self.unet.to(memory_format=torch.channels_last)

    def enable_low_memory(self, attention_slicing: bool = False) -> "DragPipeline":
        """Trade speed for memory (8 GB cards): gradient checkpointing in the
        UNet (recomputes activations in the backward passes of LoRA training and
        the drag instead of keeping them), VAE tiling and slicing (tiles only act
        above the VAE's ``sample_size``, 512 px for SD; slicing decodes a batch
        one image at a time), the LoRA fusing backup kept on the CPU, LoRA steps
        one image a forward pass (``lora_micro_batch`` 1). Sliced
        attention (``attention_slicing=True``) is off by default: torch's
        scaled-dot-product attention, used otherwise, never holds the full
        attention matrix, and sliced attention does; it only helps on devices
        without a memory-efficient kernel. Returns ``self``.
        """
        self.unet.enable_gradient_checkpointing()
        self.vae.enable_tiling()
        self.vae.enable_slicing()
        if attention_slicing:
            self.unet.set_attention_slice("auto")
        self.lora_micro_batch = 1
        self.low_memory = True
        return self

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        vae: str | None = None,
        model_config: str | None = None,
        vae_config: str | None = None,
        device: str = "auto",
        dtype: str = "fp32",
    ) -> "DragPipeline":
        """Load from a hub id, local diffusers folder or single-file checkpoint (see :mod:`gooddrag.models.loading`)."""
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        sd, source = load_components(
            model, vae=vae, model_config=model_config, vae_config=vae_config, dtype=torch_dtype
        )
        return cls(sd, source=source, device=dev)

    def default_config(self, method: str = "gooddrag") -> DragConfig:
        """The ``method``'s preset that fits this model (:func:`gooddrag.methods.presets.for_model`)."""
        return PRESETS[presets.for_model(method, self.source.location if self.source else None, self.kind)]

    # ------------------------------------------------------------------ sizes
    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return geometry.vae_scale_factor(self.vae.config)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (every UNet level an integer size; whole patches on a transformer)."""
        return self.denoiser.size_multiple(self.vae_scale_factor)

    def working_size(self, image: Image.Image, config: DragConfig) -> tuple[int, int]:
        """(h, w) working size in pixels for ``image`` under ``config.resolution`` (sides the UNet can take)."""
        return geometry.working_size(image.height, image.width, config.resolution, self.size_multiple)

    # ------------------------------------------------------------ 1. inputs
    def check_inputs(
        self,
        image: Image.Image,
        handle_points: Sequence[Sequence[float]],
        target_points: Sequence[Sequence[float]],
        mask: np.ndarray | None,
        config: DragConfig,
    ) -> PreparedInputs:
        """Validate the user's inputs and express them in every frame (see :mod:`gooddrag.core.geometry`)."""
        if not isinstance(image, Image.Image):
            raise GoodDragError(f"image must be a PIL image, got {type(image).__name__}")
        if config.guidance_scale != 1.0:
            raise GoodDragError("guidance_scale other than 1 is not supported (the methods use no CFG)")
        method = get_method(config.method)
        if self.kind not in method.backbones:
            raise InputsCannotWorkError(f"method {config.method} runs on {', '.join(method.backbones)} models, "
                                        f"not on this {self.kind} model")
        image = image.convert("RGB")
        W, H = image.size
        handles, targets = geometry.check_points(handle_points, target_points, (H, W))

        working = self.working_size(image, config)
        sup = geometry.sup_grid_size(working, config.sup_res_scale)
        latent = (working[0] // self.vae_scale_factor, working[1] // self.vae_scale_factor)
        self.denoiser.check_latent(latent)
        self.denoiser.check_layers(config.feature_block, config.mutual_attention_start_layer)
        # (x, y) input px -> (x, y) working px -> (row, col) supervision cells
        to_grid = lambda pts: geometry.image_to_grid(  # noqa: E731
            geometry.scale_points(torch.as_tensor(pts, dtype=torch.float64), (H, W), working), working, sup
        ).to(self.device)
        mask_t = self._input_mask(mask, (H, W), handles, targets, config)  # (H, W) float, 1 = may change
        # input -> supervision grid -> latent, nearest each time, as both authors' codes
        # resize it (GoodDrag pipeline.py ``prepare_mask`` and ``good_drag``)
        sup_mask = geometry.resize_mask(mask_t, sup)
        latent_mask = geometry.resize_mask(sup_mask, latent)
        if not bool(latent_mask.any()):  # a thin mask that no latent cell keeps (host read, once)
            raise InputsCannotWorkError(
                f"the mask keeps no cell of the model's {latent[1]}x{latent[0]} latent grid "
                f"({self.vae_scale_factor} px per cell at {working[1]}x{working[0]}): paint a wider region"
            )
        prepared = PreparedInputs(
            image=image,
            working_image=image.resize((working[1], working[0]), Image.LANCZOS),
            input_size=(H, W),
            working_size=working,
            sup_size=sup,
            latent_size=latent,
            handle_points_xy=handles,
            target_points_xy=targets,
            handle_points=to_grid(handles),
            target_points=to_grid(targets),
            mask=latent_mask.to(self.device),
            mask_given=mask is not None,
            sup_mask=sup_mask.to(self.device),
        )
        if method.check_inputs is not None:  # the method's own refusals, before any work
            method.check_inputs(prepared, config)
        return prepared

    @staticmethod
    def _input_mask(mask: np.ndarray | None, size: tuple[int, int], handles: np.ndarray, targets: np.ndarray,
                    config: DragConfig) -> torch.Tensor:
        """The user's mask as (H, W) float, 1 = may change (no mask: everything may, with one warning),
        fitted to the input's size; a mask that leaves a handle or target outside is refused here."""
        if mask is None:  # no mask: everything may change, as the authors' code has it
            if getattr(config, "background_without_mask", False):  # DragNoise: its authors hold the whole image
                logger.warning("no mask: DragNoise's background term holds the whole image, as its authors' "
                               "code does; paint the region that may change")
            else:
                logger.warning(NO_MASK_WARNING)
            return torch.ones(*size)
        mask_arr = np.asarray(mask)
        if mask_arr.ndim != 2:
            raise GoodDragError(f"mask must be a 2-D array, got shape {mask_arr.shape}")
        mask_arr = geometry.fit_mask(mask_arr > 0, size)
        geometry.check_mask_covers_points(mask_arr, handles, targets)  # refused before any work
        return torch.as_tensor(mask_arr, dtype=torch.float32)

    # ------------------------------------------------------------ 2. prompt
    def encode_prompt(self, prompt: str, size_hw: tuple[int, int] | None = None,
                      config: DragConfig | None = None) -> backbone.Conditioning:
        """Batch-1 conditioning for ``prompt`` (no CFG): SD's (1, 77, D) text embeddings; SDXL's also
        take the working image's (h, w) in pixels ``size_hw`` (default: the model's native size);
        SD3/FLUX's T5 length and FLUX's distilled guidance come from ``config`` (``text_tokens``,
        ``distilled_guidance``; default: the gooddrag preset's)."""
        if size_hw is None:
            side = self.denoiser.native_latent_side * self.vae_scale_factor
            size_hw = (side, side)
        config = config or self.default_config()
        with self._text_encoders_on_device():
            return backbone.encode_conditioning(self.sd, prompt, size_hw, self.device, text_tokens=config.text_tokens,
                                                guidance=config.distilled_guidance)

    @contextlib.contextmanager
    def _text_encoders_on_device(self):
        """The text encoders on the device inside the block, back on ``offload_device`` after it
        (``offload_text_encoders``; their outputs are all an edit needs of them)."""
        encoders = backbone.text_encoders(self.sd)
        for module in encoders:  # where they are not yet (offloaded, or offloading turned off since)
            if next(module.parameters()).device != self.device:
                module.to(self.device)
        try:
            yield
        finally:
            back = self.offload_text_encoders and self.offload_device != self.device
            for module in encoders if back else ():
                module.to(self.offload_device)

    # ------------------------------------------------------------ 3. LoRA
    def lora_images_per_pass(self, pixels: int) -> int:
        """Images per LoRA forward pass for working images of ``pixels`` pixels: ``lora_micro_batch``
        if set, else as many as fit in :data:`LORA_PASS_PIXELS`."""
        return self.lora_micro_batch or lora_micro_batch(pixels)

    def prepare_lora(
        self,
        image: Image.Image,
        prompt: str,
        config: DragConfig,
        *,
        text_embeddings: backbone.Conditioning | None = None,
        lora_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Attach a LoRA for ``image`` (any size: trained at the config's working size) to the UNet:
        ``lora_path`` if given, else the cached one for (image, model, settings), else train and
        cache it (``cache_lora``; when False, trained and neither read from nor written to the cache).
        Returns a record (``source``: file / none / cache / trained, ``path``, ``key``)."""
        if lora_path is not None:
            lora.load_lora(self.unet, Path(lora_path))
            return {"source": "file", "path": str(lora_path)}
        if config.lora_steps == 0:
            return {"source": "none"}
        image = image.convert("RGB")
        working = self.working_size(image, config)
        settings = lora.lora_settings(config, prompt, self.denoiser.lora_targets) | {"working_size": list(working)}
        if self.denoiser.flow:  # what the transformers' conditioning depends on besides the prompt
            settings |= {"text_tokens": config.text_tokens, "distilled_guidance": config.distilled_guidance}
        model_key = self.source.cache_key if self.source else repr(self.unet.config)
        key = lora.lora_cache_key(image_sha256(image), model_key, settings)
        folder = (Path(cache_dir) if cache_dir else lora.default_cache_dir()) / key
        if self.cache_lora and (folder / lora.LORA_FILE).is_file():
            lora.load_lora(self.unet, folder)
            logger.info("LoRA cache hit: %s", folder)
            return {"source": "cache", "path": str(folder / lora.LORA_FILE), "key": key}
        cond = text_embeddings or self.encode_prompt(prompt, working, config)
        losses = self._train_lora(image.resize((working[1], working[0]), Image.LANCZOS), cond, config,
                                  generator, callback, progress)
        if not self.cache_lora:
            return {"source": "trained", "path": None, "key": key, "final_loss": losses[-1] if losses else None}
        path = lora.save_lora(
            self.unet, folder,
            {"settings": settings, "model": model_key, "image_sha256": image_sha256(image), "losses": losses},
        )
        return {"source": "trained", "path": str(path), "key": key, "final_loss": losses[-1] if losses else None}

    def _train_lora(self, working_image: Image.Image, cond: backbone.Conditioning, config: DragConfig,
                    generator: torch.Generator | None, callback: StepCallback | None, progress: bool) -> list[float]:
        """Train a fresh LoRA on the working-size image; returns the loss per step."""
        if generator is None:
            generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad(), backbone.vae_precision(self.vae) as vae_dtype:
            dist = self.vae.encode(self.image_tensor(working_image).to(vae_dtype)).latent_dist
        bar = tqdm(total=config.lora_steps, desc="LoRA", disable=not progress, leave=False)

        def on_step(step, total, loss):
            bar.update(1)
            if callback is not None:
                callback(StepEvent("lora", step + 1, total))

        try:
            return lora.train_lora(
                self.unet, dist, cond.encoder_hidden_states, self.scheduler, config, generator,
                self.vae.config.scaling_factor, on_step, fused_adam=self.fused_adam,
                added_cond_kwargs=cond.added_cond_kwargs,
                micro_batch=self.lora_images_per_pass(working_image.width * working_image.height),
                host_read=self.hooks.host_read, model_call=self.denoiser.call, shift_factor=self.latent_shift,
                target_modules=self.denoiser.lora_targets,
            )
        finally:
            bar.close()

    # --------------------------------------------------- 4. encode / decode
    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL (w, h) -> (1, 3, h, w) in [-1, 1] on the device, the VAE's dtype (``hooks.pixels`` if set,
        else the backbone's image processor)."""
        if self.hooks.pixels is not None:
            return self.hooks.pixels(image)
        return self.sd.image_processor.preprocess(image).to(self.device, self.vae.dtype)

    @property
    def latent_shift(self) -> float:
        """The VAE's ``shift_factor`` (SD3, FLUX: latents are ``(z - shift) * scale``), 0 where it has none."""
        return getattr(self.vae.config, "shift_factor", None) or 0.0

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """(1, c, h/f, w/f) fp32 latent (c latent channels, f the VAE factor): the posterior mean z as
        ``(z - vae.config.shift_factor) * vae.config.scaling_factor`` (no shift on SD and SDXL)."""
        with backbone.vae_precision(self.vae) as vae_dtype:
            dist = self.vae.encode(self.image_tensor(image).to(vae_dtype)).latent_dist
        mean = dist.mean.float()
        if self.latent_shift:  # SD3/FLUX only: SD and SDXL run exactly the operators they ran before
            mean = mean - self.latent_shift
        return mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        """(B, c, h, w) latents -> B PIL images."""
        z = latents / self.vae.config.scaling_factor
        if self.latent_shift:
            z = z + self.latent_shift
        with backbone.vae_precision(self.vae) as vae_dtype:
            out = self.vae.decode(z.to(vae_dtype)).sample
        return self.sd.image_processor.postprocess(out.float(), output_type="pil")

    # ------------------------------------------------ the model, as methods see it
    @property
    def prediction_type(self) -> str:
        """``epsilon``, ``v_prediction`` (the model's scheduler config) or ``flow`` (SD3, FLUX: the
        velocity ``eps - x0``): what :meth:`model_output` returns."""
        return self.denoiser.prediction_type

    def model_output(self, latents: torch.Tensor, t: torch.Tensor, cond: backbone.Conditioning) -> torch.Tensor:
        """Model output (eps, v or the flow velocity) for fp32 latents (B, c, h, w), returned in fp32.

        The network runs in its weights' dtype (fp16/bf16 or fp32), forward and
        backward; latents, DDIM steps, features, losses and the optimiser stay fp32.
        """
        kwargs = cond.unet_kwargs(latents.shape[0])
        return self.denoiser.call(latents.to(self.denoiser.dtype), t, kwargs["encoder_hidden_states"],
                                  kwargs["added_cond_kwargs"]).float()

    def feature_hook(self, block: int) -> FeatureHook:
        """Keeps the output of decoder block ``block`` ([mid_block, *up_blocks]) of the latest forward pass
        (a transformer's: the image tokens of joint block ``block`` as a (B, C, h', w') map)."""
        return self.denoiser.feature_hook(block)

    def mutual_attention(self, start_layer: int) -> contextlib.AbstractContextManager:
        """Mutual self-attention from self-attention layer ``start_layer`` on (:mod:`gooddrag.models.attention`;
        a transformer's joint attention layers: :mod:`gooddrag.models.dit`)."""
        return self.denoiser.mutual_attention(start_layer)

    def block_output_override(self, block: int, value: torch.Tensor) -> BlockOverride:
        """Replace decoder block ``block``'s output ([mid_block, *up_blocks]) by ``value`` while entered
        (a forward hook returning it in the UNet's dtype; :class:`gooddrag.models.features.BlockOverride`)."""
        return BlockOverride(self.unet, block, value)

    def self_attention_cache(self, start_layer: int) -> SelfAttentionCache:
        """Record/replay of self-attention layers ``start_layer..`` (-1: the decoder's first) by timestep
        (:class:`gooddrag.models.attention.SelfAttentionCache`; FastDrag's K/V copy)."""
        if start_layer < 0:
            start_layer = decoder_self_attention_start(self.unet)
        return SelfAttentionCache(self.unet, start_layer)

    # ------------------------------------------------------------ 5. invert
    @torch.no_grad()
    def invert(
        self, latents: torch.Tensor, cond: backbone.Conditioning, schedule: DDIMSchedule, progress: bool = True,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """DDIM inversion of clean latents (1, c, h, w) to the level of ``schedule.timesteps[0]``."""
        n = len(schedule)
        for i, k in enumerate(tqdm(range(n - 1, -1, -1), desc="inversion", disable=not progress, leave=False)):
            t = schedule.timesteps[k].to(self.device)
            eps = self.model_output(latents, t, cond)
            latents = ddim_step(latents, eps, schedule.alphas_prev[k], schedule.alphas[k], self.prediction_type)
            if callback is not None:
                callback(StepEvent("inversion", i + 1, n))
        return latents

    def drag_source(self, inverted: torch.Tensor, inputs: PreparedInputs, cond: backbone.Conditioning,
                    schedule: DDIMSchedule, config: DragConfig) -> DragSource:
        """Where the drag starts: the inverted input and the user's handles, or with ``config.image_warp``
        (GoodDrag+, ours) the inversion of the input warped in pixel space and the warped handles."""
        if not config.image_warp:
            return DragSource(inverted, inputs.handle_points)
        to_working = lambda xy: geometry.scale_points(  # noqa: E731 - (x, y) input px -> working px
            torch.as_tensor(xy, dtype=torch.float64), inputs.input_size, inputs.working_size)
        warped, start_handles = warp.image_warp_for_drag(
            inputs.working_image, to_working(inputs.handle_points_xy), to_working(inputs.target_points_xy),
            inputs.mask, inputs.sup_size, config)
        return DragSource(self.invert(self.encode_image(warped), cond, schedule, progress=False),
                          start_handles.to(inputs.handle_points.dtype).to(self.device))

    # --------------------------------------------------- 6. drag + denoise
    def drag_and_denoise(
        self,
        source: DragSource,
        cond: backbone.Conditioning,
        schedule: DDIMSchedule,
        inputs: PreparedInputs,
        config: DragConfig,
        *,
        progress: bool = True,
        callback: StepCallback | None = None,
        keep_trajectory: bool = False,
    ):
        """Run ``config.method`` (:func:`gooddrag.methods.registry.get_method`) on this model from
        ``source``; returns its :class:`~gooddrag.methods.base.DragOutcome`."""
        ctx = DragContext(inputs=inputs, schedule=schedule, cond=cond, config=config, hooks=self.hooks,
                          callback=callback, progress=progress, keep_trajectory=keep_trajectory,
                          to_input_points=lambda rc: self._grid_to_input(rc, inputs))
        return get_method(config.method).run(self, source, ctx)

    def _grid_to_input(self, points_rc: torch.Tensor, inputs: PreparedInputs) -> np.ndarray:
        """(row, col) supervision cells -> (x, y) input-image pixels."""
        xy = geometry.grid_to_image(points_rc.detach().double().cpu(), inputs.sup_size, inputs.working_size)
        return geometry.scale_points(xy, inputs.working_size, inputs.input_size).numpy()

    def _schedule(self, config: DragConfig, latent_hw: tuple[int, int]) -> DDIMSchedule:
        """The config's DDIM schedule (a flow model's: its scheduler's sigmas as its pipeline sets them
        for a ``latent_hw`` latent), on the device once: indexing it in the loops then needs no
        host-to-device copy (each one a sync)."""
        n = config.num_inference_steps
        if self.denoiser.flow:
            recipe = self.denoiser.flow_schedule_recipe(dict(self.scheduler.config), n, latent_hw)
            schedule = make_flow_schedule(self.scheduler, n, config.inversion_steps, **recipe)
        else:
            schedule = make_schedule(self.scheduler, n, config.inversion_steps)
        return DDIMSchedule(*(x.to(self.device) for x in (schedule.timesteps, schedule.alphas, schedule.alphas_prev)))

    # ------------------------------------------------------------- __call__
    def __call__(
        self,
        image: Image.Image,
        handle_points: Sequence[Sequence[float]],
        target_points: Sequence[Sequence[float]],
        mask: np.ndarray | None = None,
        prompt: str = "",
        config: DragConfig | None = None,
        *,
        generator: torch.Generator | None = None,
        lora_path: str | Path | None = None,
        lora_cache_dir: str | Path | None = None,
        return_trajectory: bool = False,
        callback: StepCallback | None = None,
        progress: bool = True,
    ) -> DragResult:
        """Drag the content under each handle to its target.

        image: PIL image of any size; handle_points / target_points: (x, y) input-image pixels, one
        pair per row; mask: (H, W) array, nonzero = may change (None: everything may change; a mask
        with nothing editable, or one that leaves a handle or target outside, is refused with
        InputsCannotWorkError); prompt: text for the UNet (empty by default); config: a
        :class:`DragConfig` (default: :meth:`default_config`, the gooddrag preset that fits the model);
        generator: CPU generator for the LoRA's noise (default seeded from ``config.seed``);
        lora_path: use this LoRA instead of the cached/trained one."""
        config = config or self.default_config()
        clock = PhaseClock(self.device)
        start = mark = clock.now()
        # 1. check inputs
        inputs = self.check_inputs(image, handle_points, target_points, mask, config)
        schedule = self._schedule(config, inputs.latent_size)
        # 2. encode prompt
        cond = self.encode_prompt(prompt, inputs.working_size, config)
        try:
            # 3. LoRA
            with self.hooks.phase("lora"):
                lora_record = self.prepare_lora(
                    inputs.image, prompt, config, text_embeddings=cond, lora_path=lora_path,
                    cache_dir=lora_cache_dir, generator=generator, callback=callback, progress=progress,
                )
                self._fuse_lora()
            mark = clock.add("lora", mark)
            # 4. encode image, 5. invert (and GoodDrag+'s warped start)
            with self.hooks.phase("inversion"):
                source = self._invert_input(inputs, cond, schedule, config, progress, callback)
            mark = clock.add("inversion", mark)
            # 6. drag and denoise (the method)
            with self.hooks.phase("denoise"):  # the drag timesteps inside mark "drag"
                outcome = self.drag_and_denoise(source, cond, schedule, inputs, config, progress=progress,
                                                callback=callback, keep_trajectory=return_trajectory)
            mark = clock.add("method", mark)
        finally:
            lora.remove_lora(self.unet)  # unfuses first: the base weights come back exactly
        with self.hooks.phase("decode"):  # 7. decode and map back to the input frame
            result, trajectory = self._decode_result(outcome, inputs, return_trajectory)
        clock.add("decode", mark)
        return self._result(result, trajectory, outcome, inputs, config, lora_record, clock, start)

    def _invert_input(self, inputs: PreparedInputs, cond: backbone.Conditioning, schedule: DDIMSchedule,
                      config: DragConfig, progress: bool, callback: StepCallback | None) -> DragSource:
        """Encode and invert the input (inside the method's ``inversion_context``, if it records
        something there: what it yields reaches the method as ``DragSource.extras``)."""
        recording = get_method(config.method).inversion_context
        with recording(self, config) if recording else contextlib.nullcontext() as extras:
            inverted = self.invert(self.encode_image(inputs.working_image), cond, schedule,
                                   progress=progress, callback=callback)
        source = self.drag_source(inverted, inputs, cond, schedule, config)
        source.extras = extras
        return source

    def _fuse_lora(self) -> None:
        """Merge the attached LoRA into the UNet's weights for speed (``fuse_lora``); the base weights
        come back exactly when it is removed."""
        if self.fuse_lora:
            lora.fuse_lora(self.unet, backup_device=self.offload_device if self.low_memory else None)

    def _decode_result(self, outcome, inputs: PreparedInputs, return_trajectory: bool):
        """The edited image at the input's size, and the trajectory's frames if asked for."""
        H, W = inputs.input_size
        result = self.decode_latents(outcome.latents)[0].resize((W, H), Image.LANCZOS)
        trajectory = None
        if return_trajectory:
            frames = self.decode_latents(torch.cat(outcome.trajectory)) if outcome.trajectory else []
            trajectory = [inputs.image] + [f.resize((W, H), Image.LANCZOS) for f in frames] + [result]
        return result, trajectory

    def _result(self, image, trajectory, outcome, inputs: PreparedInputs, config: DragConfig,
                lora_record: dict, clock: PhaseClock, start) -> DragResult:
        """The :class:`DragResult`; timings from the one clock (``method`` split into the method's own
        ``drag`` and ``denoise``)."""
        clock.add("total", start)
        seconds = clock.seconds()
        timings = {"lora": seconds["lora"], "inversion": seconds["inversion"], **outcome.timings,
                   "decode": seconds["decode"], "total": seconds["total"]}
        return DragResult(
            image=image,
            handle_points=self._grid_to_input(outcome.handles, inputs),
            initial_handle_points=inputs.handle_points_xy,
            target_points=inputs.target_points_xy,
            config=config,
            timings=timings,
            stats=outcome.stats,
            working_size=inputs.working_size,
            lora=lora_record,
            trajectory=trajectory,
            latents=outcome.latents,
        )
