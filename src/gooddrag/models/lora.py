"""LoRA fine-tuning of the UNet on the single input image (peft through diffusers).

docs/method.md, "Pipeline" 3: rank 16 on the q, k, v and out
projections of every attention layer, AdamW (lr 5e-4, weight decay 1e-2,
constant), eps-prediction MSE (velocity for v-prediction models) at uniformly
random training timesteps. A LoRA is tied to one image, one base model and
one set of settings: it is cached under a key made of all three.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from ..core.atomic import atomic_folder
from ..errors import GoodDragError

logger = logging.getLogger(__name__)

ModelCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "dict[str, torch.Tensor] | None"], torch.Tensor]
"""``(noisy (B, c, h, w), timesteps (B,), hidden states (B, L, D), added) -> output (B, c, h, w)``."""

ADAPTER_NAME = "gooddrag"
LORA_FILE = "pytorch_lora_weights.safetensors"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
_UNFUSED_WEIGHTS = "_gooddrag_unfused_weights"  # attribute of a UNet whose adapter is fused: exact base weights


class LoraSchedule(Protocol):
    """The LoRA settings a drag method's config carries (:class:`gooddrag.methods.config.DragConfig` has them)."""

    lora_steps: int
    lora_rank: int
    lora_lr: float
    lora_batch_size: int
    lora_weight_decay: float
    seed: int


def default_cache_dir() -> Path:
    """``$GOODDRAG_CACHE`` or ``$XDG_CACHE_HOME/gooddrag`` (``~/.cache/gooddrag``), sub-folder ``lora``."""
    root = os.environ.get("GOODDRAG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "gooddrag"
    )
    return Path(root) / "lora"


def lora_settings(config: LoraSchedule, prompt: str, target_modules=TARGET_MODULES) -> dict:
    """The settings a LoRA depends on (beyond the image and the base model); ``target_modules``: the
    layers it adapts (the denoiser's, :mod:`gooddrag.models.denoiser`)."""
    return {
        "steps": config.lora_steps,
        "rank": config.lora_rank,
        "lr": config.lora_lr,
        "batch_size": config.lora_batch_size,
        "weight_decay": config.lora_weight_decay,
        "seed": config.seed,
        "prompt": prompt,
        "target_modules": list(target_modules),
    }


def lora_cache_key(image_sha256: str, model_key: str, settings: dict) -> str:
    """Hex key of (image content hash, base model, LoRA settings)."""
    blob = json.dumps({"image": image_sha256, "model": model_key, "lora": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def add_lora(unet, rank: int, target_modules=TARGET_MODULES) -> None:
    """Attach a fresh (trainable) LoRA adapter named ``ADAPTER_NAME`` to ``unet`` (or a transformer)."""
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(target_modules)),
        adapter_name=ADAPTER_NAME,
    )


def remove_lora(unet) -> None:
    """Detach our adapter, if any (fused or not), so the UNet is the base model again, bit for bit
    and module for module: once no adapter is left, peft's wrapper layers are replaced by the
    layers they wrap, so ``unet.state_dict()`` has the base model's keys again."""

    _unfuse_lora(unet)
    if ADAPTER_NAME in getattr(unet, "peft_config", {}):
        unet.delete_adapters(ADAPTER_NAME)
    if not getattr(unet, "peft_config", None) and any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
        unet.unload_lora()  # an empty wrapper (base_layer.weight) -> the base layer (weight)


def fuse_lora(unet, backup_device: torch.device | str | None = None) -> bool:
    """Merge our adapter into the weights it wraps (``W <- W + scale B A``), so
    forward and backward passes run the base layers only: no LoRA branches (in
    SD1.5, 1280 fewer aten operators per forward pass and 2240 per forward +
    backward; ``research/speed.py --count-ops``). Returns False when there is
    no adapter or it is fused already.

    An exact copy of each weight it changes (q, k, v, out of every attention
    layer: 94 M parameters in SD1.5) is kept on ``backup_device`` (default: the
    weight's own device) and :func:`remove_lora` writes it back, because
    unmerging by subtraction does not restore ``W`` bit for bit in floating point.
    """

    if ADAPTER_NAME not in getattr(unet, "peft_config", {}) or _UNFUSED_WEIGHTS in vars(unet):
        return False
    backup = {}
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer):
            weight = module.get_base_layer().weight
            backup[name] = weight.detach().to(backup_device or weight.device, copy=True)
    setattr(unet, _UNFUSED_WEIGHTS, backup)
    unet.fuse_lora(adapter_names=[ADAPTER_NAME])
    return True


