"""Loading a Stable Diffusion backbone the real way: hub id, local diffusers folder or single file.

The kind of source is decided by what the string *is* on disk (an existing
folder, an existing file) and otherwise treated as a hub id; never guessed
from its name. Errors a user can cause become :class:`GoodDragError`.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import SingleFileComponentError
from huggingface_hub import constants, try_to_load_from_cache

from ..errors import GoodDragError, ModelUnavailableError
from . import backbone, names

logger = logging.getLogger(__name__)

DEFAULT_MODEL = names.DEFAULT_HUB_MODEL
"""The model loaded when none is named: Stable Diffusion 1.5 (defined once, in :mod:`gooddrag.models.names`)."""

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; an explicit device must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise GoodDragError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GoodDragError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GoodDragError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GoodDragError(f"device {device!r} asked for but MPS is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise GoodDragError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type == "cpu":
        raise GoodDragError("dtype fp16 is not supported on the CPU; use fp32 or bf16")
    return DTYPES[dtype]


@dataclass(frozen=True)
class ModelSource:
    """What a model string refers to: ``kind`` is "folder", "file" or "hub"."""

    kind: str
    location: str

    @property
    def cache_key(self) -> str:
        """Identity of the weights for caches: hub id, or resolved path + size + mtime."""
        if self.kind == "hub":
            return f"hub:{self.location}"
        p = Path(self.location)
        weights = next((p / d for d in ("unet", "transformer") if (p / d).is_dir()), None) if p.is_dir() else None
        stat_target = weights or p
        files = sorted(stat_target.rglob("*")) if stat_target.is_dir() else [stat_target]
        sig = ";".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files if f.is_file())
        return f"{self.kind}:{p.resolve()}:{sig}"


def classify_source(model: str) -> ModelSource:
    """Decide whether ``model`` is a local folder, a local file or a hub id."""
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        return ModelSource("folder", str(p))
    if p.is_file():
        if p.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise GoodDragError(
                f"model file {model!r} is not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)})"
            )
        return ModelSource("file", str(p))
    looks_local = model.startswith((".", "/", "~")) or p.suffix.lower() in SINGLE_FILE_SUFFIXES or model.count("/") > 1
    if looks_local:
        raise GoodDragError(f"model {model!r}: no such file or folder")
    return ModelSource("hub", model)


HUB_PROBE_TIMEOUT = 3.0
"""Seconds to wait for a TCP connection to the hub before calling it unreachable (huggingface_hub's
own retries took 23 s to give up on an offline server)."""


def hub_cached(repo_id: str) -> bool:
    """Whether hub model ``repo_id`` is in the local Hugging Face cache (its model_index.json is)."""
    try:
        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the hub (huggingface_hub's endpoint, ``HF_ENDPOINT``) accepts a connection within
    ``timeout`` s; False at once with ``HF_HUB_OFFLINE``. A TCP connect, not a request: it
    sends nothing and needs no token."""
    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def availability(model: str) -> str:
    """Where ``model`` (a built-in name, folder, file or hub id) would load from: "local" (a
    shipped model, folder or file), "cached" (a hub id in the local cache), "download" (a
    hub id to download) or "missing" (a path that does not exist)."""
    try:
        source = classify_source(names.resolve(model))
    except GoodDragError:
        return "missing"
    if source.kind != "hub":
        return "local"
    return "cached" if hub_cached(source.location) else "download"


def require_loadable(model: str) -> None:
    """Raise :class:`ModelUnavailableError` at once when ``model`` is a hub id that is neither in
    the local cache nor downloadable now (rather than after huggingface_hub's retries)."""
    source = classify_source(names.resolve(model))
    if source.kind == "hub" and not hub_cached(source.location) and not hub_reachable():
        raise _offline_hint("model", model, ConnectionError("hub unreachable"))


def _offline_hint(what: str, name: str, err: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"cannot load {what} {name!r} ({type(err).__name__}): it is not in the local Hugging Face cache and the hub "
        f"cannot be reached; pass a local diffusers folder or a single-file .safetensors/.ckpt checkpoint instead"
    )


def _load_vae(vae: str, dtype: torch.dtype, vae_config: str | None):
    source = classify_source(vae)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return _load_vae_source(source, dtype, vae_config)
    except GoodDragError:
        raise
    except (OSError, ValueError) as err:
        if source.kind == "hub" or (source.kind == "file" and not vae_config):
            raise _offline_hint("VAE", vae, err) from None
        raise GoodDragError(f"cannot load VAE {vae!r}: {str(err).splitlines()[0]}") from None


def _load_vae_source(source: ModelSource, dtype: torch.dtype, vae_config: str | None):
    if source.kind == "file":
        kwargs = {"config": vae_config} if vae_config else {}
        return AutoencoderKL.from_single_file(source.location, torch_dtype=dtype, **kwargs)
    if source.kind == "folder" and (Path(source.location) / "vae").is_dir():
        return AutoencoderKL.from_pretrained(source.location, subfolder="vae", torch_dtype=dtype)
    return AutoencoderKL.from_pretrained(source.location, torch_dtype=dtype)


