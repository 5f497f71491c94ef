"""SDXL backbones, offline: a tiny SDXL-shaped model saved with ``save_pretrained`` and loaded
through our loader (folder and single file), the added conditioning reaching the UNet, the
method's layers placed by the UNet's structure, the SDXL presets, and SD loading unchanged.

The last section needs the pipeline integration (the lead's pipeline.py / config.py); it is
skipped until then.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from gooddrag import GoodDragError
from gooddrag.methods import presets as preset_table
from gooddrag.models.backbone import (
    SD,
    SDXL,
    Conditioning,
    backbone_kind,
    backbone_kind_of_checkpoint,
    backbone_kind_of_config,
    checkpoint_keys,
    encode_conditioning,
    feature_block_index,
    mutual_attention_start_layer,
    structural_settings,
    unet_on_meta,
    vae_needs_upcast,
    vae_precision,
)
from gooddrag.models.features import feature_blocks
from gooddrag.models.loading import load_components
from gooddrag.models.sdxl import (
    SDXL_BASE_UNET_CONFIG,
    SDXL_FEATURE_BLOCK,
    SDXL_MUTUAL_ATTENTION_START_LAYER,
)
from gooddrag.models.tiny_sdxl import save_tiny_sdxl_pipeline

from .sdxl_single_file_checkpoint import (
    save_sdxl_single_file_checkpoint,
    sdxl_to_sgm_state_dict,
)
from .single_file_checkpoint import save_single_file_checkpoint

# The structural fields of stable-diffusion-v1-5's unet/config.json (the rest are diffusers' defaults).
SD15_UNET_CONFIG = dict(
    sample_size=64,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_sdxl_dir):
    pipe, _ = load_components(str(tiny_sdxl_dir))
    return pipe


@pytest.fixture(scope="module")
def sdxl_meta_unet():
    return unet_on_meta(SDXL_BASE_UNET_CONFIG)


@pytest.fixture(scope="module")
def sd15_meta_unet():
    return unet_on_meta(SD15_UNET_CONFIG)


# ----------------------------------------------------------------------------- loading
def test_sdxl_folder_loads_as_sdxl(tiny_sdxl_dir, tiny_sdxl):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipe, source = load_components(str(tiny_sdxl_dir))
    assert isinstance(pipe, StableDiffusionXLPipeline) and source.kind == "folder"
    assert backbone_kind(pipe) == SDXL
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        assert not module.training and all(not p.requires_grad for p in module.parameters())
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae.config.force_upcast
    # The engine's DDIM is built from the model's own scheduler config (here SDXL's Euler one).
    ddim = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    assert ddim.config.steps_offset == 1 and ddim.config.beta_schedule == "scaled_linear"


def test_backbone_is_read_from_configs_not_from_the_path(tiny_sdxl_dir, tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sdxl_named_sd = shutil.copytree(tiny_sdxl_dir, tmp_path / "stable-diffusion-v1-5")
    sd_named_xl = shutil.copytree(tiny_model_dir, tmp_path / "my-sdxl-xl-finetune")
    assert isinstance(load_components(str(sdxl_named_sd))[0], StableDiffusionXLPipeline)
    sd, _ = load_components(str(sd_named_xl))
    assert isinstance(sd, StableDiffusionPipeline) and backbone_kind(sd) == SD


def test_hub_id_is_recognised_from_its_cached_configs(tiny_sdxl_dir, tiny_sdxl):
    """A hub id offline: model_index.json and unet/config.json come from the local cache
    (laid out as huggingface_hub writes it; conftest points HF_HUB_CACHE at a temporary folder)."""
    import os
    from pathlib import Path

    from diffusers import StableDiffusionXLPipeline

    repo = Path(os.environ["HF_HUB_CACHE"]) / "models--gooddrag-tests--tiny-sdxl"
    sha = "0123456789abcdef0123456789abcdef01234567"
    if not repo.exists():
        shutil.copytree(tiny_sdxl_dir, repo / "snapshots" / sha)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(sha)
    pipe, source = load_components("gooddrag-tests/tiny-sdxl")
    assert isinstance(pipe, StableDiffusionXLPipeline) and source.kind == "hub"
    assert _same_weights(pipe.unet, tiny_sdxl.unet)


def test_bf16_sdxl_runs_with_its_conditioning(tiny_sdxl_dir):
    pipe, _ = load_components(str(tiny_sdxl_dir), dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.text_encoder_2.dtype == torch.bfloat16
    cond = encode_conditioning(pipe, "a cat", (64, 64), "cpu")
    assert cond.added_cond_kwargs["text_embeds"].dtype == torch.bfloat16
    out = pipe.unet(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), torch.tensor(10), **cond.unet_kwargs(1)).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_backbone_kind_of_config():
    sdxl_index = {"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
                  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    assert backbone_kind_of_config(sdxl_index, {"addition_embed_type": "text_time"}) == SDXL
    # The UNet config decides over the class name (a fine-tune saved by another pipeline class) ...
    assert backbone_kind_of_config(sdxl_index | {"_class_name": "DiffusionPipeline"},
                                   {"addition_embed_type": "text_time"}) == SDXL
    assert backbone_kind_of_config({"_class_name": "StableDiffusionPipeline"}, {"addition_embed_type": None}) == SD
    # ... the class name decides without one.
    assert backbone_kind_of_config({"_class_name": "StableDiffusionXLPipeline"}, None) == SDXL
    assert backbone_kind_of_config({"_class_name": "StableDiffusionPipeline"}, None) == SD
    refiner = {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None],
               "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}
    with pytest.raises(GoodDragError, match="refiner"):
        backbone_kind_of_config(refiner, {"addition_embed_type": "text_time"})
    with pytest.raises(GoodDragError, match="added conditioning"):
        backbone_kind_of_config({}, {"addition_embed_type": "image"})
    with pytest.raises(GoodDragError, match="unsupported pipeline class"):
        backbone_kind_of_config({"_class_name": "PixArtAlphaPipeline"}, None)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sdxl_single_file_loads_exactly(tiny_sdxl_dir, tiny_sdxl, tmp_path, suffix):
    from diffusers import StableDiffusionXLPipeline

    path = save_sdxl_single_file_checkpoint(tiny_sdxl_dir, tmp_path / f"tiny-sdxl{suffix}")
    pipe, source = load_components(str(path), model_config=str(tiny_sdxl_dir))
    assert isinstance(pipe, StableDiffusionXLPipeline) and source.kind == "file"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert _same_weights(getattr(pipe, name), getattr(tiny_sdxl, name)), name


def test_single_file_kind_is_read_from_tensor_names(tiny_sdxl_dir, tiny_model_dir, tmp_path):
    sdxl_file = save_sdxl_single_file_checkpoint(tiny_sdxl_dir, tmp_path / "a.safetensors")
    sd_file = save_single_file_checkpoint(tiny_model_dir, tmp_path / "b.ckpt")
    assert backbone_kind_of_checkpoint(checkpoint_keys(sdxl_file)) == SDXL
    assert backbone_kind_of_checkpoint(checkpoint_keys(sd_file)) == SD
    refiner_like = [k for k in sdxl_to_sgm_state_dict(tiny_sdxl_dir) if not k.startswith("conditioner.embedders.1.")]
    with pytest.raises(GoodDragError, match="refiner"):
        backbone_kind_of_checkpoint(refiner_like)
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(GoodDragError, match="cannot read checkpoint"):
        checkpoint_keys(tmp_path / "broken.safetensors")


def test_sdxl_single_file_without_config_offline_says_what_to_pass(tiny_sdxl_dir, tmp_path):
    path = save_sdxl_single_file_checkpoint(tiny_sdxl_dir, tmp_path / "tiny-sdxl.safetensors")
    with pytest.raises(GoodDragError, match="--model-config"):
        load_components(str(path))


def test_separate_vae_folder_and_file(tiny_sdxl_dir, tiny_sdxl, tmp_path):
    from safetensors.torch import save_file

    # A VAE folder (the usual fp16-fix VAE is a diffusers repo of this kind).
    pipe, _ = load_components(str(tiny_sdxl_dir), vae=str(tiny_sdxl_dir / "vae"))
    assert _same_weights(pipe.vae, tiny_sdxl.vae)
    # A VAE single file with its config.
    sd = sdxl_to_sgm_state_dict(tiny_sdxl_dir)
    vae_sd = {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")}
    save_file(vae_sd, tmp_path / "vae.safetensors")
    pipe, _ = load_components(str(tiny_sdxl_dir), vae=str(tmp_path / "vae.safetensors"),
                              vae_config=str(tiny_sdxl_dir / "vae"))
    assert _same_weights(pipe.vae, tiny_sdxl.vae)


def test_separate_vae_keeps_the_models_latent_scale(tiny_sdxl_dir, tiny_model_dir, tiny_pipe, caplog):
    # An SD-configured VAE (scaling 0.18215) on SDXL: the UNet's latent scale (0.13025) is kept.
    pipe, _ = load_components(str(tiny_sdxl_dir), vae=str(tiny_model_dir / "vae"))
    assert _same_weights(pipe.vae, tiny_pipe.vae)
    assert pipe.vae.config.scaling_factor == 0.13025
    assert "scaling_factor" in caplog.text


def test_sd_loading_unchanged(tiny_model_dir, tiny_pipe):
    from diffusers import StableDiffusionPipeline

    pipe, source = load_components(str(tiny_model_dir))
    assert type(pipe) is StableDiffusionPipeline and source.kind == "folder"
    assert backbone_kind(pipe) == SD and getattr(pipe, "text_encoder_2", None) is None
    assert pipe.safety_checker is None
    for name in ("unet", "vae", "text_encoder"):
        assert _same_weights(getattr(pipe, name), getattr(tiny_pipe, name)), name


# ----------------------------------------------------------------------------- conditioning
def test_sdxl_conditioning_reaches_the_unet(tiny_sdxl):
    cond = encode_conditioning(tiny_sdxl, "a cat", (64, 96), "cpu")
    d1, d2 = tiny_sdxl.text_encoder.config.hidden_size, tiny_sdxl.text_encoder_2.config.hidden_size
    assert cond.encoder_hidden_states.shape == (1, 77, d1 + d2)
    assert cond.added_cond_kwargs["text_embeds"].shape == (1, tiny_sdxl.text_encoder_2.config.projection_dim)
    assert cond.added_cond_kwargs["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]]  # original, crop (0, 0), target

    z = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    out = tiny_sdxl.unet(z, t, **cond.unet_kwargs(batch=2)).sample
    assert out.shape == z.shape and torch.isfinite(out).all()
    # Without the added conditioning the SDXL UNet refuses to run.
    with pytest.raises((TypeError, ValueError)):
        tiny_sdxl.unet(z, t, encoder_hidden_states=cond.expand(2).encoder_hidden_states)
    # The time ids are used: another working size gives another output.
    other = encode_conditioning(tiny_sdxl, "a cat", (128, 128), "cpu")
    assert not torch.equal(out, tiny_sdxl.unet(z, t, **other.unet_kwargs(batch=2)).sample)


def test_sd_conditioning_is_encode_prompt(tiny_pipe):
    cond = encode_conditioning(tiny_pipe.sd, "a cat", (128, 128), "cpu")
    assert cond.added_cond_kwargs is None
    assert torch.equal(cond.encoder_hidden_states, tiny_pipe.encode_prompt("a cat").encoder_hidden_states)
    kwargs = cond.unet_kwargs(batch=3, dtype=torch.bfloat16)
    assert kwargs["added_cond_kwargs"] is None
    assert kwargs["encoder_hidden_states"].shape[0] == 3 and kwargs["encoder_hidden_states"].dtype == torch.bfloat16


def test_conditioning_expand_and_to():
    cond = Conditioning(torch.randn(1, 77, 8), {"text_embeds": torch.randn(1, 4), "time_ids": torch.ones(1, 6)})
    big = cond.expand(4)
    assert big.encoder_hidden_states.shape == (4, 77, 8)
    assert big.added_cond_kwargs["text_embeds"].shape == (4, 4) and big.added_cond_kwargs["time_ids"].shape == (4, 6)
    assert big.expand(4) is big
    with pytest.raises(ValueError, match="cannot expand"):
        big.expand(3)
    half = cond.to(dtype=torch.float16)
    assert half.encoder_hidden_states.dtype == half.added_cond_kwargs["time_ids"].dtype == torch.float16


def test_lora_training_passes_the_added_conditioning(tiny_sdxl):
    from diffusers import DDIMScheduler

    from gooddrag import get_preset
    from gooddrag.models import lora
    unet = tiny_sdxl.unet
    cond = encode_conditioning(tiny_sdxl, "", (64, 64), "cpu")
    with torch.no_grad():
        dist = tiny_sdxl.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist
    scheduler = DDIMScheduler.from_config(tiny_sdxl.scheduler.config)
    config = get_preset("gooddrag", lora_steps=2, lora_batch_size=2, lora_rank=2)
    try:
        losses = lora.train_lora(unet, dist, cond.encoder_hidden_states, scheduler, config,
                                 torch.Generator().manual_seed(0), tiny_sdxl.vae.config.scaling_factor,
                                 added_cond_kwargs=cond.added_cond_kwargs)
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
        # The LoRA wraps the same projections as on SD: q, k, v, out of every attention layer.
        from diffusers.models.attention_processor import Attention
        from peft.tuners.tuners_utils import BaseTunerLayer

        wrapped = [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer)]
        attentions = [m for m in unet.modules() if isinstance(m, Attention)]
        assert len(wrapped) == 4 * len(attentions)
        # The old call (no added conditioning) cannot drive an SDXL UNet.
        with pytest.raises((TypeError, ValueError)):
            lora.train_lora(unet, dist, cond.encoder_hidden_states, scheduler, config,
                            torch.Generator().manual_seed(0), tiny_sdxl.vae.config.scaling_factor)
    finally:
        lora.remove_lora(unet)


# ----------------------------------------------------------------------------- the method's layers
def _block_output_sizes(unet, latent_hw):
    """Spatial size of each output of [mid, *up_blocks] in one forward pass (a hook per block)."""
    sizes, handles = [], []
    for block in feature_blocks(unet):
        handles.append(block.register_forward_hook(
            lambda m, a, out: sizes.append(tuple((out[0] if isinstance(out, tuple) else out).shape[-2:]))))
    try:
        extra = {}
        if unet.config.addition_embed_type == "text_time":
            n = 6 * unet.config.addition_time_embed_dim
            pooled = unet.config.projection_class_embeddings_input_dim - n
            extra = {"added_cond_kwargs": {"text_embeds": torch.zeros(1, pooled), "time_ids": torch.zeros(1, 6)}}
        with torch.no_grad():
            unet(torch.zeros(1, 4, *latent_hw), torch.tensor(1),
                 encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim), **extra)
    finally:
        for h in handles:
            h.remove()
    return sizes


@pytest.mark.parametrize("which", ["sd", "sdxl"])
def test_feature_block_is_the_first_decoder_block_at_latent_resolution(which, tiny_pipe, tiny_sdxl):
    unet = tiny_pipe.unet if which == "sd" else tiny_sdxl.unet
    index = feature_block_index(unet)
    assert index == (3 if which == "sd" else 2)
    sizes = _block_output_sizes(unet, (16, 16))
    assert sizes[index] == (16, 16) and all(s != (16, 16) for s in sizes[:index])


def test_layer_rules_on_the_real_layouts(sd15_meta_unet, sdxl_meta_unet):
    from gooddrag.models.attention import self_attention_layer_names

    # SD1.5: 16 self-attention layers (down 6, mid 1, up 9); the official values come back.
    assert len(self_attention_layer_names(sd15_meta_unet)) == 16
    assert structural_settings(sd15_meta_unet) == {"feature_block": 3, "mutual_attention_start_layer": 10}
    # SDXL base: 70 layers (down 4 + 20, mid 10, up 30 + 6); feature block up_blocks[1]; the last 24 mutual.
    names = self_attention_layer_names(sdxl_meta_unet)
    assert len(names) == 70 and sum(n.startswith("up_blocks.") for n in names) == 36
    assert feature_block_index(sdxl_meta_unet) == SDXL_FEATURE_BLOCK == 2
    assert mutual_attention_start_layer(sdxl_meta_unet) == SDXL_MUTUAL_ATTENTION_START_LAYER == 46
    assert all(n.startswith("up_blocks.") for n in names[46:])
    # The feature block has 640 channels on both, as SD1.5's official one.
    assert sd15_meta_unet.up_blocks[2].resnets[-1].out_channels == 640
    assert sdxl_meta_unet.up_blocks[1].resnets[-1].out_channels == 640


def test_layer_rules_on_the_tiny_models(tiny_pipe, tiny_sdxl):
    # tiny SD: 10 layers (3 down, 1 mid, 6 up): 10 - round(6 * 2/3) = 6
    assert mutual_attention_start_layer(tiny_pipe.unet) == 6
    # tiny SDXL: 17 layers (down 2 + 4, mid 2, up 6 + 3): 17 - round(9 * 2/3) = 11
    assert mutual_attention_start_layer(tiny_sdxl.unet) == 11


# ----------------------------------------------------------------------------- presets, VAE precision
def test_sdxl_presets_are_the_sd_presets_translated(sdxl_meta_unet):
    from gooddrag.methods.config import PRESETS

    sdxl_names = {name: method for (method, family), name in preset_table.PRESET_NAMES.items()
                  if family in ("sdxl", "sdxl-768")}
    assert set(sdxl_names) == {
        "gooddrag-sdxl", "dragdiffusion-sdxl", "gooddrag-sdxl-768", "dragdiffusion-sdxl-768",
        "gooddrag-plus-sdxl", "gooddrag-plus-sdxl-768", "freedrag-sdxl", "freedrag-sdxl-768",
        "dragnoise-sdxl", "dragnoise-sdxl-768"}
    for name, method in sdxl_names.items():
        cfg, base = PRESETS[name], PRESETS[preset_table.preset_name(method, "sd")]
        assert cfg.method == base.method == method
        assert cfg.resolution == (768 if name.endswith("-768") else 1024)
        # the structural settings the method reads (DragNoise has no mutual attention: not its setting)
        structural = {k: v for k, v in structural_settings(sdxl_meta_unet).items() if k not in getattr(cfg, "UNUSED", ())}
        assert {k: getattr(cfg, k) for k in structural} == structural and "feature_block" in structural
        # Everything else, r1 / r2 / beta (supervision cells) included, is the SD preset's.
        changed = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)}
        assert changed <= {"resolution", "feature_block", "mutual_attention_start_layer"}


def test_preset_picked_from_the_loaded_model(tiny_pipe, tiny_sdxl):
    kind = backbone_kind
    assert preset_table.for_model("gooddrag", None, kind(tiny_pipe.sd)) == "gooddrag"
    assert preset_table.for_model("dragdiffusion", None, kind(tiny_pipe.sd)) == "dragdiffusion"
    assert preset_table.for_model("gooddrag", None, kind(tiny_sdxl)) == "gooddrag-sdxl"
    assert preset_table.for_model("dragdiffusion", None, kind(tiny_sdxl), light=True) == "dragdiffusion-sdxl-768"
    assert preset_table.preset_name("gooddrag", "sdxl") == "gooddrag-sdxl"
    # A UNet with another layout than SDXL base's (the tiny one) has its own structural settings.
    assert structural_settings(tiny_sdxl.unet)["mutual_attention_start_layer"] == 11


def test_vae_upcast_only_where_fp16_overflows(tiny_sdxl_dir):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sdxl_dir, subfolder="vae")
    assert not vae_needs_upcast(vae)  # fp32
    vae.to(torch.bfloat16)
    assert not vae_needs_upcast(vae)  # bf16 has fp32's range
    vae.to(torch.float16)
    assert vae_needs_upcast(vae)
    with vae_precision(vae) as dtype:
        assert dtype == torch.float32 and vae.dtype == torch.float32
    assert vae.dtype == torch.float16
    vae.register_to_config(force_upcast=False)  # the fp16-fix VAE
    assert not vae_needs_upcast(vae)
    with vae_precision(vae) as dtype:
        assert dtype == torch.float16


# ============================================================================= the engine on SDXL


SD_REFERENCE = "tests/data/sd-tiny-reference.npz"
"""Output of an SD edit on the tiny model from the engine *before* the SDXL integration
(written with ``python -m tests.test_sdxl`` on commit 988099e): SD output is unchanged by it."""
SD_REFERENCE_MAX_LEVELS = 2
"""Largest pixel difference allowed (of 255). Across the kernel sets of tests/golden/kernels.py the
run differs from the reference by at most 1 level (mean 0.0008 avx2, 0.0020 default, 0 native
avx512), with the same final handles."""
SD_REFERENCE_MEAN_LEVELS = 0.02


def _tiny_sdxl_config(method: str):
    from tests.helpers import tiny_config

    # 128 px working side: 16x16 latent; the tiny SDXL UNet's own structural settings.
    return tiny_config(method, lora_steps=2, lora_batch_size=2, feature_block=2, mutual_attention_start_layer=11)


def _sd_reference_run(tiny_pipe):
    from tests.helpers import POINTS, make_image, make_mask, tiny_config

    res = tiny_pipe(make_image(), [POINTS[0]], [POINTS[1]], mask=make_mask(), config=tiny_config(lora_steps=2),
                    progress=False)
    import numpy as np

    return np.asarray(res.image), res.handle_points


@pytest.mark.parametrize("method", ["gooddrag", "dragdiffusion"])
def test_sdxl_edit_end_to_end(tiny_sdxl_dir, method):
    from gooddrag import DragPipeline
    from tests.helpers import POINTS, make_image, make_mask

    pipe = DragPipeline.from_pretrained(str(tiny_sdxl_dir), device="cpu")
    res = pipe(make_image(), [POINTS[0]], [POINTS[1]], mask=make_mask(), config=_tiny_sdxl_config(method),
               progress=False)
    assert res.image.size == make_image().size and max(res.working_size) == 128
    assert res.stats.drag_steps > 0


def test_added_conditioning_reaches_every_unet_call(tiny_sdxl_dir):
    from gooddrag import DragPipeline
    from tests.helpers import POINTS, make_image, make_mask

    pipe = DragPipeline.from_pretrained(str(tiny_sdxl_dir), device="cpu")
    calls = []
    forward = pipe.unet.forward

    def counting(sample, timestep, *args, added_cond_kwargs=None, **kwargs):
        calls.append((sample.shape[0], added_cond_kwargs))
        return forward(sample, timestep, *args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    pipe.unet.forward = counting
    config = _tiny_sdxl_config("gooddrag")
    res = pipe(make_image(), [POINTS[0]], [POINTS[1]], mask=make_mask(), config=config, progress=False)
    # LoRA steps + inversion + drag + denoising: every call, with rows matching the batch.
    assert len(calls) >= config.lora_steps + 2 * config.inversion_steps
    for batch, added in calls:
        assert added is not None
        assert added["text_embeds"].shape[0] == batch and added["time_ids"].shape == (batch, 6)
        h, w = res.working_size
        assert added["time_ids"][0].tolist() == [h, w, 0, 0, h, w]


def test_sd_output_unchanged_to_float_noise(tiny_pipe):
    import numpy as np

    ref = np.load(SD_REFERENCE)
    image, handles = _sd_reference_run(tiny_pipe)
    assert np.array_equal(handles, ref["handles"])
    diff = np.abs(image.astype(int) - ref["image"].astype(int))
    assert diff.max() <= SD_REFERENCE_MAX_LEVELS and diff.mean() <= SD_REFERENCE_MEAN_LEVELS, (diff.max(), diff.mean())


if __name__ == "__main__":  # pragma: no cover - writes the SD reference (see SD_REFERENCE)
    import os
    import tempfile

    import numpy as np

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # as tests/conftest.py
    from gooddrag import DragPipeline
    from gooddrag.models.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline(os.path.join(tempfile.mkdtemp(), "tiny-sd"))
    os.environ["GOODDRAG_CACHE"] = tempfile.mkdtemp()
    image, handles = _sd_reference_run(DragPipeline.from_pretrained(str(folder), device="cpu"))
    os.makedirs(os.path.dirname(SD_REFERENCE), exist_ok=True)
    np.savez(SD_REFERENCE, image=image, handles=handles)


def test_every_entry_point_picks_the_sdxl_preset_for_an_sdxl_model(tiny_sdxl_dir, tiny_pipe):
    """Library default, CLI (no --preset) and web UI (a plain SD preset chosen): the SDXL preset of
    the same method, with the user's overrides kept; SD models and explicit presets are left alone."""
    import argparse

    from gooddrag import DragPipeline, get_preset
    from gooddrag.io.options import config_for_pipeline
    from gooddrag.ui.engine import Engine

    pipe = DragPipeline.from_pretrained(str(tiny_sdxl_dir), device="cpu")
    assert pipe.default_config().resolution == get_preset("gooddrag-sdxl").resolution == 1024
    assert tiny_pipe.default_config() == get_preset("gooddrag")

    args = argparse.Namespace(preset=None, seed=7, lr=0.05, **{n: None for n in (
        "resolution", "lora_steps", "lora_rank", "lora_lr", "lora_batch_size", "num_inference_steps",
        "inversion_strength", "drag_end_step", "track_per_step", "max_drag_per_track", "max_track_no_change",
        "drag_loss_threshold", "r1", "r2", "beta", "lam", "feature_block", "mutual_attention_start_layer",
        "track_at_timestep_start", "track_on_fresh_features", "mutual_attention_while_dragging",
        "stop_distance", "image_warp", "latent_warp", "warp_field", "image_warp_fill", "warp_fill",
        "subpixel_tracking")})
    from gooddrag.io.options import config_from_args

    # before loading (edit, lora, bench run): read from the model's configs
    picked = config_from_args(argparse.Namespace(**(vars(args) | {"model": str(tiny_sdxl_dir), "method": None,
                                                                   "model_config": None})))
    assert picked == get_preset("gooddrag-sdxl", lr=0.05, seed=7)
    sd_config = get_preset("dragdiffusion", lr=0.05, seed=7)
    config = config_for_pipeline(args, sd_config, pipe)
    assert config == get_preset("dragdiffusion-sdxl", lr=0.05, seed=7)
    assert config_for_pipeline(args, sd_config, tiny_pipe) is sd_config
    assert config_for_pipeline(argparse.Namespace(**(vars(args) | {"preset": "dragdiffusion"})), sd_config,
                               pipe) is sd_config

    preset, config = Engine._fit_preset(pipe, "gooddrag", get_preset("gooddrag"), {"lora_steps": 3})
    assert preset == "gooddrag-sdxl" and config == get_preset("gooddrag-sdxl", lora_steps=3)
    assert Engine._fit_preset(tiny_pipe, "gooddrag", get_preset("gooddrag"), {})[0] == "gooddrag"
