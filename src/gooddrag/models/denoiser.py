"""The denoising network as the pipeline sees it: a UNet (SD, SDXL) or a transformer (SD3, FLUX).

One adapter per network, chosen once by the backbone kind (:func:`denoiser_for`); the pipeline and
the drag methods call it and never branch on the kind. Each adapter says

* how the network is called (:meth:`UNetDenoiser.call`): latents (B, c, h, w) in, the model's output
  (B, c, h, w) out, whatever the network's own layout (FLUX packs 2x2 latent cells into tokens);
* what the output means (``prediction_type``: ``epsilon``, ``v_prediction`` or ``flow``);
* where features are read (``feature_hook``) and how mutual attention is installed (``mutual_attention``);
* which layers the LoRA adapts (``lora_targets``) and which image sides it takes (``size_multiple``).

docs/method.md, "Flow-matching backbones", states each choice for the transformers.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from ..errors import GoodDragError
from . import dit
from .attention import mutual_self_attention
from .features import FeatureHook
from .lora import TARGET_MODULES

UNET_LORA_TARGETS = tuple(TARGET_MODULES)
"""The authors' LoRA layers (docs/method.md, "Pipeline" 3): every attention projection of the UNet."""
DIT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
"""Ours: on an MMDiT the text stream has its own projections (``add_*``); on the UNet the same list
adapts the text-side ``attn2.to_k/to_v`` too. diffusers' SD3 DreamBooth-LoRA example trains this set."""


