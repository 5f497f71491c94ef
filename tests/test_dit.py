"""SD3/SD3.5 and FLUX.1 backbones, offline (issue P5): tiny pipelines built from small configs, saved
with ``save_pretrained`` and loaded through our loader; the flow step and schedules against diffusers'
own scheduler and pipelines; the joint-attention processors and token features on the real
transformer classes; every method that supports the transformers end to end, and the ones that do
not refused before any work."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from PIL import Image

from gooddrag import GoodDragError
from gooddrag.core.ddim import ddim_step, make_flow_schedule
from gooddrag.errors import InputsCannotWorkError
from gooddrag.methods import presets
from gooddrag.methods.pipeline import DragPipeline
from gooddrag.models import backbone, dit, lora
from gooddrag.models.backbone import FLUX, SD3, structural_settings
from gooddrag.models.tiny_dit import (
    FLUX_SCHEDULER_CONFIG,
    SD3_SCHEDULER_CONFIG,
    make_tiny_flux_pipeline,
    make_tiny_sd3_pipeline,
    save_tiny_dit_pipeline,
)

KINDS = ("sd3", "sd3-t5", "flux")


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    return {kind: save_tiny_dit_pipeline(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def loaded(tiny_folders):
    return {kind: DragPipeline.from_pretrained(str(folder), device="cpu") for kind, folder in tiny_folders.items()}


def _picture() -> Image.Image:
    yy, xx = np.mgrid[0:64, 0:64]
    picture = np.full((64, 64, 3), 235, np.uint8)
    picture[(xx - 24) ** 2 + (yy - 32) ** 2 < 8**2] = (200, 40, 40)
    return Image.fromarray(picture)


def _tiny_config(pipe: DragPipeline, method: str, **extra):
    """The model's preset at 64 px with few steps, the layers placed on the tiny transformer."""
    config = pipe.default_config(method)
    settings = dict(resolution=64, lora_steps=2, num_inference_steps=10, text_tokens=8,
                    drag_end_step=1 if method == "dragdiffusion" else 2, **structural_settings(pipe.unet))
    return dataclasses.replace(config, **(settings | extra))


# ------------------------------------------------------------------ the flow step and the schedules
def test_flow_step_is_the_schedulers_euler_step_and_its_own_inverse():
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG)
    scheduler.set_timesteps(10)
    x, v = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0)).unbind(0)
    s_from, s_to = scheduler.sigmas[3], scheduler.sigmas[4]
    expected = scheduler.step(v[None], scheduler.timesteps[3], x[None]).prev_sample[0]
    ours = ddim_step(x, v, 1 - s_from, 1 - s_to, "flow")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ddim_step(ours, v, 1 - s_to, 1 - s_from, "flow"), x, rtol=0, atol=1e-6)
    # to the clean level (signal 1): the predicted x0 = x - sigma v, by hand
    torch.testing.assert_close(ddim_step(x, v, 1 - s_from, torch.tensor(1.0), "flow"), x - s_from * v)


def test_sd3_schedule_is_the_pipelines_last_steps():
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG)
    schedule = make_flow_schedule(scheduler, 50, 38)
    reference = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG)
    reference.set_timesteps(50)
    torch.testing.assert_close(schedule.timesteps, reference.timesteps[12:].float())
    torch.testing.assert_close(schedule.alphas, 1 - reference.sigmas[12:50])
    assert float(schedule.alphas_prev[-1]) == 1.0  # the last step lands on the clean latent
    assert float(1 - schedule.alphas[0]) == pytest.approx(0.9028, abs=1e-4)  # docs/dit-plan.md 2.3


