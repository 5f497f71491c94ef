"""The drag-editing pipeline: one ``__call__`` in numbered steps.

1. check inputs (working size, points and mask in each frame)
2. encode the prompt
3. LoRA: load the cached one or train it
4. encode the image
5. DDIM inversion
6. drag (AIDD for GoodDrag, one timestep for DragDiffusion) and denoise with
   mutual self-attention
7. decode, resize back to the input size, map points back to image pixels

The models, the scheduler config and the method are separate: the
``StableDiffusionPipeline`` only supplies components, :mod:`gooddrag.ddim`
the steps, :mod:`gooddrag.motion` the math, :mod:`gooddrag.config` the method.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import backbone, geometry, lora, presets, warp
from .attention import mutual_self_attention
from .clock import PhaseClock
from .config import PRESETS, DragConfig
from .ddim import DDIMSchedule, ddim_step, make_schedule
from .errors import NO_MASK_WARNING, GoodDragError, InputsCannotWorkError
from .features import FeatureHook
from .loading import DEFAULT_MODEL, ModelSource, load_components, resolve_device, resolve_dtype
from .motion import (
    MOTION_LOSSES,
    active_pairs,
    background_loss,
    features_at,
    patch_offsets,
    sample_patches,
    track_points,
)
from .tracking import track_points_subpixel

logger = logging.getLogger(__name__)



@dataclass
class StepEvent:
    """What a step callback receives. ``latents`` is the edited branch's
    predicted clean latent (drag and denoise phases) for previews;
    ``handle_points`` the current handles in input-image (x, y) pixels. Drag
    events come after each tracking; ``step`` counts the tracking rounds done
    out of ``total`` = drag_end_step x track_per_step."""

    phase: str
    step: int
    total: int
    latents: torch.Tensor | None = None
    handle_points: np.ndarray | None = None
    timestep: int | None = None
    """Drag and denoise events: 0-based index of the denoising timestep."""
    tracking: str | None = None
    """Drag events: ``"start"`` (a drag timestep's first tracking) or ``"round"`` (a round's closing one)."""


StepCallback = Callable[[StepEvent], None]


@dataclass
class DragStats:
    """Counts of the work the drag loop did (the tests count them)."""

    drag_timesteps: int = 0
    """Timesteps at which at least one optimiser step ran."""
    drag_steps: int = 0
    """Optimiser steps on the latent, all timesteps together."""
    tracking_steps: int = 0
    """Point trackings, all timesteps together (timestep starts and round ends)."""
    drag_rounds: int = 0
    """Tracking rounds completed (each ends after ``max_drag_per_track`` optimiser steps)."""
    drag_steps_per_timestep: list[int] = field(default_factory=list)
    stop_reason: str = "budget"
    """``budget`` (all steps ran), ``reached`` (handles at targets) or ``no_change`` (tracking stalled)."""


@dataclass
class _TimestepReference:
    """The unedited trajectory at one drag timestep (computed once, no grad)."""

    vectors: torch.Tensor
    """(N, C) features at the ORIGINAL handles: the tracking reference."""
    patches: torch.Tensor
    """(N, C, (2 r1 + 1)^2) patches around the ORIGINAL handles: GoodDrag's motion reference."""
    x_prev: torch.Tensor
    """(1, c, h, w) DDIM step of the unedited latent: the background term's reference."""


@dataclass
class _DragState:
    """What carries over between drag timesteps."""

    handles: torch.Tensor
    """(N, 2) current handles, (row, col) supervision cells."""
    no_change: int = 0
    """Round-closing trackings in a row that moved no handle (carries over, as in the authors' code)."""
    stopped: bool = False
    """A stop rule ended the drag phase: later timesteps only denoise."""
    reached: bool | None = None
    """Whether every handle is done, as of the last tracking (None: not tracked yet)."""
    stats: DragStats = field(default_factory=DragStats)


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


def image_sha256(image: Image.Image) -> str:
    """Hash of an image's decoded RGB pixels and size (not of its file encoding)."""
    rgb = image.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


