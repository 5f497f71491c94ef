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
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig

from .config import DragConfig
from .errors import GoodDragError

logger = logging.getLogger(__name__)

ADAPTER_NAME = "gooddrag"
LORA_FILE = "pytorch_lora_weights.safetensors"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
_UNFUSED_WEIGHTS = "_gooddrag_unfused_weights"  # attribute of a UNet whose adapter is fused: exact base weights


def default_cache_dir() -> Path:
    """``$GOODDRAG_CACHE`` or ``$XDG_CACHE_HOME/gooddrag`` (``~/.cache/gooddrag``), sub-folder ``lora``."""
    root = os.environ.get("GOODDRAG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "gooddrag"
    )
    return Path(root) / "lora"


def lora_settings(config: DragConfig, prompt: str) -> dict:
    """The settings a LoRA depends on (beyond the image and the base model)."""
    return {
        "steps": config.lora_steps,
        "rank": config.lora_rank,
        "lr": config.lora_lr,
        "batch_size": config.lora_batch_size,
        "weight_decay": config.lora_weight_decay,
        "seed": config.seed,
        "prompt": prompt,
        "target_modules": TARGET_MODULES,
    }


def lora_cache_key(image_sha256: str, model_key: str, settings: dict) -> str:
    """Hex key of (image content hash, base model, LoRA settings)."""
    blob = json.dumps({"image": image_sha256, "model": model_key, "lora": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def add_lora(unet, rank: int) -> None:
    """Attach a fresh (trainable) LoRA adapter named ``ADAPTER_NAME`` to ``unet``."""
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES),
        adapter_name=ADAPTER_NAME,
    )


def remove_lora(unet) -> None:
    """Detach our adapter, if any (fused or not), so the UNet is the base model again, bit for bit
    and module for module: once no adapter is left, peft's wrapper layers are replaced by the
    layers they wrap, so ``unet.state_dict()`` has the base model's keys again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    _unfuse_lora(unet)
    if ADAPTER_NAME in getattr(unet, "peft_config", {}):
        unet.delete_adapters(ADAPTER_NAME)
    if not getattr(unet, "peft_config", None) and any(isinstance(m, BaseTunerLayer) for m in unet.modules()):
        unet.unload_lora()  # an empty wrapper (base_layer.weight) -> the base layer (weight)


def fuse_lora(unet, backup_device: torch.device | str | None = None) -> bool:
    """Merge our adapter into the weights it wraps (``W <- W + scale B A``), so
    forward and backward passes run the base layers only: no LoRA branches (in
    SD1.5, 1280 fewer aten operators per forward pass and 2240 per forward +
    backward; ``benchmarks/speed.py --count-ops``). Returns False when there is
    no adapter or it is fused already.

    An exact copy of each weight it changes (q, k, v, out of every attention
    layer: 94 M parameters in SD1.5) is kept on ``backup_device`` (default: the
    weight's own device) and :func:`remove_lora` writes it back, because
    unmerging by subtraction does not restore ``W`` bit for bit in floating point.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

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
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        quiet = _NoEmptyFp32Warning()
        diffusers_models_logger = logging.getLogger("diffusers.models.modeling_utils")
        diffusers_models_logger.addFilter(quiet)
        try:
            unet.save_lora_adapter(tmp, adapter_name=ADAPTER_NAME, upcast_before_saving=False, weight_name=LORA_FILE)
        finally:
            diffusers_models_logger.removeFilter(quiet)
        (tmp / "lora.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if folder.exists():
            shutil.rmtree(tmp)  # another process finished first: keep theirs
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    config: DragConfig,
    generator: torch.Generator,
    scaling_factor: float,
    step_callback: Callable[[int, int, float], None] | None = None,
    *,
    fused_adam: bool = False,
    added_cond_kwargs: dict[str, torch.Tensor] | None = None,
) -> list[float]:
    """Fine-tune a fresh LoRA on one image; returns the loss per step (floats).

    latent_dist: the VAE's ``DiagonalGaussianDistribution`` of the (1, 3, H, W)
    image; text_embeddings: (1, L, D). Noise, timesteps and latent samples are
    drawn from ``generator`` (a CPU generator, so runs repeat across devices),
    all before the loop, in the order the steps use them, and moved to the
    device in one copy: the loop never waits for the host. ``fused_adam``:
    torch's fused AdamW kernel (CUDA; the same update up to rounding).
    ``added_cond_kwargs``: SDXL's added conditioning for batch 1
    (``{"text_embeds": (1, P), "time_ids": (1, 6)}``, see
    :class:`gooddrag.backbone.Conditioning`); None for SD.
    """
    from diffusers.training_utils import cast_training_params

    device = text_embeddings.device
    model_dtype = unet.dtype
    # diffusers' add_noise moves the scheduler's alphas_cumprod to the device for
    # good; the caller's schedule maths (make_schedule) must keep its CPU copy.
    scheduler = copy.deepcopy(scheduler)
    remove_lora(unet)
    # peft draws the adapter's initial weights from torch's global RNG: seed it
    # from our generator inside a forked RNG, so the LoRA depends on the seed only.
    init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        add_lora(unet, config.lora_rank)
    cast_training_params(unet, dtype=torch.float32)  # fp32 master weights under fp16/bf16 models
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lora_lr, weight_decay=config.lora_weight_decay, fused=True if fused_adam else None
    )
    num_train = scheduler.config.num_train_timesteps
    prediction_type = scheduler.config.prediction_type
    bsz = config.lora_batch_size
    mean, std = latent_dist.mean.float(), latent_dist.std.float()  # (1, 4, h, w)
    cond = text_embeddings.expand(bsz, -1, -1)
    added = None  # (B, P) pooled text, (B, 6) time ids, in the model's dtype
    if added_cond_kwargs is not None:
        added = {k: v.expand(bsz, *v.shape[1:]).to(model_dtype) for k, v in added_cond_kwargs.items()}
    autocast = torch.autocast(device.type, dtype=model_dtype, enabled=model_dtype != torch.float32)
    losses: list[float] = []
    shape = (bsz, *mean.shape[1:])
    draws = [
        (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator),
         torch.randint(0, num_train, (bsz,), generator=generator))
        for _ in range(config.lora_steps)
    ]
    if draws:  # (steps, B, 4, h, w), (steps, B, 4, h, w), (steps, B)
        all_eps, all_noise, all_t = (torch.stack(d).to(device) for d in zip(*draws))
    unet.train()
    for step in range(config.lora_steps):
        eps_latent, noise, timesteps = all_eps[step], all_noise[step], all_t[step]
        latents = (mean + std * eps_latent) * scaling_factor  # (B, 4, h, w)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        with autocast:
            pred = unet(
                noisy.to(model_dtype), timesteps, encoder_hidden_states=cond.to(model_dtype), added_cond_kwargs=added
            ).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = loss.detach()
        losses.append(loss_value)
        if step_callback is not None:
            step_callback(step, config.lora_steps, loss_value)
    unet.eval()
    for p in params:
        p.requires_grad_(False)
    if model_dtype != torch.float32:
        for p in params:
            p.data = p.data.to(model_dtype)
    return [float(v) for v in torch.stack(losses).cpu()] if losses else []