class UNetDenoiser:
    """SD 1.x/2.x and SDXL's ``UNet2DConditionModel``."""

    lora_targets = UNET_LORA_TARGETS
    flow = False

    def __init__(self, module, scheduler_config):
        self.module = module
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")

    @property
    def dtype(self) -> torch.dtype:
        return self.module.conv_in.weight.dtype  # not ``module.dtype``: that walks every module (ms per call)

    def call(self, latents: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
             added: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """Output for ``latents`` (B, c, h, w) in the network's dtype at ``t`` (0-dim or (B,))."""
        return self.module(latents, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added).sample

    def feature_hook(self, block: int) -> FeatureHook:
        return FeatureHook(self.module, block)

    def mutual_attention(self, start_layer: int) -> contextlib.AbstractContextManager:
        return mutual_self_attention(self.module, start_layer)

    def size_multiple(self, vae_factor: int) -> int:
        """Image sides must be multiples of this for every UNet level to have an integer size."""
        from ..core.geometry import unet_multiple

        return unet_multiple(vae_factor, len(self.module.config.down_block_types))

    @property
    def native_latent_side(self) -> int:
        return self.module.config.sample_size

    def check_latent(self, latent_hw: tuple[int, int]) -> None:
        """Refuse a latent size the network cannot take (none on a UNet)."""

    def check_layers(self, feature_block: int, mutual_start_layer: int) -> None:
        """Refuse layer places the network does not have (a UNet's are checked where they are used)."""

    def flow_schedule_recipe(self, scheduler_config: dict, steps: int, latent_hw: tuple[int, int]) -> dict:
        """How the model's pipeline sets its flow scheduler's timesteps (flow models only)."""
        raise GoodDragError("a UNet model has no flow-matching schedule")


class SD3Denoiser(UNetDenoiser):
    """SD3 / SD3.5's ``SD3Transformer2DModel`` (MMDiT): it patchifies and unpatchifies itself."""

    lora_targets = DIT_LORA_TARGETS
    flow = True

    def __init__(self, module, scheduler_config):
        self.module = module
        self.prediction_type = "flow"
        self.patch = module.config.patch_size
        self.grid = (0, 0)

    @property
    def dtype(self) -> torch.dtype:
        return self.module.pos_embed.proj.weight.dtype

    def call(self, latents, t, encoder_hidden_states, added):
        b, _, h, w = latents.shape
        self.grid = (h // self.patch, w // self.patch)  # the token grid the feature hook reshapes to
        return self.module(hidden_states=latents, timestep=t.expand(b), encoder_hidden_states=encoder_hidden_states,
                           pooled_projections=added["pooled_projections"]).sample

    def feature_hook(self, block: int) -> dit.TokenFeatureHook:
        """Image tokens of joint block ``block`` (``transformer_blocks[block]``), as a (B, C, h/p, w/p) map."""
        return dit.TokenFeatureHook(self.module.transformer_blocks, block, lambda: self.grid)

    def mutual_attention(self, start_layer: int) -> contextlib.AbstractContextManager:
        return dit.mutual_joint_attention(self.module, start_layer, flux=False)

    def size_multiple(self, vae_factor: int) -> int:
        return vae_factor * self.patch

    @property
    def native_latent_side(self) -> int:
        return self.module.config.sample_size

    def flow_schedule_recipe(self, scheduler_config: dict, steps: int, latent_hw: tuple[int, int]) -> dict:
        """``StableDiffusion3Pipeline``'s: ``steps`` evenly spaced timesteps, shifted by the config's
        ``shift``; a dynamic shift ``mu`` for the token count only where the config asks for it."""
        if not scheduler_config.get("use_dynamic_shifting"):
            return {}
        return {"mu": _mu(scheduler_config, (latent_hw[0] // self.patch) * (latent_hw[1] // self.patch))}

    def check_layers(self, feature_block: int, mutual_start_layer: int) -> None:
        """``feature_block`` must name one of the joint blocks, ``mutual_start_layer`` an attention layer."""
        blocks, layers = len(self.module.transformer_blocks), len(self.module.attn_processors)
        if not 0 <= feature_block < blocks:
            raise GoodDragError(f"feature_block {feature_block} is not a joint block of this transformer "
                                f"(0..{blocks - 1}): choose one with --feature-block N")
        if not 0 <= mutual_start_layer < layers:
            raise GoodDragError(f"mutual_attention_start_layer {mutual_start_layer} is not an attention layer of "
                                f"this transformer (0..{layers - 1}): choose one with --mutual-attention-start-layer N")

    def check_latent(self, latent_hw: tuple[int, int]) -> None:
        """SD3's positional embedding is cropped from a ``pos_embed_max_size`` grid of patches."""
        most = self.module.config.pos_embed_max_size
        if most is not None and max(latent_hw) // self.patch > most:
            raise GoodDragError(f"this SD3 transformer takes at most {most * self.patch} latent cells a side "
                                f"({most} patches), the image needs {max(latent_hw)}: lower --resolution")


class FluxDenoiser(SD3Denoiser):
    """FLUX.1's ``FluxTransformer2DModel``: latents packed 2x2 into 4c-wide tokens, RoPE positions
    (row, col) per token, timestep as sigma (the pipeline passes t / 1000), the distilled guidance
    as an input on FLUX.1-dev (``guidance_embeds``)."""

    def __init__(self, module, scheduler_config):
        super().__init__(module, scheduler_config)
        self.patch = 2
        self._ids: dict[tuple, torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.module.x_embedder.weight.dtype

    def _image_ids(self, h: int, w: int, device) -> torch.Tensor:
        """(h w, 3) ids (0, row, col) of the packed tokens, row-major (FluxPipeline's layout)."""
        key = (h, w, device)
        if key not in self._ids:
            rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            self._ids[key] = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float().to(device)
        return self._ids[key]

    def call(self, latents, t, encoder_hidden_states, added):
        b, c, h, w = latents.shape
        self.grid = (h // 2, w // 2)
        packed = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)  # (B, N, 4c)
        guidance = added.get("guidance") if self.module.config.guidance_embeds else None  # (B,), FLUX.1-dev
        text_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=latents.device)
        out = self.module(hidden_states=packed, timestep=t.expand(b) / 1000, guidance=guidance,
                          pooled_projections=added["pooled_projections"], encoder_hidden_states=encoder_hidden_states,
                          txt_ids=text_ids, img_ids=self._image_ids(h // 2, w // 2, latents.device)).sample
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def mutual_attention(self, start_layer: int) -> contextlib.AbstractContextManager:
        return dit.mutual_joint_attention(self.module, start_layer, flux=True)

    @property
    def native_latent_side(self) -> int:
        return 128  # FluxPipeline's default 1024 px

    def flow_schedule_recipe(self, scheduler_config: dict, steps: int, latent_hw: tuple[int, int]) -> dict:
        """``FluxPipeline``'s: sigmas ``linspace(1, 1/steps, steps)`` and the dynamic shift ``mu`` for
        its packed token count (h/2)(w/2) (where the config asks for it, as FLUX.1's does)."""
        recipe = {"sigmas": np.linspace(1.0, 1.0 / steps, steps)}
        if scheduler_config.get("use_dynamic_shifting"):
            recipe["mu"] = _mu(scheduler_config, (latent_hw[0] // 2) * (latent_hw[1] // 2))
        return recipe

    def check_latent(self, latent_hw: tuple[int, int]) -> None:
        """Packing needs even latent sides (guaranteed by :meth:`size_multiple`)."""


def _mu(scheduler_config: dict, tokens: int) -> float:
    """The dynamic shift for ``tokens`` image tokens: diffusers' ``calculate_shift`` (a line through
    (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift)) with the config's values."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(tokens, scheduler_config.get("base_image_seq_len", 256),
                           scheduler_config.get("max_image_seq_len", 4096),
                           scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", 1.15))


def denoiser_for(kind: str, sd_pipeline) -> Any:
    """The adapter of a loaded pipeline of backbone ``kind`` (:mod:`gooddrag.models.backbone`)."""
    from .backbone import FLUX, SD3  # here: backbone imports this module

    if kind == SD3:
        return SD3Denoiser(sd_pipeline.transformer, dict(sd_pipeline.scheduler.config))
    if kind == FLUX:
        return FluxDenoiser(sd_pipeline.transformer, dict(sd_pipeline.scheduler.config))
    return UNetDenoiser(sd_pipeline.unet, dict(sd_pipeline.scheduler.config))
