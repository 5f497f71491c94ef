"""DIFT features (Tang et al., NeurIPS 2023) for DragBench's MD metric.

As in DIFT's ``SDFeaturizer`` with DragBench's settings: the image in
[-1, 1] is encoded by the VAE (a posterior *sample*, times the scaling
factor), noised to timestep ``t`` = 261 with the scheduler's
``alphas_cumprod``, passed through the UNet with the prompt's embedding (no
CFG), and the output of ``up_blocks[up_ft_index]`` (1) is kept; the batch
holds ``ensemble`` (8) copies of the image, each with its own posterior and
noise draw, and the features are their mean. Here the draws come from a
generator seeded with ``seed`` for every image, so the original and the result
of a sample see the same noise and a run is reproducible (DIFT itself does not
seed). The block's output is taken with a forward hook, which also ends the
UNet's forward pass there (the later blocks are not needed).

The default model is SD 2.1 (``stabilityai/stable-diffusion-2-1``); any hub
id, diffusers folder or single file that :mod:`gooddrag.models.loading` reads works.
Image sides that are not multiples of the VAE's factor (8 for SD) are resized
to the nearest multiple first; the features are then matched at the image's
own size (:func:`gooddrag.benchmark.metrics.match_points`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from diffusers import DDIMScheduler
from PIL import Image

from ..core.geometry import vae_scale_factor
from ..errors import GoodDragError
from ..models.features import feature_blocks
from ..models.loading import load_components, resolve_device, resolve_dtype
from .metrics import DEFAULT_DIFT_MODEL, DIFT_ENSEMBLE, DIFT_T, DIFT_UP_FT_INDEX

logger = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by the hook once the wanted block has run: the rest of the UNet is skipped."""


class DiftFeaturizer:
    """``featurizer(image, prompt) -> (1, C, h, w)`` fp32 DIFT features of a PIL image."""

    def __init__(self, model: str = DEFAULT_DIFT_MODEL, *, model_config: str | None = None, device: str = "auto",
                 dtype: str = "fp32", t: int = DIFT_T, up_ft_index: int = DIFT_UP_FT_INDEX,
                 ensemble: int = DIFT_ENSEMBLE, seed: int = 0):
        self.device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, self.device)
        self.sd, self.source = load_components(model, model_config=model_config, dtype=torch_dtype)
        self.sd.to(self.device)
        self.model = model
        self.unet, self.vae = self.sd.unet, self.sd.vae
        ups = len(self.unet.up_blocks)
        if not 0 <= up_ft_index < ups:
            raise GoodDragError(f"DIFT up_ft_index={up_ft_index} is out of range: model {model!r} has {ups} up blocks")
        if ensemble < 1:
            raise GoodDragError(f"DIFT ensemble size must be >= 1, got {ensemble}")
        scheduler = DDIMScheduler.from_config(self.sd.scheduler.config)
        n_train = len(scheduler.alphas_cumprod)
        if not 0 <= t < n_train:
            raise GoodDragError(f"DIFT timestep t={t} is outside the model's 0..{n_train - 1}")
        self.alpha_bar = float(scheduler.alphas_cumprod[t])
        self.t, self.up_ft_index, self.ensemble, self.seed = t, up_ft_index, ensemble, seed
        self.block = feature_blocks(self.unet)[up_ft_index + 1]  # [mid, up0, up1, ...]
        self.vae_factor = vae_scale_factor(self.vae.config)
        self._prompts: dict[str, torch.Tensor] = {}

    def settings(self) -> dict:
        return {"model": self.model, "t": self.t, "up_ft_index": self.up_ft_index, "ensemble": self.ensemble,
                "seed": self.seed, "alpha_bar": round(self.alpha_bar, 6)}

    @torch.no_grad()
    def _embed(self, prompt: str) -> torch.Tensor:
        if prompt not in self._prompts:
            self._prompts[prompt] = self.sd.encode_prompt(prompt, self.device, 1, False)[0]
        return self._prompts[prompt]

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        W, H = image.size
        f = self.vae_factor
        w, h = max(f, round(W / f) * f), max(f, round(H / f) * f)
        if (w, h) != (W, H):
            image = image.resize((w, h), Image.BILINEAR)
        arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr).permute(2, 0, 1)[None]

    @torch.no_grad()
    def __call__(self, image: Image.Image, prompt: str = "") -> torch.Tensor:
        dtype = self.unet.dtype
        x = self._tensor(image).to(self.device, dtype).expand(self.ensemble, -1, -1, -1)
        gen = torch.Generator().manual_seed(self.seed)
        dist = self.vae.encode(x).latent_dist
        eps_post = torch.randn(dist.mean.shape, generator=gen).to(self.device, dist.mean.dtype)
        latents = (dist.mean + dist.std * eps_post) * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(self.device, latents.dtype)
        noisy = self.alpha_bar ** 0.5 * latents + (1 - self.alpha_bar) ** 0.5 * noise
        text = self._embed(prompt).to(dtype).expand(self.ensemble, -1, -1)
        captured: list[torch.Tensor] = []

        def hook(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.block.register_forward_hook(hook)
        try:
            t = torch.tensor(self.t, device=self.device)
            self.unet(noisy.to(dtype), t, encoder_hidden_states=text)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:  # pragma: no cover - the block always runs
            raise RuntimeError("the DIFT feature block did not run")
        return captured[0].float().mean(0, keepdim=True)
