"""``gooddrag bench estimate`` (the simulator) and the memory cuts it pointed to.

- the extrapolation from the short runs is exact on the tiny model: operators and FLOPs of every
  phase equal those of the full schedule run as it is, peaks to the byte but for the recorded LoRA
  losses (512 bytes a step) and DragDiffusion's single drag timestep (a latent or two);
- the fake model counts what the real one does: the tiny model built from its saved configs on fake
  tensors against the real tiny model, same edit; the same for the tiny SD3 (with T5) and FLUX
  transformers, and the extrapolation exact on the tiny SD3 too;
- the built-in SD3.5-medium and FLUX.1-dev configs build the published sizes (parameter counts);
- FLOPs of one convolution and one attention layer against their closed forms;
- the memory cuts keep the result: LoRA micro-batches give the batch's gradient (up to float order),
  the text encoders wait on the host between prompts, the edit is unchanged where they do nothing;
- the command runs on a diffusers folder and writes its report;
- slow: the estimate within 10% of a real SD 1.5-sized run at 256 px (CPU, random weights), peaks
  measured by torch.profiler's memory events; the targets of docs/benchmarks.md ("Memory").
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from gooddrag import DragPipeline, get_preset
from gooddrag.benchmark import estimate_sim as E
from gooddrag.benchmark.estimate_counters import Counters
from gooddrag.benchmark.estimate_models import (
    build_fake_pipeline,
    fake_mode,
    folder_configs,
    is_fake,
    parameter_count,
)
from gooddrag.cli import main
from gooddrag.methods.config import DragConfig
from gooddrag.models import lora
from gooddrag.models.backbone import structural_settings
from gooddrag.models.tiny import make_tiny_pipeline, save_tiny_pipeline
from gooddrag.models.tiny_dit import BUILDERS as DIT_BUILDERS
from gooddrag.models.tiny_dit import save_tiny_dit_pipeline

TINY = dict(r1=2, r2=4, beta=2.0, mutual_attention_start_layer=7, resolution=128)
"""The tiny model's spatial settings (research/speed.py's TINY_SPATIAL)."""
FULL = {"gooddrag": E.Schedule(5, 6, 3, 4, 3), "dragdiffusion": E.Schedule(5, 6, 1, 9, 1),
        "gooddrag-plus": E.Schedule(4, 5, 2, 3, 3)}
"""The 'full' schedules the short runs are extrapolated to (larger than every short run)."""
LOSS_BYTES = 512
"""The recorded LoRA loss of each step (a 0-dim tensor in a 512-byte block), made after the step's
first UNet call, where the growth is measured: not extrapolated."""


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="module")
def real_tiny():
    pipe = DragPipeline(make_tiny_pipeline(0), device="cpu")
    E.measure(pipe, E.RUNS[0].config(get_preset("gooddrag-plus", **TINY)))  # first-use work (kornia) done
    return pipe


@pytest.mark.parametrize("method", ["dragdiffusion", "gooddrag",
                                    pytest.param("gooddrag-plus", marks=pytest.mark.slow)])
def test_extrapolation_is_exact_on_the_tiny_model(real_tiny, method):
    base = FULL[method].config(get_preset(method, **TINY))
    sim = E.simulate(real_tiny, base, progress=False)["phases"]
    full = E.measure(real_tiny, base)
    for phase in E.PHASES:
        assert sim[phase].ops == full[phase].ops, phase
        assert sim[phase].flops == full[phase].flops, phase
    assert sim["lora"].peak_bytes == full["lora"].peak_bytes - (base.lora_steps - 2) * LOSS_BYTES
    for phase in ("other", "inversion", "decode"):
        assert sim[phase].peak_bytes == full[phase].peak_bytes, phase
    slack = 0 if base.drag_end_step > 1 else 3 * 4096  # two drag timesteps hold a latent or two more
    for phase in ("drag", "denoise"):
        assert 0 <= sim[phase].peak_bytes - full[phase].peak_bytes <= slack, phase


def test_the_fake_model_counts_what_the_real_one_does(real_tiny, tiny_folder):
    with E.quiet_diffusers():
        fake = DragPipeline(build_fake_pipeline(folder_configs(tiny_folder), torch.float32, fake_mode()), device="cpu")
    assert is_fake(next(fake.unet.parameters()))
    config = E.Schedule(2, 2, 2, 2, 1).config(get_preset("gooddrag", **TINY))
    E.measure(fake, E.RUNS[0].config(config))
    real, sim = E.measure(real_tiny, config), E.measure(fake, config)
    for phase in E.PHASES:
        assert sim[phase].flops == real[phase].flops, phase
        assert sim[phase].peak_bytes == pytest.approx(real[phase].peak_bytes, rel=2e-3), phase
    # operators: equal but where the LoRA's parameters are made (a fake one registered for each real
    # one: a few operators a parameter, once an edit) and the decoded picture is read (blank here)
    for phase in ("other", "drag", "denoise"):
        assert sim[phase].ops == pytest.approx(real[phase].ops, rel=1e-3), phase
    fresh = make_tiny_pipeline(0).unet.requires_grad_(False)
    lora_parameters = len(lora.attach_fresh_lora(fresh, config.lora_rank, torch.Generator().manual_seed(0)))
    assert 0 <= sim["lora"].ops - real["lora"].ops <= 5 * lora_parameters


# ------------------------------------------------------------------------------- SD3 / FLUX transformers
def _loaded_tiny_dit(kind: str) -> DragPipeline:
    """The real tiny transformer pipeline of ``kind`` in eval mode, as ``from_pretrained`` leaves a
    loaded one (built directly, the tiny T5 would run its dropout)."""
    sd = DIT_BUILDERS[kind](seed=0)
    for module in sd.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    return DragPipeline(sd, device="cpu")


def _dit_config(pipe: DragPipeline, schedule: E.Schedule, method: str = "gooddrag") -> DragConfig:
    """``schedule`` of the model's preset at 64 px, 8 T5 slots, LoRA batch 2, the layers placed on
    the tiny transformer."""
    base = dataclasses.replace(pipe.default_config(method), resolution=64, text_tokens=8, lora_batch_size=2,
                               **structural_settings(pipe.unet))
    return schedule.config(base)


@pytest.mark.parametrize("kind", ["sd3-t5", "flux"])
def test_the_fake_transformer_counts_what_the_real_one_does(kind, tmp_path):
    real_pipe = _loaded_tiny_dit(kind)
    with E.quiet_diffusers():
        configs = folder_configs(save_tiny_dit_pipeline(kind, tmp_path / kind))
        fake = DragPipeline(build_fake_pipeline(configs, torch.float32, fake_mode()), device="cpu")
    assert is_fake(next(fake.unet.parameters())) and fake.kind == real_pipe.kind
    config = _dit_config(real_pipe, E.RUNS[0])
    real, sim = E.measure(real_pipe, config), E.measure(fake, config)
    for phase in E.PHASES:
        assert sim[phase].flops == real[phase].flops, phase
    for phase in ("other", "inversion", "drag", "denoise", "decode"):
        assert sim[phase].peak_bytes == real[phase].peak_bytes, phase
    for phase in ("other", "inversion", "drag", "denoise"):
        assert sim[phase].ops == real[phase].ops, phase
    # the LoRA step: the CPU's mse_loss returns a 0-dim loss on the storage of its (B, c, h, w) squared
    # difference (lora.accumulate_gradient copies it), a fake one a storage of its own: a latent batch less
    latent_batch = config.lora_batch_size * 16 * 8 * 8 * 4
    assert 0 <= real["lora"].peak_bytes - sim["lora"].peak_bytes <= latent_batch
    # operators: a fake parameter registered for each of the LoRA's (a few operators each); the
    # decoded picture read (blank here)
    params = lora.attach_fresh_lora(real_pipe.unet, config.lora_rank, torch.Generator().manual_seed(0),
                                    real_pipe.denoiser.lora_targets)
    lora.remove_lora(real_pipe.unet)
    # and the stand-in host read of each step's loss (zeros)
    assert 0 <= sim["lora"].ops - real["lora"].ops <= 5 * len(params) + config.lora_steps
    assert 0 <= real["decode"].ops - sim["decode"].ops <= 4


@pytest.mark.slow  # 8 s; the extrapolation itself is checked on the tiny SD model in the default run
def test_extrapolation_is_exact_on_the_tiny_sd3():
    pipe = _loaded_tiny_dit("sd3-t5")
    base = _dit_config(pipe, E.Schedule(3, 4, 3, 3, 3))  # each count above the short runs' (kept small: seconds)
    sim = E.simulate(pipe, base, progress=False)["phases"]
    full = E.measure(pipe, base)
    for phase in E.PHASES:
        assert sim[phase].ops == full[phase].ops, phase
        assert sim[phase].flops == full[phase].flops, phase
    assert sim["lora"].peak_bytes == full["lora"].peak_bytes - (base.lora_steps - 2) * LOSS_BYTES
    for phase in ("other", "inversion", "drag", "denoise", "decode"):
        assert sim[phase].peak_bytes == full[phase].peak_bytes, phase


@pytest.mark.parametrize("model, dtype, sizes", [
    # parameters: SD3.5-medium's transformer 2.24 B (Stability's "2.5 B" counts its 384 x 384 x 1536
    # positional table, a buffer here: 0.23 B), FLUX.1's 11.9 B ("12 B"), T5-XXL's encoder 4.76 B,
    # CLIP-L 123 M (+ its 768 x 768 projection in SD3), bigG 695 M, the VAE 83.8 M
    ("sd35-medium", "fp16", {"transformer": 2.243e9, "text_encoder": 123.7e6, "text_encoder_2": 694.7e6,
                             "text_encoder_3": 4.762e9, "vae": 83.82e6}),
    ("flux1-dev", "bf16", {"transformer": 11.90e9, "text_encoder": 123.1e6, "text_encoder_2": 4.762e9,
                           "vae": 83.82e6}),
])
def test_the_builtin_transformers_have_their_published_sizes(model, dtype, sizes):
    pipe = E.fake_drag_pipeline(E.Request(model=model, dtype=dtype))
    assert pipe.kind == ("sd3" if model.startswith("sd3") else "flux") and pipe.denoiser.flow
    modules = {"transformer": pipe.unet, "vae": pipe.vae, **{n: getattr(pipe.sd, n) for n in sizes if "text" in n}}
    for name, expected in sizes.items():
        assert parameter_count(modules[name]) == pytest.approx(expected, rel=2e-3), name
    floats = {p.dtype for p in pipe.unet.parameters()} | {b.dtype for b in pipe.unet.buffers() if b.is_floating_point()}
    assert floats == {E.DTYPES[dtype]}  # SD3's positional table (made in fp32) cast, as from_pretrained casts it
    t5 = pipe.sd.text_encoder_3 if model.startswith("sd3") else pipe.sd.text_encoder_2
    wo = {m.wo.weight.dtype for m in t5.modules() if hasattr(m, "wo")}
    assert wo == ({torch.float32} if dtype == "fp16" else {torch.bfloat16})  # transformers' fp16 load keeps wo fp32


def test_the_command_knows_the_builtin_architectures():
    from gooddrag.benchmark.estimate import ARCHITECTURES
    from gooddrag.benchmark.estimate_models import BUILTIN

    assert ARCHITECTURES == BUILTIN


def test_flops_of_a_convolution_and_an_attention_layer_match_their_formulas():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    mode = fake_mode()
    with mode:
        conv = torch.nn.Conv2d(320, 640, 3, padding=1)
        x = torch.empty(2, 320, 64, 64)
        attn = Attention(640, heads=8, dim_head=80, processor=AttnProcessor2_0())
        tokens = torch.empty(2, 4096, 640)
        cross = Attention(640, cross_attention_dim=768, heads=8, dim_head=80, processor=AttnProcessor2_0())
        text = torch.empty(2, 77, 768)
    for module, args, formula in (
        (conv, (x,), 2 * 2 * 640 * 320 * 9 * 64 * 64),
        # q, k, v and out projections (no bias on q, k, v), then Q K^T and A V
        (attn, (tokens,), 4 * 2 * 2 * 4096 * 640 * 640 + 2 * 2 * 2 * 8 * 4096 * 4096 * 80),
        (cross, (tokens, text), 2 * 2 * 4096 * 640 * 640 * 2 + 2 * 2 * 2 * 77 * 768 * 640
         + 2 * 2 * 2 * 8 * 4096 * 77 * 80),
    ):
        counters = Counters()
        with counters, torch.no_grad():
            module(*args)
        assert counters.phases["other"].flops == formula


def test_lora_micro_batches_give_the_batch_gradient():
    unet = make_tiny_pipeline(0).unet.requires_grad_(False)
    params = lora.attach_fresh_lora(unet, 4, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    noisy, target = torch.randn(4, 4, 16, 16, generator=g), torch.randn(4, 4, 16, 16, generator=g)
    t, cond = torch.tensor([10, 300, 600, 900]), torch.randn(1, 77, 32, generator=g).expand(4, -1, -1)
    autocast = torch.autocast("cpu", enabled=False)
    grads, losses = {}, {}
    for micro in (None, 1, 2, 3):
        for p in params:
            p.grad = None
        losses[micro] = lora.accumulate_gradient(lora.unet_call(unet), noisy, t, cond, None, target, autocast, micro)
        grads[micro] = [p.grad.clone() for p in params]
    for micro in (1, 2, 3):
        assert losses[micro].item() == pytest.approx(losses[None].item(), rel=1e-6)
        for a, b in zip(grads[micro], grads[None]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_a_lora_trained_in_micro_batches_is_the_batch_lora(tmp_path):
    from tests.helpers import make_image

    config = get_preset("gooddrag", lora_steps=6, lora_batch_size=4, resolution=128)
    weights = {}
    for micro in (None, 1):
        pipe = DragPipeline(make_tiny_pipeline(0), device="cpu")
        pipe.lora_micro_batch = micro
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pipe.prepare_lora(make_image(), "", config, cache_dir=tmp_path / str(micro), progress=False)
        weights[micro] = {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora" in n}
    assert weights[None].keys() == weights[1].keys() and weights[None]
    for name, w in weights[None].items():
        torch.testing.assert_close(weights[1][name], w, rtol=1e-4, atol=1e-6)


def test_micro_batch_default_keeps_sd15_whole_and_splits_sdxl():
    from gooddrag.methods.pipeline import lora_micro_batch

    assert lora_micro_batch(512 * 512) == 4  # SD 1.5's batch of 4 in one pass, as before
    assert lora_micro_batch(1024 * 1024) == 1 and lora_micro_batch(768 * 768) == 1  # SDXL
    assert lora_micro_batch(128 * 128) >= 4  # the tiny model's edits (the goldens) are unchanged


def test_text_encoders_wait_on_the_host_between_prompts(tiny_folder):
    pipe = E.fake_drag_pipeline(E.Request(model=str(tiny_folder), dtype="fp32"))
    assert next(pipe.text_encoder.parameters()).device.type == "meta"  # the estimator's host
    seen = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda m, a: seen.append(next(m.parameters()).device.type))
    try:
        cond = pipe.encode_prompt("a prompt", (128, 128))
    finally:
        hook.remove()
    assert seen == ["cpu"] and cond.encoder_hidden_states.device.type == "cpu"
    assert next(pipe.text_encoder.parameters()).device.type == "meta"


def test_turning_offloading_off_after_loading_brings_the_text_encoders_to_the_device(tiny_folder):
    pipe = E.fake_drag_pipeline(E.Request(model=str(tiny_folder), dtype="fp32"))
    assert next(pipe.text_encoder.parameters()).device.type == "meta"  # offloaded at load
    pipe.offload_text_encoders = False
    pipe.encode_prompt("a prompt", (128, 128))
    assert next(pipe.text_encoder.parameters()).device.type == "cpu"  # on the device, and kept there


def test_offloading_the_text_encoders_does_not_change_the_conditioning():
    pipe = DragPipeline(make_tiny_pipeline(0), device="cpu")
    a = pipe.encode_prompt("a photo of a cat").encoder_hidden_states
    pipe.offload_text_encoders = False
    b = pipe.encode_prompt("a photo of a cat").encoder_hidden_states
    assert torch.equal(a, b)


def test_estimate_command_writes_its_report(tiny_folder, tmp_path, capsys):
    out = tmp_path / "estimate.json"
    code = main(["bench", "estimate", "--model", str(tiny_folder), "--resolution", "128", "--dtype", "fp32",
                 "--jobs", "1", "--json", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["simulated"] is True and report["backbone"] == "sd"
    assert set(report["phases"]) == set(E.PHASES)
    assert report["peak_bytes"] == max(p["peak_bytes"] for p in report["phases"].values())
    assert report["flops"] == sum(p["flops"] for p in report["phases"].values()) > 0
    assert report["schedule"] == {"L": 70, "I": 38, "T": 7, "R": 10, "S": 3, "unet_calls": 70 + 38 + 7 + 210 + 38}
    assert "simulated:" in capsys.readouterr().out


def test_the_short_runs_are_spread_over_the_processes():
    for jobs in (1, 2, 3, 4, 8):
        for passes in (1, 4):
            parts = E.split_runs(jobs, passes)
            assert sorted(i for part in parts for i in part) == list(range(len(E.RUNS)))
            assert len(parts) == min(jobs, len(E.RUNS)) and all(parts)
    assert [1] in E.split_runs(2, lora_passes=4)  # SDXL's: the run with the most LoRA passes alone


def test_the_command_offers_the_methods_the_simulator_runs():
    from gooddrag.benchmark.estimate import METHODS

    assert METHODS == E.METHODS


def test_the_estimator_refuses_freedrag(tiny_folder):
    from gooddrag.errors import GoodDragError

    with pytest.raises(GoodDragError, match="freedrag"):
        E.request_config(E.Request(model=str(tiny_folder), method="freedrag"), "sd")


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_estimate_within_10_percent_of_a_real_sd15_run_at_256_px():
    from research.estimate_validation import validate_sd15

    result = validate_sd15(resolution=256)
    for phase, row in result["phases"].items():
        assert row["estimate"]["flops"] == row["measured"]["flops"], phase
        assert row["estimate"]["ops"] == pytest.approx(row["measured"]["ops"], rel=0.1), phase
    assert result["peak"]["estimate"] == pytest.approx(result["peak"]["profiler"], rel=0.10)
    assert result["peak"]["estimate"] == pytest.approx(result["peak"]["live_storages"], rel=0.10)


@pytest.mark.slow
@pytest.mark.parametrize("model, resolution, low_memory, limit_gb", [
    ("sd15", 512, False, 6.0), ("sd15", 512, True, 4.0), ("sdxl", 1024, False, 16.0), ("sdxl", 1024, True, 10.0)])
def test_memory_targets(model, resolution, low_memory, limit_gb):
    report = E.estimate(E.Request(model=model, resolution=resolution, low_memory=low_memory), progress=False, jobs=2)
    assert report["peak_bytes"] <= limit_gb * 1e9
    assert np.isfinite(report["h100_bf16_floor_seconds"])


@pytest.mark.parametrize("flag", ["--jobs", "--lora-micro-batch", "--lora-batch-size"])
def test_the_command_refuses_counts_below_one_before_any_work(flag, capsys):
    assert main(["bench", "estimate", flag, "0", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert f"{flag} must be at least 1" in err and "Traceback" not in err


def test_the_report_names_the_size_the_edit_works_at(tiny_folder):
    from gooddrag.benchmark.estimate import summary_lines

    pipe = E.fake_drag_pipeline(E.Request(model=str(tiny_folder), dtype="fp32"))
    config = get_preset("gooddrag", resolution=100)
    assert E.working_side(pipe, config) % pipe.size_multiple == 0 and E.working_side(pipe, config) != 100
    report = {"model": "m", "backbone": "sd", "method": "gooddrag", "resolution": 100, "working_size": 96,
              "dtype": "fp32", "low_memory": False, "lora_batch_size": 4, "lora_micro_batch": 4, "phases": {},
              "peak_bytes": 0, "flops": 0, "ops": 0, "peak_phase": "lora", "h100_bf16_floor_seconds": 0.0,
              "wall_seconds": 1.0}
    assert "100 px (works at 96x96)" in summary_lines(report)[0]
