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

from . import geometry, lora
from .attention import mutual_self_attention
from .config import PRESETS, DragConfig
from .ddim import DDIMSchedule, ddim_step, make_schedule
from .errors import GoodDragError
from .features import FeatureHook
from .loading import DEFAULT_MODEL, ModelSource, load_components, resolve_device, resolve_dtype
from .samples import check_points, fit_mask
from .motion import (
    MOTION_LOSSES,
    active_pairs,
    background_loss,
    features_at,
    patch_offsets,
    sample_patches,
    track_points,
)

logger = logging.getLogger(__name__)

PHASES = ("lora", "inversion", "drag", "denoise", "decode")


@dataclass
class StepEvent:
    """What a step callback receives. ``latents`` is the edited branch's
    predicted clean latent (drag and denoise phases) for previews;
    ``handle_points`` the current handles in input-image (x, y) pixels."""

    phase: str
    step: int
    total: int
    latents: torch.Tensor | None = None
    handle_points: np.ndarray | None = None
    loss: float | None = None


StepCallback = Callable[[StepEvent], None]


@dataclass
class DragStats:
    """Counts of the work the drag loop did (the tests count them)."""

    drag_timesteps: int = 0
    """Timesteps at which at least one optimiser step ran."""
    drag_steps: int = 0
    """Optimiser steps on the latent, all timesteps together."""
    tracking_steps: int = 0
    """Point-tracking rounds, all timesteps together."""
    drag_steps_per_timestep: list[int] = field(default_factory=list)
    stop_reason: str = "budget"
    """``budget`` (all steps ran), ``reached`` (handles at targets) or ``no_change`` (tracking stalled)."""


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