@dataclass
class PreparedInputs:
    """Inputs checked and converted to every frame the engine needs."""

    image: Image.Image  # RGB, input size
    working_image: Image.Image  # RGB, working size
    input_size: tuple[int, int]  # (H, W) input image
    working_size: tuple[int, int]  # (h, w) working image
    sup_size: tuple[int, int]  # (h, w) supervision grid
    latent_size: tuple[int, int]
    handle_points_xy: np.ndarray  # (N, 2) input px
    target_points_xy: np.ndarray  # (N, 2) input px
    handle_points: torch.Tensor  # (N, 2) (row, col) supervision cells
    target_points: torch.Tensor  # (N, 2) (row, col) supervision cells
    mask: torch.Tensor  # (1, 1, h_lat, w_lat) float, 1 = editable


class DragPipeline:
    """Drag editing on a Stable Diffusion 1.x/2.x or SDXL backbone (the kind read from the model's configs).

    Build with :meth:`from_pretrained`; call with an image, handle and target
    points (x, y image pixels), an optional mask (1 = may change) and a
    :class:`~gooddrag.config.DragConfig`.

    Speed settings (attributes; each keeps the result up to rounding, tests/test_speed.py):
    ``fuse_lora`` (True) merges the LoRA into the UNet weights for inversion,
    drag and denoising and restores the exact base weights afterwards;
    ``fused_adam`` (on CUDA) uses torch's fused Adam/AdamW kernels; on CUDA the
    UNet is put in channels_last memory format. :meth:`enable_low_memory` trades
    speed for memory.
    """

    def __init__(self, sd_pipeline, *, source: ModelSource | None = None, device="cpu"):
        from diffusers import DDIMScheduler

        self.sd = sd_pipeline
        self.unet = sd_pipeline.unet
        self.vae = sd_pipeline.vae
        self.text_encoder = sd_pipeline.text_encoder
        self.tokenizer = sd_pipeline.tokenizer
        # DDIM with the model's own betas and prediction type; clip_sample and
        # set_alpha_to_one off as in the authors' scheduler (docs/method.md, "Pipeline" 5).
        self.scheduler = DDIMScheduler.from_config(
            sd_pipeline.scheduler.config, clip_sample=False, set_alpha_to_one=False
        )
        self.source = source
        self.device = torch.device(device)
        self.sd.to(self.device)
        # Gradients flow to the latent only (LoRA training unfreezes its own
        # parameters): frozen weights spare a weight-gradient matmul per layer in
        # every drag backward pass, and the memory of those gradients.
        self.kind = backbone.backbone_kind(sd_pipeline)
        for module in (self.unet, self.vae, *backbone.text_encoders(sd_pipeline)):
            module.requires_grad_(False)
        cuda = self.device.type == "cuda"
        self.fuse_lora: bool = True
        self.fused_adam: bool = cuda
        self.low_memory: bool = False
        if cuda:  # NHWC convolutions (tensor-core friendly); values are unchanged
            self.unet.to(memory_format=torch.channels_last)

    def enable_low_memory(self, attention_slicing: bool = False) -> "DragPipeline":
        """Trade speed for memory (8 GB cards): gradient checkpointing in the
        UNet (recomputes activations in the backward passes of LoRA training and
        the drag instead of keeping them), VAE tiling and slicing (tiles only act
        above the VAE's ``sample_size``, 512 px for SD; slicing decodes a batch
        one image at a time), the LoRA fusing backup kept on the CPU. Sliced
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
        """Load from a hub id, local diffusers folder or single-file checkpoint (see :mod:`gooddrag.loading`)."""
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        sd, source = load_components(
            model, vae=vae, model_config=model_config, vae_config=vae_config, dtype=torch_dtype
        )
        return cls(sd, source=source, device=dev)

    def default_config(self, method: str = "gooddrag") -> DragConfig:
        """The ``method``'s preset that fits this model: ``shapes-<method>`` for the shipped
        shapes-64, ``<method>-sdxl`` for an SDXL model, else ``<method>``."""
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
        """Image sides must be multiples of this for every UNet level to have an integer size."""
        return geometry.unet_multiple(self.vae_scale_factor, len(self.unet.config.down_block_types))

    # ------------------------------------------------------------ 1. inputs
    def check_inputs(
        self,
        image: Image.Image,
        handle_points: Sequence[Sequence[float]],
        target_points: Sequence[Sequence[float]],
        mask: np.ndarray | None,
        config: DragConfig,
    ) -> PreparedInputs:
        """Validate the user's inputs and express them in every frame (see :mod:`gooddrag.geometry`)."""
        if not isinstance(image, Image.Image):
            raise GoodDragError(f"image must be a PIL image, got {type(image).__name__}")
        image = image.convert("RGB")
        W, H = image.size
        handles, targets = geometry.check_points(handle_points, target_points, (H, W))

        working = geometry.working_size(H, W, config.resolution, self.size_multiple)
        sup = geometry.sup_grid_size(working, config.sup_res_scale)
        latent = (working[0] // self.vae_scale_factor, working[1] // self.vae_scale_factor)
        # (x, y) input px -> (x, y) working px -> (row, col) supervision cells
        to_grid = lambda pts: geometry.image_to_grid(  # noqa: E731
            geometry.scale_points(torch.as_tensor(pts, dtype=torch.float64), (H, W), working), working, sup
        ).to(self.device)
        if mask is None:  # no mask: everything may change, as the authors' code has it
            logger.warning(NO_MASK_WARNING)
            mask_t = torch.ones(H, W)
        else:
            mask_arr = np.asarray(mask)
            if mask_arr.ndim != 2:
                raise GoodDragError(f"mask must be a 2-D array, got shape {mask_arr.shape}")
            mask_arr = geometry.fit_mask(mask_arr > 0, (H, W))
            geometry.check_mask_covers_points(mask_arr, handles, targets)  # refused before any work
            mask_t = torch.as_tensor(mask_arr, dtype=torch.float32)
        # input -> supervision grid -> latent, nearest each time, as both authors' codes
        # resize it (GoodDrag pipeline.py ``prepare_mask`` and ``good_drag``)
        latent_mask = geometry.resize_mask(geometry.resize_mask(mask_t, sup), latent)
        if not bool(latent_mask.any()):  # a thin mask that no latent cell keeps (host read, once)
            raise InputsCannotWorkError(
                f"the mask keeps no cell of the model's {latent[1]}x{latent[0]} latent grid "
                f"({self.vae_scale_factor} px per cell at {working[1]}x{working[0]}): paint a wider region"
            )
        return PreparedInputs(
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
        )

    # ------------------------------------------------------------ 2. prompt
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, tokenizer.model_max_length, D) text embeddings (no CFG), SD 1.x/2.x only.

        SDXL needs the working size too (its added conditioning): use
        :func:`gooddrag.backbone.encode_conditioning`, which :meth:`__call__` does.
        """
        if self.kind != backbone.SD:
            raise GoodDragError(
                "encode_prompt covers SD 1.x/2.x; this is an SDXL model: use "
                "gooddrag.backbone.encode_conditioning(pipe.sd, prompt, (height, width), pipe.device)"
            )
        embeds, _ = self.sd.encode_prompt(prompt, self.device, 1, False)
        return embeds

    # ------------------------------------------------------------ 3. LoRA
    def prepare_lora(
        self,
        inputs: PreparedInputs,
        prompt: str,
        config: DragConfig,
        *,
        text_embeddings: torch.Tensor | None = None,
        lora_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Attach a LoRA to the UNet: ``lora_path`` if given, else the cached one
        for (image, model, settings), else train and cache it. Returns a record."""
        if lora_path is not None:
            lora.load_lora(self.unet, Path(lora_path))
            return {"source": "file", "path": str(lora_path)}
        if config.lora_steps == 0:
            return {"source": "none"}
        settings = lora.lora_settings(config, prompt) | {"working_size": list(inputs.working_size)}
        model_key = self.source.cache_key if self.source else repr(self.unet.config)
        key = lora.lora_cache_key(image_sha256(inputs.image), model_key, settings)
        folder = Path(cache_dir) if cache_dir else lora.default_cache_dir()
        folder = folder / key
        if (folder / lora.LORA_FILE).is_file():
            lora.load_lora(self.unet, folder)
            logger.info("LoRA cache hit: %s", folder)
            return {"source": "cache", "path": str(folder / lora.LORA_FILE), "key": key}
        if text_embeddings is None:
            text_embeddings = backbone.encode_conditioning(self.sd, prompt, inputs.working_size, self.device)
        if isinstance(text_embeddings, torch.Tensor):
            text_embeddings = backbone.Conditioning(text_embeddings)
        if generator is None:
            generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad(), backbone.vae_precision(self.vae) as vae_dtype:
            dist = self.vae.encode(self._image_tensor(inputs.working_image).to(vae_dtype)).latent_dist
        bar = tqdm(total=config.lora_steps, desc="LoRA", disable=not progress, leave=False)

        def on_step(step, total, loss):
            bar.update(1)
            if callback is not None:
                callback(StepEvent("lora", step + 1, total))

        try:
            losses = lora.train_lora(
                self.unet, dist, text_embeddings.encoder_hidden_states, self.scheduler, config, generator,
                self.vae.config.scaling_factor, on_step, fused_adam=self.fused_adam,
                added_cond_kwargs=text_embeddings.added_cond_kwargs,
            )
        finally:
            bar.close()
        path = lora.save_lora(
            self.unet, folder,
            {"settings": settings, "model": model_key, "image_sha256": image_sha256(inputs.image), "losses": losses},
        )
        return {"source": "trained", "path": str(path), "key": key, "final_loss": losses[-1] if losses else None}

    # --------------------------------------------------- 4. encode / decode
    def _image_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL (w, h) -> (1, 3, h, w) in [-1, 1] on the device, model dtype."""
        return self.sd.image_processor.preprocess(image).to(self.device, self.vae.dtype)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> torch.Tensor:
        """(1, c, h/f, w/f) fp32 latent (c latent channels, f the VAE factor): the posterior mean times ``vae.config.scaling_factor``."""
        with backbone.vae_precision(self.vae) as vae_dtype:
            dist = self.vae.encode(self._image_tensor(image).to(vae_dtype)).latent_dist
        return dist.mean.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        """(B, c, h, w) latents -> B PIL images."""
        with backbone.vae_precision(self.vae) as vae_dtype:
            out = self.vae.decode((latents / self.vae.config.scaling_factor).to(vae_dtype)).sample
        return self.sd.image_processor.postprocess(out.float(), output_type="pil")

    # ---------------------------------------------------------- UNet calls
    def model_output(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Model output (eps or v) for fp32 latents (B, c, h, w), returned in fp32.

        The UNet runs in its weights' dtype (fp16/bf16 or fp32), forward and
        backward; latents, DDIM steps, features, losses and the optimiser stay fp32.
        """
        if isinstance(text, torch.Tensor):
            text = backbone.Conditioning(text)
        dtype = self.unet.conv_in.weight.dtype  # not ``unet.dtype``: that walks all modules (ms per call)
        return self.unet(latents.to(dtype), t, **text.unet_kwargs(latents.shape[0])).sample.float()

    # ------------------------------------------------------------ 5. invert
    @torch.no_grad()
    def invert(
        self, latents: torch.Tensor, text: torch.Tensor, schedule: DDIMSchedule, progress: bool = True,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """DDIM inversion of clean latents (1, c, h, w) to the level of ``schedule.timesteps[0]``."""
        pt = self.scheduler.config.prediction_type
        n = len(schedule)
        for i, k in enumerate(tqdm(range(n - 1, -1, -1), desc="inversion", disable=not progress, leave=False)):
            t = schedule.timesteps[k].to(self.device)
            eps = self.model_output(latents, t, text)
            latents = ddim_step(latents, eps, schedule.alphas_prev[k], schedule.alphas[k], pt)
            if callback is not None:
                callback(StepEvent("inversion", i + 1, n))
        return latents

    # --------------------------------------------------- 6. drag + denoise
    def drag_and_denoise(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        schedule: DDIMSchedule,
        inputs: PreparedInputs,
        config: DragConfig,
        *,
        progress: bool = True,
        callback: StepCallback | None = None,
        keep_trajectory: bool = False,
        start: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, DragStats, list[torch.Tensor], dict[str, float]]:
        """AIDD (GoodDrag Sec. 3.1): at each of the first ``drag_end_step``
        timesteps, drag (rounds of optimiser steps and point tracking), then
        take one DDIM step; then denoise to t = 0. DragDiffusion is the case
        ``drag_end_step = 1``. The source (unedited) branch is denoised in the
        same batch and feeds mutual self-attention, which is switched on at the
        first denoising step without drag work (or from the first step, with
        ``mutual_attention_while_dragging``).

        latents: (1, c, h, w) inverted latent at ``schedule.timesteps[0]``; start: another source
        for the edit (latent like ``latents``, handles (N, 2) supervision cells), e.g. the inversion of
        the warped image (``config.image_warp``): the reference features, the background term's
        reference, the source branch and the drag's start all come from it, so AIDD corrects what
        the warp left; default ``(latents, inputs.handle_points)``.
        Returns clean edited latents, final handles (row, col supervision
        cells), stats, trajectory x0-latents and per-phase seconds.
        """
        pt = self.scheduler.config.prediction_type
        handle_init = inputs.handle_points  # (N, 2) supervision cells
        if start is not None:  # a given start (the warped image) is the edit's source: all references come from it
            latents, handle_init = start
        n_drag = config.drag_end_step
        trajectory: list[torch.Tensor] = []
        offsets = patch_offsets(config.r1, self.device)  # ((2 r1 + 1)^2, 2)
        one = torch.ones((), device=self.device)  # alpha_prod of a clean latent (x0 previews), already on the device
        clock = PhaseClock(self.device)
        mark = clock.now()

        with FeatureHook(self.unet, config.feature_block) as hook:
            # Unedited trajectory through the drag timesteps (the authors'
            # ``get_original_features``): per timestep the features at the
            # ORIGINAL handles (tracking reference vectors, GoodDrag's reference
            # patches) and the DDIM step x_{t-1}^orig (the background term's reference).
            refs: list[_TimestepReference] = []
            source = latents
            with torch.no_grad():
                for k in range(n_drag):
                    t = schedule.timesteps[k].to(self.device)
                    eps = self.model_output(source, t, text)
                    f0 = hook.features(inputs.sup_size)  # (1, C, h_sup, w_sup)
                    source = ddim_step(source, eps, schedule.alphas[k], schedule.alphas_prev[k], pt)
                    refs.append(_TimestepReference(
                        vectors=features_at(f0, handle_init),  # (N, C)
                        patches=sample_patches(f0, handle_init, offsets),  # (N, C, (2 r1 + 1)^2)
                        x_prev=source,  # (1, c, h, w)
                    ))
            mark = clock.add("drag", mark)  # the reference trajectory is drag work

            # GoodDrag+ (ours): the masked region moved by whole latent cells before the drag
            if start is None or config.latent_warp:
                start = warp.warp_for_drag(latents, inputs.handle_points, inputs.target_points, inputs.mask,
                                           inputs.sup_size, config) if config.latent_warp else (latents, handle_init)
            z, start_handles = start
            state = _DragState(handles=start_handles.clone())
            src = latents
            n_steps = len(schedule)
            mutual_from: int | None = None  # step at which mutual self-attention would start
            bar_drag = tqdm(total=n_drag * config.track_per_step, desc="drag", disable=not progress, leave=False)
            bar_denoise = tqdm(total=n_steps, desc="denoise", disable=not progress, leave=False)
            with contextlib.ExitStack() as stack:
                stack.callback(bar_drag.close)
                stack.callback(bar_denoise.close)
                for k in range(n_steps):
                    t = schedule.timesteps[k].to(self.device)
                    a, a_prev = schedule.alphas[k], schedule.alphas_prev[k]
                    # The authors' outer test (GoodDrag pipeline.py ``good_drag``): drag
                    # while within drag_end_step, not stopped, and the no-change count
                    # (which carries over between timesteps) is not exhausted.
                    if k < n_drag and not state.stopped and self._no_change_exhausted(state, config):
                        state.stopped, state.stats.stop_reason = True, "no_change"
                    dragging = k < n_drag and not state.stopped
                    if dragging:
                        z = self._drag_at_timestep(
                            z, k, t, text, a, a_prev, refs[k], inputs, config, state,
                            hook=hook, bar=bar_drag, callback=callback,
                        )
                        mark = clock.add("drag", mark)
                    if mutual_from is None and (config.mutual_attention_while_dragging or not dragging):
                        mutual_from = k
                    if mutual_from is not None and k == mutual_from + config.mutual_attention_start_step:
                        # From here on the edited half of each batch attends to the source half.
                        stack.enter_context(mutual_self_attention(self.unet, config.mutual_attention_start_layer))
                    with torch.no_grad():
                        both = torch.cat([src, z])  # (2, c, h, w): [source, edited]
                        eps = self.model_output(both, t, text)
                        src, z = ddim_step(both, eps, a, a_prev, pt).chunk(2)
                        if (keep_trajectory and k < n_drag) or callback is not None:
                            x0 = ddim_step(both[1:], eps[1:], a, one, pt)  # predicted clean latent of the edit
                            if keep_trajectory and k < n_drag:
                                trajectory.append(x0)
                            if callback is not None:
                                callback(StepEvent("denoise", k + 1, n_steps, latents=x0, timestep=k))
                    bar_denoise.update(1)
                    mark = clock.add("denoise", mark)
        timings = {"drag": 0.0, "denoise": 0.0} | clock.seconds()
        return z, state.handles, state.stats, trajectory, timings

    @staticmethod
    def _no_change_exhausted(state: "_DragState", config: DragConfig) -> bool:
        return bool(config.max_track_no_change) and state.no_change >= config.max_track_no_change

    def _drag_at_timestep(
        self, z, k: int, t, text, a, a_prev, ref: "_TimestepReference", inputs: PreparedInputs,
        config: DragConfig, state: "_DragState", *, hook: FeatureHook, bar, callback: StepCallback | None,
    ) -> torch.Tensor:
        """One AIDD drag block at timestep ``t`` (index ``k``), in the order of
        the authors' ``gooddrag_step`` (GoodDrag pipeline.py):

        - a fresh Adam on z_t;
        - with ``track_at_timestep_start``, one tracking on the first forward
          pass (it does not move the no-change count);
        - the stop rules (every pair within ``stop_distance``; no-change count
          exhausted) are tested before every optimiser step and end the whole
          drag phase;
        - each optimiser step takes its own forward pass before its Adam step;
        - after ``max_drag_per_track`` steps (or a step whose drag loss is <=
          ``drag_loss_threshold x (2 r1)^2``) the round ends with a tracking
          that updates the no-change count: on that round's last forward pass
          (before its last Adam step), or with ``track_on_fresh_features`` on
          the next forward pass (the latent after the step; DragDiffusion).
        No tracking follows the last round of a timestep in the fresh mode.

        Frames: handles/targets (N, 2) (row, col) supervision cells; z (1, c, h, w).
        Host reads: one per tracking (the stop decision), none per step
        (unless ``drag_loss_threshold`` > 0).
        """
        pt = self.scheduler.config.prediction_type
        stats = state.stats
        targets = inputs.target_points
        z = z.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=config.lr, fused=True if self.fused_adam and z.is_cuda else None)
        threshold = config.drag_loss_threshold * (2 * config.r1) ** 2
        steps_here = rounds = in_round = 0
        pending = "start" if config.track_at_timestep_start else None  # a tracking due on the next forward
        check = True  # the stop rules must be tested before the next optimiser step

        def track(features: torch.Tensor, kind: str) -> None:
            new = self._track(features.detach(), ref.vectors, state.handles, config)
            moved = (new.round() != state.handles.round()).any()  # a whole cell (sub-cell tracking moves by less)
            reached = (~active_pairs(new, targets, config.stop_distance)).all()
            state.handles = new
            stats.tracking_steps += 1
            reached_host, moved_host = torch.stack([reached, moved]).tolist()  # the tracking's one host read
            state.reached = bool(reached_host)
            if kind == "round":
                state.no_change = 0 if moved_host else state.no_change + 1
            if callback is not None:
                callback(StepEvent(
                    "drag", stats.drag_rounds, config.drag_end_step * config.track_per_step,
                    handle_points=self._grid_to_input(state.handles, inputs), timestep=k, tracking=kind,
                ))

        def should_stop() -> bool:
            if state.reached is None:  # handles not tracked yet: the user's (DragDiffusion's first step)
                state.reached = bool((~active_pairs(state.handles, targets, config.stop_distance)).all())
            if state.reached:
                stats.stop_reason = "reached"
            elif self._no_change_exhausted(state, config):
                stats.stop_reason = "no_change"
            else:
                return False
            state.stopped = True
            return True

        while rounds < config.track_per_step:
            if check and pending is None:
                if should_stop():
                    break
                check = False
            eps = self.model_output(z, t, text)
            features = hook.features(inputs.sup_size)  # (1, C, h_sup, w_sup)
            if pending is not None:
                track(features, pending)
                pending = None
                if should_stop():
                    break
                check = False
            x_prev = ddim_step(z, eps, a, a_prev, pt)
            drag_loss = self._drag_loss(features, ref.patches, state.handles, targets, config)
            loss = drag_loss + config.lam * background_loss(x_prev, ref.x_prev, inputs.mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_here += 1
            stats.drag_steps += 1
            in_round += 1
            # With threshold 0 the test can only pass when every pair is done, which the
            # reached stop has already caught: no host read then.
            if in_round == config.max_drag_per_track or (threshold > 0 and drag_loss.detach().item() <= threshold):
                rounds += 1
                in_round = 0
                stats.drag_rounds += 1
                bar.update(1)
                if config.track_on_fresh_features:
                    pending = "round"
                else:
                    track(features, "round")
                    check = True
        if steps_here:
            stats.drag_timesteps += 1
        stats.drag_steps_per_timestep.append(steps_here)
        return z.detach()

    def _drag_loss(self, features, reference_patches, handles, targets, config: DragConfig) -> torch.Tensor:
        """The method's motion-supervision loss (benchmarks/speed.py's reference path overrides it)."""
        loss_fn = MOTION_LOSSES["gooddrag" if config.information_preserving else "dragdiffusion"]
        return loss_fn(
            features, reference_patches, handles, targets,
            r1=config.r1, beta=config.beta, stop_distance=config.stop_distance,
        )

    def _track(self, features: torch.Tensor, ref_vectors: torch.Tensor, handles: torch.Tensor,
               config: DragConfig) -> torch.Tensor:
        """Point tracking on the device, whole cells or (GoodDrag+) sub-cell (benchmarks/speed.py's
        reference path overrides it to track on the CPU)."""
        track = track_points_subpixel if config.subpixel_tracking else track_points
        return track(features, ref_vectors, handles, r2=config.r2)

    def _sync(self) -> None:
        """Wait for the device at phase boundaries, so wall-clock timings are true (never in inner loops)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _grid_to_input(self, points_rc: torch.Tensor, inputs: PreparedInputs) -> np.ndarray:
        """(row, col) supervision cells -> (x, y) input-image pixels."""
        xy = geometry.grid_to_image(points_rc.detach().double().cpu(), inputs.sup_size, inputs.working_size)
        return geometry.scale_points(xy, inputs.working_size, inputs.input_size).numpy()

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

        image: PIL image of any size; handle_points / target_points: (x, y)
        input-image pixels, one pair per row; mask: (H, W) array, nonzero = may
        change (None: everything may change; a mask with nothing editable, or one that leaves a
        handle or target outside, is refused with InputsCannotWorkError); prompt: text for the
        UNet (empty by default); config: a :class:`DragConfig` (default:
        :meth:`default_config`, the gooddrag preset that fits the model); generator: CPU generator for the LoRA's noise
        (default seeded from ``config.seed``); lora_path: use this LoRA instead
        of the cached/trained one.
        """
        config = config or self.default_config()
        timings: dict[str, float] = {}
        t_all = time.perf_counter()

        # 1. check inputs
        inputs = self.check_inputs(image, handle_points, target_points, mask, config)
        schedule = make_schedule(self.scheduler, config.num_inference_steps, config.inversion_steps)
        # On the device once: indexing it in the loops then needs no host-to-device copy (each one a sync).
        schedule = DDIMSchedule(*(x.to(self.device) for x in (schedule.timesteps, schedule.alphas, schedule.alphas_prev)))
        if config.guidance_scale != 1.0:
            raise GoodDragError("guidance_scale other than 1 is not supported (the methods use no CFG)")

        # 2. encode prompt
        text = backbone.encode_conditioning(self.sd, prompt, inputs.working_size, self.device)

        try:
            # 3. LoRA
            t0 = time.perf_counter()
            lora_record = self.prepare_lora(
                inputs, prompt, config, text_embeddings=text, lora_path=lora_path, cache_dir=lora_cache_dir,
                generator=generator, callback=callback, progress=progress,
            )
            if self.fuse_lora:
                lora.fuse_lora(self.unet, backup_device="cpu" if self.low_memory else None)
            self._sync()
            timings["lora"] = time.perf_counter() - t0

            # 4. encode image, 5. invert
            t0 = time.perf_counter()
            latents = self.encode_image(inputs.working_image)
            inverted = self.invert(latents, text, schedule, progress=progress, callback=callback)
            start = None
            if config.image_warp:  # GoodDrag+ (ours): the drag starts from the image warped in pixel space
                to_working = lambda xy: geometry.scale_points(  # noqa: E731 - (x, y) input px -> working px
                    torch.as_tensor(xy, dtype=torch.float64), inputs.input_size, inputs.working_size)
                warped, start_handles = warp.image_warp_for_drag(
                    inputs.working_image, to_working(inputs.handle_points_xy), to_working(inputs.target_points_xy),
                    inputs.mask, inputs.sup_size, config)
                start = (self.invert(self.encode_image(warped), text, schedule, progress=False),
                         start_handles.to(inputs.handle_points.dtype).to(self.device))
            self._sync()
            timings["inversion"] = time.perf_counter() - t0

            # 6. drag and denoise
            edited, handles, stats, traj_latents, loop_times = self.drag_and_denoise(
                inverted, text, schedule, inputs, config,
                progress=progress, callback=callback, keep_trajectory=return_trajectory, start=start,
            )
            timings.update(loop_times)
        finally:
            lora.remove_lora(self.unet)  # unfuses first: the base weights come back exactly

        # 7. decode and map back to the input frame
        t0 = time.perf_counter()
        H, W = inputs.input_size
        result = self.decode_latents(edited)[0].resize((W, H), Image.LANCZOS)
        trajectory = None
        if return_trajectory:
            frames = self.decode_latents(torch.cat(traj_latents)) if traj_latents else []
            trajectory = [inputs.image] + [f.resize((W, H), Image.LANCZOS) for f in frames] + [result]
        self._sync()
        timings["decode"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_all
        return DragResult(
            image=result,
            handle_points=self._grid_to_input(handles, inputs),
            initial_handle_points=inputs.handle_points_xy,
            target_points=inputs.target_points_xy,
            config=config,
            timings=timings,
            stats=stats,
            working_size=inputs.working_size,
            lora=lora_record,
            trajectory=trajectory,
        )