def _unfuse_lora(unet) -> None:
    """Undo :func:`fuse_lora`: the adapter is separate again and the base weights exact."""
    backup = vars(unet).pop(_UNFUSED_WEIGHTS, None)
    if backup is None:
        return
    unet.unfuse_lora()  # peft's bookkeeping (layers marked unmerged); the weights are then overwritten
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, weight in backup.items():
            modules[name].get_base_layer().weight.copy_(weight)


class _NoEmptyFp32Warning(logging.Filter):
    """diffusers' ``save_lora_adapter`` calls ``self.to(dtype=None)``, and ``ModelMixin.to``
    then warns that modules "should be kept in float32: []" whenever a dtype keyword is
    present, even when the list is empty and nothing is cast. Drop only that empty case."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kept in float32: []" not in record.getMessage()


def save_lora(unet, folder: Path, metadata: dict) -> Path:
    """Write the adapter as ``folder/pytorch_lora_weights.safetensors`` (+ ``lora.json``), atomically."""
    with atomic_folder(folder, replace=False) as tmp:  # another process finished first: keep theirs
        quiet = _NoEmptyFp32Warning()
        diffusers_models_logger = logging.getLogger("diffusers.models.modeling_utils")
        diffusers_models_logger.addFilter(quiet)
        try:
            unet.save_lora_adapter(tmp, adapter_name=ADAPTER_NAME, upcast_before_saving=False, weight_name=LORA_FILE)
        finally:
            diffusers_models_logger.removeFilter(quiet)
        (tmp / "lora.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return folder / LORA_FILE


def load_lora(unet, path: Path) -> None:
    """Attach a saved adapter (a folder holding ``pytorch_lora_weights.safetensors`` or the file)."""
    path = Path(path)
    folder, name = (path.parent, path.name) if path.is_file() else (path, LORA_FILE)
    if not (folder / name).is_file():
        raise GoodDragError(f"LoRA {str(path)!r}: no such file (expected a .safetensors file or a folder with {LORA_FILE})")
    remove_lora(unet)
    unet.load_lora_adapter(
        str(folder), weight_name=name, prefix=None, adapter_name=ADAPTER_NAME, local_files_only=True
    )


def train_lora(
    unet,
    latent_dist,
    text_embeddings: torch.Tensor,
    scheduler,
    config: LoraSchedule,
    generator: torch.Generator,
    scaling_factor: float,
    step_callback: Callable[[int, int, float], None] | None = None,
    *,
    fused_adam: bool = False,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    micro_batch: int | None = None,
    host_read: Callable[[torch.Tensor], list[float]] = torch.Tensor.tolist,
    model_call: ModelCall | None = None,
    shift_factor: float = 0.0,
    target_modules=TARGET_MODULES,
) -> list[float]:
    """Fine-tune a fresh LoRA on one image; returns the loss per step (floats).

    latent_dist: the VAE's ``DiagonalGaussianDistribution`` of the (1, 3, H, W) image; text_embeddings:
    (1, L, D). Noise, timesteps and latent samples are drawn from ``generator`` (a CPU generator, so
    runs repeat across devices) before the loop (:func:`draw_training_noise`). ``fused_adam``:
    torch's fused AdamW kernel (CUDA; the same update up to rounding).
    ``added_cond_kwargs``: SDXL's added conditioning for batch 1
    (``{"text_embeds": (1, P), "time_ids": (1, 6)}``, see
    :class:`gooddrag.models.backbone.Conditioning`); None for SD.
    ``micro_batch``: rows per forward/backward pass (None: all), gradients accumulated
    (:func:`accumulate_gradient`). ``host_read``: how the losses reach the host, once at the end.
    ``model_call(noisy, t, hidden_states, added)``: the network's call (default: the UNet's;
    :mod:`gooddrag.models.denoiser` gives the transformers'); ``shift_factor``: SD3/FLUX latents are
    ``(z - shift) * scale``; a flow ``scheduler`` trains on the flow objective (:func:`noisy_and_target`).
    """
    device, model_dtype = text_embeddings.device, unet.dtype
    scheduler = training_scheduler(scheduler, device)
    params = attach_fresh_lora(unet, config.lora_rank, generator, target_modules)
    model_call = model_call or unet_call(unet)
    optimizer = torch.optim.AdamW(params, lr=config.lora_lr, weight_decay=config.lora_weight_decay,
                                  fused=True if fused_adam else None)
    bsz, mean, std = config.lora_batch_size, latent_dist.mean.float(), latent_dist.std.float()  # std: (1, c, h, w)
    cond, added = batch_conditioning(text_embeddings, added_cond_kwargs, bsz, model_dtype)
    autocast = torch.autocast(device.type, dtype=model_dtype, enabled=model_dtype != torch.float32)
    draws = draw_training_noise(config.lora_steps, (bsz, *mean.shape[1:]), scheduler.config.num_train_timesteps,
                                generator, device)
    losses: list[torch.Tensor] = []
    unet.train()
    for step, (eps_latent, noise, timesteps) in enumerate(draws):
        latents = mean + std * eps_latent  # (B, c, h, w)
        latents = ((latents - shift_factor) if shift_factor else latents) * scaling_factor
        noisy, target, t = noisy_and_target(scheduler, latents, noise, timesteps)
        optimizer.zero_grad(set_to_none=True)  # before the forward pass: last step's gradients freed sooner
        loss = accumulate_gradient(model_call, noisy.to(model_dtype), t, cond, added, target, autocast, micro_batch)
        optimizer.step()
        losses.append(loss)
        if step_callback is not None:
            step_callback(step, config.lora_steps, losses[-1])
    freeze_lora(unet, params, model_dtype)
    return host_read(torch.stack(losses).cpu()) if losses else []


def accumulate_gradient(model_call: ModelCall, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                        added: dict[str, torch.Tensor] | None, target: torch.Tensor, autocast: torch.autocast,
                        micro_batch: int | None) -> torch.Tensor:
    """One step's MSE loss over the batch (detached), its gradient accumulated in the trainable
    parameters: noisy (B, 4, h, w) and target (B, 4, h, w), timesteps (B,), cond (B, L, D), added
    SDXL's (B, ...) tensors; ``autocast`` is entered around each forward pass. In micro-batches of
    ``micro_batch`` rows the loss of rows i..j weighs (j - i) / B, so the gradients add up to the
    whole batch's mean-squared error (up to float order); a micro-batch as large as the batch runs
    the batch as one (the same operations as without)."""
    bsz = noisy.shape[0]
    size = min(micro_batch or bsz, bsz)
    if size == bsz:
        with autocast:
            pred = model_call(noisy, timesteps, cond, added)
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        loss.backward()
        # A copy: the 0-dim loss mse_loss returns keeps the storage of its (B, 4, h, w) difference
        # alive (it is reduced in place), one such buffer a step in the recorded losses.
        return loss.detach().clone()
    total = torch.zeros((), device=noisy.device)
    for start in range(0, bsz, size):
        rows = slice(start, min(start + size, bsz))
        part = None if added is None else {k: v[rows] for k, v in added.items()}
        with autocast:
            pred = model_call(noisy[rows], timesteps[rows], cond[rows], part)
        loss = torch.nn.functional.mse_loss(pred.float(), target[rows].float()) * ((rows.stop - start) / bsz)
        loss.backward()
        total = total + loss.detach()
    return total


def batch_conditioning(text_embeddings: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor] | None,
                       batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The batch-1 conditioning expanded to ``batch`` rows in the model's dtype: (B, L, D) hidden
    states and SDXL's (B, P) pooled text and (B, 6) time ids (None for SD)."""
    added = None
    if added_cond_kwargs is not None:
        added = {k: v.expand(batch, *v.shape[1:]).to(dtype) for k, v in added_cond_kwargs.items()}
    return text_embeddings.expand(batch, -1, -1).to(dtype), added


