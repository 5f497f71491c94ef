"""DragNoise (gooddrag.methods.dragnoise): its pure parts and the bottleneck override worked by hand,
its config and presets, and end-to-end runs on the tiny model (counted events, the propagation of the
optimised bottleneck, the background term without a mask). Parity with the authors' code:
research/parity_dragnoise.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from gooddrag import GoodDragError
from gooddrag.core.motion import background_loss
from gooddrag.methods import dragnoise, presets
from gooddrag.methods.base import PreparedInputs
from gooddrag.methods.config import PRESETS, DragConfig, DragNoiseConfig, get_preset
from gooddrag.methods.registry import METHODS
from gooddrag.models.features import BlockOverride, FeatureHook

from .helpers import POINTS, make_image, make_mask


# --------------------------------------------------------------------------------- hand-worked
def test_substituted_steps_are_their_i_below_50_minus_end_step():
    # theirs: step i of the full 50-step schedule, the last 35 denoised (i = 15 .. 49), the optimised
    # bottleneck while i < 50 - end_step (drag_pipeline.py:457-468); ours: k = i - 15 of 35
    for end_step in (0, 1, 10, 35):
        theirs = [i < 50 - end_step for i in range(15, 50)]
        assert [dragnoise.substituted(k, 35, end_step) for k in range(35)] == theirs
    assert [dragnoise.substituted(k, 7, 3) for k in range(7)] == [True] * 4 + [False] * 3


def inputs_with(mask: torch.Tensor, given: bool) -> PreparedInputs:
    fields = {f.name: None for f in dataclasses.fields(PreparedInputs)}
    return PreparedInputs(**(fields | {"mask": mask, "mask_given": given}))


def test_background_mask_and_term_by_hand():
    mask = torch.zeros(1, 1, 2, 2)
    mask[..., 0, :] = 1  # the top row may change
    ones = torch.ones(1, 1, 2, 2)
    cfg = get_preset("dragnoise")
    # a given mask is read as it is, whatever background_without_mask says
    for keep in (True, False):
        assert torch.equal(dragnoise.background_mask(inputs_with(mask, True), dataclasses.replace(
            cfg, background_without_mask=keep)), mask)
    # no mask (the pipeline's all-ones): theirs holds the whole image, ours-by-choice nothing
    x, orig = torch.full((1, 4, 2, 2), 3.0), torch.ones(1, 4, 2, 2)
    held = dragnoise.background_mask(inputs_with(ones, False), cfg)
    assert background_loss(x, orig, held).item() == 2.0 * 16  # |3 - 1| summed over all 16 cells
    free = dragnoise.background_mask(inputs_with(ones, False), dataclasses.replace(cfg, background_without_mask=False))
    assert background_loss(x, orig, free).item() == 0.0
    assert background_loss(x, orig, mask).item() == 2.0 * 8  # the bottom row: a SUM, not a mean


def test_reached_by_hand():
    handles = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    assert dragnoise.reached(handles, torch.tensor([[0.0, 1.9], [5.0, 6.0]]), 2.0).tolist() == [True]
    assert dragnoise.reached(handles, torch.tensor([[0.0, 2.0], [5.0, 6.0]]), 2.0).tolist() == [False]  # 2 is not within


def toy_unet():
    """[mid_block, *up_blocks] of 1x1 convolutions: mid (2 -> 2 channels), up (2 -> 1), weights by hand."""
    mid, up = torch.nn.Conv2d(2, 2, 1, bias=False), torch.nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        mid.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        up.weight.copy_(torch.tensor([2.0, -3.0]).view(1, 2, 1, 1))
    unet = types.SimpleNamespace(mid_block=mid, up_blocks=[up])
    return unet, lambda x: up(mid(x))


def test_block_override_replaces_the_output_and_passes_gradients():
    unet, net = toy_unet()
    x = torch.ones(1, 2, 1, 1)
    assert net(x).item() == -1.0  # 2 x 1 - 3 x 1
    value = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1).requires_grad_(True)
    with FeatureHook(unet, 0) as before, BlockOverride(unet, 0, value), FeatureHook(unet, 0) as after:
        out = net(x)
        assert out.item() == 2.0 - 6.0  # the up block saw the value
        assert torch.equal(before.output, x) and after.output is value  # hooks before / after the override
        out.backward()
    assert value.grad.view(-1).tolist() == [2.0, -3.0]  # d out / d value: the up block's weights
    assert net(x).item() == -1.0  # removed on exit
    with BlockOverride(unet, 0, value.detach().half()):
        assert net(x).dtype == torch.float32  # cast to the output's dtype
    with pytest.raises(GoodDragError, match="shape"), BlockOverride(unet, 0, torch.zeros(1, 3, 1, 1)):
        net(x)
    with pytest.raises(GoodDragError, match="out of range"):
        BlockOverride(unet, 2, value)


# -------------------------------------------------------------------------------- config
def test_config_round_trips_through_json_as_its_own_class():
    cfg = get_preset("shapes-dragnoise", propagation_end_step=3, background_without_mask=False, seed=7)
    back = DragConfig.from_dict(json.loads(cfg.to_json()))
    assert type(back) is DragNoiseConfig and back == cfg
    assert DragNoiseConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GoodDragError, match="takes a DragConfig, not a DragNoiseConfig"):
        DragNoiseConfig.from_dict(PRESETS["gooddrag"].to_dict())
    with pytest.raises(GoodDragError, match="unknown setting"):
        DragConfig.from_dict(PRESETS["gooddrag"].to_dict() | {"propagation_end_step": 0})


@pytest.mark.parametrize("bad, match", [
    ({"propagation_end_step": 36}, "propagation_end_step"), ({"propagation_end_step": -1}, "propagation_end_step"),
    ({"drag_end_step": 2}, "drag_end_step"), ({"feature_block": 0}, "feature_block"),
    ({"image_warp": True}, "image_warp"), ({"subpixel_tracking": True}, "subpixel_tracking"),
    ({"max_drag_per_track": 1}, "not a DragNoise setting"), ({"mutual_attention_start_layer": 3}, "not a DragNoise"),
])
def test_invalid_settings_are_refused(bad, match):
    with pytest.raises(GoodDragError, match=match):
        get_preset("dragnoise", **bad)


def test_presets_are_the_benchmark_values_and_their_translations():
    bench = PRESETS["dragnoise"]
    assert bench == DragNoiseConfig() and METHODS["dragnoise"].faithful and METHODS["dragnoise"].backbones == ("sd", "sdxl")
    # run_drag_diffusion.py:257-261, :100-101; run_lora_training.py:84-87 (batch: lora_utils.py:119)
    assert (bench.track_per_step, bench.lr, bench.lam, bench.propagation_end_step, bench.inversion_steps) == (
        80, 0.02, 0.2, 0, 35)
    assert (bench.r1, bench.r2, bench.beta, bench.stop_distance, bench.information_preserving) == (1, 3, 1.0, 2.0, False)
    assert (bench.lora_steps, bench.lora_lr, bench.lora_batch_size, bench.lora_rank) == (200, 2e-4, 1, 16)
    assert bench.background_without_mask
    for family, changed in [("shapes", {"resolution", "sup_res_scale", "feature_block", "stop_distance"}),
                            ("sdxl", {"resolution", "feature_block"}), ("sdxl-768", {"resolution", "feature_block"})]:
        other = PRESETS[presets.preset_name("dragnoise", family)]
        assert {f.name for f in dataclasses.fields(bench) if getattr(bench, f.name) != getattr(other, f.name)} == changed
    assert presets.label("shapes-dragnoise").startswith("DragNoise, ")


# ---------------------------------------------------------------------------- end to end
def dn_config(**overrides) -> DragNoiseConfig:
    """DragNoise on the tiny model: 128 px, no LoRA, 10 DDIM steps (7 inverted), 4 optimiser steps."""
    return get_preset("dragnoise", **({"resolution": 128, "lora_steps": 0, "num_inference_steps": 10,
                                       "track_per_step": 4} | overrides))


def trace(pipe, monkeypatch, config, mask=True, values=None, **kw):
    """Run an edit; events in order: ``F`` a forward pass with gradient, ``N`` one without (``+``: with
    the optimised bottleneck in place), ``S`` an optimiser step, ``T`` a tracking (its StepEvent).
    ``values``: a list that gets a copy of the bottleneck at each entry of the override."""
    events, drags, on = [], [], [False]
    override = pipe.block_output_override

    @contextlib.contextmanager
    def watched(block, value):
        assert block == dragnoise.BOTTLENECK
        if values is not None:
            values.append(value.detach().clone())
        with override(block, value):
            on[0] = True
            try:
                yield
            finally:
                on[0] = False

    def on_forward(module, args, kwargs):
        events.append(("F" if torch.is_grad_enabled() else "N") + ("+" if on[0] else ""))

    def on_event(e):
        if e.phase == "drag":
            events.append("T")
            drags.append(e)

    monkeypatch.setattr(pipe, "block_output_override", watched)
    h1 = pipe.unet.register_forward_pre_hook(on_forward, with_kwargs=True)
    h2 = register_optimizer_step_post_hook(lambda *a: events.append("S"))
    try:
        res = pipe(make_image(), [POINTS[0]], [POINTS[1]], make_mask() if mask else None, config=config,
                   progress=False, callback=on_event, **kw)
    finally:
        h1.remove()
        h2.remove()
    return events, drags, res


def test_a_drag_on_the_tiny_model_counted(tiny_pipe, monkeypatch):
    # their loop: per step a pass with the bottleneck replaced, a tracking from the second step on,
    # one Adam step; then every denoising step with it but the last propagation_end_step (3)
    cfg = dn_config(propagation_end_step=3)
    values = []
    events, drags, res = trace(tiny_pipe, monkeypatch, cfg, values=values, return_trajectory=True)
    n = cfg.inversion_steps
    assert events == ["N"] * n + ["N"] + ["F+", "S"] + ["F+", "T", "S"] * 3 + ["N+"] * 4 + ["N"] * 3
    s = res.stats
    assert (s.drag_steps, s.drag_rounds, s.tracking_steps, s.drag_timesteps, s.stop_reason) == (4, 4, 3, 1, "budget")
    assert [(e.step, e.total, e.tracking, e.timestep) for e in drags] == [(i, 4, "round", 0) for i in (1, 2, 3)]
    assert res.handle_points.tolist() == drags[-1].handle_points.tolist()
    assert len(res.trajectory) == 3  # input, the drag timestep's predicted clean latent, result
    # the drag's override starts from h0; every substituted denoising step gets the same optimised h*
    h0, h_star = values[0], values[1]
    assert len(values) == 1 + 4 and all(torch.equal(v, h_star) for v in values[1:])
    assert (h_star - h0).abs().max() > 1e-3


def test_the_optimised_bottleneck_reaches_the_result(tiny_pipe, monkeypatch):
    """The edit is the optimised bottleneck, carried into the denoising: without it (substituted at
    no step) the result is the plain reconstruction of the inversion, bit for bit."""
    def run(**overrides):
        return tiny_pipe(make_image(), [POINTS[0]], [POINTS[1]], make_mask(), config=dn_config(**overrides),
                         progress=False).latents

    edited = run()
    plain = run(propagation_end_step=7)  # no step with the optimised bottleneck
    assert (edited - plain).abs().max() > 1e-3  # the tiny model's latents are ~0.05; float noise ~1e-7
    monkeypatch.setattr(dragnoise, "substituted", lambda k, steps, end_step: False)
    assert torch.equal(run(), plain)


def test_no_mask_holds_the_whole_image_as_theirs(tiny_pipe, monkeypatch):
    cfg = dn_config(track_per_step=2)
    _, _, held = trace(tiny_pipe, monkeypatch, cfg, mask=False)
    _, _, free = trace(tiny_pipe, monkeypatch, dataclasses.replace(cfg, background_without_mask=False), mask=False)
    assert not torch.equal(held.latents, free.latents)  # (with a mask given, the setting is not read: by hand above)


def test_runs_on_sdxl(tmp_path):
    from gooddrag import DragPipeline
    from gooddrag.models.tiny_sdxl import save_tiny_sdxl_pipeline

    pipe = DragPipeline.from_pretrained(str(save_tiny_sdxl_pipeline(tmp_path / "tiny-sdxl")), device="cpu")
    cfg = get_preset("dragnoise-sdxl", resolution=128, lora_steps=0, num_inference_steps=10, feature_block=2,
                     track_per_step=3)  # the tiny SDXL UNet's feature block
    res = pipe(make_image(), [POINTS[0]], [POINTS[1]], make_mask(), config=cfg, progress=False)
    assert res.stats.drag_steps == 3 and res.image.size == make_image().size