def _from_source(source: ModelSource, kwargs: dict, model_config: str | None):
    # SD 1.x/2.x or SDXL, read from the model's own configs (or tensor names), never from its name.
    kind = backbone.detect_backbone(source, model_config)
    cls = backbone.pipeline_class(kind)
    kwargs = kwargs | backbone.pipeline_kwargs(kind, backbone.model_index_of(source, model_config))
    logger.info("model %s: %s backbone (%s)", source.location, kind, cls.__name__)
    if source.kind == "file":
        if model_config:
            kwargs = kwargs | {"config": model_config} | _components_from_config(kind, source, kwargs, model_config)
        return cls.from_single_file(source.location, **kwargs)
    return cls.from_pretrained(source.location, **kwargs)


def _components_from_config(kind: str, source: ModelSource, kwargs: dict, model_config: str) -> dict:
    """The components an SD3/FLUX single file lacks (often its text encoders), loaded from ``model_config``
    with diffusers' own loader (``from_single_file`` would otherwise refuse the file)."""
    missing = [name for name in backbone.components_missing_from_checkpoint(
        kind, backbone.checkpoint_keys(source.location)) if name not in kwargs]
    if not missing:
        return {}
    index = backbone.model_index_of(ModelSource("folder" if Path(model_config).is_dir() else "hub", model_config))
    logger.info("single file %s lacks %s: read from %s", source.location, ", ".join(missing), model_config)
    return {name: _component(model_config, name, (index or {}).get(name), kwargs.get("torch_dtype"))
            for name in missing}


def _component(model_config: str, name: str, entry: list | None, dtype: torch.dtype | None):
    """Component ``name`` of the diffusers model ``model_config``, of the class its model_index.json names
    (``[library, class]``); None where the model has none (SD3 without T5)."""
    if not entry or entry[0] is None:
        return None
    cls = getattr(importlib.import_module(entry[0]), entry[1])
    extra = {"torch_dtype": dtype} if name.startswith(("text_encoder", "vae")) else {}
    return cls.from_pretrained(model_config, subfolder=name, **extra)


def load_components(
    model: str = DEFAULT_MODEL,
    *,
    vae: str | None = None,
    model_config: str | None = None,
    vae_config: str | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Load a diffusers pipeline (on the CPU, in ``dtype``) and return ``(pipe, source)``.

    ``pipe`` is a ``StableDiffusionPipeline`` for SD 1.x/2.x models and a
    ``StableDiffusionXLPipeline`` for SDXL (base and fine-tunes), as the model's
    own configs say (:func:`gooddrag.models.backbone.detect_backbone`); both have
    ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``,
    ``image_processor`` and ``encode_prompt``; SDXL adds ``text_encoder_2`` and
    ``tokenizer_2``. :func:`gooddrag.models.backbone.backbone_kind` tells them apart
    and :func:`gooddrag.models.backbone.encode_conditioning` encodes a prompt for either.
    ``source`` is the :class:`ModelSource`. Every model is frozen, in eval mode.

    model: hub id, local diffusers folder or single-file checkpoint. For a
    single file, ``model_config`` (a diffusers folder or hub id) gives the
    component configs; without it diffusers infers them from the checkpoint's
    keys and fetches them from the hub (or its local cache).
    vae: optional separate VAE (hub id, folder or single file).
    A built-in name (:mod:`gooddrag.models.names`, e.g. ``shapes-64``) is resolved first.
    """
    require_loadable(model)
    source = classify_source(names.resolve(model))
    pipe = _load_pipeline(model, source, dtype, model_config)
    if vae is not None:
        _swap_vae(pipe, vae, dtype, vae_config)
    for module in (backbone.denoiser_module(pipe), pipe.vae, *backbone.text_encoders(pipe)):
        module.requires_grad_(False)
        module.eval()
    return pipe, source


def _load_pipeline(model: str, source: ModelSource, dtype: torch.dtype, model_config: str | None):
    """The diffusers pipeline of ``source``; a load that fails becomes one line saying what to do."""
    kwargs = dict(torch_dtype=dtype)  # + the backbone's own (gooddrag.models.backbone.pipeline_kwargs)
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renames torch_dtype to dtype; older ones only know torch_dtype.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            return _from_source(source, kwargs, model_config)
    except GoodDragError:
        raise
    except (OSError, ValueError, SingleFileComponentError) as err:
        if source.kind == "file" and not model_config:
            raise GoodDragError(
                f"cannot load the configs for single-file checkpoint {model!r} offline "
                f"({type(err).__name__}); pass --model-config with a local diffusers folder of the same model"
            ) from None
        if source.kind == "hub":
            raise _offline_hint("model", model, err) from None
        raise GoodDragError(f"cannot load model {model!r}: {str(err).splitlines()[0]}") from None


def _swap_vae(pipe, vae: str, dtype: torch.dtype, vae_config: str | None) -> None:
    """Replace the pipeline's VAE by ``vae``, keeping the base model's latent scale."""
    scaling_factor = pipe.vae.config.scaling_factor
    pipe.vae = _load_vae(vae, dtype, vae_config)
    if pipe.vae.config.scaling_factor != scaling_factor:
        # The latent scale is the base model's (what its UNet was trained on: SD 0.18215,
        # SDXL 0.13025); a VAE file loaded without its config gets diffusers' SD default.
        logger.warning(
            "VAE %s has scaling_factor %s; using the model's %s", vae, pipe.vae.config.scaling_factor,
            scaling_factor,
        )
        pipe.vae.register_to_config(scaling_factor=scaling_factor)