def attach_fresh_lora(unet, rank: int, generator: torch.Generator,
                      target_modules=TARGET_MODULES) -> list[torch.nn.Parameter]:
    """Replace any adapter by a fresh one of ``rank``; returns its trainable (fp32) parameters.

    peft draws the adapter's initial weights from torch's global RNG: it is seeded from
    ``generator`` inside a forked RNG, so the LoRA depends on the seed only.
    """
    remove_lora(unet)
    init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        add_lora(unet, rank, target_modules)
    cast_training_params(unet, dtype=torch.float32)  # fp32 master weights under fp16/bf16 models
    return [p for p in unet.parameters() if p.requires_grad]


def draw_training_noise(steps: int, shape: tuple[int, ...], num_train_timesteps: int, generator: torch.Generator,
                        device) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per step: the latent sample's noise (B, 4, h, w), the diffusion noise (B, 4, h, w) and the
    timesteps (B,), all drawn on the CPU from ``generator`` in the order the steps use them and
    moved to ``device`` in one copy each: the loop never waits for the host."""
    draws = [
        (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator),
         torch.randint(0, num_train_timesteps, (shape[0],), generator=generator))
        for _ in range(steps)
    ]
    if not draws:
        return []
    all_eps, all_noise, all_t = (torch.stack(d).to(device) for d in zip(*draws))  # (steps, B, ...)
    return list(zip(all_eps, all_noise, all_t))


def training_scheduler(scheduler, device):
    """The LoRA's own copy of ``scheduler``: diffusers' add_noise moves a DDPM scheduler's
    alphas_cumprod to the device for good, and the caller's schedule maths (make_schedule) must keep
    its CPU copy; a flow scheduler is made afresh (the caller's holds set_timesteps' sigmas, not the
    training table), its table on the device once rather than every step."""
    if not is_flow(scheduler):
        return copy.deepcopy(scheduler)
    fresh = type(scheduler).from_config(scheduler.config)
    fresh.sigmas = fresh.sigmas.to(device)
    return fresh


def unet_call(unet) -> ModelCall:
    """The UNet's call as :func:`train_lora` makes it."""
    return lambda noisy, t, cond, added: unet(noisy, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample


def is_flow(scheduler) -> bool:
    """True for a flow-matching scheduler (SD3, FLUX: ``FlowMatchEulerDiscreteScheduler``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


def noisy_and_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, index: torch.Tensor):
    """(noisy latents, training target, timesteps the network takes) for training indices ``index`` (B,)
    in [0, num_train_timesteps).

    DDPM-style schedulers: ``scheduler.add_noise`` and :func:`training_target` at timestep = index.
    Flow matching (Esser et al. 2024, eq. 1-2; diffusers' SD3/FLUX DreamBooth scripts): sigma =
    the scheduler's training table at ``index`` (shifted as the model was trained), ``x = (1 -
    sigma) x0 + sigma noise``, target ``noise - x0``, timestep ``sigma x 1000``. The index is drawn
    uniformly as for the UNet models (the scripts' default is the logit-normal density). A flow
    ``scheduler`` must hold its training table (a fresh one: ``set_timesteps`` replaces it).
    """
    if not is_flow(scheduler):
        return scheduler.add_noise(latents, noise, index), training_target(scheduler, latents, noise, index), index
    sigma = scheduler.sigmas.to(latents.device)[index].view(-1, *([1] * (latents.dim() - 1)))
    return (1.0 - sigma) * latents + sigma * noise, noise - latents, sigma.flatten() * 1000


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict: the noise (eps-prediction) or the velocity (v-prediction)."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def freeze_lora(unet, params: list[torch.nn.Parameter], model_dtype: torch.dtype) -> None:
    """Back to inference: eval mode, no gradients (the last step's are freed: they would stay on the
    device until the next LoRA), the adapter in the model's dtype."""
    unet.eval()
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    if model_dtype != torch.float32:
        for p in params:
            p.data = p.data.to(model_dtype)