class _PhaseClock:
    """Seconds per phase without waiting for the device inside loops: on CUDA,
    events recorded on the stream and read once at the end (one sync); elsewhere
    ``perf_counter`` (the CPU runs synchronously)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.spans: list[tuple[str, Any, Any]] = []

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def add(self, phase: str, start):
        """Count the time from ``start`` (a :meth:`now`) to now towards ``phase``; returns now."""
        end = self.now()
        self.spans.append((phase, start, end))
        return end

    def seconds(self) -> dict[str, float]:
        if self.cuda and self.spans:
            self.spans[-1][2].synchronize()
        out: dict[str, float] = {}
        for phase, a, b in self.spans:
            out[phase] = out.get(phase, 0.0) + (a.elapsed_time(b) / 1000 if self.cuda else b - a)
        return out


class DragPipeline:
    """Drag editing on a Stable Diffusion 1.x/2.x backbone.

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
        # set_alpha_to_one off as in the authors' scheduler (docs/algorithm.md, 2).
        self.scheduler = DDIMScheduler.from_config(
            sd_pipeline.scheduler.config, clip_sample=False, set_alpha_to_one=False
        )
        self.source = source
        self.device = torch.device(device)
        self.sd.to(self.device)
        # Gradients flow to the latent only (LoRA training unfreezes its own
        # parameters): frozen weights spare a weight-gradient matmul per layer in
        # every drag backward pass, and the memory of those gradients.
        for module in (self.unet, self.vae, self.text_encoder):
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

    # ------------------------------------------------------------------ sizes
    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

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
        handles, targets = check_points(handle_points, target_points, (H, W))

        working = geometry.working_size(H, W, config.resolution, self.size_multiple)
        sup = geometry.sup_grid_size(working, config.sup_res_scale)
        latent = (working[0] // self.vae_scale_factor, working[1] // self.vae_scale_factor)
        # (x, y) input px -> (x, y) working px -> (row, col) supervision cells
        to_grid = lambda pts: geometry.image_to_grid(  # noqa: E731
            geometry.scale_points(torch.as_tensor(pts, dtype=torch.float64), (H, W), working), working, sup
        ).to(self.device)
        if mask is None:
            mask_t = torch.ones(H, W)
        else:
            mask_arr = np.asarray(mask)
            if mask_arr.ndim != 2:
                raise GoodDragError(f"mask must be a 2-D array, got shape {mask_arr.shape}")
            mask_t = torch.as_tensor(fit_mask(mask_arr > 0, (H, W)), dtype=torch.float32)
            if mask_t.sum() == 0:  # empty mask: everything may change (docs/algorithm.md, "The task")
                mask_t = torch.ones(H, W)
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
            mask=geometry.resize_mask(mask_t, latent).to(self.device),
        )

    # ------------------------------------------------------------ 2. prompt
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, tokenizer.model_max_length, D) text embeddings (no CFG)."""
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
            text_embeddings = self.encode_prompt(prompt)
        if generator is None:
            generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            dist = self.vae.encode(self._image_tensor(inputs.working_image)).latent_dist
        bar = tqdm(total=config.lora_steps, desc="LoRA", disable=not progress, leave=False)

        def on_step(step, total, loss):
            bar.update(1)
            if callback is not None:
                callback(StepEvent("lora", step + 1, total))

        try:
            losses = lora.train_lora(
                self.unet, dist, text_embeddings, self.scheduler, config, generator,
                self.vae.config.scaling_factor, on_step, fused_adam=self.fused_adam,
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
        dist = self.vae.encode(self._image_tensor(image)).latent_dist
        return dist.mean.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        """(B, c, h, w) latents -> B PIL images."""
        out = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return self.sd.image_processor.postprocess(out.float(), output_type="pil")

    # ---------------------------------------------------------- UNet calls
    def model_output(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Model output (eps or v) for fp32 latents (B, c, h, w), returned in fp32.

        The UNet runs in its weights' dtype (fp16/bf16 or fp32), forward and
        backward; latents, DDIM steps, features, losses and the optimiser stay fp32.
        """
        cond = text.expand(latents.shape[0], -1, -1)
        dtype = self.unet.conv_in.weight.dtype  # not ``unet.dtype``: that walks all modules (ms per call)
        return self.unet(latents.to(dtype), t, encoder_hidden_states=cond).sample.float()

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
    ) -> tuple[torch.Tensor, torch.Tensor, DragStats, list[torch.Tensor], dict[str, float]]:
        """AIDD (GoodDrag Sec. 3.1): at each of the first ``drag_end_step``
        timesteps, drag (rounds of optimiser steps and point tracking), then
        take one DDIM step; then denoise to t = 0. DragDiffusion is the case
        ``drag_end_step = 1``. The source (unedited) branch is denoised in the
        same batch and feeds mutual self-attention.

        latents: (1, c, h, w) inverted latent at ``schedule.timesteps[0]``.
        Returns clean edited latents, final handles (row, col supervision
        cells), stats, trajectory x0-latents and per-phase seconds.
        """
        pt = self.scheduler.config.prediction_type
        loss_fn = MOTION_LOSSES["gooddrag" if config.information_preserving else "dragdiffusion"]
        handle_init, targets = inputs.handle_points, inputs.target_points  # (N, 2) supervision cells
        n_drag = config.drag_end_step
        stats = DragStats()
        trajectory: list[torch.Tensor] = []
        offsets = patch_offsets(config.r1, centered=not config.information_preserving, device=self.device)
        one = torch.ones((), device=self.device)  # alpha_prod of a clean latent (x0 previews), already on the device
        clock = _PhaseClock(self.device)
        mark = clock.now()

        with FeatureHook(self.unet, config.feature_block) as hook:
            # Unedited trajectory through the drag timesteps: reference features
            # at the original handles and the DDIM steps x_{t-1}^orig.
            source = [latents]
            ref_vectors, ref_patches, x_prev_orig = [], [], []
            with torch.no_grad():
                for k in range(n_drag):
                    t = schedule.timesteps[k].to(self.device)
                    eps = self.model_output(source[-1], t, text)
                    f0 = hook.features(inputs.sup_size)  # (1, C, h_sup, w_sup)
                    ref_vectors.append(features_at(f0, handle_init))  # (N, C)
                    ref_patches.append(sample_patches(f0, handle_init, offsets))  # (N, C, P)
                    x_prev_orig.append(ddim_step(source[-1], eps, schedule.alphas[k], schedule.alphas_prev[k], pt))
                    source.append(x_prev_orig[-1])
            mark = clock.add("drag", mark)  # the reference trajectory is drag work

            handles = handle_init.clone()
            stopped = False
            no_change = 0
            z = src = latents
            n_steps = len(schedule)
            bar_drag = tqdm(total=n_drag * config.track_per_step, desc="drag", disable=not progress, leave=False)
            bar_denoise = tqdm(total=n_steps, desc="denoise", disable=not progress, leave=False)
            with contextlib.ExitStack() as stack:
                stack.callback(bar_drag.close)
                stack.callback(bar_denoise.close)
                for k in range(n_steps):
                    t = schedule.timesteps[k].to(self.device)
                    a, a_prev = schedule.alphas[k], schedule.alphas_prev[k]
                    if k < n_drag and not stopped:
                        z, handles, stopped, no_change = self._drag_at_timestep(
                            z, t, text, a, a_prev, handles, targets, inputs.mask, config, loss_fn,
                            ref_patches[k], x_prev_orig[k], ref_vectors[k], last=k == n_drag - 1,
                            stats=stats, no_change=no_change, hook=hook, sup_size=inputs.sup_size,
                            bar=bar_drag, callback=callback, to_image=lambda h: self._grid_to_input(h, inputs),
                        )
                        mark = clock.add("drag", mark)
                    if k == config.mutual_attention_start_step:
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
                                callback(StepEvent("denoise", k + 1, n_steps, latents=x0))
                    bar_denoise.update(1)
                    mark = clock.add("denoise", mark)
        timings = {"drag": 0.0, "denoise": 0.0} | clock.seconds()
        return z, handles, stats, trajectory, timings

    def _drag_at_timestep(
        self, z, t, text, a, a_prev, handles, targets, mask, config, loss_fn, ref_patches, x_prev_orig,
        ref_vectors, *, last: bool, stats: DragStats, no_change: int, hook: FeatureHook, sup_size, bar, callback, to_image,
    ):
        """One AIDD block at timestep t: ``track_per_step`` rounds of up to
        ``max_drag_per_track`` Adam steps on z_t, each round starting with point
        tracking on that round's first forward pass (no extra UNet call; the
        very first round starts from the user's handles). After the last drag
        timestep one more forward pass tracks the handles' final positions.

        Frames: handles/targets (N, 2) (row, col) supervision cells; z (1, c, h, w).
        One host read per round decides the early stops.
        """
        pt = self.scheduler.config.prediction_type
        z = z.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=config.lr, fused=True if self.fused_adam and z.is_cuda else None)
        steps_here = 0
        stopped = False

        def track(features):
            nonlocal handles, no_change, stopped
            new = self._track(features.detach(), ref_vectors, handles, config.r2)
            moved = (new != handles).any()
            handles = new
            stats.tracking_steps += 1
            reached = (~active_pairs(handles, targets, config.stop_distance)).all()
            reached_host, moved_host = torch.stack([reached, moved]).tolist()  # the round's one host read
            no_change = 0 if moved_host else no_change + 1
            if reached_host:
                stats.stop_reason, stopped = "reached", True
            elif config.max_track_no_change and no_change >= config.max_track_no_change:
                stats.stop_reason, stopped = "no_change", True
            if callback is not None:
                callback(StepEvent(
                    "drag", stats.tracking_steps, config.drag_end_step * config.track_per_step,
                    handle_points=to_image(handles),
                ))

        for _ in range(config.track_per_step):
            for s in range(config.max_drag_per_track):
                eps = self.model_output(z, t, text)
                features = hook.features(sup_size)  # (1, C, h_sup, w_sup)
                if s == 0 and stats.drag_steps > 0:
                    track(features)
                    if stopped:
                        break
                x_prev = ddim_step(z, eps, a, a_prev, pt)
                loss = loss_fn(
                    features, ref_patches, handles, targets, r1=config.r1, beta=config.beta,
                    stop_distance=config.stop_distance,
                ) + config.lam * background_loss(x_prev, x_prev_orig, mask)
                if config.drag_loss_threshold > 0 and loss.detach().item() < config.drag_loss_threshold:
                    break  # opt-in: costs one host read per step
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps_here += 1
                stats.drag_steps += 1
            if stopped:
                break
            bar.update(1)
        if last and not stopped:
            with torch.no_grad():
                self.model_output(z, t, text)
                track(hook.features(sup_size))
        if steps_here:
            stats.drag_timesteps += 1
        stats.drag_steps_per_timestep.append(steps_here)
        return z.detach(), handles, stopped, no_change

    def _track(self, features: torch.Tensor, ref_vectors: torch.Tensor, handles: torch.Tensor, r2: int) -> torch.Tensor:
        """Point tracking on the device (benchmarks/speed.py's reference path overrides it to track on the CPU)."""
        return track_points(features, ref_vectors, handles, r2=r2)

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
        change (None or all-zero: everything may change); prompt: text for the
        UNet (empty by default); config: a :class:`DragConfig` (default the
        ``gooddrag`` preset); generator: CPU generator for the LoRA's noise
        (default seeded from ``config.seed``); lora_path: use this LoRA instead
        of the cached/trained one.
        """
        config = config or PRESETS["gooddrag"]
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
        text = self.encode_prompt(prompt)

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
            self._sync()
            timings["inversion"] = time.perf_counter() - t0

            # 6. drag and denoise
            edited, handles, stats, traj_latents, loop_times = self.drag_and_denoise(
                inverted, text, schedule, inputs, config,
                progress=progress, callback=callback, keep_trajectory=return_trajectory,
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