def test_flux_schedule_follows_flux_pipeline_with_the_dynamic_shift():
    """What FluxPipeline sets for a 1024 px picture (128x128 latent): sigmas linspace(1, 1/N, N), mu for
    64x64 packed tokens; ours through the FLUX adapter's recipe."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    from gooddrag.models.denoiser import FluxDenoiser

    pipe = make_tiny_flux_pipeline()
    recipe = FluxDenoiser(pipe.transformer, {}).flow_schedule_recipe(FLUX_SCHEDULER_CONFIG, 50, (128, 128))
    assert recipe["mu"] == pytest.approx(calculate_shift(4096, 256, 4096, 0.5, 1.15)) == pytest.approx(1.15)
    schedule = make_flow_schedule(FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG), 50, 38, **recipe)
    reference = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)
    timesteps, _ = retrieve_timesteps(reference, 50, "cpu", sigmas=np.linspace(1.0, 1 / 50, 50), mu=recipe["mu"])
    torch.testing.assert_close(schedule.timesteps, timesteps[12:].float())
    assert float(1 - schedule.alphas[0]) == pytest.approx(0.909, abs=1e-3)  # docs/dit-plan.md 2.3


def test_flow_lora_objective_by_hand():
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER_CONFIG)
    x0, noise = torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1) + 3
    index = torch.tensor([0, 999])
    noisy, target, t = lora.noisy_and_target(scheduler, x0, noise, index)
    sigma = scheduler.sigmas[index]  # the training table: 1 at index 0, the smallest at 999
    torch.testing.assert_close(noisy.flatten(), (1 - sigma) * 1 + sigma * 3)
    torch.testing.assert_close(target, noise - x0)
    torch.testing.assert_close(t, sigma * 1000)
    assert lora.is_flow(scheduler) and not lora.is_flow(object())


# ------------------------------------------------------------------ the adapters on the real classes
def test_flux_packing_matches_flux_pipeline():
    """The FLUX adapter's call equals the transformer called on FluxPipeline's own packed latents and ids."""
    pipe = make_tiny_flux_pipeline()
    from gooddrag.models.denoiser import FluxDenoiser

    latents = torch.randn(1, 16, 8, 6, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 5, 96, generator=torch.Generator().manual_seed(2))
    pooled = torch.randn(1, 32, generator=torch.Generator().manual_seed(3))
    t, guidance = torch.tensor(700.0), torch.tensor([3.5])
    ours = FluxDenoiser(pipe.transformer, {}).call(latents, t, text, {"pooled_projections": pooled, "guidance": guidance})
    packed = FluxPipeline._pack_latents(latents, 1, 16, 8, 6)
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32)
    with torch.no_grad():
        out = pipe.transformer(hidden_states=packed, timestep=t.expand(1) / 1000, guidance=guidance,
                               pooled_projections=pooled, encoder_hidden_states=text, txt_ids=torch.zeros(5, 3),
                               img_ids=ids).sample
    expected = FluxPipeline._unpack_latents(out, 8 * 8, 6 * 8, 8)  # (h, w) in pixels, VAE factor 8
    torch.testing.assert_close(ours.detach(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_mutual_attention_leaves_source_and_equal_halves_unchanged(loaded, kind):
    """With [source, edited] equal, mutual attention is plain attention; with them different, the
    source half is untouched and the edited half changes (it reads the source's image keys/values)."""
    pipe = loaded["sd3" if kind == "sd3" else "flux"]
    cond = pipe.encode_prompt("", (32, 32), _tiny_config(pipe, "gooddrag"))
    gen = torch.Generator().manual_seed(0)
    source, edited = torch.randn(2, 1, 16, 4, 4, generator=gen)
    t = torch.tensor(500.0)
    start = structural_settings(pipe.unet)["mutual_attention_start_layer"]
    with torch.no_grad():
        plain = pipe.model_output(torch.cat([source, edited]), t, cond)
        same_plain = pipe.model_output(torch.cat([source, source]), t, cond)
        with pipe.mutual_attention(0):
            same = pipe.model_output(torch.cat([source, source]), t, cond)
        with pipe.mutual_attention(start):
            mutual = pipe.model_output(torch.cat([source, edited]), t, cond)
        after = pipe.model_output(torch.cat([source, edited]), t, cond)
    torch.testing.assert_close(same, same_plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(mutual[0], plain[0], rtol=0, atol=1e-5)
    assert (mutual[1] - plain[1]).abs().max() > 1e-4
    torch.testing.assert_close(after, plain, rtol=0, atol=0)  # the processors came back


def test_token_features_are_the_blocks_image_tokens(loaded):
    pipe = loaded["sd3"]
    cond = pipe.encode_prompt("", (32, 32), _tiny_config(pipe, "gooddrag"))
    latents = torch.randn(1, 16, 8, 4, generator=torch.Generator().manual_seed(0))
    seen = {}
    block = pipe.unet.transformer_blocks[1]
    handle = block.register_forward_hook(lambda m, a, out: seen.update(image=out[1]))
    try:
        with torch.no_grad(), pipe.feature_hook(1) as hook:
            pipe.model_output(latents, torch.tensor(400.0), cond)
    finally:
        handle.remove()
    assert hook.output.shape == (1, 32, 4, 2)  # (B, C, h/2, w/2): 4x2 patches of 2x2 cells
    torch.testing.assert_close(hook.output[0, :, 1, 0], seen["image"][0, 2])  # row 1, col 0 = token 1 x 2 + 0
    assert hook.features((8, 4)).shape == (1, 32, 8, 4)
    with pytest.raises(GoodDragError, match="out of range"):
        dit.TokenFeatureHook(pipe.unet.transformer_blocks, 3, lambda: (1, 1))


def test_latents_carry_the_vae_shift(loaded):
    pipe = loaded["sd3"]
    assert pipe.latent_shift == pytest.approx(0.0609)
    image = _picture()
    with torch.no_grad():
        mean = pipe.vae.encode(pipe.image_tensor(image)).latent_dist.mean
    torch.testing.assert_close(pipe.encode_image(image), (mean - 0.0609) * 1.5305)


# ------------------------------------------------------------------ detection, presets, refusals
def test_kinds_presets_and_layers_read_from_the_configs(loaded):
    assert loaded["sd3"].kind == loaded["sd3-t5"].kind == SD3 and loaded["flux"].kind == FLUX
    assert loaded["sd3"].sd.text_encoder_3 is None and loaded["sd3-t5"].sd.text_encoder_3 is not None
    for kind, family in (("sd3", "sd3"), ("flux", "flux")):
        pipe = loaded[kind]
        assert presets.family_for(pipe.source.location, pipe.kind) == family
        assert pipe.default_config("gooddrag") == presets.PRESETS[f"gooddrag-{family}"]
        assert pipe.prediction_type == "flow" and pipe.size_multiple == 16  # VAE 8 x patch 2
    # the tiny SD3 has 3 joint blocks and 4 attention layers (block 0's attn2): the rule's places
    assert structural_settings(loaded["sd3"].unet) == {"feature_block": 1, "mutual_attention_start_layer": 2}
    assert structural_settings(loaded["flux"].unet) == {"feature_block": 0, "mutual_attention_start_layer": 2}


def test_presets_that_do_not_fit_the_transformer_and_unsupported_methods_are_refused(loaded, monkeypatch):
    pipe = loaded["sd3"]
    calls = []
    monkeypatch.setattr(pipe, "prepare_lora", lambda *a, **k: calls.append("lora"))
    too_deep = dataclasses.replace(pipe.default_config("gooddrag"), resolution=64)  # SD3.5-medium's block 12
    with pytest.raises(GoodDragError, match="feature_block 12 is not a joint block"):
        pipe(_picture(), [[20, 30]], [[28, 30]], config=too_deep, progress=False)
    freedrag = dataclasses.replace(presets.PRESETS["freedrag"], resolution=64)
    with pytest.raises(InputsCannotWorkError, match="method freedrag runs on sd, sdxl models, not on this sd3"):
        pipe(_picture(), [[20, 30]], [[28, 30]], config=freedrag, progress=False)
    too_big = _tiny_config(pipe, "gooddrag", resolution=1024)  # 128 latent cells; pos_embed_max_size 32 patches
    with pytest.raises(GoodDragError, match="at most 64 latent cells a side"):
        pipe(_picture(), [[20, 30]], [[28, 30]], config=too_big, progress=False)
    assert calls == []  # refused before any work


# ------------------------------------------------------------------ end to end
@pytest.mark.parametrize("kind, method", [(kind, method) for kind in ("sd3", "flux")
                                           for method in ("gooddrag", "dragdiffusion", "gooddrag-plus")]
                         + [("sd3-t5", "gooddrag")])  # T5 changes the conditioning only: one method
def test_every_supported_method_edits_on_every_transformer(loaded, tmp_path, kind, method):
    pipe = loaded[kind]
    mask = np.zeros((64, 64), bool)
    mask[16:48, 8:48] = True
    config = _tiny_config(pipe, method)
    result = pipe(_picture(), [[20, 30]], [[28, 30]], mask=mask, config=config, progress=False,
                  lora_cache_dir=tmp_path)
    assert result.image.size == (64, 64) and result.lora["source"] == "trained"
    assert result.latents.shape == (1, 16, 8, 8)
    assert result.stats.drag_steps > 0 or method == "gooddrag-plus"  # its warp may bring the handle there at once
    assert np.isfinite(np.asarray(result.image, float)).all()
    assert result.lora["path"] and "add_q_proj" in str(lora.lora_settings(config, "", pipe.denoiser.lora_targets))
    again = pipe(_picture(), [[20, 30]], [[28, 30]], mask=mask, config=config, progress=False, lora_cache_dir=tmp_path)
    assert again.lora["source"] == "cache"
    torch.testing.assert_close(again.latents, result.latents, rtol=0, atol=1e-5)


def test_the_drag_step_moves_the_latent_on_a_transformer(loaded):
    """An optimiser step of 1e-9 (lr 0 is refused) leaves the latent where a drag-free run would; the
    preset's lr moves it: the drag acts on the latent through the transformer's features."""
    pipe = loaded["sd3"]
    base = _tiny_config(pipe, "gooddrag", lora_steps=0)
    moved = pipe(_picture(), [[20, 30]], [[28, 30]], config=base, progress=False).latents
    still = pipe(_picture(), [[20, 30]], [[28, 30]], config=dataclasses.replace(base, lr=1e-9), progress=False).latents
    assert (moved - still).abs().max() > 1e-3


def test_flux_guidance_reaches_the_transformer(loaded):
    pipe = loaded["flux"]
    cond = pipe.encode_prompt("", (32, 32), _tiny_config(pipe, "gooddrag", distilled_guidance=1.0))
    assert cond.added_cond_kwargs["guidance"].tolist() == [1.0]
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = pipe.model_output(latents, torch.tensor(500.0), cond)
        cond.added_cond_kwargs["guidance"] = torch.tensor([3.5])
        b = pipe.model_output(latents, torch.tensor(500.0), cond)
    assert (a - b).abs().max() > 0


def test_conditioning_shapes_by_hand(loaded):
    """SD3 without T5: 2 x 8 CLIP tokens + 8 zero T5 slots, 96 wide (T5's width); FLUX: T5's 8 tokens."""
    sd3 = backbone.encode_conditioning(loaded["sd3"].sd, "a b", (64, 64), "cpu", text_tokens=8)
    assert sd3.encoder_hidden_states.shape == (1, 77 + 8, 96)  # the CLIPs' 77 tokens, then T5's 8
    assert float(sd3.encoder_hidden_states[0, 77:].abs().max()) == 0.0
    assert sd3.added_cond_kwargs["pooled_projections"].shape == (1, 64)
    flux = backbone.encode_conditioning(loaded["flux"].sd, "a b", (64, 64), "cpu", text_tokens=8)
    assert flux.encoder_hidden_states.shape == (1, 8, 96) and flux.added_cond_kwargs["guidance"].shape == (1,)


def test_sd3_single_file_checkpoint_loads_the_same_transformer(tiny_folders, tmp_path):
    """An SD3 single file (Stability's names, transformer and VAE) with --model-config: detected as SD3
    from its tensor names, and the same model output as the folder it was written from."""
    from .sd3_single_file_checkpoint import save_sd3_single_file_checkpoint

    path = save_sd3_single_file_checkpoint(tiny_folders["sd3"], tmp_path / "tiny-sd3.safetensors")
    assert backbone.backbone_kind_of_checkpoint(backbone.checkpoint_keys(path)) == SD3
    single = DragPipeline.from_pretrained(str(path), model_config=str(tiny_folders["sd3"]), device="cpu")
    folder = DragPipeline.from_pretrained(str(tiny_folders["sd3"]), device="cpu")
    assert single.kind == SD3
    cond = folder.encode_prompt("", (32, 32), _tiny_config(folder, "gooddrag"))
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(single.model_output(latents, torch.tensor(300.0), cond),
                                   folder.model_output(latents, torch.tensor(300.0), cond), rtol=0, atol=1e-6)
        torch.testing.assert_close(single.encode_image(_picture()), folder.encode_image(_picture()), rtol=0, atol=1e-5)
    with pytest.raises(GoodDragError, match="pass --model-config with a local diffusers folder"):
        DragPipeline.from_pretrained(str(path), device="cpu")  # offline: no configs to read


@pytest.mark.parametrize("kind", ["sd3", "flux"])
@pytest.mark.parametrize("method", ["gooddrag", "gooddrag-plus"])
def test_cli_edit_on_a_transformer_folder(tiny_folders, tmp_path, kind, method):
    """`gooddrag edit --model <SD3 or FLUX folder>`: the model's own preset (read from its configs), the
    layers placed for the tiny transformer on the command line, a result folder whose record says so."""
    import json

    from gooddrag.cli import main

    _picture().save(tmp_path / "in.png")
    layers = structural_settings(DragPipeline.from_pretrained(str(tiny_folders[kind]), device="cpu").unet)
    out = tmp_path / "out"
    rc = main(["edit", "--model", str(tiny_folders[kind]), "--device", "cpu", "--no-progress", "--image",
               str(tmp_path / "in.png"), "--points", "20,30>28,30", "--method", method, "--out", str(out),
               "--resolution", "64", "--lora-steps", "2", "--num-inference-steps", "10", "--drag-end-step", "2",
               "--feature-block", str(layers["feature_block"]), "--lora-cache-dir", str(tmp_path / "lora"),
               "--mutual-attention-start-layer", str(layers["mutual_attention_start_layer"]),
               "--set", "text_tokens=8"])
    assert rc == 0
    record = json.loads((out / "run.json").read_text())
    expected = presets.PRESETS[f"{method}-{kind}"]
    assert record["config"]["inversion_strength"] == expected.inversion_strength
    assert record["config"]["text_tokens"] == 8 and (out / "edited.png").is_file()


def test_transformer_kinds_from_configs_and_the_variants_refused():
    sd3 = {"_class_name": "SD3Transformer2DModel"}
    flux = {"_class_name": "FluxTransformer2DModel", "in_channels": 64}
    assert backbone.backbone_kind_of_config({"_class_name": "StableDiffusion3Pipeline"}, None, sd3) == SD3
    assert backbone.backbone_kind_of_config({"_class_name": "FluxPipeline"}, None, flux) == FLUX
    assert backbone.backbone_kind_of_config({"_class_name": "FluxPipeline"}, None) == FLUX  # the class alone
    with pytest.raises(GoodDragError, match="unsupported FLUX variant: its transformer takes 384 input"):
        backbone.backbone_kind_of_config({"_class_name": "FluxPipeline"}, None, flux | {"in_channels": 384})
    with pytest.raises(GoodDragError, match="unsupported pipeline class 'FluxKontextPipeline'"):
        backbone.backbone_kind_of_config({"_class_name": "FluxKontextPipeline"}, None, flux)
    with pytest.raises(GoodDragError, match="unsupported transformer 'PixArtTransformer2DModel'"):
        backbone.backbone_kind_of_config({}, None, {"_class_name": "PixArtTransformer2DModel"})
    keys = ["model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias"]
    assert backbone.backbone_kind_of_checkpoint(keys) == SD3
    assert backbone.backbone_kind_of_checkpoint(["double_blocks.0.img_attn.norm.key_norm.scale"]) == FLUX
    assert backbone.components_missing_from_checkpoint(FLUX, ["double_blocks.0.x"]) == [
        "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"]
